"""The hand-written out-of-distribution set evals/ood-hidden-prompts (issue 22): it loads, keeps
its swap design, no training config reads it, and none of its text is in the shared data."""

import json
from collections import defaultdict
from pathlib import Path

import pytest

from latentqa.data import latentqa_files, load_data
from latentqa.data.records import label_family, text_key

REPO = Path(__file__).resolve().parents[1]
OOD = REPO / "evals" / "ood-hidden-prompts"
NAME = "ood-hidden-prompts"
PERSONA_Q = "What type of persona will the assistant adopt?"
GOAL_Q = "How does the assistant approach conversations with the user?"
SHARED_RECORD_FILES = ("system", "unlabeled_system", "stimulus", "control",
                       "stimulus_completion")


@pytest.fixture(scope="module")
def data():
    return load_data([OOD / "system.json", OOD / "qa.json"])


@pytest.fixture(scope="module")
def qa():
    return json.loads((OOD / "qa.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def raw():
    return json.loads((OOD / "system.json").read_text(encoding="utf-8"))


def test_the_set_loads_with_its_counts(data, qa):
    assert len(data.records) == 120
    assert len(data.labels) == 40
    families = defaultdict(set)
    per_label = defaultdict(int)
    for r in data.records:
        assert r.kind == "system" and r.hidden_system_prompt
        families[label_family(r.label)].add(r.label)
        per_label[r.label] += 1
    assert {f: len(v) for f, v in families.items()} == {"persona": 20, "goal": 20}
    assert all(label.split("-", 2)[1] == "ood" for label in data.labels)
    assert set(per_label.values()) == {3}
    assert set(qa) == set(data.labels) and set(data.qa) == set(data.labels)
    for label, pairs in qa.items():
        assert 1 <= len(pairs) <= 3 and all(len(p) == 2 and all(p) for p in pairs)


def test_the_folder_form_reads_the_same_files(data):
    files = latentqa_files([OOD])
    assert sorted(f.name for f in files) == ["qa.json", "system.json"]
    folder = load_data(files)
    assert [(r.messages, r.label) for r in folder.records] == \
        [(r.messages, r.label) for r in data.records]
    assert folder.qa == data.qa


def test_first_pairs_ask_the_scored_question_and_answers_are_distinct(qa):
    for label, pairs in qa.items():
        question, answer = pairs[0]
        if label.startswith("persona-"):
            assert question == PERSONA_Q
            assert answer.startswith("The assistant will adopt the persona of ")
        else:
            assert question == GOAL_Q
            assert answer.startswith("The assistant ")
        assert answer.endswith(".") and answer.count(". ") == 0  # one sentence
    firsts = [text_key(pairs[0][1]) for pairs in qa.values()]
    assert len(set(firsts)) == len(firsts)


def test_one_prompt_per_label_and_three_different_user_turns(raw):
    prompts, turns = defaultdict(set), defaultdict(list)
    for r in raw:
        assert set(r) == {"system", "stimulus_user", "label"}
        prompts[r["label"]].add(text_key(r["system"]))
        turns[r["label"]].append(text_key(r["stimulus_user"]))
    assert all(len(p) == 1 for p in prompts.values())
    assert len({next(iter(p)) for p in prompts.values()}) == 40  # no prompt under two labels
    assert all(len(set(t)) == 3 for t in turns.values())


def test_swap_design_every_user_turn_under_many_labels_of_both_families(raw):
    labels = defaultdict(set)
    for r in raw:
        labels[text_key(r["stimulus_user"])].add(r["label"])
    assert len(labels) == 12
    for turn, under in labels.items():
        assert len(under) >= 5, turn
        assert {label_family(label) for label in under} == {"persona", "goal"}, turn


def test_user_turns_are_not_the_null_hallucination_prompts(raw):
    from latentqa.evaluation.null import PLAIN_PROMPTS

    plain = {text_key(p) for p in PLAIN_PROMPTS}
    assert not plain & {text_key(r["stimulus_user"]) for r in raw}


def test_no_training_config_or_training_code_mentions_the_set():
    configs = [p for p in (REPO / "configs").rglob("*") if p.suffix in (".yaml", ".yml")]
    assert configs  # the hygiene check looks at something
    train = [p for p in (REPO / "src" / "latentqa" / "train").rglob("*") if p.is_file()]
    assert train
    for path in configs + train:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # compiled files
            text = path.read_bytes().decode("latin-1")
        assert NAME not in text, f"{path.relative_to(REPO)} mentions {NAME}"


def test_no_text_or_label_is_in_the_shared_training_data(shared, raw, qa):
    folder = shared("latentqa")
    shared_texts, shared_labels = set(), set()
    for name in SHARED_RECORD_FILES:
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        for record in json.loads(path.read_text(encoding="utf-8")):
            for key in ("system", "stimulus_user"):
                if isinstance(record.get(key), str):
                    shared_texts.add(text_key(record[key]))
            if "label" in record:
                shared_labels.add(record["label"])
    shared_qa = json.loads((folder / "qa.json").read_text(encoding="utf-8"))
    shared_labels |= set(shared_qa)
    shared_answers = {text_key(a) for pairs in shared_qa.values() for _, a in pairs}
    assert shared_texts and shared_answers  # the comparison has something to compare with

    ours = {("system", r["system"]) for r in raw} | \
        {("stimulus_user", r["stimulus_user"]) for r in raw} | \
        {("answer", a) for pairs in qa.values() for _, a in pairs}
    clashes = sorted((kind, text) for kind, text in ours
                     if text_key(text) in shared_texts or text_key(text) in shared_answers)
    assert clashes == []
    assert not {r["label"] for r in raw} & shared_labels
