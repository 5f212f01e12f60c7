"""eval report: Markdown tables and PNG plots from persona, relations and heldout JSON."""

from __future__ import annotations

import json

import pytest

from latentqa.cli import main
from latentqa.evaluation.persona import Item, report
from latentqa.evaluation.relations import CONDITIONS, compare, macro_means
from latentqa.evaluation.report import ReportError, kind_of, load_run, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def persona_result():
    items = [Item(i, f"persona-{i}", "system" if i < 3 else "control", "persona", "q",
                  ["a", "b"], 0) for i in range(6)]
    correct = {"activations": [True, True, True, True, False, True],
               "shuffled": [False, True, False, False, False, True],
               "text_only": [True, False, False, True, False, False],
               "no_activations": [False] * 6, "untrained_decoder": [True] * 6}
    out = report(items, correct, tuple(correct))
    out.update({"kind": "persona", "decoder": "dec", "split": "all", "choices": 2, "seed": 0,
                "null_hallucination": {
                    "n": 4, "invented": 1, "rate": 0.25, "answers": [],
                    "by_question": {"Which persona?": {"n": 2, "invented": 1, "n_hidden": 10,
                                                       "plain_under_hidden": 3}}}})
    return out


def relations_result(layers=(2, 4)):
    """A relations result built with the eval's own summarising functions."""
    rels = {}
    for name, n in (("country_currency", 6), ("star_constellation", 4)):
        test = [i % 2 == 0 for i in range(n)]
        per_layer = {}
        for layer in layers:
            out = {c: [(i + layer + k) % 3 == 0 for i in range(n)]
                   for k, c in enumerate(CONDITIONS)}
            per_layer[str(layer)] = {
                "all": compare({c: v for c, v in out.items() if c != "linear_probe"}, [True] * n),
                "test": compare(out, test)}
        rels[name] = {"file": f"{name}.tsv", "question": "q?", "n": n, "subjects": n,
                      "objects": 2, "n_test": sum(test), "test_subjects": sum(test),
                      "skipped": {}, "chance": 0.5, "majority_object": "x",
                      "layers": per_layer, "items": []}
    return {"kind": "relations", "read": "last", "layers": list(layers), "seed": 0,
            "test_fraction": 0.3, "scored_tokens": 20, "conditions": list(CONDITIONS),
            "relations": rels, "mean": macro_means(rels, list(layers)), "seconds": 1.0,
            "decoder": "dec", "limit": 0}


def heldout_result():
    return {"decoder": "dec", "pairs": 10, "split": "held-out", "labels": 3,
            "loss": {"real": 1.5, "shuffled": 1.8, "untrained": 3.2},
            "tokens": {"real": 100, "shuffled": 100, "untrained": 100}}


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_kinds_are_recognised_with_or_without_the_kind_key():
    assert kind_of(persona_result()) == "persona"
    bare = persona_result()
    del bare["kind"]
    assert kind_of(bare) == "persona"
    assert kind_of(relations_result()) == "relations"
    assert kind_of(heldout_result()) == "heldout"
    assert kind_of({"loss": 1}) is None and kind_of([1, 2]) is None


def test_report_has_tables_and_plots(tmp_path):
    runs = [write(tmp_path / "persona.json", persona_result()),
            write(tmp_path / "rel.json", relations_result()),
            write(tmp_path / "heldout.json", heldout_result())]
    out = tmp_path / "report"
    path = write_report(runs, out)
    md = path.read_text()
    assert path == out / "report.md"
    # persona: the condition table with McNemar p-values, the groups, the null rate
    assert "| activations | 0.833 | [" in md and "| shuffled | 0.333 |" in md
    assert "McNemar p vs activations" in md and "**by data type**" in md
    assert "Null-hallucination rate: **0.25**" in md
    assert "| Which persona? | 1/2 | 3/10 |" in md  # plain answers, and under hidden prompts
    # relations: a table per layer, the mean row, the layer plot
    assert "### Layer 2" in md and "### Layer 4" in md and "### Mean over layers 2, 4" in md
    assert "| relation | decoder | untrained_decoder | text_only | shuffled | linear_probe |" in md
    assert md.count("| **mean** |") == 4  # test and all subjects, per layer
    assert "| real | 1.5000 | 100 |" in md and "## Held-out loss: `heldout`" in md
    plots = ["persona-persona.png", "relations-rel-layer2.png", "relations-rel-layer4.png",
             "relations-rel-layer2-all.png", "relations-rel-by-layer.png", "heldout-heldout.png"]
    for plot in plots:
        assert f"({plot})" in md
        assert (out / plot).read_bytes().startswith(PNG)
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary files left


def test_one_layer_has_no_layer_plot(tmp_path):
    out = tmp_path / "report"
    md = write_report([write(tmp_path / "rel.json", relations_result(layers=(14,)))],
                      out).read_text()
    assert "### Layer 14" in md and "Mean over layers" not in md
    assert not (out / "relations-rel-by-layer.png").exists()
    assert (out / "relations-rel-layer14.png").is_file()


def test_same_stems_get_distinct_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    runs = [write(tmp_path / "a" / "run.json", heldout_result()),
            write(tmp_path / "b" / "run.json", heldout_result())]
    write_report(runs, tmp_path / "out")
    assert (tmp_path / "out" / "heldout-run-1.png").is_file()
    assert (tmp_path / "out" / "heldout-run-2.png").is_file()


def test_bad_runs_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ReportError, match=r"broken.json: not valid JSON"):
        load_run(broken)
    other = write(tmp_path / "other.json", {"hello": 1})
    with pytest.raises(ReportError, match=r"other.json: not a result of eval .*hello"):
        load_run(other)
    with pytest.raises(ReportError, match=r"missing.json: no such file"):
        load_run(tmp_path / "missing.json")
    half = relations_result()
    del half["relations"]["country_currency"]["layers"]["4"]
    with pytest.raises(ReportError, match=r"half.json: looks like an eval relations result"):
        write_report([write(tmp_path / "half.json", half)], tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()


def test_report_cli(tmp_path, capsys):
    run = write(tmp_path / "persona.json", persona_result())
    assert main(["eval", "report", str(run), "--out", str(tmp_path / "r")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "r" / "report.md").is_file()
    broken = tmp_path / "broken.json"
    broken.write_text("[")
    assert main(["eval", "report", str(run), str(broken), "--out", str(tmp_path / "r2")]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err
