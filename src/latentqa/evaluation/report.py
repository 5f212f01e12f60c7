"""``latentqa eval report``: one Markdown file with tables and plots from eval JSON results.

Why a separate step: evaluations are slow and their JSON holds every answer; the report is
cheap, so it can be redrawn (or several runs put side by side) without running a model. Each
RUN is the ``--json`` output of ``eval persona``, ``recovery``, ``relations``, ``heldout`` or
``classification``, recognised by its ``kind`` (or, for files written before ``kind`` existed,
by its keys).
Every file is written whole or not at all (temporary file, then rename).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import LatentQAError
from ..files import save_figure, write_text

KINDS = ("persona", "recovery", "relations", "heldout", "classification")


class ReportError(LatentQAError, ValueError):
    """A RUN file that cannot be read or is not an eval result; the message names the file."""


# ---- reading runs -----------------------------------------------------------------------

def kind_of(result) -> str | None:
    if not isinstance(result, dict):
        return None
    if result.get("kind") in KINDS:
        return result["kind"]
    if {"relations", "layers", "mean"} <= result.keys():
        return "relations"
    if {"conditions", "chance", "n"} <= result.keys():
        return "persona"
    if {"loss", "tokens", "pairs"} <= result.keys():
        return "heldout"
    return None


def load_run(path) -> tuple[str, dict]:
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    kind = kind_of(result)
    if kind is None:
        keys = ", ".join(sorted(result)[:8]) if isinstance(result, dict) else type(result).__name__
        raise ReportError(f"{path}: not a result of eval persona, recovery, relations, "
                          f"heldout or classification (found: {keys})")
    return kind, result


# ---- writing files ----------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def pct(s: dict) -> str:
    return f"{s['accuracy']:.3f}"


def ci(s: dict) -> str:
    return f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def pval(p) -> str:
    return "" if p is None else f"{p:.2g}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


# ---- plots ------------------------------------------------------------------------------

def bar_plot(path: Path, title: str, names: list[str], stats: list[dict], *, chance=None):
    """Accuracy per condition with 95% interval error bars and an optional chance line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 3.6))
    acc = [s["accuracy"] for s in stats]
    err = [[max(a - s["ci95"][0], 0.0) for a, s in zip(acc, stats)],
           [max(s["ci95"][1] - a, 0.0) for a, s in zip(acc, stats)]]
    ax.bar(range(len(names)), acc, yerr=err, capsize=4, color="#4c78a8")
    if chance is not None:
        ax.axhline(chance, color="#e45756", linestyle="--", label=f"chance {chance:.2f}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title(title)
    save_figure(fig, path, dpi=110, bbox_inches="tight")


def grouped_plot(path: Path, title: str, groups: list[str], conditions: list[str],
                 stats: dict, *, chance: dict | None = None):
    """Accuracy per group (relation) and condition; ``stats[group][condition]``."""
    plt = _pyplot()
    width = 0.8 / max(len(conditions), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 3, 4))
    for k, c in enumerate(conditions):
        xs, acc, lo, hi = [], [], [], []
        for g, group in enumerate(groups):
            s = stats[group].get(c)
            if s and s["n"]:
                xs.append(g + (k - (len(conditions) - 1) / 2) * width)
                acc.append(s["accuracy"])
                # (Wilson's bounds carry float rounding at 0 and 1: clamp the bar lengths)
                lo.append(max(s["accuracy"] - s["ci95"][0], 0.0))
                hi.append(max(s["ci95"][1] - s["accuracy"], 0.0))
        ax.bar(xs, acc, width, yerr=[lo, hi], capsize=2, label=c)
    if chance:
        for g, group in enumerate(groups):
            if group in chance:
                ax.hlines(chance[group], g - 0.45, g + 0.45, colors="black", linestyles=":")
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title(title + ("  (dotted: majority object)" if chance else ""))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path, dpi=110, bbox_inches="tight")


def layer_plot(path: Path, title: str, layers: list[int], series: dict[str, list[float]]):
    """Accuracy against read layer, one line per condition."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, ys in series.items():
        ax.plot(layers, ys, marker="o", label=name)
    ax.set_xlabel("read layer")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path, dpi=110, bbox_inches="tight")


def loss_plot(path: Path, title: str, losses: dict[str, float]):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.bar(range(len(losses)), list(losses.values()), color="#72b7b2")
    ax.set_xticks(range(len(losses)), list(losses))
    ax.set_ylabel("loss per labelled token (nats)")
    ax.set_title(title)
    save_figure(fig, path, dpi=110, bbox_inches="tight")


# ---- sections ---------------------------------------------------------------------------

def persona_section(name: str, r: dict, out: Path) -> list[str]:
    conds = list(r["conditions"])
    pvals = r.get("mcnemar_p_vs_activations", {})
    lines = [f"## Persona recovery: `{name}`", "",
             f"{r['n']} records, {r.get('choices', '?')} choices (chance {r['chance']:.3f}), "
             f"split {r.get('split', '?')}, decoder `{r.get('decoder', '?')}`.", ""]
    lines += table(["condition", "accuracy", "95% CI", "correct / n", "McNemar p vs activations"],
                   [[c, pct(s), ci(s), f"{s['correct']} / {s['n']}", pval(pvals.get(c))]
                    for c, s in r["conditions"].items()])
    plot = f"persona-{slug(name)}.png"
    bar_plot(out / plot, f"persona recovery ({name})", conds,
             [r["conditions"][c] for c in conds], chance=r["chance"])
    lines += ["", f"![accuracy per condition]({plot})", ""]
    reused = (r.get("cache") or {}).get("reused")
    if reused:
        lines += [f"From the cache of an earlier run on the same base model and inputs (they "
                  f"run with the adapter off): {', '.join(f'`{c}`' for c in reused)}.", ""]
    for key in ("by_data_type", "by_family"):
        groups = r.get(key) or {}
        if not groups:
            continue
        lines += [f"**{key.replace('_', ' ')}** (accuracy)", ""]
        lines += table(["group", "n"] + conds,
                       [[g, str(v["n"])] + [pct(v["conditions"][c]) if c in v["conditions"]
                                            else "" for c in conds]
                        for g, v in groups.items()])
        lines.append("")
    null = r.get("null_hallucination")
    if null:
        lines += [f"Null-hallucination rate: **{null['rate']:.2f}** ({null['invented']} of "
                  f"{null['n']} answers about plain dialogs name a persona or goal).", ""]
        if null.get("by_question"):
            lines += ["Plain answers (\"an ordinary assistant\") on plain dialogs and, as the "
                      "control, on the same requests under hidden instructions (a decoder that "
                      "reads the activations says it less often there):", ""]
            lines += table(["question", "plain dialogs", "under hidden instructions"],
                           [[q, f"{c['n'] - c['invented']}/{c['n']}",
                             f"{c['plain_under_hidden']}/{c['n_hidden']}"]
                            for q, c in null["by_question"].items()])
            lines.append("")
    return lines


def relations_section(name: str, r: dict, out: Path) -> list[str]:
    conds = r.get("conditions") or sorted({c for rel in r["relations"].values()
                                           for lay in rel["layers"].values()
                                           for c in lay["test"]["conditions"]})
    layers = [str(x) for x in r["layers"]]
    rels = list(r["relations"])
    lines = [f"## Relational knowledge: `{name}`", "",
             f"Decoder `{r.get('decoder', '?')}`, reading the subject's "
             f"{'last token' if r.get('read') == 'last' else 'tokens'} at layer(s) "
             f"{', '.join(layers)}; correct when the gold object is in the first "
             f"{r.get('scored_tokens', 20)} generated tokens (ignoring case). Test subjects: "
             f"{r.get('test_fraction', 0):.0%} of each object's subjects, unseen by the probe. "
             f"McNemar p: exact, paired, decoder against each condition on the test subjects.",
             ""]
    lines += table(["relation", "facts", "subjects", "objects", "test facts",
                    "majority-object rate (test)"], [])
    for rel, v in r["relations"].items():
        chance = f"{v['chance']:.3f}" if v["n_test"] else "no test subjects"
        lines.append(f"| {rel} | {v['n']} | {v['subjects']} | {v['objects']} | {v['n_test']} "
                     f"| {chance} |")
    lines.append("")
    for layer in layers:
        lines += [f"### Layer {layer}", "", "Test subjects: accuracy [95% CI] (McNemar p vs "
                  "decoder)", ""]
        rows = []
        for rel in rels:
            res = r["relations"][rel]["layers"][layer]["test"]
            cells = []
            for c in conds:
                s = res["conditions"].get(c)
                p = res["mcnemar_p_vs_decoder"].get(c)
                cells.append("n/a" if not s or not s["n"] else
                             f"{pct(s)} {ci(s)}" + (f" (p={pval(p)})" if p is not None else ""))
            rows.append([rel] + cells)
        mean = r["mean"][layer]["test"]
        rows.append(["**mean**"] + [f"{mean[c]:.3f}" if c in mean else "" for c in conds])
        lines += table(["relation"] + conds, rows)
        lines += ["", "All subjects (no probe): accuracy [95% CI]", ""]
        gen = [c for c in conds if c != "linear_probe"]
        rows = []
        for rel in rels:
            res = r["relations"][rel]["layers"][layer]["all"]["conditions"]
            rows.append([rel] + [f"{pct(res[c])} {ci(res[c])}" if c in res else "" for c in gen])
        mean = r["mean"][layer]["all"]
        rows.append(["**mean**"] + [f"{mean[c]:.3f}" if c in mean else "" for c in gen])
        lines += table(["relation"] + gen, rows)
        plot = f"relations-{slug(name)}-layer{layer}.png"
        grouped_plot(out / plot, f"relations, layer {layer}, test subjects ({name})", rels,
                     conds, {rel: r["relations"][rel]["layers"][layer]["test"]["conditions"]
                             for rel in rels},
                     chance={rel: r["relations"][rel]["chance"] for rel in rels
                             if r["relations"][rel]["n_test"]})
        lines += ["", f"![accuracy per relation and condition, test subjects]({plot})", ""]
        plot = f"relations-{slug(name)}-layer{layer}-all.png"
        grouped_plot(out / plot, f"relations, layer {layer}, all subjects ({name})", rels, gen,
                     {rel: r["relations"][rel]["layers"][layer]["all"]["conditions"]
                      for rel in rels})
        lines += [f"![accuracy per relation and condition, all subjects]({plot})", ""]
    if len(layers) > 1:
        over = r["mean"].get("over_layers", {}).get("test", {})
        lines += [f"### Mean over layers {', '.join(layers)}", "",
                  "Mean over relations of the test-subject accuracy, averaged over the layers "
                  "(the paper's summary number).", ""]
        lines += table(conds, [[f"{over[c]:.3f}" if c in over else "" for c in conds]])
        plot = f"relations-{slug(name)}-by-layer.png"
        ints = [int(x) for x in layers]
        layer_plot(out / plot, f"mean over relations, test subjects ({name})", ints,
                   {c: [r["mean"][x]["test"].get(c, float("nan")) for x in layers]
                    for c in conds})
        lines += ["", f"![accuracy against read layer]({plot})", ""]
    return lines


def heldout_section(name: str, r: dict, out: Path) -> list[str]:
    lines = [f"## Held-out loss: `{name}`", "",
             f"{r['pairs']} (record, QA) pairs, {r.get('labels', '?')} labels, split "
             f"{r.get('split', '?')}, decoder `{r.get('decoder', '?')}`. Lower is better; "
             "`real` should be clearly lowest.", ""]
    lines += table(["condition", "loss per token", "tokens"],
                   [[c, f"{v:.4f}", str(r["tokens"].get(c, ""))] for c, v in r["loss"].items()])
    plot = f"heldout-{slug(name)}.png"
    loss_plot(out / plot, f"held-out loss ({name})", r["loss"])
    return lines + ["", f"![held-out loss per condition]({plot})", ""]


def classification_section(name: str, r: dict, out: Path) -> list[str]:
    conds = list(r["conditions"])
    pvals = r.get("mcnemar_p_vs_activations", {})
    lines = [f"## Yes/no classification: `{name}`", "",
             f"{r['n']} held-out items of {', '.join(r.get('sets', r['by_set']))}, Yes and No "
             f"balanced (chance 0.5), decoder `{r.get('decoder', '?')}`. Correct: the expected "
             "word in the answer (substring, ignoring case); strict: it is one of the answer's "
             "words and the other answer word is not.", ""]
    lines += table(["condition", "accuracy", "95% CI", "correct / n", "strict",
                    "McNemar p vs activations"],
                   [[c, pct(s), ci(s), f"{s['correct']} / {s['n']}", pct(r["strict"][c]),
                     pval(pvals.get(c))] for c, s in r["conditions"].items()])
    plot = f"classification-{slug(name)}.png"
    bar_plot(out / plot, f"yes/no classification ({name})", conds,
             [r["conditions"][c] for c in conds], chance=r["chance"])
    lines += ["", f"![accuracy per condition]({plot})", ""]
    for key in ("by_set", "by_answer"):
        lines += [f"**{key.replace('_', ' ')}** (accuracy)", ""]
        lines += table(["group", "n"] + conds,
                       [[g, str(v["n"])] + [pct(v["conditions"][c]) for c in conds]
                        for g, v in r[key].items()])
        lines.append("")
    return lines


def recovery_section(name: str, r: dict, out: Path) -> list[str]:
    top1 = r["top1"]["conditions"]
    conds = list(top1)
    pvals = r["top1"].get("mcnemar_p_vs_activations", {})
    lines = [f"## System-prompt recovery: `{name}`", "",
             f"{r['n']} records with a hidden system prompt, split {r.get('split', '?')}, "
             f"decoder `{r.get('decoder', '?')}`; asked \"{r['question']}\". The true prompt is "
             f"ranked among {r.get('choices', '?')} prompts of its family (chance "
             f"{r['chance']:.3f}) by {r['ranked_by']}.", ""]
    lines += table(["condition", "top-1", "95% CI", "correct / n", "McNemar p vs activations"],
                   [[c, pct(s), ci(s), f"{s['correct']} / {s['n']}", pval(pvals.get(c))]
                    for c, s in top1.items()])
    plot = f"recovery-{slug(name)}.png"
    bar_plot(out / plot, f"system-prompt recovery, top-1 ({name})", conds,
             [top1[c] for c in conds], chance=r["chance"])
    lines += ["", f"![top-1 accuracy per condition]({plot})", ""]
    rouge = r.get("rouge_l")
    if rouge:
        spv = rouge.get("sign_test_p_vs_activations", {})
        ref = rouge["another_prompt_of_the_family"]
        lines += ["ROUGE-L F1 of the greedy answer against the true prompt (mean, 95% normal "
                  "interval; exact sign test against `activations`). Another prompt of the "
                  f"same family scores {ref['mean']:.3f} against the true one.", ""]
        lines += table(["condition", "ROUGE-L", "95% CI", "sign test p vs activations"],
                       [[c, f"{s['mean']:.3f}", f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]",
                         pval(spv.get(c))] for c, s in rouge["conditions"].items()])
        lines.append("")
    lines += ["**by family**", ""]
    lines += table(["family", "n"] + [f"top-1 {c}" for c in conds]
                   + ([f"ROUGE-L {c}" for c in conds] if rouge else []),
                   [[f, str(g["n"])] + [pct(g["top1"][c]) for c in conds]
                    + ([f"{g['rouge_l'][c]['mean']:.3f}" for c in conds] if rouge else [])
                    for f, g in r["by_family"].items()])
    examples = [i for i in r.get("items", []) if "answer" in i["conditions"].get(
        "activations", {})][:5]
    if examples:
        lines += ["", "First answers (real activations):", ""]
        lines += table(["true prompt", "answer", "ROUGE-L"],
                       [[_cell(i["prompt"]), _cell(i["conditions"]["activations"]["answer"]),
                         f"{i['conditions']['activations']['rouge_l']:.2f}"] for i in examples])
    return lines + [""]


def _cell(text: str, width: int = 120) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


SECTIONS = {"persona": persona_section, "recovery": recovery_section,
            "relations": relations_section,
            "heldout": heldout_section, "classification": classification_section}


def write_report(runs, out) -> Path:
    """Write ``out/report.md`` and its plots for the given RUN files; returns the report path."""
    loaded = [(Path(p), *load_run(p)) for p in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# latentqa evaluation report", "",
             "Every number comes with the controls run beside it on the same examples; "
             "intervals are 95% Wilson intervals. See docs/evaluation.md for what each "
             "condition rules out.", "", "Runs: " + ", ".join(f"`{p}`" for p, _, _ in loaded),
             ""]
    names = _names([p for p, _, _ in loaded])
    for (path, kind, result), name in zip(loaded, names):
        try:
            lines += SECTIONS[kind](name, result, out)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
            raise ReportError(f"{path}: looks like an eval {kind} result but is missing or has "
                              f"a malformed part ({type(e).__name__}: {e})") from None
    report = out / "report.md"
    write_text(report, "\n".join(lines).rstrip() + "\n")
    return report


def _names(paths: list[Path]) -> list[str]:
    """Short, distinct names for the runs: file stems, numbered when two clash."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}-{i + 1}" for i, s in enumerate(stems)]
