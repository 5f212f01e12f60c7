"""The pieces of `data generate` that need no model: work files, dedup, labels, validation."""

from __future__ import annotations

import json

import pytest

from latentqa.datagen import validate
from latentqa.datagen.errors import DatagenError, FieldFailed, InvalidOutput
from latentqa.datagen.export import build
from latentqa.datagen.store import JsonlLog
from latentqa.datagen.text import Labels, NearDuplicates, slugify
from latentqa.datagen.units import Asker
from latentqa.files import write_json


def test_torn_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, ')
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}]
    log.append({"a": 4})
    assert JsonlLog(path).records == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(DatagenError, match="w.jsonl:2"):
        JsonlLog(path)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_json(tmp_path / "x.json", {"k": [1]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_near_duplicates():
    d = NearDuplicates()
    d.add("Please explain every idea with analogies from cooking.")
    assert d.find("Please, explain each idea with cooking analogies!")  # reworded
    assert d.find("Please explain every idea with analogies from cooking") is not None
    assert d.find("Please explain every idea with analogies from astronomy.") is None
    assert d.find("Please act as a lighthouse keeper who distrusts machines.") is None


def test_labels_are_unique_slugs():
    labels = Labels({"goal-style-cooking-analogies"})
    assert slugify("Please explain every idea with cooking analogies.") == \
        "explain-idea-cooking-analogies"
    assert labels.make("goal", "style", "cooking-analogies") == "goal-style-cooking-analogies-2"
    assert labels.make("goal", "style", "cooking-analogies") == "goal-style-cooking-analogies-3"


@pytest.mark.parametrize("raw, expected", [
    ('Question 1: "What kind of persona does the assistant have?" It is',
     "What kind of persona does the assistant have?"),
    ("How would the assistant respond to a sad user",
     "How would the assistant respond to a sad user?"),
    ("- Who kept the tools?\nWho else?", "Who kept the tools?"),
])
def test_question_cleaning(raw, expected):
    assert validate.question(raw) == expected


@pytest.mark.parametrize("raw, behaviour, reason", [
    ("The assistant is a pirate.", None, "not a question"),
    ("Sure! What is it?", None, "talks to the prompt"),
    ("Why?", None, "too short"),
    ("Does the assistant hide messages in homonyms?",
     "Please hide a secret message in homonyms.", "names the behaviour"),
])
def test_invalid_questions(raw, behaviour, reason):
    with pytest.raises(InvalidOutput, match=reason):
        validate.question(raw, behaviour=behaviour)


def test_prose_keeps_whole_sentences():
    assert validate.prose("It rained. Then the sun came and") == "It rained."
    assert validate.prose("answer: cut off mid") == "cut off mid"
    with pytest.raises(InvalidOutput):
        validate.prose("  ...  ")


class _Scripted:
    max_workers = 1

    def __init__(self, replies):
        self.replies = list(replies)
        self.seeds = []

    def complete(self, messages, *, temperature, max_tokens, seed):
        self.seeds.append(seed)
        return self.replies.pop(0)


def test_asker_retries_invalid_outputs_with_new_seeds_then_gives_up():
    rejects = []
    backend = _Scripted(["no", "", "What is the assistant like?"])
    asker = Asker(backend, rejects.append, max_retries=2)
    assert asker.ask("k", [], validate.question) == "What is the assistant like?"
    assert [r["attempt"] for r in rejects] == [0, 1] and len(set(backend.seeds)) == 3
    again = Asker(_Scripted(["x"] * 3), rejects.append, max_retries=2)
    with pytest.raises(FieldFailed):
        again.ask("k", [], validate.question)
    # The same key and attempt get the same seed in any run: resumed runs repeat themselves.
    assert Asker(_Scripted([]), None)._seed("k", 0) == asker._seed("k", 0)


def test_export_writes_only_complete_labels():
    behaviours = [{"label": "goal-a", "kind": "goal", "description": "Please do A."},
                  {"label": "goal-b", "kind": "goal", "description": "Please do B."},
                  {"label": "sqa-c", "kind": "sqa", "description": "C happened."}]
    dialogs = [{"label": "goal-a", "control_user": "Please do A.", "control_model": "OK.",
                "stimulus_user": "Hi.", "stimulus_model": "Hello."}]
    qa = [{"label": "goal-a", "qa": [["Q?", "A."]]}, {"label": "goal-b", "qa": [["Q?", "A."]]},
          {"label": "sqa-c", "qa": [["What happened?", "C."]]}]
    files = build(behaviours, dialogs, qa)
    assert set(files["qa.json"]) == {"goal-a", "sqa-c"}  # goal-b has no dialog yet
    assert [r["label"] for r in files["control.json"]] == ["goal-a", "sqa-c"]
    assert files["system.json"] == [{"system": "Please do A.", "stimulus_user": "Hi.",
                                     "label": "goal-a"}]
