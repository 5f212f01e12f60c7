"""What a training run leaves behind: metrics and stages as JSONL, a loss-curve PNG, a
summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import save_figure, write_json, write_text


def append_row(path: Path, row: dict) -> None:
    """One JSON line, on disk before the call returns (a kill loses at most the line torn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """Each JSON line with its text; a torn last line from a kill is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


class Reporter:
    def __init__(self, out_dir: Path, *, enabled: bool = True):
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.path = self.out_dir / "metrics.jsonl"
        self.stages_path = self.out_dir / "stages.jsonl"
        self._last: dict = {}

    def log(self, row: dict) -> None:
        self._last.update(row)
        if self.enabled:
            append_row(self.path, row)

    def add_stage(self, stage: dict) -> None:
        """One start of this run (fresh or resumed): its command, source and data, kept across
        resumes so that the decoder records every stage that made it."""
        if self.enabled:
            append_row(self.stages_path, stage)

    def stages(self) -> list[dict]:
        return [row for _, row in read_rows(self.stages_path)] if self.enabled else []

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint, which will be logged again."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line, row in read_rows(self.path) if row.get("step", 0) <= step]
        write_text(self.path, "".join(line + "\n" for line in keep))

    def rows(self) -> list[dict]:
        return [row for _, row in read_rows(self.path)]

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
