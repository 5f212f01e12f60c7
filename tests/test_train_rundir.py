"""The output directory of a run: one run per directory unless --resume or --overwrite, a
resume that keeps the run's config, an out_dir that is a file refused before anything loads,
and what a run leaves there (no peft README, integer steps on the loss plot)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from latentqa.cli import main
from latentqa.train import TrainConfig
from latentqa.train.checkpoint import list_checkpoints
from latentqa.train.rundir import RESUME_FREE, resume_conflicts

REPO = Path(__file__).resolve().parent.parent
FIXTURE = json.dumps([str(Path(__file__).parent / "fixtures" / "data" / "good")])


def _args(target, out, **extra):
    """A tiny run on the 17 hand-written pairs: a few seconds."""
    values = dict(model=str(target), out_dir=str(out), data=FIXTURE, eval_data=FIXTURE,
                  held_out=0, held_out_hygiene="false", read_layers="[2]", batch_size=4, max_steps=3, log_every=1,
                  eval_every=3, eval_examples=4, save_every=1, keep_checkpoints=0, lr=1e-3,
                  warmup_steps=1, precision="fp32", lora_r=4, lora_alpha=8, max_tokens=256)
    values.update(extra)
    return ["train"] + [f"{k}={v}" for k, v in values.items()]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in list_checkpoints(out)]


def test_a_directory_holding_a_run_needs_resume_or_overwrite(tiny_target, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_target, out)) == 0
    before = (out / "metrics.jsonl").read_text()
    assert _steps(out) == [1, 2, 3]

    # a second run into it, without a flag: refused, and nothing of the first one touched
    assert main(_args(tiny_target, out, max_steps=2, seed=7)) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert (out / "metrics.jsonl").read_text() == before and _steps(out) == [1, 2, 3]

    assert main(_args(tiny_target, out) + ["--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err

    # --overwrite: the old run's files go first, so nothing of it is left
    (out / "notes.txt").write_text("mine")
    assert main(_args(tiny_target, out, max_steps=2, seed=7) + ["--overwrite"]) == 0
    assert _steps(out) == [1, 2]
    steps = [r["step"] for r in _rows(out) if "loss" in r]
    assert steps == [1, 2]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert json.loads((out / "config.json").read_text())["seed"] == 7
    assert (out / "notes.txt").read_text() == "mine"  # what the trainer did not write stays

    # and every directory the trainer wrote holds no peft boilerplate README
    for d in [out / "decoder", *list_checkpoints(out)]:
        assert {p.name for p in d.iterdir()} >= {"adapter_model.safetensors",
                                                "adapter_config.json", "latentqa_decoder.json"}
        assert not (d / "README.md").exists(), d
    # summary.json's data hashes are what docs/training.md says they are
    hashes = json.loads((out / "summary.json").read_text())["data_files"]
    assert hashes and all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes.values())
    doc = " ".join((REPO / "docs" / "training.md").read_text().split())
    assert "the first 16 hex characters of the SHA-256 of each file" in doc


def test_resume_refuses_config_changes_that_break_it(tiny_target, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_target, out, max_steps=3, save_every=2)) == 0
    rows = _rows(out)

    assert main(_args(tiny_target, out, batch_size=2, max_steps=4) + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "breaks an exact resume" in err and "Traceback" not in err
    assert "batch_size (4 -> 2)" in err and "max_steps (3 -> 4" in err
    assert "schedule: constant" in err  # why max_steps may not change under cosine
    assert _rows(out) == rows  # nothing ran

    # logging, evaluation and checkpoint cadence may change
    assert main(_args(tiny_target, out, log_every=2, eval_every=1, eval_examples=2,
                      save_every=3, keep_checkpoints=1) + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["log_every"] == 2


def test_resume_conflicts_name_each_key_and_allow_the_free_ones():
    run = TrainConfig(data=["d.json"]).to_dict()
    free = dict(log_every=1, eval_every=7, eval_examples=3, save_every=9, keep_checkpoints=5,
                cache_max_gb=0.5)
    assert set(free) == set(RESUME_FREE)
    assert resume_conflicts(TrainConfig(data=["d.json"], out_dir="elsewhere", **free), run) == []
    changed = resume_conflicts(TrainConfig(data=["d.json"], lr=3e-4, read_layers=[2, 3]), run)
    assert changed == ["read_layers ([14] -> [2, 3])", "lr (0.0001 -> 0.0003)"]
    # with a constant schedule the number of steps does not move the learning rate
    constant = {**run, "schedule": "constant"}
    assert resume_conflicts(TrainConfig(data=["d.json"], schedule="constant", max_steps=9,
                                        epochs=3), constant) == []
    # a key the run's config.json predates counts as its default; removed keys are ignored
    old = {k: v for k, v in run.items() if k != "system_swaps"} | {"sample_answers": 3}
    assert resume_conflicts(TrainConfig(data=["d.json"]), old) == []
    assert resume_conflicts(TrainConfig(data=["d.json"], system_swaps=1), old) == \
        ["system_swaps (0 -> 1)"]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_clean(tiny_target,
                                                                          tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"lr": 1.0}))  # what a killed run leaves
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert main(_args(tiny_target, out, max_steps=1) + ["--resume"]) == 0
    losses = [r["loss"] for r in _rows(out) if "loss" in r]
    assert len(losses) == 1 and losses[0] != 9.0  # the stale row is gone
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
    # but a finished run without checkpoints is not silently replaced
    shutil.rmtree(out / "checkpoints")
    assert main(_args(tiny_target, out, max_steps=1) + ["--resume"]) == 2
    assert "finished run but no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["", "deeper"])
def test_out_dir_that_is_a_file_is_refused_before_anything_loads(monkeypatch, tmp_path, capsys,
                                                                  sub):
    import latentqa.train.loop as loop
    import latentqa.train.recipe as recipe

    def nothing(*a, **k):
        raise AssertionError("data or weights loaded before out_dir was checked")

    for module, name in ((recipe, "load_data"), (recipe, "load_model"),
                         (loop, "load_config")):
        monkeypatch.setattr(module, name, nothing)
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / sub if sub else tmp_path / "taken"
    assert main(_args("smollm2-135m", out)) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and str(tmp_path / "taken") in err
    assert "Traceback" not in err


def test_the_loss_plot_has_integer_step_ticks(monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    from latentqa.train.report import plot_losses

    ticks, save = [], Figure.savefig

    def savefig(fig, *a, **k):  # the figure as it is written
        fig.canvas.draw()
        ticks.extend(t for t in fig.axes[0].get_xticks() if 1 <= t <= 3)
        return save(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    plot_losses([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
                 {"step": 3, "loss": 1.2, "eval_loss": 1.4, "eval_loss_shuffled": 1.6}],
                tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temporary file left


def test_train_writes_files_through_files_py_and_one_ignore_index():
    """No module of the trainer writes its own temporary file and renames it; the label mask
    is the data package's one IGNORE_INDEX."""
    import latentqa.data.probe as probe
    import latentqa.train.recipe as recipe

    src = REPO / "src" / "latentqa" / "train"
    for name in ("report.py", "cache.py", "checkpoint.py", "loop.py", "recipe.py"):
        text = (src / name).read_text()
        assert ".rename(" not in text and "os.replace(" not in text and '".tmp' not in text, \
            name
        assert "-100" not in text, name
    assert recipe.IGNORE_INDEX is probe.IGNORE_INDEX
