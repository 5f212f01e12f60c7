"""Held-out loss under controls: the controls change what the decoder sees, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latentqa.cli import main
from latentqa.evaluation.heldout import fit_rows

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")


def test_fit_rows_cuts_or_cycles():
    v = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(fit_rows(v, 2), v[:2])
    assert torch.equal(fit_rows(v, 5), torch.cat([v, v[:2]]))


def test_eval_heldout_cli_reports_three_controls(tiny_decoder, tmp_path, capsys):
    report = tmp_path / "heldout.json"
    assert main(["eval", "heldout", "--decoder", str(tiny_decoder), "--data", FIXTURE,
                 "--split", "all", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert set(result["loss"]) == {"real", "shuffled", "untrained"}
    assert result["tokens"]["real"] == result["tokens"]["untrained"] > 0
    assert len({round(v, 6) for v in result["loss"].values()}) == 3  # each control differs
    # the sidecar of a fresh run says which labels it held out
    assert main(["eval", "heldout", "--decoder", str(tiny_decoder), "--data", FIXTURE]) == 0


def test_eval_heldout_refuses_data_other_than_the_training_data(tiny_decoder, tmp_path, capsys):
    """The held-out split is a function of the label set: other files would mix trained labels
    into the "held-out" ones, so they are refused (or read with --split all)."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(FIXTURE, other)
    qa = json.loads((other / "qa.json").read_text())
    qa["persona-extra"] = [["Who?", "Someone else."]]
    (other / "qa.json").write_text(json.dumps(qa))
    assert main(["eval", "heldout", "--decoder", str(tiny_decoder), "--data", str(other)]) == 2
    assert "depend on the exact training data" in capsys.readouterr().err
