"""Persona eval: items, controls that really change what the decoder sees, and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_path

from latentqa.cli import main
from latentqa.data import load_data
from latentqa.evaluation import persona
from latentqa.evaluation.null import HIDDEN_INSTRUCTIONS, null_hallucination
from latentqa.evaluation.persona import Item, build_items, item_donors, report
from latentqa.stats import mcnemar_exact, wilson_interval

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")
@pytest.fixture(scope="module")
def shared_data():
    folder = shared_path("latentqa")
    return load_data([folder / "system.json", folder / "control.json", folder / "qa.json"],
                     system_recovery=False)


def test_items_take_distractors_from_the_same_family(shared_data):
    items = build_items(shared_data, choices=5, seed=0)
    assert len(items) > 900
    first = {label: pairs[0] for label, pairs in shared_data.qa.items()}
    family_answers = {}
    for label, (_q, a) in first.items():
        family_answers.setdefault(label.split("-")[0], set()).add(a)
    for item in items[:200]:
        assert len(item.candidates) == 5 and len(set(item.candidates)) == 5
        assert item.candidates[item.correct] == first[item.label][1]
        assert item.question == first[item.label][0]
        assert set(item.candidates) <= family_answers[item.family]
    again = build_items(shared_data, choices=5, seed=0)
    assert [i.candidates for i in again] == [i.candidates for i in items]
    other = build_items(shared_data, choices=5, seed=1)
    assert [i.candidates for i in other] != [i.candidates for i in items]


def test_shuffled_never_uses_the_records_own_label(shared_data):
    items = build_items(shared_data, choices=3, seed=0)[:300]
    donors = item_donors(items, shared_data, seed=0)
    assert all(shared_data.records[d].label != i.label for d, i in zip(donors, items))


class FakeReader:
    def __init__(self, tokenizer):
        from latentqa.data import ProbeBuilder

        self.tokenizer, self.builder, self.pad_id = tokenizer, ProbeBuilder(tokenizer), 2
        self.model, self.spec, self.norm = None, None, None

    def probe(self, count, question, answer=None, layer=None):
        return self.builder.build(count, question, answer, supervise="answer")


def test_each_condition_builds_what_it_claims(smol_tokenizer, shared_data):
    ev = persona.PersonaEval(FakeReader(smol_tokenizer))
    item = build_items(shared_data, choices=3, seed=0)[0]
    own, donor = torch.randn(5, 576), torch.randn(8, 576)
    acts = {item.record: own, 99: donor}
    real, real_on = ev.group(item, "activations", acts, 99, shared_data)
    shuffled, _ = ev.group(item, "shuffled", acts, 99, shared_data)
    none, none_on = ev.group(item, "no_activations", acts, 99, shared_data)
    untrained, untrained_on = ev.group(item, "untrained_decoder", acts, 99, shared_data)
    text, text_on = ev.group(item, "text_only", acts, 99, shared_data)
    assert real.vectors is own and real_on and len(real.probes) == len(item.candidates)
    assert shuffled.vectors is donor
    assert all(int(p.placeholder_mask.sum()) == 8 for p in shuffled.probes)
    assert none.vectors is None and none_on
    assert all(int(p.placeholder_mask.sum()) == 5 for p in none.probes)
    assert untrained.vectors is own and not untrained_on
    assert text.vectors is None and not text_on
    assert not any(p.placeholder_mask.any() for p in text.probes)
    record = shared_data.records[item.record]
    prompt = smol_tokenizer.decode(text.probes[0].input_ids)
    assert record.messages[record.read[0]]["content"] in prompt
    if record.hidden_system_prompt:
        assert record.hidden_system_prompt not in prompt  # the hidden instruction stays hidden
    supervised = text.probes[0].input_ids[text.probes[0].labels != -100]
    assert smol_tokenizer.decode(supervised).startswith(item.candidates[0])


def test_metrics_on_a_hand_made_table():
    items = [Item(i, f"persona-{i}", "system" if i < 2 else "control", "persona", "q",
                  ["a", "b"], 0) for i in range(4)]
    correct = {"activations": [True, True, True, False], "shuffled": [False, False, True, False]}
    out = report(items, correct, ("activations", "shuffled"))
    assert out["n"] == 4 and out["chance"] == 0.5
    assert out["conditions"]["activations"]["accuracy"] == 0.75
    assert out["conditions"]["shuffled"]["accuracy"] == 0.25
    assert out["mcnemar_p_vs_activations"]["shuffled"] == 0.5  # 2 discordant, both one way
    assert out["by_data_type"]["system"]["conditions"]["activations"]["accuracy"] == 1.0
    assert out["by_data_type"]["control"]["conditions"]["shuffled"]["accuracy"] == 0.5
    assert mcnemar_exact([True] * 10, [False] * 10) == pytest.approx(2 / 1024)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_no_activations_injects_nothing(monkeypatch, smol_tokenizer, shared_data):
    seen = []

    def spy(model, groups, **kw):
        seen.extend(g.vectors for g in groups)
        return [[torch.zeros(3) for _ in g.probes] for g in groups]

    monkeypatch.setattr(persona, "grouped_logprobs", spy)
    fake = FakeReader(smol_tokenizer)
    fake.model, fake.spec = torch.nn.Linear(1, 1), type("S", (), {"write_layer": 0,
                                                                  "injection": "replace"})()
    ev = persona.PersonaEval(fake)
    item = build_items(shared_data, choices=3, seed=0)[0]
    group = ev.group(item, "no_activations", {item.record: torch.randn(4, 576)}, 0, shared_data)
    assert ev.score_groups([group]) == [[0.0] * len(item.candidates)]
    assert seen == [None]


def test_eval_persona_cli_end_to_end(tiny_decoder, tmp_path, capsys):
    result_file = tmp_path / "persona.json"
    assert main(["eval", "persona", "--data", FIXTURE, "--decoder", str(tiny_decoder),
                 "--split", "all", "--choices", "2", "--no-cache", "--json",
                 str(result_file)]) == 0
    text = capsys.readouterr().out
    result = json.loads(result_file.read_text())
    assert set(result["conditions"]) == set(persona.CONDITIONS)
    assert set(result["mcnemar_p_vs_activations"]) == set(persona.CONDITIONS) - {"activations"}
    assert result["n"] > 0 and 0 <= result["null_hallucination"]["rate"] <= 1
    assert "McNemar p vs activations" in text and "null-hallucination rate" in text
    assert "under hidden instructions" in text
    null = result["null_hallucination"]
    assert null["hidden_instruction"]["n"] == len(HIDDEN_INSTRUCTIONS) * null["n"]
    assert main(["eval", "persona", "--data", FIXTURE, "--decoder", str(tiny_decoder),
                 "--conditions", "activations,telepathy"]) == 2


class _AnswersByInstruction:
    """A reader stub: answers "plain" or a persona according to ``rule(dialog)``."""

    def __init__(self, rule):
        self.rule, self.calls = rule, []

    def ask(self, dialogs, questions, **kw):
        self.calls.append(dialogs)
        return [[self.rule(d) for _ in questions] for d in dialogs]


PLAIN_ANSWER = "The assistant is a plain, helpful AI assistant."
PERSONA_ANSWER = "The assistant is a pirate captain."


def test_null_rate_comes_with_its_hidden_instruction_control():
    # a decoder that tells the two apart: plain without an instruction, a persona with one
    reads = _AnswersByInstruction(
        lambda d: PERSONA_ANSWER if d[0]["role"] == "system" else PLAIN_ANSWER)
    result = null_hallucination(reads, prompts=("a", "b", "c"), hidden=("Be a pirate.",
                                                                         "Sell cola."))
    assert (result["n"], result["invented"]) == (6, 0)
    assert (result["hidden_instruction"]["n"], result["hidden_instruction"]["plain"]) == (12, 0)
    # the instruction is only in the target's dialog: the user turns are the plain ones
    hidden = reads.calls[0][3:]
    assert [d[1]["content"] for d in hidden] == ["a", "b", "c"] * 2
    assert {d[0]["content"] for d in hidden} == {"Be a pirate.", "Sell cola."}


def test_a_decoder_that_always_says_plain_is_caught_by_the_control():
    always = _AnswersByInstruction(lambda d: PLAIN_ANSWER)
    result = null_hallucination(always, prompts=("a", "b"), questions=("Q1?", "Q2?"),
                                hidden=("Be a pirate.",))
    assert result["rate"] == 0.0  # the rate alone looks perfect
    assert result["hidden_instruction"]["rate"] == 1.0
    assert result["by_question"]["Q1?"] == {"n": 2, "invented": 0, "n_hidden": 2,
                                            "plain_under_hidden": 2}
