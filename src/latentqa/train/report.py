"""What a training run leaves behind: metrics as JSONL, a loss-curve PNG, a summary."""

from __future__ import annotations

import json
import os
from pathlib import Path


class Reporter:
    def __init__(self, out_dir: Path, *, enabled: bool = True):
        self.out_dir, self.enabled = Path(out_dir), enabled
        self.path = self.out_dir / "metrics.jsonl"
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
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        tmp.rename(self.path)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def last_metrics(self) -> dict:
        return dict(self._last)

    def finish(self, summary: dict) -> None:
        if not self.enabled:
            return
        tmp = self.out_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        tmp.rename(self.out_dir / "summary.json")
        plot_losses(self.rows(), self.out_dir / "loss.png")


def plot_losses(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    real = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    shuffled = [(r["step"], r["eval_loss_shuffled"]) for r in rows if "eval_loss_shuffled" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for points, label, style in ((train, "train", "-"), (real, "held-out, real activations", "o-"),
                                 (shuffled, "held-out, shuffled activations", "s--")):
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per labelled token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.rename(path)
