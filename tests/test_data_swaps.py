"""Swapped system prompts (data/swaps.py): user turns under other training prompts."""

from collections import Counter
from pathlib import Path

import pytest

from latentqa.data import (
    SWAP_SOURCE,
    SYSTEM_RECOVERY_QUESTION,
    add_system_swaps,
    load_data,
    split_by_label,
)

GOOD = Path(__file__).parent / "fixtures" / "data" / "good"


@pytest.fixture(scope="module")
def fixture_data():
    return load_data(sorted(GOOD.glob("*.json")))


def _swaps(data):
    return [r for r in data.records if r.source == SWAP_SOURCE]


def test_a_swap_is_a_user_turn_under_another_records_prompt_and_label(fixture_data):
    out = add_system_swaps(fixture_data, 1, seed=0)
    originals = [r for r in fixture_data.records if r.hidden_system_prompt is not None]
    assert len(originals) == 2 and len(_swaps(out)) == 2
    by_label = {r.label: r for r in originals}
    for swap in _swaps(out):
        prompt_owner = by_label[swap.label]
        turn_owner = next(r for r in originals if r.messages[1:] == swap.messages[1:])
        assert swap.messages[0] == prompt_owner.messages[0]
        assert turn_owner.label != swap.label
        assert swap.read == turn_owner.read and swap.kind == turn_owner.kind
        assert swap.generation_prompt == turn_owner.generation_prompt
    # the label's QA pairs and the recovery pair (the swapped-in prompt) come with it
    i = out.records.index(_swaps(out)[0])
    pairs = [p for p in out.pairs if p.record == i]
    swap = out.records[i]
    assert [(p.question, p.answer) for p in pairs if not p.derived] == \
        [tuple(qa) for qa in fixture_data.qa[swap.label]]
    assert [(p.question, p.answer) for p in pairs if p.derived] == \
        [(SYSTEM_RECOVERY_QUESTION, swap.messages[0]["content"])]
    # the original records and their pairs are untouched and first
    n = len(fixture_data.records)
    assert out.records[:n] == fixture_data.records
    assert out.pairs[:len(fixture_data.pairs)] == fixture_data.pairs


def test_zero_swaps_is_the_same_data_and_negative_is_refused(fixture_data):
    assert add_system_swaps(fixture_data, 0) is fixture_data
    with pytest.raises(ValueError, match=">= 0"):
        add_system_swaps(fixture_data, -1)


def test_swaps_on_the_shared_data_stay_inside_the_training_labels(shared):
    files = [shared("latentqa") / f for f in ("system.json", "control.json", "qa.json")]
    train, held_out = split_by_label(load_data(files), 0.1, 0)
    out = add_system_swaps(train, 2, seed=3)
    swaps = _swaps(out)
    systems = [r for r in train.records if r.hidden_system_prompt is not None]
    assert len(swaps) == 2 * len(systems)
    held = [r for r in held_out.records if r.hidden_system_prompt is not None]
    assert held
    held_prompts = {r.hidden_system_prompt for r in held}
    assert not any(s.messages[0]["content"] in held_prompts for s in swaps)
    assert {s.messages[1]["content"] for s in swaps} == \
        {r.messages[1]["content"] for r in systems}
    assert {s.label for s in swaps} <= set(train.labels)
    # each record's user turn gets two other prompts (a few turns recur across records)
    by_turn = Counter(s.messages[1]["content"] for s in swaps)
    assert all(count % 2 == 0 for count in by_turn.values())
    for s in swaps:
        own = next(r for r in systems if r.messages[1:] == s.messages[1:])
        assert s.label != own.label
    assert add_system_swaps(train, 2, seed=3).records == out.records  # seeded
    assert add_system_swaps(train, 2, seed=4).records != out.records
