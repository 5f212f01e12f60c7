"""Held-out hygiene (data/splits.py: drop_held_out_overlap): no held-out text in training."""

import pytest

from latentqa.data import (
    SYSTEM_PROMPT_SOURCE,
    LatentQAData,
    Record,
    add_system_prompt_records,
    add_system_swaps,
    drop_held_out_overlap,
    latentqa_files,
    load_data,
    split_by_label,
)
from latentqa.data.records import text_key


def system(prompt, user, label):
    return Record.from_latentqa("system", {"system": prompt, "stimulus_user": user,
                                           "label": label})


def completion(instruction, reply, user, answer, label):
    return Record.from_latentqa("stimulus_completion", {
        "control_user": instruction, "control_model": reply, "stimulus_user": user,
        "stimulus_model": answer, "label": label})


HELD = [system("Adopt the persona of a pirate.", "How was your day?", "persona-pirate"),
        completion("Talk like a poet.", "Gladly.", "Describe the sea.", "The sea is a song.",
                   "persona-poet")]


def data(records) -> LatentQAData:
    qa = {r.label: [("Q?", "A.")] for r in records}
    return LatentQAData([], {}, []).with_records(records, qa)


def test_records_sharing_a_prompt_a_user_turn_or_a_reply_are_dropped_and_counted():
    train = data([
        system("Be a chef.", "How was your day?", "persona-chef"),  # a held-out user turn
        system("  adopt the PERSONA of a pirate. ", "Hello!", "persona-pirate-2"),  # the prompt
        completion("Be terse.", "OK.", "Hi.", "the sea is a  song.", "goal-terse"),  # a reply
        completion("Be kind.", "talk like a poet.", "Hi.", "Sure.", "goal-kind"),  # instruction
        system("Be a chef.", "What is for dinner?", "persona-chef"),  # clean
        system("Be a gardener.", "Describe the lake.", "persona-gardener"),  # clean
    ])
    out, dropped = drop_held_out_overlap(train, HELD)
    assert dropped == 4
    assert [(r.messages[0]["content"], r.label) for r in out.records] == \
        [("Be a chef.", "persona-chef"), ("Be a gardener.", "persona-gardener")]
    # the QA of labels left without records goes; that of the others stays
    assert set(out.qa) == {"persona-chef", "persona-gardener"}
    assert len(out.pairs) == 2 + 2  # a QA pair and the recovery pair each
    # a LatentQAData of held-out records works the same
    assert drop_held_out_overlap(train, data(HELD))[1] == 4


def test_nothing_to_drop_returns_the_same_data():
    train = data([system("Be a chef.", "What is for dinner?", "persona-chef")])
    assert drop_held_out_overlap(train, HELD) == (train, 0)
    assert drop_held_out_overlap(train, []) == (train, 0)


def test_near_also_drops_prompts_a_word_away_from_a_held_out_instruction():
    train = data([
        system("Please adopt the persona of a pirate.", "Hello!", "persona-pirate-2"),
        system("Talk like a poet, always.", "Hi!", "persona-poet-2"),
        system("Adopt the persona of a baker.", "Hey!", "persona-baker"),
    ])
    assert drop_held_out_overlap(train, HELD)[1] == 0
    out, dropped = drop_held_out_overlap(train, HELD, near=0.8)
    assert dropped == 2 and [r.label for r in out.records] == ["persona-baker"]
    assert drop_held_out_overlap(train, HELD, near=0.5)[1] == 3
    with pytest.raises(ValueError, match="near"):
        drop_held_out_overlap(train, HELD, near=0.0)


def test_no_held_out_prompt_or_user_turn_survives_in_training_built_from_unlabeled(shared):
    """The usual split (configs/smollm2-135m.yaml: held_out 0.1, split_seed 0), then swaps and
    the unlabeled prompts with their swaps, then the hygiene."""
    folder = shared("latentqa")
    train, held = split_by_label(load_data(latentqa_files([folder])), 0.1, 0)
    held_texts = {text_key(m["content"]) for r in held.records for m in r.messages}
    assert held_texts
    train = add_system_swaps(train, 1, seed=0)
    built = add_system_prompt_records(train, folder / "unlabeled_system.json",
                                      swaps_per_record=1, descriptions=True, seed=0)

    def leaks(d):
        return [r for r in d.records if any(text_key(m["content"]) in held_texts
                                            for m in r.messages)]

    before = leaks(built)
    assert any(r.source == SYSTEM_PROMPT_SOURCE for r in before)  # the hygiene is needed
    clean, dropped = drop_held_out_overlap(built, held)
    assert dropped == len(before) and leaks(clean) == []
    for r in clean.records:  # in particular no held-out system prompt or user turn
        assert r.hidden_system_prompt is None or \
            text_key(r.hidden_system_prompt) not in held_texts
    assert set(clean.labels).isdisjoint(held.labels)
    # almost all of the unlabeled prompts stay
    kept = sum(r.source == SYSTEM_PROMPT_SOURCE for r in clean.records)
    assert kept > 0.99 * sum(r.source == SYSTEM_PROMPT_SOURCE for r in built.records)
