"""Loading, validation, pairing and splits (no tokenizer needed)."""

from pathlib import Path

import pytest

from latentqa.data import (
    SYSTEM_RECOVERY_QUESTION,
    DataError,
    LatentQAData,
    load_data,
    read_data,
    split_by_label,
    split_labels,
    validate,
)
from latentqa.data.splits import is_held_out

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GOOD, BAD = FIXTURES / "good", FIXTURES / "bad"


def test_loads_every_kind_with_the_papers_messages_and_read_turns():
    data = load_data(GOOD)
    kinds = {r.kind: r for r in data.records}
    assert set(kinds) == {"system", "control", "stimulus", "stimulus_completion", "dialog"}
    assert [m["role"] for m in kinds["system"].messages] == ["system", "user"]
    assert kinds["system"].read == (1,)
    assert kinds["control"].read == (0,)
    stim = kinds["stimulus"]
    assert [m["role"] for m in stim.messages] == ["user", "assistant", "user"]
    assert stim.read == (2,)
    # control_thought is the generator's reasoning: never part of the target's dialog
    assert all("not reveal" not in m["content"] for m in stim.messages)
    comp = kinds["stimulus_completion"]
    assert [m["role"] for m in comp.messages] == ["user", "assistant", "user", "assistant"]
    assert comp.read == (2, 3)
    assert [r.generation_prompt for r in (kinds["system"], kinds["control"], stim, comp)] == \
        [True, True, True, False]


def test_every_qa_pair_of_a_label_meets_every_record_of_it():
    data = load_data(GOOD, system_recovery=False)
    # persona-pirate: system, control, stimulus_completion records x 2 QA pairs
    pirate = [p for p in data.pairs if data.records[p.record].label == "persona-pirate"]
    assert len(pirate) == 3 * 2
    assert {(p.record, p.question) for p in pirate} == {
        (r, q) for r in {p.record for p in pirate} for q, _ in data.qa["persona-pirate"]}
    assert not any(p.derived for p in data.pairs)


def test_system_prompt_recovery_pairs():
    data = load_data(GOOD)
    derived = [p for p in data.pairs if p.derived]
    # two system.json records and the JSONL dialog whose system message is not read
    assert len(derived) == 3
    for p in derived:
        assert p.question == SYSTEM_RECOVERY_QUESTION
        assert p.answer == data.records[p.record].messages[0]["content"]


def test_jsonl_dialogs():
    data = load_data(GOOD / "dialogs.jsonl")
    first, second = data.records
    assert first.read == (1,) and first.generation_prompt  # default: the non-system messages
    assert second.read == (2, 3) and not second.generation_prompt
    assert data.qa["goal-french"] == [("Which language does the assistant use?", "French.")]
    assert second.index == 1  # blank lines do not count as records


def _problems(*paths, **kw):
    return [str(p) for p in validate([BAD / p for p in paths], **kw)]


def test_missing_key_wrong_type_and_label_without_qa_name_file_record_and_field():
    probs = _problems("stimulus.json", "qa.json")
    assert len(probs) == 3, probs
    missing, wrong, no_qa = probs
    assert "stimulus.json: record 1: field 'stimulus_user': missing" in missing
    assert "stimulus.json: record 2: field 'label': expected a string, got a number" in wrong
    assert "stimulus.json: record 3: field 'label':" in no_qa
    assert "'persona-nobody-asked' has no QA pairs" in no_qa


def test_invalid_json_empty_file_and_non_utf8():
    broken, = _problems("broken_control.json")
    assert "broken_control.json: line 2, column" in broken and "invalid JSON" in broken
    empty, = _problems("empty_control.json")
    assert empty.endswith("empty_control.json: file is empty")
    latin, = _problems("latin1.jsonl")
    assert "latin1.jsonl: line 1: not UTF-8 text: byte 0xe9" in latin


def test_jsonl_problems_are_all_reported():
    probs = _problems("dialogs.jsonl", "qa.json")
    text = "\n".join(probs)
    assert "line 2 (record 1): field 'lable': unknown field" in text
    assert "line 2 (record 1): field 'messages[0].role': expected one of" in text
    assert "line 2 (record 1): field 'read': index out of range" in text
    assert "line 3 (record 2): invalid JSON" in text
    assert len(probs) == 4


def test_load_raises_one_data_error_with_every_problem():
    with pytest.raises(DataError) as info:
        load_data(BAD)
    err = info.value
    assert len(err.problems) == len(validate(BAD)) >= 9
    assert "problems in the data" in str(err) and "stimulus.json: record 1" in str(err)
    assert isinstance(err, ValueError)


def test_missing_file_is_a_problem(tmp_path):
    probs = validate([tmp_path / "nope.json"])
    assert len(probs) == 1 and "file does not exist" in str(probs[0])


def test_unknown_json_shape(tmp_path):
    path = tmp_path / "mystery.json"
    path.write_text('[{"foo": "bar"}]')
    probs = validate([path])
    assert "cannot tell what this file holds" in str(probs[0])


def test_system_record_without_qa_needs_recovery(tmp_path):
    path = tmp_path / "unlabeled_system.json"
    path.write_text('[{"system": "Be terse.", "stimulus_user": "Hi", "label": "goal-terse"}]')
    assert len(load_data(path).pairs) == 1
    probs = validate(path, system_recovery=False)
    assert "system-prompt recovery is off" in str(probs[0])


def test_split_by_label_is_seeded_stable_and_disjoint():
    labels = [f"goal-{i}" for i in range(2000)]
    train, held = split_labels(labels, 0.2, seed=3)
    assert not set(train) & set(held) and len(train) + len(held) == 2000
    assert 300 < len(held) < 500
    assert split_labels(labels, 0.2, seed=3) == (train, held)
    assert split_labels(labels, 0.2, seed=4) != (train, held)
    # growing the label set never moves an existing label
    _, held_more = split_labels(labels + [f"persona-{i}" for i in range(500)], 0.2, seed=3)
    assert set(held) == {lab for lab in held_more if lab.startswith("goal-")}
    assert all(is_held_out(lab, 1.0) for lab in labels[:5])


def test_split_data_keeps_a_labels_records_together():
    data = load_data(GOOD)
    train, held = split_by_label(data, 0.5, seed=1)
    assert isinstance(train, LatentQAData)
    assert len(train.records) + len(held.records) == len(data.records)
    assert len(train.pairs) + len(held.pairs) == len(data.pairs)
    assert not set(train.labels) & set(held.labels)
    for part in (train, held):
        assert all(part.records[p.record].label in part.labels for p in part.pairs)


def test_shared_latentqa_files_give_the_papers_counts(shared):
    SHARED = shared("latentqa")
    files = [SHARED / f for f in ("system.json", "control.json", "stimulus.json", "qa.json")]
    data = load_data(files, system_recovery=False)
    assert len(data.records) == 1634
    assert len(data.pairs) == 3268
    with_recovery = load_data(files)
    assert len(with_recovery.pairs) == 3268 + 567
    assert sum(not p.derived for p in with_recovery.pairs) == 3268


def test_unlabeled_system_prompts_are_usable_through_recovery(shared):
    SHARED = shared("latentqa")
    data, problems = read_data(SHARED / "unlabeled_system.json")
    assert problems == []
    assert len(data.records) == len(data.pairs) == 7844
