"""The layer every area shares: the shuffled-donor rule, padding, generation, atomic files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from latentqa.batching import attention_mask, length_batches, pad, pad_id, pad_tokens
from latentqa.controls import NoDonorError, shuffled_donors
from latentqa.errors import LatentQAError
from latentqa.files import atomic_file, write_json, write_text

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")

# ---- the shuffled-donor rule --------------------------------------------------------------


def test_donors_always_have_another_label_and_depend_only_on_labels_and_seed():
    labels = ["a", "a", "b", "c", "c", "a", "b"]
    given = shuffled_donors(labels, seed=3)
    assert all(labels[d] != labels[i] for i, d in enumerate(given))
    assert shuffled_donors(labels, seed=3) == given
    assert any(shuffled_donors(labels, seed=s) != given for s in range(4, 10))


def test_donors_are_uniform_over_the_other_labels():
    labels = ["a"] + ["b"] * 3 + ["c"] * 6
    counts = [0] * len(labels)
    for seed in range(3000):
        counts[shuffled_donors(labels, seed)[0]] += 1
    assert counts[0] == 0
    # nine possible donors, each drawn about a ninth of the time
    assert all(abs(c / 3000 - 1 / 9) < 0.03 for c in counts[1:])


def test_donors_from_a_separate_pool_and_tuple_labels_differ_in_every_part():
    pool = [("s1", "x"), ("s2", "x"), ("s1", "y"), ("s3", "y")]
    given = shuffled_donors([("s1", "x"), ("s2", "y")], 0, pool=pool)
    assert given[0] == 3  # the only entry with another subject and another object
    assert pool[given[1]][0] != "s2" and pool[given[1]][1] != "y"


def test_no_donor_is_a_clear_error_naming_the_item_not_an_endless_loop():
    with pytest.raises(NoDonorError, match="record 7") as e:
        shuffled_donors(["a", "a"], names=["record 3", "record 7"][::-1])
    assert isinstance(e.value, LatentQAError)
    with pytest.raises(NoDonorError, match="item 0"):
        shuffled_donors(["a"], pool=["a", "a"])


def test_persona_keeps_its_published_draws():
    """The rule draws exactly what eval persona drew before it was shared (its numbers stand):
    rejection sampling with ``random.Random(seed + 7).choice`` over every record."""
    draw = random.Random(1)
    labels = [draw.choice("abcde") for _ in range(50)]
    old, rng = [], random.Random(0 + 7)
    for lab in labels[:20]:
        while True:
            d = rng.choice(range(len(labels)))
            if labels[d] != lab:
                old.append(d)
                break
    assert shuffled_donors(labels[:20], 0, pool=labels) == old


def test_reader_shuffles_with_the_rule(monkeypatch):
    """Reader's shuffled control for several dialogs uses the shared rule (each dialog its own
    label), not a rotation of its own."""
    import latentqa.reading.reader as R

    seen = []
    monkeypatch.setattr(R, "shuffled_donors", lambda labels, *a, **k: seen.append(list(labels))
                        or list(reversed(range(len(labels)))))
    reader = object.__new__(R.Reader)
    reader._read = lambda dialogs, reads, layer: [torch.full((1, 2), float(i))
                                                  for i in range(len(dialogs))]
    reader._layer = lambda layer: 0
    reader._reads = lambda read, n: [None] * n
    reader.spec = type("S", (), {"injection": "replace"})()
    _, vectors, _ = reader._sources([[{}], [{}], [{}]], None, None, "shuffled", None)
    assert seen == [[0, 1, 2]]
    assert [float(v[0, 0]) for v in vectors] == [2.0, 1.0, 0.0]


def test_heldout_scores_every_example_under_shuffled_even_when_a_batch_shares_a_label(
        tiny_decoder):
    """Held-out loss draws donors over all the examples evaluated, so a batch whose rows share
    a label is still scored (the old within-batch rule skipped it, so the real and shuffled
    means covered different tokens)."""
    from latentqa.data import Collator, LatentQADataset, load_data
    from latentqa.evaluation.heldout import heldout_losses
    from latentqa.reading import load

    reader = load(str(tiny_decoder))
    data = load_data([FIXTURE], system_recovery=False)
    dataset = LatentQADataset(data, reader.tokenizer)
    by_label = sorted(range(len(data.pairs)),
                      key=lambda i: data.records[data.pairs[i].record].label)
    totals = heldout_losses(reader.model, dataset, Collator(reader.tokenizer), by_label,
                            layer=reader.spec.read_layer, write_layer=reader.spec.write_layer,
                            batch_size=1, conditions=("real", "shuffled"))
    assert totals[0, 1] == totals[1, 1] > 0  # the same labelled tokens in both conditions


# ---- padding and batching -----------------------------------------------------------------


def test_pad_left_and_right_and_the_attention_mask():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert pad(rows, 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad(rows, 9, side="left").tolist() == [[1, 2, 3], [9, 9, 4]]
    assert attention_mask(rows, side="left").tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, attn, masks = pad_tokens([([5, 6], [True, False]), ([7], [True])], 0, side="left")
    assert ids.tolist() == [[5, 6], [0, 7]] and masks.tolist() == [[True, False], [False, True]]
    with pytest.raises(ValueError, match="side"):
        pad(rows, 0, side="middle")


def test_pad_id_falls_back_to_eos_and_fails_clearly_without_either():
    class Tok:
        pad_token_id, eos_token_id = None, 5
    assert pad_id(Tok()) == 5
    Tok.eos_token_id = None
    with pytest.raises(LatentQAError, match="neither a pad"):
        pad_id(Tok())


def test_length_batches_group_similar_lengths_longest_first():
    assert length_batches([3, 9, 1, 7], 2) == [[1, 3], [0, 2]]
    with pytest.raises(LatentQAError, match="at least 1"):
        length_batches([1], 0)


# ---- generation -----------------------------------------------------------------------


def test_generate_batches_by_length_cuts_at_the_end_of_turn_and_keeps_order(smollm2):
    from latentqa.chat import render_dialog
    from latentqa.generation import generate, generate_text

    tok, model = smollm2.tokenizer, smollm2.model
    prompts = [render_dialog(tok, [{"role": "user", "content": c}],
                             add_generation_prompt=True).input_ids
               for c in ("Say hi.", "What is the capital of France? Answer in one word.")]
    batched = generate(model, tok, prompts, pad_id=pad_id(tok), max_new_tokens=12,
                       batch_size=2)
    alone = [generate(model, tok, [p], pad_id=pad_id(tok), max_new_tokens=12)[0]
             for p in prompts]
    assert [t for t, _ in batched] == [t for t, _ in alone]
    assert all(tok.eos_token_id not in t for t, _ in batched)
    assert "Paris" in generate_text(model, tok, prompts[1:], pad_id=pad_id(tok),
                                    max_new_tokens=12)[0]


# ---- atomic files ---------------------------------------------------------------------


def test_atomic_file_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["out.txt"]
    write_json(target, {"é": 1}, ensure_ascii=False, indent=1)
    assert target.read_text(encoding="utf-8") == '{\n "é": 1\n}\n'
