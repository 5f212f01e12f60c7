"""The scaling study: does the decoder read hidden system prompts better with more data, and
which kind of data moves it?

Each point of ``configs/scaling/`` trains a decoder from scratch for the same number of steps
(about the same number of examples), the data growing from point to point: a quarter, half and
all of the shared data's training labels, then + the unlabeled system prompts, then + the
target's own replies; and levers beside the data: the unlabeled point reading three blocks
together (``unlabeled-layers``), and all the labels with a quarter of Activation Oracles'
yes/no classification questions (``classification``) or of context prediction (``context``).
Every point is evaluated by the same command (``latentqa eval persona`` on the shared data's
held-out labels, all five conditions; its adapter-free conditions come
from the evaluation cache after the first point), then out of distribution on
``evals/ood-hidden-prompts`` (hand-written behaviours no training config reads: ``eval persona``
and the ranking of ``eval recovery``), and its held-out loss along the run is in its
``metrics.jsonl`` (the examples-seen axis).

Runs are long and may be interrupted: each step is resumable, so run the same command again.
Training resumes from its last checkpoint; a finished point is not run again; the on-policy
replies are (re)generated with ``latentqa data replies`` when missing.

    python scripts/scaling_study.py                 # run (or continue) every point
    python scripts/scaling_study.py --only labels-25,labels-50
    python scripts/scaling_study.py --report        # table + plot from what has finished

Writes ``runs/scaling/<point>/`` (outside git) and, with --report, ``docs/img/scaling.png``
and a Markdown table on stdout (for docs/results.md and the model card).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POINTS = ("labels-25", "labels-50", "labels-100", "unlabeled", "onpolicy", "unlabeled-layers",
          "classification", "context")
DATA = "../shared/data/latentqa"
OOD = "evals/ood-hidden-prompts"
ONPOLICY = REPO.parent / "runs" / "onpolicy" / "labelled.jsonl"
CONDITIONS = ("activations", "shuffled", "no_activations", "text_only", "untrained_decoder")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def latentqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "latentqa.cli", *args]


def out_dir(point: str) -> Path:
    return REPO / "runs" / "scaling" / point


def ensure_onpolicy() -> None:
    if ONPOLICY.exists():
        return
    run(latentqa("data", "replies", "--data", *(f"{DATA}/{f}" for f in (
        "system.json", "stimulus.json", "control.json", "qa.json")),
        "--out", str(ONPOLICY), "--batch-size", "32", "--no-progress"))


def run_point(point: str) -> None:
    out = out_dir(point)
    if point == "onpolicy":
        ensure_onpolicy()
    if not (out / "summary.json").exists():
        run(latentqa("train", "--config", f"configs/scaling/{point}.yaml", "--resume"))
    if not (out / "persona.json").exists():
        # the held-out labels are drawn from the training files, so it is given the run's own
        # (the on-policy file adds `dialog` records, which the table leaves out: shared())
        data = json.loads((out / "config.json").read_text())["data"]
        run(latentqa("eval", "persona", "--data", *data, "--decoder", str(out / "decoder"),
                     "--json", str(out / "persona.json")))
    if not (out / "ood-persona.json").exists():
        run(latentqa("eval", "persona", "--data", OOD, "--split", "all", "--no-null",
                     "--decoder", str(out / "decoder"), "--json", str(out / "ood-persona.json")))
    if not (out / "ood-recovery.json").exists():
        run(latentqa("eval", "recovery", "--data", OOD, "--split", "all", "--no-rouge",
                     "--decoder", str(out / "decoder"), "--json", str(out / "ood-recovery.json")))


def curve(point: str) -> list[tuple[int, float, float]]:
    """(step, held-out loss, shuffled) along a point's run, from its metrics.jsonl."""
    rows = [json.loads(line) for line in
            (out_dir(point) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(m["step"], m["eval_loss"], m.get("eval_loss_shuffled")) for m in rows
            if "eval_loss" in m]


def ood(point: str) -> dict:
    """Out-of-distribution accuracy per condition: eval persona's and recovery's top-1."""
    out = {}
    for name, key in (("ood-persona.json", "persona"), ("ood-recovery.json", "recovery")):
        path = out_dir(point) / name
        if path.exists():
            r = json.loads(path.read_text())
            conds = r["conditions"] if key == "persona" else r["top1"]["conditions"]
            out[key] = {c: v["accuracy"] for c, v in conds.items()}
    return out


def shared(by_type: dict) -> dict:
    """Accuracy per condition over the shared data's record types, the same records at every
    point (the on-policy point's `dialog` records are its own)."""
    types = [v for t, v in by_type.items() if t != "dialog"]
    return {c: sum(v["conditions"][c]["correct"] for v in types)
            / sum(v["conditions"][c]["n"] for v in types)
            for c in CONDITIONS if all(c in v["conditions"] for v in types)}


def results() -> dict:
    out = {}
    for point in POINTS:
        path = out_dir(point) / "persona.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        summary = json.loads((out_dir(point) / "summary.json").read_text())
        config = json.loads((out_dir(point) / "config.json").read_text())
        system = r["by_data_type"]["system"]["conditions"]
        out[point] = {"train_pairs": config["resolved"]["train_pairs"],
                      "steps": summary["steps"],
                      "overall": shared(r["by_data_type"]),
                      "system": {c: system[c]["accuracy"] for c in CONDITIONS if c in system},
                      "ood": ood(point),
                      "curve": curve(point)}
    return out


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latentqa.files import save_figure

    found = results()
    if not found:
        sys.exit("no point has finished yet")
    print("| point | training pairs | system: activations | shuffled | no act. | text only "
          "| overall: activations | shuffled | text only | OOD: activations | shuffled "
          "| text only | OOD recovery: activations | shuffled |")
    print("|" + " --- |" * 15)

    def f(d, c, digits=2):
        return f"{d[c]:.{digits}f}" if c in d else "-"

    for point, r in found.items():
        s, o = r["system"], r["overall"]
        op, orc = r["ood"].get("persona", {}), r["ood"].get("recovery", {})
        print(f"| {point} | {r['train_pairs']:,} | {f(s, 'activations')} | {f(s, 'shuffled')} | "
              f"{f(s, 'no_activations')} | {f(s, 'text_only')} | {f(o, 'activations', 3)} | "
              f"{f(o, 'shuffled', 3)} | {f(o, 'text_only', 3)} | {f(op, 'activations')} | "
              f"{f(op, 'shuffled')} | {f(op, 'text_only')} | {f(orc, 'activations')} | "
              f"{f(orc, 'shuffled')} |")
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    axes = axes.ravel()
    names = list(found)
    panels = ((axes[0], lambda p: found[p]["system"], "held-out system records"),
              (axes[1], lambda p: found[p]["overall"], "all held-out records"),
              (axes[2], lambda p: found[p]["ood"].get("persona", {}),
               "out of distribution (hand-written hidden prompts)"))
    for ax, accuracies, title in panels:
        for c in ("activations", "shuffled", "text_only"):
            ax.plot(names, [accuracies(p).get(c, float("nan")) for p in names], marker="o",
                    label=c)
        ax.axhline(0.2, color="grey", linestyle=":", linewidth=1)  # chance: 5 choices
        ax.set_title(title)
        ax.set_ylabel("accuracy (5 choices)")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    axes[0].legend()
    for point, r in found.items():  # the examples-seen axis: held-out loss along each run
        steps = [s for s, _, _ in r["curve"]]
        axes[3].plot(steps, [loss for _, loss, _ in r["curve"]], marker=".", label=point)
    axes[3].set_title("held-out loss (real activations) along the run")
    axes[3].set_xlabel("optimizer step (about nine examples each)")
    axes[3].legend()
    fig.tight_layout()
    save_figure(fig, REPO / "docs" / "img" / "scaling.png")
    print("wrote docs/img/scaling.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated points (default: all, in order)")
    ap.add_argument("--report", action="store_true", help="table and plot of finished points")
    args = ap.parse_args()
    if args.report:
        return report()
    points = args.only.split(",") if args.only else POINTS
    unknown = set(points) - set(POINTS)
    if unknown:
        sys.exit(f"unknown points {sorted(unknown)}; choose from {', '.join(POINTS)}")
    for point in points:
        run_point(point)


if __name__ == "__main__":
    main()
