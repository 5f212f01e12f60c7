"""Held-out loss under controls: the controls change what the decoder sees, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latentqa.cli import main

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")


def test_the_shuffled_example_reads_the_donor_whole(smol_tokenizer):
    """Held-out loss's shuffled control: the pair's QA, read from the donor's dialog, the
    probe sized for the donor's read; the labelled tokens are the pair's own."""
    from latentqa.data import LatentQADataset, load_data

    dataset = LatentQADataset(load_data([FIXTURE]), smol_tokenizer)
    data = dataset.data
    i = 0
    donor = next(r for r, rec in enumerate(data.records)
                 if rec.label != data.records[data.pairs[i].record].label
                 and len(dataset.target(r).input_ids) != len(dataset[i].target_input_ids))
    own, other = dataset[i], dataset.example(i, record=donor)
    assert torch.equal(other.target_input_ids, dataset.target(donor).input_ids)
    assert int(other.placeholder_mask.sum()) == int(dataset.target(donor).read_mask.sum())
    assert own.labels[own.labels != -100].tolist() == other.labels[other.labels != -100].tolist()


def test_eval_heldout_cli_reports_three_controls(tiny_decoder, tmp_path, capsys):
    report = tmp_path / "heldout.json"
    assert main(["eval", "heldout", "--decoder", str(tiny_decoder), "--data", FIXTURE,
                 "--split", "all", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert set(result["loss"]) == {"real", "shuffled", "untrained"}
    assert result["tokens"]["real"] == result["tokens"]["untrained"] > 0
    assert result["tokens"]["shuffled"] == result["tokens"]["real"]  # the same answers
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
