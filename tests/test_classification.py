"""Yes/no classification: the sets and their fixed held-out split, balanced questions, the
training records (training rows only, one read token) and ``eval classification`` (scoring,
controls and report with a stub reader, and one small run of the shipped decoder)."""

from __future__ import annotations

import functools
import json
from collections import Counter
from types import SimpleNamespace

import pytest

from latentqa.data import load_data, render_target
from latentqa.data.classification import (
    NO,
    PROMPT,
    YES,
    add_classification_records,
    load_classification,
    normalize_text,
    read_set,
    text_record,
)
from latentqa.data.errors import DataError
from latentqa.evaluation.classification import (
    CONDITIONS,
    MAX_NEW_TOKENS,
    ClassificationEval,
    build_items,
    is_correct,
    is_strictly_correct,
    last_token_read,
    parsed,
)

GOT = ("cities", "cities_cities_conj", "cities_cities_disj", "common_claim_true_false",
       "companies_true_false", "larger_than", "neg_cities", "neg_sp_en_trans", "smaller_than",
       "sp_en_trans")


@functools.lru_cache(maxsize=1)
def _load(folder: str):
    return tuple(load_classification(folder))


@pytest.fixture
def sets(shared):
    """The real sets of ../shared/data/classification (loaded once)."""
    return list(_load(str(shared("classification"))))


# ---- the sets and the split -------------------------------------------------------------

def test_loader_reads_every_real_set_with_its_labels_and_templates(sets):
    by_name = {s.name: s for s in sets}
    assert set(by_name) == set(GOT) | {"tense"}
    for name in GOT:
        s = by_name[name]
        assert s.group == "geometry_of_truth" and s.labels == ("false", "true")
        assert s.askable == ("true",)  # "Is this statement true?": only "true" can be named
        assert len(s.rows) > 300 and len(s.templates) == 23
    tense = by_name["tense"]
    assert len(tense.labels) == 12 and tense.askable == tense.labels
    assert all("{}" in t for t in tense.templates)
    assert tense.skipped["conflicting labels"] > 0  # a sentence given two tenses is dropped
    for s in sets:
        texts = [r.text for r in s.rows]
        assert len(texts) == len(set(texts)) and all(t == normalize_text(t) for t in texts)


def test_held_out_split_is_fixed_disjoint_and_keeps_entities_on_one_side(sets, tmp_path):
    every_held, every_train, held_cities, train_cities = set(), set(), set(), set()
    for s in sets:
        held, train = s.held_out_rows, s.training_rows
        assert {r.text for r in held}.isdisjoint(r.text for r in train)
        assert len(held) + len(train) == len(s.rows)
        assert 0.15 < len(held) / len(s.rows) < 0.5, s.name
        every_held |= {r.text.casefold() for r in held}
        every_train |= {r.text.casefold() for r in train}
        for rows, cities in ((held, held_cities), (train, train_cities)):
            for r in rows:
                cities |= {k for k in r.keys if k.startswith("city")}
    assert not every_held & every_train  # no text on both sides, across all sets
    # a training row names no held-out city: the city's facts are held out in every set
    held_only = {k for k in held_cities if k not in train_cities}
    assert held_only and not any(k in held_only for k in train_cities)
    # the split depends on the row alone, not on what else is in the folder
    (tmp_path / "paraphrases").mkdir()
    src = next(s for s in sets if s.name == "sp_en_trans")
    (tmp_path / "paraphrases" / "question.json").write_text(json.dumps(
        {"geometry_of_truth": list(src.templates)}))
    (tmp_path / "one.csv").write_text(open(src.file, encoding="utf-8").read())
    alone, = load_classification(tmp_path)
    assert [r.text for r in alone.held_out_rows] == [r.text for r in src.held_out_rows]


def test_unknown_columns_and_bad_labels_are_refused_naming_the_file(tmp_path):
    templates = {"geometry_of_truth": ["Is this true?"], "tense": ["Is it {}?"]}
    bad = tmp_path / "odd.csv"
    bad.write_text("text,klass\nhello,1\n")
    with pytest.raises(DataError, match="odd.csv.*no known columns"):
        read_set(bad, templates)
    bad.write_text("statement,label\nThe sky is blue.,yes\n")
    with pytest.raises(DataError, match="line 2"):
        read_set(bad, templates)
    good = tmp_path / "few.csv"
    good.write_text("sentence,tense\nI ran.,past\nI ran.,present\nI run.,present\n"
                    "I run.,present\nI will run.,future\n")
    s = read_set(good, templates)
    assert [r.text for r in s.rows] == ["I run.", "I will run."]
    assert s.skipped == {"conflicting labels": 2, "repeated text": 1}


def test_items_are_balanced_held_out_and_name_the_right_labels(sets):
    items = build_items(sets, limit=20, seed=0)
    held = {s.name: {r.text: r.label for r in s.held_out_rows} for s in sets}
    by_set = Counter((i.set, i.expected) for i in items)
    for s in sets:
        assert by_set[(s.name, YES)] == by_set[(s.name, NO)] == 10
    for i in items:
        assert i.text in held[i.set] and i.donor in held[i.set]  # held-out rows only
        assert held[i.set][i.donor] != i.label  # the shuffled donor has another label
        assert i.question.startswith(PROMPT)
        assert (i.named == i.label) == (i.expected == YES)
        if i.set == "tense":
            assert i.named in i.question
    assert build_items(sets, limit=20, seed=0) == items
    assert build_items(sets, limit=20, seed=1) != items
    assert len(build_items(sets[:1], limit=7, seed=0)) == 6  # an odd limit stays balanced


# ---- training records -------------------------------------------------------------------

def assert_reads_only_the_last_token(tokenizer, record):
    """The record's target reads one token, the last of its one user turn's text."""
    target = render_target(tokenizer, record)
    assert int(target.read_mask.sum()) == 1
    at = int(target.read_mask.nonzero())
    assert tokenizer.decode(target.input_ids[:at + 1]).endswith(record.messages[0]["content"])


def test_training_records_use_training_rows_only_balanced_one_token_each(sets, shared,
                                                                        smol_tokenizer):
    data = load_data([shared("latentqa", "control.json"), shared("latentqa", "qa.json")])
    mixed = add_classification_records(data, 0.25, sets=sets, seed=3)
    added = mixed.records[len(data.records):]
    assert mixed.records[:len(data.records)] == data.records
    assert abs(len(added) / len(mixed.pairs) - 0.25) < 0.01
    training = {r.text for s in sets for r in s.training_rows}
    held = {r.text for s in sets for r in s.held_out_rows}
    answers = Counter()
    for record in added:
        text = record.messages[0]["content"]
        assert text in training and text not in held
        (question, answer), = mixed.qa[record.label]
        assert question.startswith(PROMPT) and answer in (YES, NO)
        answers[answer] += 1
    assert answers[YES] == answers[NO]
    assert len({r.label.split("-")[1] for r in added}) == len(sets)  # round-robin
    assert len({r.label for r in added}) == len(added)
    for record in added[:5]:
        assert_reads_only_the_last_token(smol_tokenizer, record)
    assert add_classification_records(data, 0.0, sets=sets) is data
    with pytest.raises(ValueError, match="classification share"):
        add_classification_records(data, 1.0, sets=sets)
    same = add_classification_records(data, 0.25, sets=sets, seed=3)
    assert same.records == mixed.records and same.qa == mixed.qa


# ---- scoring ----------------------------------------------------------------------------

@pytest.mark.parametrize("answer,expected,loose,strict,kind", [
    ("Yes.", YES, True, True, "yes"),
    ("yes, it is", YES, True, True, "yes"),
    ("No", NO, True, True, "no"),
    ("I don't know", NO, True, False, "neither"),  # "know" holds "no": the published rule
    ("Yes and no", NO, True, False, "both"),
    ("It is true.", YES, False, False, "neither"),
    ("Nope", YES, False, False, "neither"),
])
def test_scoring_is_a_case_insensitive_substring_with_a_strict_variant(answer, expected, loose,
                                                                       strict, kind):
    assert is_correct(answer, expected) is loose
    assert is_strictly_correct(answer, expected) is strict
    assert parsed(answer) == kind


def test_the_read_is_the_texts_last_content_token(smol_tokenizer):
    for text in ("The city of Baku is in Azerbaijan.", "She will travel to Europe next year"):
        read = last_token_read(smol_tokenizer, text)
        assert read.kind == "tokens" and read.end - read.start == 1
        record = render_target(smol_tokenizer, text_record(text))
        assert smol_tokenizer.decode(record.input_ids[:read.end]).endswith(text)
        assert not smol_tokenizer.decode(record.input_ids[:read.start]).endswith(text)


class StubReader:
    """Reads perfectly: "Yes" when the text it reads is a true statement, whatever it is
    asked (only true/false sets are used); nothing injected: no answer; the target: "Yes"."""

    def __init__(self, tokenizer, truth):
        self.tokenizer, self.truth, self.calls = tokenizer, truth, []
        self.info = SimpleNamespace(max_positions=None)

    def answer_pairs(self, dialogs, pairs, *, read=None, control=None, max_new_tokens=48,
                     do_sample=False, batch_size=None, progress=None, **kw):
        self.calls.append(dict(read=read, control=control, max_new_tokens=max_new_tokens,
                               do_sample=do_sample, questions=[q for _, q in pairs]))
        if control == "none":
            return ["I cannot tell."] * len(pairs)
        return [YES if self.truth[dialogs[d][0]["content"]] else "No, it is not."
                for d, _ in pairs]

    def target_replies(self, dialogs, *, max_new_tokens=40, **kw):
        self.calls.append(dict(text_only=dialogs, max_new_tokens=max_new_tokens))
        return ["Yes"] * len(dialogs)


def test_eval_runs_each_control_on_the_same_items_and_reports_like_persona(sets,
                                                                           smol_tokenizer,
                                                                           tmp_path):
    chosen = [s for s in sets if s.name in ("cities", "larger_than")]
    items = build_items(chosen, limit=6, seed=0)
    truth = {r.text: r.label == "true" for s in chosen for r in s.rows}
    reader = StubReader(smol_tokenizer, truth)
    result = ClassificationEval(reader).run(items)
    acc = {c: s["accuracy"] for c, s in result["conditions"].items()}
    assert list(acc) == list(CONDITIONS)
    # a perfect reader; its donors all have the other label; no answer (but "cannot" holds
    # "no": the published substring rule counts it right on No items, strict does not);
    # always "Yes"
    assert acc == {"activations": 1.0, "shuffled": 0.0, "no_activations": 0.5,
                   "text_only": 0.5}
    assert result["strict"]["no_activations"]["accuracy"] == 0.0
    assert result["n"] == 12 and result["chance"] == 0.5
    assert result["mcnemar_p_vs_activations"]["shuffled"] < 0.01
    assert result["answers"]["no_activations"] == {"neither": 12}
    assert set(result["by_set"]) == {"cities", "larger_than"}
    assert result["by_answer"]["Yes"]["n"] == result["by_answer"]["No"]["n"] == 6
    assert result["items"][0]["answers"].keys() == set(CONDITIONS)
    decoder_calls = [c for c in reader.calls if "read" in c]
    for call in decoder_calls:  # greedy, 10 tokens, one token read per text, same questions
        assert call["max_new_tokens"] == MAX_NEW_TOKENS and not call["do_sample"]
        assert all(r.kind == "tokens" and r.end - r.start == 1 for r in call["read"])
        assert call["questions"] == [i.question for i in items]
    assert [c["control"] for c in decoder_calls] == [None, None, "none"]
    text_only, = [c for c in reader.calls if "text_only" in c]
    assert all(i.text in d[0]["content"] and i.question in d[0]["content"]
               for i, d in zip(items, text_only["text_only"]))
    # the report command draws it
    from latentqa.evaluation.report import write_report

    result["kind"] = "classification"
    run = tmp_path / "classification.json"
    run.write_text(json.dumps(result))
    report = write_report([run], tmp_path / "report").read_text()
    assert "Yes/no classification" in report and "larger_than" in report


def test_command_line_options():
    from latentqa.cli import build_parser

    args = build_parser().parse_args(["eval", "classification", "--data", "d", "--sets",
                                      "cities,tense", "--limit", "3", "--seed", "2", "--out",
                                      "r.json"])
    assert (args.data, args.sets, args.limit, args.seed, args.json) == \
        ("d", "cities,tense", 3, 2, "r.json")


@pytest.mark.heavy
def test_shipped_decoder_answers_held_out_items_under_every_condition(sets, shared, tmp_path):
    from latentqa.cli import main

    out = tmp_path / "classification.json"
    assert main(["eval", "classification", "--data", str(shared("classification")),
                 "--sets", "cities,tense", "--limit", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "classification" and result["n"] == 4
    assert set(result["conditions"]) == set(CONDITIONS)
    held = {r.text for s in sets for r in s.held_out_rows}
    for item in result["items"]:
        assert item["text"] in held
        assert all(isinstance(a, str) for a in item["answers"].values())
