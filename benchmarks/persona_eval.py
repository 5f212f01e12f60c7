"""Persona-evaluation speed: the real ``PersonaEval.run`` over every condition, against scoring
each candidate on its own, in the same process on the same items.

Prints JSON:
  rows_per_s            candidates x conditions scored per second by PersonaEval.run
  baseline_rows_per_s   the same rows scored one candidate per forward pass (no shared prefix,
                        no batching), on the first --baseline-records records
  speedup               rows_per_s / baseline_rows_per_s
  projected_minutes_500 the time 500 records x 5 choices x 5 conditions would take at
                        rows_per_s (the evaluation issue's target: under 20 minutes)
  plus the raw seconds, counts and settings.

Usage: python benchmarks/persona_eval.py [--data ../shared/data/latentqa] [--records 60]
       [--baseline-records 8] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time

import torch

from latentqa.data import latentqa_files, load_data, split_by_label
from latentqa.decoder import as_target
from latentqa.decoding import labelled_logprobs
from latentqa.evaluation.persona import CONDITIONS, PersonaEval, build_items, item_donors
from latentqa.reading import load


def one_by_one(evaluator: PersonaEval, data, items) -> int:
    """Every candidate of every condition as its own forward pass: the naive evaluation."""
    donors = item_donors(items, data, 0)
    acts = evaluator.activations(data, sorted({i.record for i in items} | set(donors)))
    rows = 0
    for k, item in enumerate(items):
        for condition in CONDITIONS:
            group, adapter = evaluator.group(item, condition, acts, donors[k], data)
            for probe in group.probes:
                vecs = None if group.vectors is None else [group.vectors]
                ctx = contextlib.nullcontext() if adapter else as_target(evaluator.model)
                with torch.no_grad(), ctx:
                    labelled_logprobs(evaluator.model, probe.input_ids[None],
                                      torch.ones_like(probe.input_ids)[None], probe.labels[None],
                                      placeholder_mask=probe.placeholder_mask[None]
                                      if vecs else None, vectors=vecs,
                                      write_layer=evaluator.spec.write_layer,
                                      mode=evaluator.spec.injection)
                rows += 1
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/latentqa")
    ap.add_argument("--decoder")
    ap.add_argument("--records", type=int, default=60)
    ap.add_argument("--baseline-records", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    reader = load(args.decoder, batch_size=args.batch_size)
    data = load_data(latentqa_files([args.data]), system_recovery=False)
    spec = reader.spec
    data = split_by_label(data, held_out=spec.extra.get("held_out", 0.1),
                          seed=spec.extra.get("split_seed", 0))[1]
    items = build_items(data, choices=5, seed=0)
    items = sorted(random.Random(0).sample(items, min(args.records, len(items))),
                   key=lambda i: i.record)
    evaluator = PersonaEval(reader, batch_size=args.batch_size)

    evaluator.run(data, items[:4])  # warm-up
    start = time.perf_counter()
    evaluator.run(data, items)
    seconds = time.perf_counter() - start
    rows = sum(len(i.candidates) for i in items) * len(CONDITIONS)

    base_items = items[:args.baseline_records]
    start = time.perf_counter()
    base_rows = one_by_one(evaluator, data, base_items)
    base_seconds = time.perf_counter() - start

    rate, base_rate = rows / seconds, base_rows / base_seconds
    print(json.dumps({
        "rows_per_s": round(rate, 2), "baseline_rows_per_s": round(base_rate, 2),
        "speedup": round(rate / base_rate, 2),
        "projected_minutes_500": round(500 * 5 * len(CONDITIONS) / rate / 60, 1),
        "seconds": round(seconds, 1), "rows": rows, "records": len(items),
        "baseline_seconds": round(base_seconds, 1), "baseline_rows": base_rows,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
