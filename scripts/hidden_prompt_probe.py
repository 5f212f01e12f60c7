"""Is a hidden system prompt in the target's activations at all? A linear-probe reference.

The decoder reads the user turn of a dialog whose system prompt is masked out; whatever it can
learn about the prompt must reach those tokens through attention. This study asks a logistic
regression (``evaluation.probe.LinearProbe``) the same question at every depth, so a decoder's
failure can be told apart from the activations not holding the answer (Li et al.'s critique).

Data: the shared data's unlabeled system prompts, each with a user turn. The attribute is the
prompt's category (the label's first two words, such as ``goal-emotion`` or ``persona-job``;
the categories with at least ``--min-per-category`` prompts). Prompts are split into train and
test (no prompt is in both), and each is read three ways, always over the same tokens (the
user turn and the assistant header, the decoder's read span):

  paired     the prompt with its own user turn: what the decoder reads in training
  text       the user turn alone, no system prompt: what the text reveals (the user turns were
             written for their prompts, so they hint at the category)
  swapped    the prompt with the user turn of another prompt of another category: the text
             carries nothing about the category, only the hidden prompt can

  filler     the prompt replaced by neutral text of the same length in tokens, with the
             paired user turn: the user tokens sit at the same positions, so this is what the
             prompt's length alone (and the text) tells

Features are the mean of the read vectors and the last read vector (the assistant header's,
just before a reply). ``paired`` above ``text`` is information from the hidden prompt; ``swapped``
above chance is the same, with the text's hint removed.

    python scripts/hidden_prompt_probe.py --json runs/probe/hidden.json

With ``--ood DIR`` (``evals/ood-hidden-prompts``) it asks instead which of that set's
behaviours is in force: each behaviour appears under three user turns shared with other
behaviours, so a probe trained on two of them and tested on the third (three folds) can only
succeed through the hidden prompt; the ``text`` view (the user turn alone) and the ``filler``
view (the prompt's length without its content) are its controls.

With ``--recovery DIR`` it gives a linear reference for ``eval recovery``'s ranking on that set
at every block asked (``evaluation.linear_recovery``'s map and ranking; ``latentqa eval
recovery --linear-reference`` is the same reference at a decoder's read layer, beside it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from latentqa import capture, gather, load_model
from latentqa.batching import pad_id, pad_tokens
from latentqa.evaluation.linear_recovery import filler, fit_map, ranked_first
from latentqa.evaluation.probe import LinearProbe
from latentqa.files import write_json
from latentqa.selection import render_read

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/latentqa/unlabeled_system.json"


def category(label: str) -> str:
    return "-".join(label.split("-")[:2])


def pick(records, limit: int, min_per_category: int, seed: int):
    counts = Counter(category(r["label"]) for r in records)
    kept = [r for r in records if counts[category(r["label"])] >= min_per_category]
    random.Random(seed).shuffle(kept)
    return kept[:limit] if limit else kept


def views(records, seed: int, tokenizer):
    """Per record, the four dialogs: paired, text (no system prompt), swapped, filler."""
    rng = random.Random(seed + 1)
    out = []
    for r in records:
        while True:
            other = rng.choice(records)
            if category(other["label"]) != category(r["label"]):
                break
        user = {"role": "user", "content": r["stimulus_user"]}
        out.append({
            "paired": [{"role": "system", "content": r["system"]}, user],
            "text": [user],
            "swapped": [{"role": "system", "content": r["system"]},
                        {"role": "user", "content": other["stimulus_user"]}],
            "filler": [{"role": "system", "content": filler(tokenizer, r["system"])}, user],
        })
    return out


@torch.no_grad()
def features(model, tokenizer, dialogs, layers, batch_size: int):
    """{layer: [n, 2H]}: mean and last read vector of each dialog at each layer."""
    rendered = []
    for d in dialogs:
        r, mask = render_read(tokenizer, d)
        rendered.append((torch.tensor(r.input_ids), mask))
    out = {k: [None] * len(dialogs) for k in layers}
    order = sorted(range(len(dialogs)), key=lambda i: len(rendered[i][0]))
    pid = pad_id(tokenizer)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        ids, attn, masks = pad_tokens([rendered[i] for i in rows], pid)
        hidden = capture(model, ids, attn, layers=layers)
        for k in layers:
            for i, v in zip(rows, gather(hidden[k], masks)):
                v = v.float()
                out[k][i] = torch.cat([v.mean(0), v[-1]]).numpy()
    return {k: np.stack(v) for k, v in out.items()}


def ood_identity(model, tokenizer, folder: str, layers, batch_size: int, seed: int) -> dict:
    """Which behaviour, among the set's labels, from the read vectors of an unseen user turn."""
    records = json.loads((Path(folder) / "system.json").read_text())
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(r["label"], []).append(i)
    folds = min(len(v) for v in by_label.values())
    dialogs = {"hidden": [[{"role": "system", "content": r["system"]},
                           {"role": "user", "content": r["stimulus_user"]}] for r in records],
               "text": [[{"role": "user", "content": r["stimulus_user"]}] for r in records],
               "filler": [[{"role": "system", "content": filler(tokenizer, r["system"])},
                           {"role": "user", "content": r["stimulus_user"]}] for r in records]}
    feats = {v: features(model, tokenizer, d, layers, batch_size) for v, d in dialogs.items()}
    y = np.array([r["label"] for r in records], dtype=object)
    out = {"data": folder, "behaviours": len(by_label), "records": len(records),
           "folds": folds, "chance": 1 / len(by_label), "accuracy": {}}
    for k in layers:
        row = {}
        for v in feats:
            hits = []
            for f in range(folds):
                test = [ids[f] for ids in by_label.values()]
                train = sorted(set(range(len(records))) - set(test))
                probe = LinearProbe(c=0.1, seed=seed).fit(feats[v][k][train], y[train])
                hits += list(np.array(probe.predict(feats[v][k][test]), dtype=object) == y[test])
            row[v] = float(np.mean(hits))
        out["accuracy"][str(k)] = row
        print(f"layer {k:2d}  " + "  ".join(f"{v} {a:.3f}" for v, a in row.items()), flush=True)
    return out


def embed(model, tokenizer, texts, layers, batch_size: int) -> dict:
    """{layer: [n, H]}: a text's own representation, the mean read vector of the text given to
    the target as a user turn (the space the recovery probe maps activations into)."""
    feats = features(model, tokenizer, [[{"role": "user", "content": t}] for t in texts],
                     layers, batch_size)
    return {k: v[:, :v.shape[1] // 2] for k, v in feats.items()}


def recovery_reference(model, tokenizer, folder: str, train_path: str, limit: int, layers,
                       batch_size: int, seed: int) -> dict:
    """A linear reference for ``eval recovery``'s ranking (the true hidden prompt among five of
    its family) on ``folder``, with the same items and shuffled donors: a ridge regression,
    fitted on the unlabeled prompts (none of them in ``folder``), maps a dialog's read vectors
    to its prompt's own representation (``embed``); each item's candidates are ranked by cosine
    to the prediction. Controls: the same map fitted and applied on the user turn alone
    (``text_only``), the real map on another record's activations (``shuffled``) and on the
    record with its prompt replaced by neutral text of as many tokens (``filler``: what the
    prompt's length alone tells); an
    in-distribution check ranks held-out unlabeled prompts among four of their family."""
    from latentqa.data import load_data
    from latentqa.evaluation.recovery import build_items, donors
    from latentqa.stats import mcnemar_exact, summarize

    data = load_data([folder], system_recovery=True)
    items = build_items(data, choices=5, seed=seed)
    donor = donors(items, data, seed)
    pool = json.loads(Path(train_path).read_text())
    random.Random(seed).shuffle(pool)
    pool = pool[:limit] if limit else pool
    n_val = len(pool) // 5
    train, val = pool[n_val:], pool[:n_val]

    def hidden(system, user):
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def read(dialogs):
        return features(model, tokenizer, dialogs, layers, batch_size)

    x = {"hidden": read([hidden(r["system"], r["stimulus_user"]) for r in pool]),
         "text": read([[{"role": "user", "content": r["stimulus_user"]}] for r in pool])}
    y = embed(model, tokenizer, [r["system"] for r in pool], layers, batch_size)
    records = [data.records[i.record] for i in items]
    test = {"hidden": read([list(r.messages) for r in records]),
            "donor": read([list(data.records[d].messages) for d in donor]),
            "text": read([[m for m in r.messages if m["role"] != "system"] for r in records]),
            "filler": read([[{**m, "content": filler(tokenizer, m["content"])}
                             if m["role"] == "system" else m for m in r.messages]
                            for r in records])}
    cand_texts = sorted({c for i in items for c in i.candidates})
    cand = embed(model, tokenizer, cand_texts, layers, batch_size)
    where = {t: j for j, t in enumerate(cand_texts)}
    # in distribution: each held-out unlabeled prompt among four others of its family
    rng = random.Random(seed + 2)
    family = [r["label"].split("-")[0] for r in val]
    val_sets = []
    for j in range(len(val)):
        others = [o for o in range(len(val)) if o != j and family[o] == family[j]
                  and val[o]["system"] != val[j]["system"]]
        picked = rng.sample(others, 4) + [j]
        rng.shuffle(picked)
        val_sets.append((picked, picked.index(j)))
    tr, va = slice(n_val, None), slice(0, n_val)
    out = {"data": folder, "train_prompts": len(train), "in_distribution_items": len(val),
           "items": len(items), "chance": 0.2,
           "ranked_by": "cosine to a ridge map of the read vectors (mean and last) into the "
                        "prompt's own mean representation",
           "layers": {}}
    for k in layers:
        maps = {v: fit_map(x[v][k][tr], y[k][tr]) for v in ("hidden", "text")}
        centre = y[k][tr].mean(0)
        cands = [np.stack([cand[k][where[c]] for c in i.candidates]) for i in items]
        correct = [i.correct for i in items]
        hits = {"activations": ranked_first(maps["hidden"].predict(test["hidden"][k]), cands,
                                             correct, centre),
                "shuffled": ranked_first(maps["hidden"].predict(test["donor"][k]), cands,
                                          correct, centre),
                "text_only": ranked_first(maps["text"].predict(test["text"][k]), cands,
                                           correct, centre),
                "filler": ranked_first(maps["hidden"].predict(test["filler"][k]), cands,
                                        correct, centre)}
        row = {c: summarize(h) for c, h in hits.items()}
        row["mcnemar_p_vs_activations"] = {
            c: mcnemar_exact(hits["activations"], h) for c, h in hits.items()
            if c != "activations"}
        vy = y[k][va]
        row["in_distribution"] = {
            v: float(np.mean(ranked_first(maps[v].predict(x[v][k][va]),
                                           [vy[p] for p, _ in val_sets],
                                           [c for _, c in val_sets], centre)))
            for v in ("hidden", "text")}
        out["layers"][str(k)] = row
        print(f"layer {k:2d}  OOD " + "  ".join(
            f"{c} {row[c]['accuracy']:.3f}" for c in hits) + "  in-distribution " + "  ".join(
            f"{v} {a:.3f}" for v, a in row["in_distribution"].items()), flush=True)
    return out


def finish(result: dict, start: float, json_path) -> int:
    result["seconds"] = time.perf_counter() - start
    if json_path:
        write_json(json_path, result)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=1500, help="prompts used (0: all)")
    ap.add_argument("--min-per-category", type=int, default=180)
    ap.add_argument("--layers", default="4,8,11,14,17,20,23")
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ood", metavar="DIR", help="behaviour identity on this set instead")
    ap.add_argument("--recovery", metavar="DIR",
                    help="a linear reference for `eval recovery` on this set instead, its map "
                         "fitted on --data")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    layers = [int(x) for x in args.layers.split(",")]
    if args.recovery:
        loaded = load_model(args.model)
        result = recovery_reference(loaded.model.eval(), loaded.tokenizer, args.recovery,
                                    args.data, args.limit, layers, args.batch_size, args.seed)
        return finish(result, start, args.json)
    if args.ood:
        loaded = load_model(args.model)
        result = ood_identity(loaded.model.eval(), loaded.tokenizer, args.ood, layers,
                              args.batch_size, args.seed)
        return finish(result, start, args.json)
    records = pick(json.loads(Path(args.data).read_text()), args.limit,
                   args.min_per_category, args.seed)
    labels = [category(r["label"]) for r in records]
    n_test = int(len(records) * args.test_fraction)
    test, train = list(range(n_test)), list(range(n_test, len(records)))
    loaded = load_model(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    dialogs = views(records, args.seed, tokenizer)
    result = {"data": args.data, "model": args.model, "prompts": len(records),
              "train": len(train), "test": len(test), "categories": dict(Counter(labels)),
              "majority": max(Counter(labels[i] for i in test).values()) / len(test),
              "features": "mean and last read vector (user turn + assistant header)",
              "accuracy": {}}
    feats = {}
    for v in ("paired", "text", "swapped", "filler"):
        feats[v] = features(model, tokenizer, [d[v] for d in dialogs], layers, args.batch_size)
        print(f"read {v} ({time.perf_counter() - start:.0f} s)", flush=True)
    y = np.array(labels, dtype=object)
    for k in layers:
        row = {}
        for v in feats:
            x = feats[v][k]
            probe = LinearProbe(c=0.1, seed=args.seed).fit(x[train], y[train])
            row[v] = float(np.mean(np.array(probe.predict(x[test]), dtype=object) == y[test]))
        result["accuracy"][str(k)] = row
        print(f"layer {k:2d}  " + "  ".join(f"{v} {a:.3f}" for v, a in row.items()), flush=True)
    return finish(result, start, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
