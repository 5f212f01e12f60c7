"""Relational-knowledge training records: reading relation files, the evaluated relations left
out, one read token (the subject's last), and the mix with LatentQA data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_path

from latentqa.data import (
    DataError,
    add_relation_records,
    load_data,
    load_triples,
    question_for,
    read_triples,
    render_target,
)
from latentqa.data.triples import relation_records

FIXTURES = Path(__file__).parent / "fixtures" / "triples"


def test_reads_files_drops_duplicates_and_leaves_out_evaluated_relations():
    triples = load_triples([FIXTURES])
    assert sorted(t.name for t in triples) == ["animal_sound", "country_capital"]
    capital = next(t for t in triples if t.name == "country_capital")
    assert capital.domain == "country" and len(capital.pairs) == 4  # France twice, kept once
    assert len(capital.templates) == 2
    kept = load_triples([FIXTURES], exclude=())
    assert "country_currency" in {t.name for t in kept}


@pytest.mark.parametrize("content,where", [
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt_templates": ["no slot"], "properties": {"domain_name": "x"}, '
     '"samples": [{"subject": "a", "object": "b"}]}', "prompt_templates"),
    ('{"prompt_templates": ["{} is"], "properties": {}, '
     '"samples": [{"subject": "a", "object": "b"}]}', "properties.domain_name"),
    ('{"prompt_templates": ["{} is"], "properties": {"domain_name": "x"}, '
     '"samples": [{"subject": "a"}]}', "samples[0]"),
    ("{not json", "not readable as JSON"),
])
def test_malformed_relation_files_are_refused_naming_file_and_field(tmp_path, content, where):
    bad = tmp_path / "broken.json"
    bad.write_text(content)
    with pytest.raises(DataError) as e:
        read_triples(bad)
    assert "broken.json" in str(e.value) and where in str(e.value)


def test_question_is_a_natural_question_about_this_domain_and_the_answer_completes_it():
    from latentqa.data.triples import answer_for

    assert answer_for("The capital of {} is", "country", "Lima") == \
        "The capital of this country is Lima."
    assert answer_for("What tool is used for {}? Usually, you need a", "task", "saw") == \
        "Usually, you need a saw."
    assert question_for("The capital of {} is", "country") == \
        "What is the capital of this country?"
    assert question_for("{}'s official currency is called the", "country") == \
        "What is this country's official currency?"
    assert question_for("What tool is used for {}? Usually, you need a", "task") == \
        "What tool is used for this task?"
    assert question_for("On the outside, {} are", "fruit") == \
        "On the outside, this fruit are what?"  # no noun phrase to ask about
    assert question_for("A {} typically works at a", "occupation") == \
        "This occupation typically works at a what?"


def test_records_are_drawn_round_robin_and_read_only_the_subjects_last_token(smol_tokenizer):
    from latentqa.data.triples import answer_for

    triples = load_triples([FIXTURES])
    by_name = {t.name: t for t in triples}
    records, qa = relation_records(triples, 6, seed=1)
    assert len(records) == 6
    per_relation = Counter(r.label.split("-")[1] for r in records)
    assert per_relation == {"country_capital": 3, "animal_sound": 3}  # not by file size
    answers = {"country_capital": {"Paris", "Tokyo", "Nairobi", "Lima"},
               "animal_sound": {"bark", "meow", "moo"}}
    for record in records:
        (question, answer), = qa[record.label]
        name = record.label.split("-")[1]
        obj = answer.rsplit(" ", 1)[-1][:-1]
        assert obj in answers[name]
        # the question and the answer come from one of the relation's templates
        relation = by_name[name]
        assert any(question == question_for(t, relation.domain)
                   and answer == answer_for(t, relation.domain, obj)
                   for t in relation.templates), (question, answer)
        text = record.messages[0]["content"]
        subject = text[slice(*record.read_span)]
        target = render_target(smol_tokenizer, record)
        assert int(target.read_mask.sum()) == 1
        at = int(target.read_mask.nonzero())
        # the read token ends the subject: decoded, the tokens up to it end with the subject
        upto = smol_tokenizer.decode(target.input_ids[:at + 1])
        assert upto.endswith(subject), (upto, subject)


def test_mix_adds_about_the_share_and_runs_out_gracefully():
    data = load_data([shared_path("latentqa", "control.json"),
                      shared_path("latentqa", "qa.json")])
    triples = load_triples([FIXTURES])
    mixed = add_relation_records(data, triples, 0.5)
    added = len(mixed.pairs) - len(data.pairs)
    assert added == 7  # every fixture fact once: far fewer than half of the pairs
    assert mixed.records[:len(data.records)] == data.records
    assert add_relation_records(data, triples, 0.0) is data
    with pytest.raises(ValueError, match="relation share"):
        add_relation_records(data, triples, 1.0)
    small = add_relation_records(data.subset(data.labels[:2]), triples, 0.5)
    assert len(small.pairs) == 2 * len(data.subset(data.labels[:2]).pairs)


def test_shared_relations_exclude_every_evaluated_patchscopes_relation():
    folder = shared_path("relations")
    names = {t.name for t in load_triples([folder])}
    evaluated = {p.stem for p in shared_path("patchscopes_factual").glob("*.tsv")}
    assert names and not names & evaluated
    raw = {p.stem for p in folder.rglob("*.json")}
    assert raw & evaluated  # the folder does hold some of them: the exclusion is doing work
