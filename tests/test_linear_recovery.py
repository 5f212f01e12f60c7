"""The linear reference for recovery: its ranking rule, and `eval recovery --linear-reference`."""

from __future__ import annotations

import json

import numpy as np
from test_recovery import PROMPTS, USERS, write_data

from latentqa.cli import main
from latentqa.evaluation.linear_recovery import CONDITIONS, ranked_first


def test_ranked_first_is_the_nearest_by_cosine_about_the_centre():
    centre = np.array([10.0, 10.0])
    cands = [np.array([[11.0, 10.0], [10.0, 11.0]])] * 2
    # about the centre the two candidates point along x and y
    assert ranked_first(np.array([[12.0, 10.5], [10.5, 12.0]]), cands, [0, 1], centre) == \
        [True, True]
    assert ranked_first(np.array([[12.0, 10.5], [10.5, 12.0]]), cands, [1, 0], centre) == \
        [False, False]


FITTING = [f"You are {who}. Stay in character." for who in (
    "a gardener", "a sailor", "a librarian", "a detective", "an astronaut", "a farmer",
    "a baker", "a judge", "a clown", "a monk", "a surgeon", "a spy")]


def test_eval_recovery_reports_the_linear_reference(tiny_decoder, tmp_path, capsys):
    folder = write_data(tmp_path / "data")
    prompts = tmp_path / "prompts.json"
    # one prompt is also evaluated: it must be left out of the map's fit
    rows = [{"system": p, "stimulus_user": USERS[k % len(USERS)], "label": f"persona-x{k}"}
            for k, p in enumerate(FITTING + [PROMPTS["persona-pirate"]])]
    prompts.write_text(json.dumps(rows))
    out = tmp_path / "recovery.json"
    assert main(["eval", "recovery", "--data", str(folder), "--decoder", str(tiny_decoder),
                 "--split", "all", "--choices", "3", "--no-rouge", "--conditions",
                 "activations", "--linear-reference", str(prompts), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    ref = json.loads(out.read_text())["linear_reference"]
    assert ref["fitted_on"] == len(FITTING) and ref["left_out"] == 1
    assert set(ref["conditions"]) == set(CONDITIONS)
    assert all(s["n"] == len(PROMPTS) for s in ref["conditions"].values())
    assert set(ref["mcnemar_p_vs_activations"]) == set(CONDITIONS) - {"activations"}
    assert len(ref["top1"]) == len(PROMPTS)
    assert "linear reference (a ridge map fitted on 12 other prompts" in text


def test_a_bad_reference_file_is_named(tiny_decoder, tmp_path, capsys):
    folder = write_data(tmp_path / "data")
    bad = tmp_path / "prompts.json"
    bad.write_text(json.dumps([{"system": "Be brief.", "label": "goal-x"}]))
    assert main(["eval", "recovery", "--data", str(folder), "--decoder", str(tiny_decoder),
                 "--split", "all", "--no-rouge", "--linear-reference", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    few = tmp_path / "few.json"
    few.write_text(json.dumps([{"system": "Be brief.", "stimulus_user": "Hi.",
                                "label": "goal-x"}]))
    assert main(["eval", "recovery", "--data", str(folder), "--decoder", str(tiny_decoder),
                 "--split", "all", "--no-rouge", "--conditions", "activations",
                 "--linear-reference", str(few)]) == 2
    assert "at least 10 prompts" in capsys.readouterr().err
