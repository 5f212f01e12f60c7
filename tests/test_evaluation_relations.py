"""Relations eval: reading the Patchscopes TSVs, scoring, the split, the probe, the conditions."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import shared_path

from latentqa.cli import main
from latentqa.controls import NoDonorError
from latentqa.data import DataError
from latentqa.evaluation import relations as R
from latentqa.evaluation.probe import LinearProbe
from latentqa.reading import Read

FIXTURE = Path(__file__).parent / "fixtures" / "relations"
HEADER = ("\tsample_id\tprompt_target\tposition_target\ttarget_baseline\tobject\tsubject\t"
          "generations_baseline\tgenerations_baseline_str\tis_correct_baseline\tprompt_source\t"
          "position_source\tsource_cropped_toks\n")


def row(subject, obj, source, n=13):
    fields = ["0", "0", "t x", "-1", "t", obj, subject, "[]", "g", "False", source, "0", "[]"]
    return "\t".join(fields[:n]) + "\n"


# ---- data -------------------------------------------------------------------------------

def test_reads_the_fixture_and_counts_what_it_skips():
    rels = {r.name: r for r in R.load_relations([FIXTURE])}
    assert set(rels) == {"country_currency", "star_constellation"}
    cc = rels["country_currency"]
    assert [f.subject for f in cc.facts] == ["Japan", "Japan", "Mexico", "India", "Chile",
                                              "Canada", "Australia", "Norway"]
    assert cc.skipped == {"duplicate": 1, "no context": 1, "subject not in context": 1}
    japan = cc.facts[0]
    assert japan.context == "The trade minister of Japan spoke on Monday."
    assert japan.context[japan.start:japan.end] == "Japan" and japan.object == "Yen"
    # the second row's quoted field spans two lines, so Mexico's row starts on line 5
    assert cc.facts[1].where.endswith("country_currency.tsv:3")
    assert cc.facts[2].where.endswith("country_currency.tsv:5")
    only = R.load_relations([FIXTURE / "star_constellation.tsv"])
    assert [r.name for r in only] == ["star_constellation"]


def test_malformed_rows_name_the_file_and_every_line(tmp_path):
    bad = tmp_path / "country_currency.tsv"
    bad.write_text(HEADER + row("Japan", "Yen", "in Japan") + row("Peru", "Sol", "x", n=9)
                   + row("Chile", "", "in Chile") + row("", "Euro", "in Spain"))
    with pytest.raises(DataError) as e:
        R.read_relation(bad)
    msg = str(e.value)
    assert len(e.value.problems) == 3
    assert f"{bad}: line 3: 9 fields, the header has 13" in msg
    assert f"{bad}: line 4: field 'object': is empty" in msg
    assert f"{bad}: line 5: field 'subject': is empty" in msg

    nohead = tmp_path / "star_constellation.tsv"
    nohead.write_text("subject\tobject\nVega\tLyra\n")
    with pytest.raises(DataError, match=r"star_constellation.tsv: line 1: .*prompt_source"):
        R.read_relation(nohead)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.tsv: the file is empty"):
        R.read_relation(empty)
    useless = tmp_path / "food_from_country.tsv"
    useless.write_text(HEADER + row("Pizza", "Italy", "") + row("Sushi", "Japan", "a fish"))
    with pytest.raises(DataError, match="no usable rows"):
        R.read_relation(useless)


def test_unknown_relations_and_missing_paths(tmp_path):
    with pytest.raises(DataError, match="no relation 'telepathy'"):
        R.load_relations([FIXTURE], only=["telepathy"])
    other = tmp_path / "capital_city.tsv"
    other.write_text(HEADER + row("France", "Paris", "in France"))
    with pytest.raises(DataError, match="no question for the relation 'capital_city'"):
        R.load_relations([other])
    with pytest.raises(FileNotFoundError):
        R.load_relations([tmp_path / "nowhere"])


def test_the_shipped_data_loads_with_a_question_per_relation():
    SHARED = shared_path("patchscopes_factual")
    rels = R.load_relations([SHARED])
    assert {r.name for r in rels} == set(R.QUESTIONS)
    for r in rels:
        assert len(r.facts) > 30
        assert all(f.context[f.start:f.end].lower() == f.subject.lower() for f in r.facts)


def test_limit_is_seeded_and_keeps_file_order():
    facts = R.load_relations([FIXTURE])[0].facts
    a, b = R.limit_facts(facts, 4, 0), R.limit_facts(facts, 4, 0)
    assert a == b and len(a) == 4
    assert [facts.index(f) for f in a] == sorted(facts.index(f) for f in a)
    assert R.limit_facts(facts, 0, 0) == facts
    assert any(R.limit_facts(facts, 4, s) != a for s in range(1, 6))


# ---- scoring, reading, split ------------------------------------------------------------

def test_substring_scoring():
    assert R.is_correct("The currency of Japan is the yen.", "Yen")
    assert R.is_correct("It lies in CANIS   MAJOR, I think", "Canis Major")
    assert R.is_correct("Brazil uses the réal", "Real")
    assert R.is_correct("made by Apple Inc.", "apple")
    assert not R.is_correct("It uses the dollar.", "Peso")
    assert not R.is_correct("Canis Minor", "Canis Major")
    assert not R.is_correct("anything", "  ")
    assert R.is_correct("Leonardo", "Leo")  # the published scoring's known weakness


def test_selection_reads_the_subjects_tokens(smol_tokenizer):
    from latentqa.chat import render_dialog

    facts = R.load_relations([FIXTURE])[1].facts  # star_constellation
    for fact in facts:
        rendered = render_dialog(smol_tokenizer, R.dialog(fact), add_generation_prompt=True)
        span = R.selection(smol_tokenizer, fact, "subject")
        last = R.selection(smol_tokenizer, fact, "last")
        assert isinstance(span, Read) and span.kind == "tokens"
        assert smol_tokenizer.decode(rendered.input_ids[span.start:span.end]).strip() == \
            fact.subject
        assert (last.start, last.end) == (span.end - 1, span.end)
        assert fact.subject.endswith(smol_tokenizer.decode(
            rendered.input_ids[last.start:last.end]).strip())
    with pytest.raises(ValueError, match="read must be"):
        R.selection(smol_tokenizer, facts[0], "everything")


def test_text_only_prompt_shows_the_context_up_to_the_subject():
    fact = R.load_relations([FIXTURE])[0].facts[0]
    prompt = R.text_only_prompt(fact, R.QUESTIONS["country_currency"])
    assert "The trade minister of Japan" in prompt and "spoke on Monday" not in prompt
    assert '"Japan"' in prompt and prompt.endswith("What currency is used in this country?")


def synthetic_facts(n_subjects=40, per_subject=2, objects=("A", "B", "C", "D")):
    return [R.Fact("rel", f"s{i}", objects[i % len(objects)], f"about s{i} here {k}", 6,
                   6 + len(f"s{i}"), f"f:{i}") for i in range(n_subjects)
            for k in range(per_subject)]


def test_split_is_by_subject_stratified_and_seeded():
    facts = synthetic_facts()
    facts.append(R.Fact("rel", "lonely", "E", "about lonely", 6, 12, "f:x"))
    split = R.split_subjects(facts, 0.3, seed=0)
    test_subjects = {f.subject for f, t in zip(facts, split) if t}
    train_subjects = {f.subject for f, t in zip(facts, split) if not t}
    assert not test_subjects & train_subjects
    assert "lonely" in train_subjects  # an object with one subject stays in training
    assert len(test_subjects) == 4 * 3  # round(0.3 * 10) per object
    for obj in "ABCD":
        assert any(f.object == obj for f, t in zip(facts, split) if not t)
    assert R.split_subjects(facts, 0.3, seed=0) == split
    assert R.split_subjects(facts, 0.3, seed=1) != split


def test_shuffled_donors_have_another_subject_and_object():
    facts = synthetic_facts()
    donors = R.fact_donors(facts, seed=0)
    assert all(facts[d].subject != f.subject and facts[d].object != f.object
               for f, d in zip(facts, donors))
    lone = [R.Fact("rel", "a", "X", "a", 0, 1, "f:1"), R.Fact("rel", "b", "X", "b", 0, 1, "f:2")]
    with pytest.raises(NoDonorError, match="f:1"):
        R.fact_donors(lone, seed=0)


# ---- the probe --------------------------------------------------------------------------

def clusters(n_per_class, classes=4, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    labels = [f"class{k}" for k in range(classes) for _ in range(n_per_class)]
    x = np.concatenate([centres[k] + rng.normal(size=(n_per_class, dim))
                        for k in range(classes)])
    return x, labels


def test_probe_beats_chance_on_separable_activations():
    x, y = clusters(60, seed=0)
    xt, yt = clusters(60, seed=0)[0] + np.random.default_rng(9).normal(size=x.shape) * 0.3, y
    probe = LinearProbe(seed=0).fit(torch.tensor(x, dtype=torch.float32), y)
    assert probe.accuracy(xt, yt) > 0.9


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = clusters(150, seed=1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:300], order[300:]
    shuffled = list(np.array(y)[rng.permutation(len(y))])
    probe = LinearProbe(seed=0).fit(x[train], [shuffled[i] for i in train])
    acc = probe.accuracy(x[test], [shuffled[i] for i in test])
    assert acc < 0.4  # chance is 0.25; 300 test rows put 0.4 far out of reach


def test_probe_with_one_class_and_bad_input():
    probe = LinearProbe().fit(np.zeros((3, 4)), ["Yen"] * 3)
    assert probe.predict(np.ones((2, 4))) == ["Yen", "Yen"]
    with pytest.raises(ValueError, match="one label per row"):
        LinearProbe().fit(np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(RuntimeError):
        LinearProbe().predict(np.zeros((1, 4)))


# ---- the conditions, with a fake reader -------------------------------------------------

class FakeModel(torch.nn.Module):
    """Stands in for the peft model: only the adapter switch matters here."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.adapter = True

    @contextlib.contextmanager
    def disable_adapter(self):
        self.adapter = False
        try:
            yield
        finally:
            self.adapter = True


class FakeReader:
    """Reads perfectly with the adapter on (answers its object), nothing with it off; its
    activations are the object's one-hot plus noise, so a probe can learn them."""

    def __init__(self, tokenizer, facts):
        self.tokenizer, self.model = tokenizer, FakeModel()
        self.info = SimpleNamespace(max_positions=None)
        self.object = {f.context: f.object for f in facts}
        self.names = sorted({f.object for f in facts})
        self.calls = []

    def answer_pairs(self, dialogs, pairs, *, read, layer, max_new_tokens, batch_size,
                     progress=None):
        self.calls.append(dict(adapter=self.model.adapter, dialogs=dialogs, read=read,
                               layer=layer, max_new_tokens=max_new_tokens))
        if progress:
            progress(len(pairs))
        if not self.model.adapter:
            return ["I am not sure."] * len(pairs)
        return [f"That would be {self.object[dialogs[d][0]['content']]}." for d, _q in pairs]

    def target_replies(self, dialogs, **_kw):
        return ["Maybe the Yen?"] * len(dialogs)

    def activations(self, dialogs, *, read, layer):
        g = torch.Generator().manual_seed(layer)
        out = []
        for d in dialogs:
            v = torch.zeros(len(self.names))
            v[self.names.index(self.object[d[0]["content"]])] = 3.0
            out.append((v + 0.1 * torch.randn(v.shape, generator=g))[None])
        return out


def run_fake(smol_tokenizer, monkeypatch, layers=(3, 5)):
    rels = R.load_relations([FIXTURE])
    facts = [f for r in rels for f in r.facts]
    reader = FakeReader(smol_tokenizer, facts)
    ev = R.RelationsEval(reader, seed=0, test_fraction=0.4)
    return reader, rels, ev.run(rels, list(layers))


def test_every_condition_is_there_with_intervals(smol_tokenizer, monkeypatch):
    reader, rels, result = run_fake(smol_tokenizer, monkeypatch)
    assert result["kind"] == "relations" and result["layers"] == [3, 5]
    for rel in rels:
        out = result["relations"][rel.name]
        assert out["n"] == len(rel.facts) and out["n_test"] > 0
        for layer in ("3", "5"):
            res = out["layers"][layer]
            assert list(res["test"]["conditions"]) == list(R.CONDITIONS)
            assert list(res["all"]["conditions"]) == [c for c in R.CONDITIONS
                                                      if c != "linear_probe"]
            assert set(res["test"]["mcnemar_p_vs_decoder"]) == set(R.CONDITIONS) - {"decoder"}
            for subset in ("all", "test"):
                for s in res[subset]["conditions"].values():
                    lo, hi = s["ci95"]  # (Wilson's bounds carry float rounding at 0 and 1)
                    assert 0 <= lo <= s["accuracy"] + 1e-9 and s["accuracy"] - 1e-9 <= hi <= 1
            test = res["test"]["conditions"]
            assert res["all"]["conditions"]["decoder"]["accuracy"] == 1.0
            assert test["decoder"]["n"] == out["n_test"]
            assert test["untrained_decoder"]["accuracy"] == 0.0
            assert test["shuffled"]["accuracy"] == 0.0
            assert test["linear_probe"]["accuracy"] == 1.0
        yen = sum(f.object == "Yen" for f in rel.facts) / len(rel.facts)
        assert out["layers"]["3"]["all"]["conditions"]["text_only"]["accuracy"] == \
            pytest.approx(yen)
    assert result["mean"]["3"]["test"]["decoder"] == 1.0
    assert result["mean"]["over_layers"]["all"]["untrained_decoder"] == 0.0


def test_each_condition_reads_what_it_claims(smol_tokenizer, monkeypatch):
    reader, rels, result = run_fake(smol_tokenizer, monkeypatch, layers=(3,))
    cc = rels[0]
    decoder, untrained, shuffled = reader.calls[:3]  # the first relation, its one layer
    contexts = [f.context for f in cc.facts]
    assert decoder["adapter"] and not untrained["adapter"] and shuffled["adapter"]
    assert all(c["layer"] == 3 and c["max_new_tokens"] == R.SCORED_TOKENS
               for c in (decoder, untrained, shuffled))
    assert [d[0]["content"] for d in decoder["dialogs"]] == contexts
    assert untrained["dialogs"] == decoder["dialogs"] and untrained["read"] == decoder["read"]
    assert all(r.kind == "tokens" and r.end - r.start == 1 for r in decoder["read"])
    donors = result["relations"]["country_currency"]["items"]
    for k, (f, d) in enumerate(zip(cc.facts, shuffled["dialogs"])):
        donor = cc.facts[donors[k]["donor"]]
        assert d[0]["content"] == donor.context and donor.subject != f.subject
        assert shuffled["read"][k] == decoder["read"][donors[k]["donor"]]


def test_macro_means_average_relations():
    per = {"a": {"layers": {"1": {"all": {"conditions": {"decoder": {"n": 4, "accuracy": 0.5}}},
                                  "test": {"conditions": {"decoder": {"n": 0, "accuracy": 0}}}}}},
           "b": {"layers": {"1": {"all": {"conditions": {"decoder": {"n": 9, "accuracy": 1.0}}},
                                  "test": {"conditions": {"decoder": {"n": 2, "accuracy": .5}}}}}}}
    means = R.macro_means(per, [1])
    assert means["1"]["all"]["decoder"] == 0.75
    assert means["1"]["test"]["decoder"] == 0.5  # an empty test set does not count as 0


def test_untrained_decoder_generates_with_the_adapter_off(tiny_decoder):
    """The target's read inside ``answer_pairs`` also switches the adapter off and on again;
    the untrained condition must still generate with it off (and the decoder with it on).
    The decoder may run the adapter folded into the weights (``folded_adapter``): then its
    layers are switched off but the base weight is not the target's."""
    from latentqa.reading import load

    reader = load(str(tiny_decoder))
    lora = next(m for m in reader.model.modules() if hasattr(m, "lora_A"))
    target_weight = lora.base_layer.weight
    seen = []  # per forward: True when the plain target weights ran
    handle = lora.register_forward_hook(
        lambda m, a, o: seen.append(m.disable_adapters and m.base_layer.weight is target_weight))
    facts = R.load_relations([FIXTURE])[1].facts[:2]
    reads = [R.selection(reader.tokenizer, f) for f in facts]
    ev = R.RelationsEval(reader)
    try:
        ev._answers([R.dialog(f) for f in facts], reads, "q?", 2, adapter=False)
        off, seen[:] = list(seen), []
        ev._answers([R.dialog(f) for f in facts], reads, "q?", 2, adapter=True)
        on = list(seen)
    finally:
        handle.remove()
    assert off and all(off)
    assert False in on  # the decoder generates with its adapter


# ---- the command ------------------------------------------------------------------------

def test_eval_relations_cli_end_to_end(tiny_decoder, tmp_path, capsys):
    out = tmp_path / "rel.json"
    assert main(["eval", "relations", "--data", str(FIXTURE), "--decoder", str(tiny_decoder),
                 "--layers", "1-2", "--test-fraction", "0.4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["layers"] == [1, 2] and result["decoder"] == str(tiny_decoder)
    for name in ("country_currency", "star_constellation"):
        assert name in text
        rel = result["relations"][name]
        assert set(rel["layers"]) == {"1", "2"}
        assert list(rel["layers"]["2"]["test"]["conditions"]) == list(R.CONDITIONS)
        item = rel["items"][0]
        assert set(item["answers"]["1"]) >= set(R.GENERATED)
    assert "McNemar p vs decoder" in text and "mean over relations" in text

    report = tmp_path / "report"
    assert main(["eval", "report", str(out), "--out", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "## Relational knowledge" in md and (report / "relations-rel-by-layer.png").is_file()

    assert main(["eval", "relations", "--data", str(FIXTURE), "--decoder", str(tiny_decoder),
                 "--layers", "9"]) == 2
    assert main(["eval", "relations", "--data", str(FIXTURE), "--decoder", str(tiny_decoder),
                 "--layers", "x-2"]) == 2
    assert main(["eval", "relations", "--data", str(FIXTURE), "--decoder", str(tiny_decoder),
                 "--relations", "telepathy"]) == 2
    err = capsys.readouterr().err
    assert "no relation 'telepathy'" in err and "--layers: cannot read 'x-2'" in err


@pytest.mark.heavy
def test_eval_relations_on_the_shipped_decoder(tmp_path):
    SHARED = shared_path("patchscopes_factual")
    out = tmp_path / "rel.json"
    assert main(["eval", "relations", "--data", str(SHARED), "--limit", "4",
                 "--relations", "country_currency,person_plays_pro_sport",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["layers"] == [14]
    assert all(rel["n"] == 4 for rel in result["relations"].values())
