"""The trainer's data mix: unlabeled system prompts, Activation Oracles' shares, held-out hygiene,
as ``Recipe.setup_data`` builds them from config keys (no weights load)."""

from __future__ import annotations

import json
from pathlib import Path

from latentqa.data.records import text_key
from latentqa.data.splits import record_texts
from latentqa.train import build_config
from latentqa.train.distributed import Distributed
from latentqa.train.recipe import Recipe

FIXTURES = Path(__file__).parent / "fixtures"
GOOD = FIXTURES / "data" / "good"
PROMPTS = FIXTURES / "system_prompts" / "unlabeled_system.json"


def _data(tiny_target, **values):
    cfg = build_config({"data": [str(GOOD)], "model": str(tiny_target), "held_out": 0,
                        "eval_data": [str(GOOD / "system.json"), str(GOOD / "qa.json")],
                        **values})
    recipe = Recipe(cfg, Distributed("cpu"), log=lambda *a, **k: None)
    recipe.setup_data()
    return recipe


def _prompts(data) -> set[str]:
    return {r.messages[0]["content"] for r in data.records if r.messages[0]["role"] == "system"}


def test_unlabeled_prompts_join_training_and_hygiene_drops_what_a_held_out_record_shares(
        tiny_target):
    unlabeled = [r["system"] for r in json.loads(PROMPTS.read_text())]
    astronaut = unlabeled[2]  # its user turn is a held-out record's
    plain = _data(tiny_target)
    mixed = _data(tiny_target, system_prompt_data=[str(PROMPTS)], system_prompt_swaps=1)
    assert not set(unlabeled) & _prompts(plain.train_data)
    assert set(unlabeled) <= _prompts(mixed.train_data)  # the astronaut's survives in a swap
    egg = text_key("How do I boil an egg?")
    assert mixed.dropped_overlap > 0 and not any(
        egg in record_texts(r) for r in mixed.train_data.records)
    held = set().union(*(record_texts(r) for r in mixed.eval_data.records))
    for r in mixed.train_data.records:
        assert not record_texts(r) & held, r
    answers = {p.answer for p in mixed.train_data.pairs}
    assert unlabeled[0] in answers  # recovered as itself (short prompt)
    assert len(mixed.rows) > len(plain.rows) and mixed.rows.rows  # rows pack each record's pairs

    loose = _data(tiny_target, system_prompt_data=[str(PROMPTS)], held_out_hygiene=False)
    assert loose.dropped_overlap == 0
    assert any(egg in record_texts(r)
               for r in loose.train_data.records if r.messages[0]["content"] == astronaut)


def test_descriptions_and_context_prediction_are_config_keys(tiny_target):
    base = _data(tiny_target, system_prompt_data=[str(PROMPTS)])
    described = _data(tiny_target, system_prompt_data=[str(PROMPTS)],
                      system_prompt_descriptions=True)
    assert len(described.train_data.pairs) > len(base.train_data.pairs)
    assert any(p.answer.startswith("The assistant") for p in described.train_data.pairs)
    context = _data(tiny_target, context_share=0.3)
    assert len(context.train_data.pairs) > len(_data(tiny_target).train_data.pairs)


def test_classification_share_reads_training_rows_only(tiny_target, shared):
    folder = shared("classification")
    recipe = _data(tiny_target, classification_data=str(folder), classification_share=0.3,
                   classification_sets=["cities"])
    from latentqa.data.classification import load_classification

    (cities,) = load_classification(folder, only=["cities"])
    held_out = {text_key(r.text) for r in cities.held_out_rows}
    assert held_out
    added = [r for r in recipe.train_data.records if r.read_span is not None]
    assert added and {p.answer for p in recipe.train_data.pairs
                      if recipe.train_data.records[p.record].read_span is not None} \
        <= {"Yes", "No"}
    for r in added:
        assert text_key(r.messages[0]["content"]) not in held_out


def test_hygiene_that_would_leave_nothing_says_why(tiny_target):
    import pytest

    from latentqa.train import ConfigError

    same = [str(GOOD / "system.json"), str(GOOD / "qa.json")]
    with pytest.raises(ConfigError, match="held_out_hygiene: every training record"):
        _data(tiny_target, data=same, eval_data=same)
    assert _data(tiny_target, data=same, eval_data=same, held_out_hygiene=False).rows.rows


def test_train_labels_keeps_a_nested_share_of_training_labels(tiny_target):
    full = set(_data(tiny_target).train_data.labels)
    half = set(_data(tiny_target, train_labels=0.5).train_data.labels)
    most = set(_data(tiny_target, train_labels=0.9).train_data.labels)
    assert half <= most <= full and len(half) < len(full)
    assert _data(tiny_target, train_labels=0.5).eval_data.labels == \
        _data(tiny_target).eval_data.labels
