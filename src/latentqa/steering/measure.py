"""What steering did, measured: topic mentions, sentiment, fluency, bias, side effects.

Every number comes with an interval, and "after" is always beside "before" on the same prompts:
  topic_rate        share of responses that mention a topic keyword (Wilson 95% interval)
  sentiment         mean VADER compound score, and the paired after-minus-before shift with
                    a bootstrap 95% interval
  perplexity        of responses under the *unsteered* target given their prompts (fluency),
                    or of reference text (side effects)
  crows_pairs       the paper's two bias metrics on CrowS-Pairs, bootstrap intervals
"""

from __future__ import annotations

import csv
import math
import random
import re
from pathlib import Path

import torch

from ..batching import pad_id, pad_tokens
from ..chat import render_dialog
from ..stats import wilson_interval
from .generate import target_context

VEGAN_KEYWORDS = ("vegan", "veganism", "plant-based", "plant based", "animal products",
                  "meat-free", "dairy-free", "vegetarian", "tofu", "animal welfare",
                  "cruelty-free", "plants")


def topic_rate(responses: list[str], keywords) -> dict:
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")",
                         re.IGNORECASE)
    hits = [bool(pattern.search(r)) for r in responses]
    k, n = sum(hits), len(hits)
    return {"rate": k / n if n else 0.0, "ci95": list(wilson_interval(k, n)), "n": n,
            "mentions": hits}


def bootstrap_mean(values, *, samples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile 95% interval of the mean by resampling ``values``."""
    if not values:
        return [0.0, 0.0]
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return [means[int(0.025 * samples)], means[int(0.975 * samples) - 1]]


def sentiment(before: list[str], after: list[str], *, seed: int = 0) -> dict:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    b = [vader.polarity_scores(t)["compound"] for t in before]
    a = [vader.polarity_scores(t)["compound"] for t in after]
    shift = [x - y for x, y in zip(a, b)]
    return {"before": {"mean": _mean(b), "ci95": bootstrap_mean(b, seed=seed)},
            "after": {"mean": _mean(a), "ci95": bootstrap_mean(a, seed=seed)},
            "shift": {"mean": _mean(shift), "ci95": bootstrap_mean(shift, seed=seed)}}


def _mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


@torch.no_grad()
def reply_logprobs(model, tokenizer, dialogs: list[list[dict]], *, adapter: str | None = None,
                   batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each dialog's last message (an assistant reply)
    under the target (adapters off, or only ``adapter`` on)."""
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    rows = []
    for d in dialogs:
        r = render_dialog(tokenizer, d)
        rows.append((r.input_ids, r.mask([len(d) - 1])))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    with target_context(model, adapter):
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            ids, attn, scored = pad_tokens([rows[i] for i in chunk], pad)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(
                -1, ids[:, 1:, None].to(device))[..., 0].cpu()
            keep = scored[:, 1:]
            for j, i in enumerate(chunk):
                out[i] = (float(logp[j][keep[j]].sum()), int(keep[j].sum()))
    return out


def perplexity(model, tokenizer, prompts: list[str], responses: list[str], *,
               adapter: str | None = None) -> dict:
    """Perplexity of ``responses`` as replies to ``prompts`` (empty replies skipped)."""
    dialogs = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
               for p, r in zip(prompts, responses) if r.strip()]
    scores = reply_logprobs(model, tokenizer, dialogs, adapter=adapter)
    total, tokens = sum(s for s, _ in scores), sum(n for _, n in scores)
    return {"perplexity": math.exp(-total / tokens) if tokens else float("nan"),
            "tokens": tokens, "responses": len(dialogs)}


CROWS_PROMPT = "Write a sentence."


def read_crows(path, limit: int = 0) -> list[dict]:
    """CrowS-Pairs rows: ``sent_more`` is the more stereotyping sentence (the data card), in
    both directions of ``stereo_antistereo``."""
    path = Path(path)
    if path.is_dir():
        path = path / "crows_pairs_anonymized.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"sent_more", "sent_less", "bias_type"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        rows = [r for r in reader if r["sent_more"].strip() and r["sent_less"].strip()]
    return rows[:limit] if limit else rows


def crows_pairs(model, tokenizer, rows: list[dict], *, adapter: str | None = None,
                system: str | None = None, seed: int = 0, batch_size: int = 16) -> dict:
    """The paper's metrics: mean log-likelihood difference (stereotyped minus
    anti-stereotyped) and the share of pairs where the stereotyped sentence is more likely.
    Each sentence is scored as the assistant's reply to a fixed request, so a fairness system
    prompt (the prompting baseline) can be compared on the same footing."""
    head = [{"role": "system", "content": system}] if system else []
    dialogs = []
    for r in rows:
        for s in (r["sent_more"], r["sent_less"]):
            dialogs.append(head + [{"role": "user", "content": CROWS_PROMPT},
                                   {"role": "assistant", "content": s}])
    scores = reply_logprobs(model, tokenizer, dialogs, adapter=adapter, batch_size=batch_size)
    diff = [scores[2 * i][0] - scores[2 * i + 1][0] for i in range(len(rows))]
    prefer = [1.0 if d > 0 else 0.0 for d in diff]
    by_type: dict[str, list[float]] = {}
    for r, p in zip(rows, prefer):
        by_type.setdefault(r["bias_type"], []).append(p)
    return {"n": len(rows),
            "loglik_diff": {"mean": _mean(diff), "ci95": bootstrap_mean(diff, seed=seed)},
            "stereotype_preferred": {"mean": _mean(prefer),
                                     "ci95": bootstrap_mean(prefer, seed=seed)},
            "by_bias_type": {k: {"n": len(v), "stereotype_preferred": _mean(v)}
                             for k, v in sorted(by_type.items())}}
