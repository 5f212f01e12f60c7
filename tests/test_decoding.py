"""Scoring candidates on a shared prefix gives the numbers scoring them one by one gives."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, tiny_model

from latentqa.data.probe import IGNORE_INDEX, Probe, pad_probes
from latentqa.decoding import Group, grouped_logprobs, labelled_logprobs


def _probe(prefix, answer, n_placeholders):
    ids = torch.tensor(prefix + answer)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[len(prefix):] = ids[len(prefix):]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[1:1 + n_placeholders] = True
    return Probe(ids, mask, labels)


def _groups(hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    groups = []
    for n, (prefix_len, answers) in enumerate([(9, [3, 5, 2]), (14, [4, 4]), (6, [7]),
                                               (11, [2, 6, 3, 1])]):
        prefix = torch.randint(3, 120, (prefix_len,), generator=g).tolist()
        probes = [_probe(prefix, torch.randint(3, 120, (a,), generator=g).tolist(), 4)
                  for a in answers]
        vectors = None if n == 2 else torch.randn(4, hidden, generator=g) * 3
        groups.append(Group(probes, vectors))
    return groups


def _answers_alike(hidden: int, seed: int = 2):
    """Answers that open alike (labelled tokens in the shared prefix), one that is the start of
    another, a duplicate, and unlabelled tokens after the answers (an end-of-turn newline)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, 120, (8,), generator=g).tolist()
    answers = [[7, 8, 30, 31, 32], [7, 8, 40], [7, 8], [7, 8, 30, 31, 32], [7, 8, 50, 51]]
    probes = []
    for a in answers:
        p = _probe(prefix, a + [99, 98], 3)
        p.labels[-2:] = IGNORE_INDEX
        probes.append(p)
    return [Group(probes, torch.randn(3, hidden, generator=g) * 3)]


def _one_by_one(model, groups):
    out = []
    for group in groups:
        rows = []
        for p in group.probes:
            ids, attn, ph, labels = pad_probes([p], 0, "right")
            vecs = None if group.vectors is None else [group.vectors]
            logp, _ = labelled_logprobs(model, ids, attn, labels,
                                        placeholder_mask=ph if vecs else None, vectors=vecs,
                                        write_layer=1)
            rows.append(logp)
        out.append(rows)
    return out


@pytest.mark.parametrize("make", [_groups, _answers_alike], ids=["groups", "answers_alike"])
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_shared_prefix_scores_equal_one_by_one(arch, make):
    model = tiny_model(arch)
    groups = make(model.config.hidden_size)
    with torch.no_grad():
        want = _one_by_one(model, groups)
        got = grouped_logprobs(model, groups, pad_id=0, write_layer=1, batch_size=5)
    for w_rows, g_rows in zip(want, got):
        assert len(w_rows) == len(g_rows)
        for w, g in zip(w_rows, g_rows):
            assert w.shape == g.shape
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_shared_prefix_sees_the_injected_vectors():
    model = tiny_model("llama")
    groups = _groups(model.config.hidden_size)
    with torch.no_grad():
        real = grouped_logprobs(model, groups, pad_id=0, write_layer=1)
        for g in groups:
            if g.vectors is not None:
                g.vectors = -g.vectors
        flipped = grouped_logprobs(model, groups, pad_id=0, write_layer=1)
    assert not torch.allclose(real[0][0], flipped[0][0])
    torch.testing.assert_close(real[2][0], flipped[2][0])  # nothing injected there


def test_probes_without_a_shared_prefix_are_scored_alone():
    model = tiny_model("llama")
    a = _probe([5, 6, 7, 8, 9, 10], [11, 12], 2)
    b = _probe([6, 6, 7, 8, 9, 10], [13], 2)  # differs at the first token
    group = Group([a, b], torch.randn(2, model.config.hidden_size))
    with torch.no_grad():
        got = grouped_logprobs(model, [group], pad_id=0, write_layer=1)
        want = _one_by_one(model, [group])
    for w, g in zip(want[0], got[0]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_unpackable_groups_are_scored_alone_with_the_same_numbers(monkeypatch):
    # an attention kernel that ignores custom masks (flash attention) cannot run packed rows
    from latentqa import decoding

    model = tiny_model("llama")
    groups = _groups(model.config.hidden_size)
    calls = []
    real = decoding._score_packed
    monkeypatch.setattr(decoding, "_score_packed", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        want = _one_by_one(model, groups)
        model.config._attn_implementation = "flash_attention_2"
        assert decoding._packable(model.config, groups, [1] * len(groups)) == [False] * 4
        model.config._attn_implementation = "sdpa"
        monkeypatch.setattr(decoding, "_packable", lambda config, g, s: [False] * len(g))
        got = grouped_logprobs(model, groups, pad_id=0, write_layer=1)
    assert not calls
    for w_rows, g_rows in zip(want, got):
        for w, g in zip(w_rows, g_rows):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_a_sliding_window_shorter_than_a_probe_is_not_packed():
    model = tiny_model("mistral")
    model.config.sliding_window = 14  # the groups' probes are up to 14, 18, 13 and 17 tokens
    groups = _groups(model.config.hidden_size)
    from latentqa.decoding import _packable, _shared_length

    shared = [_shared_length(g) for g in groups]
    assert _packable(model.config, groups, shared) == [True, False, True, False]
    with torch.no_grad():
        want = _one_by_one(model, groups)
        got = grouped_logprobs(model, groups, pad_id=0, write_layer=1, batch_size=5)
    for w_rows, g_rows in zip(want, got):
        for w, g in zip(w_rows, g_rows):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_block_mask_keeps_tails_apart():
    from latentqa.decoding import _block_mask

    segment = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = _block_mask(segment, torch.float32)[0, 0] == 0
    assert allowed[3].tolist() == [True, True, True, True, False, False]  # prefix + own tail
    assert allowed[4].tolist() == [True, True, False, False, True, False]  # not tail 1
    assert allowed[5].tolist() == [False] * 5 + [True]  # padding sees itself only
    assert not allowed[1, 2]  # causal


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_common_opening_runs_once_and_scores_the_same(arch, monkeypatch):
    # probes that open alike (the probe's chat header) share that part's cache across groups
    from latentqa import decoding

    model = tiny_model(arch)
    g = torch.Generator().manual_seed(1)
    opening = torch.randint(3, 120, (6,), generator=g).tolist()
    groups = []
    for n, answers in enumerate([[3, 5, 2], [4, 4], [7], [2, 6, 3, 1]]):
        vectors = torch.randn(3, model.config.hidden_size, generator=g) * 3
        rest = torch.randint(3, 120, (4 + n,), generator=g).tolist()
        probes = []
        for a in answers:
            p = _probe(opening + [9, 9, 9] + rest, torch.randint(3, 120, (a,), generator=g)
                       .tolist(), 0)
            p.placeholder_mask[6:9] = True
            probes.append(p)
        groups.append(Group(probes, None if n == 1 else vectors))
    leads = []
    real = decoding._lead
    monkeypatch.setattr(decoding, "_lead", lambda *a: leads.append(real(*a)) or leads[-1])
    with torch.no_grad():
        want = _one_by_one(model, groups)
        got = grouped_logprobs(model, groups, pad_id=0, write_layer=1, batch_size=5)
    window = getattr(model.config, "sliding_window", None)
    assert leads[0][0] == (0 if window else 6)
    for w_rows, g_rows in zip(want, got):
        for w, g_ in zip(w_rows, g_rows):
            torch.testing.assert_close(g_, w, atol=1e-4, rtol=1e-4)


def test_packed_row_holds_the_shared_answer_start_once_and_no_dead_tokens():
    from latentqa.decoding import _pack, _shared_length

    group = _answers_alike(16)[0]
    n = _shared_length(group)
    assert n == 10  # the 8-token prefix and the answers' common [7, 8]
    ids, _, segment, starts = _pack(group, n)
    # tails keep only tokens whose outputs predict a labelled token: an answer's last token
    # and the end-of-turn tokens are dropped, and [7, 8, 40] needs no tail at all (its 40 is
    # predicted at the prefix's last token)
    assert ids[n:].tolist() == [30, 31, 30, 31, 50]
    assert segment[n:].tolist() == [1, 1, 4, 4, 5]
    assert starts == [10, 12, 12, 12, 14]
