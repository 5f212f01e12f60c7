"""What a training run leaves behind: metrics and stages as JSONL, a loss-curve PNG, a
summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import save_figure, write_json, write_text


class Reporter:
    def __init__(self, out_dir: Path, *, enabled: bool = True):
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.path = self.out_dir / "metrics.jsonl"
        self.stages_path = self.out_dir / "stages.jsonl"
        self._last: dict = {}

    def log(self, row: dict) -> None:
        self._last.update(row)
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add_stage(self, stage: dict) -> None:
        """One start of this run (fresh or resumed): its command, source and data, kept across
        resumes so that the decoder records every stage that made it."""
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stages_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(stage) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def stages(self) -> list[dict]:
        if not self.enabled or not self.stages_path.exists():
            return []
        out = []
        for line in self.stages_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
        return out

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint, which will be logged again."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
            if row.get("step", 0) <= step:
                keep.append(line)
        write_text(self.path, "".join(line + "\n" for line in keep))

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def last_metrics(self) -> dict:
        return dict(self._last)

    def finish(self, summary: dict) -> None:
        if not self.enabled:
            return
        write_json(self.out_dir / "summary.json", summary)
        plot_losses(self.rows(), self.out_dir / "loss.png")


def plot_losses(rows: list[dict], path: Path) -> None:
    """The loss curves as a PNG, written atomically."""
    save_figure(loss_figure(rows), path)


def loss_figure(rows: list[dict]):
    """Training and held-out losses against the optimizer step (integer ticks: a short run's
    axis shows steps 1, 2, 3, not 1.25)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    real = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    shuffled = [(r["step"], r["eval_loss_shuffled"]) for r in rows if "eval_loss_shuffled" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for points, label, style in ((train, "train", "-"), (real, "held-out, real activations", "o-"),
                                 (shuffled, "held-out, shuffled activations", "s--")):
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (nats per labelled token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
