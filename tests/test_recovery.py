"""eval recovery: the hidden system prompt ranked among its family's prompts, and ROUGE-L of the
generated answer, each beside the shuffled, no-activations and text-only controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentqa.cli import main
from latentqa.controls import shuffled_donors
from latentqa.data import load_data
from latentqa.evaluation import recovery
from latentqa.evaluation.recovery import (
    QUESTION,
    RecoveryEval,
    build_items,
    donors,
    report,
    rouge_l,
    sign_test,
)
from latentqa.reading.results import CandidateScore, Score
from latentqa.selection import Read

PROMPTS = {
    "persona-pirate": "You are a pirate. Speak like one in every reply.",
    "persona-chef": "You are a French chef who talks about sauces.",
    "persona-poet": "You are a poet: answer in rhyming couplets.",
    "persona-robot": "You are a robot that beeps between sentences.",
    "goal-question": "Always answer with a question.",
    "goal-cola": "Recommend a soft drink in every answer.",
    "goal-short": "Keep every answer under ten words.",
}
USERS = ["How do I boil an egg?", "What is the capital of France?", "Tell me about rain.",
         "How many legs does a cat have?"]


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"system": prompt, "stimulus_user": USERS[k % len(USERS)], "label": label}
               for k, (label, prompt) in enumerate(PROMPTS.items())]
    (folder / "system.json").write_text(json.dumps(records))
    (folder / "control.json").write_text(json.dumps(
        [{"control_user": "Hello there.", "label": "persona-pirate"}]))
    (folder / "qa.json").write_text(json.dumps(
        {"persona-pirate": [["Who is the assistant?", "A pirate."]]}))
    return folder


@pytest.fixture
def data(tmp_path):
    return load_data(write_data(tmp_path / "data"), system_recovery=True)


def test_rouge_l_by_hand():
    assert rouge_l("You are a pirate.", "you are a PIRATE") == 1.0
    assert rouge_l("a chef", "the pirate") == 0.0
    assert rouge_l("", "the pirate") == 0.0 and rouge_l("the pirate", "") == 0.0
    # LCS "the cat on the mat" = 5 words: precision 5/5, recall 5/6
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(
        2 * 1 * (5 / 6) / (1 + 5 / 6))
    # a subsequence, not a substring: order matters, gaps do not
    assert rouge_l("pirate speak every reply", "You are a pirate. Speak like one in every "
                   "reply.") == pytest.approx(2 * 1 * (4 / 10) / (1 + 4 / 10))
    assert rouge_l("reply every speak pirate", "pirate speak every reply") == 0.25


def test_items_rank_the_hidden_prompt_among_its_familys(data):
    items = build_items(data, choices=4, seed=0)
    assert [i.label for i in items] == list(PROMPTS)  # every system record, none of control
    for item in items:
        assert item.candidates[item.correct] == item.prompt == PROMPTS[item.label]
        family = {p for label, p in PROMPTS.items() if label.split("-")[0] == item.family}
        assert set(item.candidates) <= family and len(set(item.candidates)) == \
            len(item.candidates)
        assert len(item.candidates) == min(4, len(family))
    again = build_items(data, choices=4, seed=0)
    assert [(i.candidates, i.correct) for i in again] == [(i.candidates, i.correct)
                                                          for i in items]
    other = build_items(data, choices=4, seed=1)
    assert [i.candidates for i in other] != [i.candidates for i in items]
    assert {len(i.candidates) for i in build_items(data, choices=2, seed=0)} == {2}


def test_shuffled_reads_another_hidden_prompt_record_by_the_one_rule(data):
    items = build_items(data, choices=3, seed=0)
    got = donors(items, data, seed=3)
    pool = [r for r, rec in enumerate(data.records) if rec.hidden_system_prompt is not None]
    assert got == [pool[d] for d in shuffled_donors(
        [i.label for i in items], 3, pool=[data.records[r].label for r in pool])]
    assert all(data.records[d].label != i.label and data.records[d].kind == "system"
               for d, i in zip(got, items))


# the conditions that go through the decoder's Reader calls (text_only runs the base model)
READER_CONDITIONS = ("activations", "shuffled", "no_activations")


def test_text_only_is_a_default_condition_and_unknown_ones_raise(data):
    assert recovery.CONDITIONS == READER_CONDITIONS + ("text_only",)
    items = build_items(data, choices=3, seed=0)
    ev = RecoveryEval(StubReader(None, None))
    with pytest.raises(ValueError, match="telepathy"):
        ev.run(data, items, conditions=("activations", "telepathy"))
    assert ev.reader.calls == []  # refused before anything ran


class StubReader:
    """Records what RecoveryEval asks of the Reader; scores by a rule on the candidate."""

    def __init__(self, score, answer):
        self.score, self.answer, self.calls = score, answer, []

    def score_pairs(self, dialogs, pairs, candidates, *, read, control, **kw):
        self.calls.append(("score", dialogs, pairs, candidates, read, control))
        return [Score(q, [self.score(dialogs[d], c) for c in cands])
                for (d, q), cands in zip(pairs, candidates)]

    def answer_pairs(self, dialogs, pairs, *, read, control, max_new_tokens, **kw):
        self.calls.append(("answer", dialogs, pairs, None, read, control))
        return [self.answer(dialogs[d], control) for d, _ in pairs]


def test_each_condition_gives_the_reader_what_it_claims(data):
    items = build_items(data, choices=3, seed=0)

    def score(dialog, candidate):
        # the true prompt has the best mean but the worst total: ranking must use the mean
        if candidate == dialog[0]["content"]:
            return CandidateScore(candidate, -10.0, 20)
        return CandidateScore(candidate, -3.0, 3)

    reader = StubReader(score, lambda dialog, control: "" if control else dialog[0]["content"])
    result = RecoveryEval(reader, max_new_tokens=7).run(data, items, seed=0,
                                                        conditions=READER_CONDITIONS)
    # (kind, dialogs, pairs, candidates, read, control): score then answer, per condition
    assert [(c[0], c[5]) for c in reader.calls] == [("score", None), ("answer", None)] * 2 + \
        [("score", "none"), ("answer", "none")]
    own = [list(data.records[i.record].messages) for i in items]
    donor = donors(items, data, 0)
    theirs = [list(data.records[d].messages) for d in donor]
    assert [c[1] for c in reader.calls] == [own, own, theirs, theirs, own, own]
    assert all(c[2] == [(k, QUESTION) for k in range(len(items))] for c in reader.calls)
    assert all(c[4] == [Read.of_messages(1)] * len(items) for c in reader.calls)
    assert all(c[3] == [i.candidates for i in items] for c in reader.calls if c[0] == "score")
    top1 = result["top1"]["conditions"]
    assert top1["activations"]["accuracy"] == 1.0  # by the mean, not the total
    assert top1["no_activations"]["accuracy"] == 1.0  # the stub ignores the control's vectors
    for item, d, row in zip(items, donor, result["items"]):  # the donor's prompt, if there
        theirs = data.records[d].hidden_system_prompt
        chosen = theirs if theirs in item.candidates else item.candidates[0]
        assert row["conditions"]["shuffled"]["top1"] == (chosen == item.prompt)
    rouge = result["rouge_l"]["conditions"]
    assert rouge["activations"]["mean"] == 1.0 and rouge["no_activations"]["mean"] == 0.0
    assert result["items"][0]["conditions"]["activations"]["answer"] == items[0].prompt
    assert result["items"][0]["shuffled_donor"] == data.records[donor[0]].label


def test_report_on_a_hand_made_table():
    items = [recovery.RecoveryItem(k, f"goal-{k}", "goal" if k < 3 else "persona", "a b c",
                                   ["a b c", "x y z"], 0) for k in range(4)]
    per = {"activations": [{"top1": t, "rouge_l": r} for t, r in
                           [(True, 1.0), (True, 0.5), (True, 0.5), (False, 0.0)]],
           "shuffled": [{"top1": t, "rouge_l": r} for t, r in
                        [(False, 0.0), (False, 0.0), (True, 0.5), (False, 0.0)]]}
    out = report(items, per, ("activations", "shuffled"))
    assert out["chance"] == 0.5 and out["n"] == 4
    assert out["top1"]["conditions"]["activations"]["accuracy"] == 0.75
    assert out["top1"]["mcnemar_p_vs_activations"]["shuffled"] == 0.5
    assert out["rouge_l"]["conditions"]["activations"]["mean"] == 0.5
    assert out["rouge_l"]["sign_test_p_vs_activations"]["shuffled"] == 0.5  # 2 wins, 2 ties
    assert out["rouge_l"]["another_prompt_of_the_family"]["mean"] == 0.0
    assert out["by_family"]["goal"]["top1"]["shuffled"]["accuracy"] == pytest.approx(1 / 3)
    assert out["by_family"]["persona"]["rouge_l"]["activations"]["mean"] == 0.0
    assert sign_test([1.0] * 10, [0.0] * 10) == pytest.approx(2 / 1024)
    assert "rouge_l" not in report(items, per, ("activations", "shuffled"), rouge=False)


def test_the_reader_reads_what_training_reads(tiny_decoder, data):
    from latentqa.evaluation.persona import PersonaEval
    from latentqa.reading import load

    reader = load(str(tiny_decoder))
    r = next(k for k, rec in enumerate(data.records) if rec.kind == "system")
    record = data.records[r]
    ours = reader.activations(list(record.messages), read=Read.of_messages(*record.read))[0]
    trained = PersonaEval(reader).activations(data, [r])[r]
    torch.testing.assert_close(ours, trained)


def test_text_only_is_the_base_model_reading_the_turns_as_text(tiny_decoder, tiny_target, data):
    """text_only scores and answers persona's text prompt with the adapter off: equal to the
    bare base model's, and unchanged when the adapter's weights change (while the decoder's
    own conditions do change); the progress count matches ``rows``."""
    from latentqa.evaluation.persona import text_probe
    from latentqa.generation import generate_text
    from latentqa.models import load_model
    from latentqa.reading import load

    reader = load(str(tiny_decoder))

    def another_decoder(seed):  # the same base, adapter weights far from 2 steps' near-zero
        with torch.no_grad():
            torch.manual_seed(seed)
            for name, weight in reader.model.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.randn_like(weight))

    another_decoder(1)
    items = build_items(data, choices=3, seed=0)
    done = []
    ev = RecoveryEval(reader, max_new_tokens=4, progress=done.append)
    first = ev.run(data, items, seed=0)
    assert sum(done) == RecoveryEval.rows(items) > 0
    assert first["top1"]["conditions"]["text_only"]["n"] == len(items)
    assert first["rouge_l"]["conditions"]["text_only"]["n"] == len(items)
    assert "text_only" in first["top1"]["mcnemar_p_vs_activations"]
    assert "text_only" in first["rouge_l"]["sign_test_p_vs_activations"]

    # the same numbers from the bare base model, by hand: mean log-probability per labelled
    # token of persona's text probe, and the greedy reply to the probe's prompt
    base = load_model(str(tiny_target))
    model, tok = base.model.eval(), base.tokenizer
    prompts = []
    for item, row in zip(items, first["items"]):
        record = data.records[item.record]
        assert record.hidden_system_prompt not in ev.text_dialog(record)[0]["content"]
        expected = []
        for candidate in item.candidates:
            probe = text_probe(tok, record, QUESTION, candidate)
            with torch.no_grad():
                logits = model(probe.input_ids[None]).logits[0, :-1]
            labels = probe.labels[1:]
            logp = torch.log_softmax(logits.float(), -1)[labels != -100].gather(
                1, labels[labels != -100, None])
            expected.append(float(logp.mean()))
        assert row["conditions"]["text_only"]["scores"] == pytest.approx(expected, abs=1e-4)
        prompts.append(probe.input_ids[:int((probe.labels != -100).nonzero()[0])].tolist())
    replies = generate_text(model, tok, prompts, pad_id=reader.pad_id, max_new_tokens=4,
                            batch_size=ev.batch_size)
    assert [r["conditions"]["text_only"]["answer"] for r in first["items"]] == replies

    another_decoder(2)
    again = ev.run(data, items, seed=0, conditions=("activations", "text_only"))
    for a, b in zip(first["items"], again["items"]):
        assert a["conditions"]["text_only"] == b["conditions"]["text_only"]
    assert any(a["conditions"]["activations"]["scores"] != b["conditions"]["activations"]
               ["scores"] for a, b in zip(first["items"], again["items"]))


def test_eval_recovery_cli_end_to_end(tiny_decoder, tmp_path, capsys):
    folder = write_data(tmp_path / "data")
    out = tmp_path / "recovery.json"
    assert main(["eval", "recovery", "--data", str(folder), "--decoder", str(tiny_decoder),
                 "--split", "all", "--choices", "3", "--max-new-tokens", "4", "--json",
                 str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["kind"] == "recovery" and result["n"] == len(PROMPTS)
    assert set(result["top1"]["conditions"]) == set(recovery.CONDITIONS)
    controls = set(recovery.CONDITIONS) - {"activations"}
    assert set(result["top1"]["mcnemar_p_vs_activations"]) == controls
    assert set(result["rouge_l"]["sign_test_p_vs_activations"]) == controls
    assert result["top1"]["conditions"]["text_only"]["n"] == len(PROMPTS)
    assert all(0 <= s["mean"] <= 1 for s in result["rouge_l"]["conditions"].values())
    item = result["items"][0]
    assert set(item["conditions"]["shuffled"]) == {"scores", "top1", "answer", "rouge_l"}
    assert set(item["conditions"]["text_only"]) == {"scores", "top1", "answer", "rouge_l"}
    assert "true prompt ranked first" in text and "ROUGE-L" in text
    assert "\n  text_only " in text  # a row of the printed table
    assert "McNemar p vs activations" in text and "sign test p vs activations" in text

    ranked = tmp_path / "ranked.json"
    assert main(["eval", "recovery", "--data", str(folder), "--decoder", str(tiny_decoder),
                 "--split", "all", "--limit", "3", "--no-rouge", "--conditions",
                 "activations,shuffled", "--json", str(ranked)]) == 0
    short = json.loads(ranked.read_text())
    assert short["n"] == 3 and "rouge_l" not in short
    assert set(short["top1"]["conditions"]) == {"activations", "shuffled"}

    from latentqa.evaluation.report import write_report

    md = write_report([out, ranked], tmp_path / "report").read_text()
    assert "## System-prompt recovery: `recovery`" in md and "ROUGE-L" in md
    assert (tmp_path / "report" / "recovery-recovery.png").is_file()
    assert main(["eval", "recovery", "--data", str(folder), "--decoder", str(tiny_decoder),
                 "--conditions", "activations,telepathy"]) == 2
