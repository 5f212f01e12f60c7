"""The measurements of one steering run, as JSON and Markdown, beside its generations."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .adapter import STEER_ADAPTER
from .generate import generate_replies
from .measure import perplexity, reply_logprobs, sentiment, topic_rate
from .prompts import builtin_prompts

FACTS = Path(__file__).parent / "prompts" / "facts.json"


def side_effects(model, tokenizer, *, adapter: str = STEER_ADAPTER) -> dict:
    """Perplexity of neutral reference text (as replies) and fixed factual answers, for the
    plain target and the steered one."""
    reference = builtin_prompts("reference")
    dialogs = [[{"role": "user", "content": "Tell me something."},
                {"role": "assistant", "content": t}] for t in reference]
    out = {}
    for name, which in (("before", None), ("after", adapter)):
        scores = reply_logprobs(model, tokenizer, dialogs, adapter=which)
        total, tokens = sum(s for s, _ in scores), sum(n for _, n in scores)
        out[f"reference_perplexity_{name}"] = float(2.718281828459045 ** (-total / tokens))
    facts = json.loads(FACTS.read_text(encoding="utf-8"))
    questions = [q for q, _ in facts]
    rows = []
    before = generate_replies(model, tokenizer, questions, max_new_tokens=24)
    after = generate_replies(model, tokenizer, questions, adapter=adapter, max_new_tokens=24)
    for (q, expected), b, a in zip(facts, before, after):
        pattern = re.compile(rf"\b({expected})\b", re.IGNORECASE)
        rows.append({"question": q, "before": b, "after": a,
                     "correct_before": bool(pattern.search(b)),
                     "correct_after": bool(pattern.search(a))})
    out["facts"] = rows
    out["facts_correct_before"] = sum(r["correct_before"] for r in rows)
    out["facts_correct_after"] = sum(r["correct_after"] for r in rows)
    return out


def measure(model, tokenizer, prompts: list[str], before: list[str], after: list[str], *,
            topic_keywords=None, seed: int = 0) -> dict:
    """Every measurement of a run that has its adapter loaded as ``steer``."""
    result = {"eval_prompts": len(prompts),
              "sentiment": sentiment(before, after, seed=seed),
              "fluency": {"before": perplexity(model, tokenizer, prompts, before),
                          "after": perplexity(model, tokenizer, prompts, after)},
              "side_effects": side_effects(model, tokenizer)}
    if topic_keywords:
        result["topic"] = {"keywords": list(topic_keywords),
                           "before": topic_rate(before, topic_keywords),
                           "after": topic_rate(after, topic_keywords)}
    return result


def _ci(d):
    return f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"


def markdown(summary: dict, m: dict) -> str:
    lines = [f"# Steering run: {summary['control']}", "",
             f"Target `{summary['target']}`, decoder `{summary['decoder']}`, "
             + (f"read layers {', '.join(map(str, summary['read_layers']))} together"
                if summary.get("read_layers") else f"read layer {summary['read_layer']}")
             + f", {summary['steps']} steps"
             f"{' (per-layer loss)' if summary['per_layer'] else ''}, {summary['seconds']:.0f} s; "
             f"control loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}. "
             f"{m['eval_prompts']} held-out evaluation prompts.", "",
             "| measure | before | after |", "|---|---|---|"]
    if "topic" in m:
        t = m["topic"]
        lines.append(f"| topic mention rate | {t['before']['rate']:.3f} {_ci(t['before'])} | "
                     f"{t['after']['rate']:.3f} {_ci(t['after'])} |")
    s = m["sentiment"]
    lines.append(f"| VADER compound (mean) | {s['before']['mean']:.3f} {_ci(s['before'])} | "
                 f"{s['after']['mean']:.3f} {_ci(s['after'])} |")
    f = m["fluency"]
    lines.append(f"| perplexity of responses under the unsteered target | "
                 f"{f['before']['perplexity']:.2f} | {f['after']['perplexity']:.2f} |")
    e = m["side_effects"]
    lines.append(f"| perplexity of neutral reference text | "
                 f"{e['reference_perplexity_before']:.2f} | "
                 f"{e['reference_perplexity_after']:.2f} |")
    lines.append(f"| factual questions answered correctly | {e['facts_correct_before']}/"
                 f"{len(e['facts'])} | {e['facts_correct_after']}/{len(e['facts'])} |")
    lines += ["", f"Sentiment shift (after - before, paired): {s['shift']['mean']:+.3f} "
              f"{_ci(s['shift'])}.", "", "Topic keywords: "
              + (", ".join(m["topic"]["keywords"]) if "topic" in m else "none given") + "."]
    return "\n".join(lines) + "\n"
