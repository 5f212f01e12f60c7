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


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_shared_prefix_scores_equal_one_by_one(arch):
    model = tiny_model(arch)
    groups = _groups(model.config.hidden_size)
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
