"""Cost per example of multi-layer reads (``read_together``) beside one read layer.

Two trainer recipes on the same training rows (the shared data's records, all QA pairs of a
record in one row), identical but for the read: ``single`` reads ``--layer`` (one sampled layer
per step, as training does today), ``together`` reads every layer of ``--layers`` at once (one
pass of the target up to the deepest, three placeholder groups in every probe). Their steps are
interleaved, batch by batch and in alternating order, so that machine noise hits both alike.
Timed: ``Recipe.train_step`` whole (target read, decoder forward and backward, optimizer), and
the target read alone (``Recipe.read``, no cache); an example is one (record, QA pair).

Prints JSON: per variant seconds per example (median over batches of step seconds / examples),
examples/s, target-read seconds per example, decoder tokens per example (each QA pair's whole
probe, and the packed rows' tokens, the shared prefix once), and the ratios together / single.
Usage: python benchmarks/multi_layer_cost.py [--records 12] [--batch 2] [--layer 14]
       [--layers 7 14 22] [--model smollm2-135m] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "latentqa"
FILES = ("system.json", "control.json", "stimulus.json", "stimulus_completion.json", "qa.json")


def recipe_for(args, layers: list[int], together: bool):
    from latentqa.train.config import TrainConfig
    from latentqa.train.distributed import Distributed
    from latentqa.train.recipe import Recipe

    cfg = TrainConfig(model=args.model, data=[str(Path(args.data) / f) for f in FILES],
                      read_layers=layers, read_together=together, batch_size=args.batch,
                      lr=2e-4, warmup_steps=1, schedule="constant", precision=args.precision,
                      out_dir=tempfile.mkdtemp(prefix="lqa-multi-layer-"))
    recipe = Recipe(cfg, Distributed("cpu"), log=lambda *a, **k: None)
    recipe.setup_data()
    recipe.setup_model()
    recipe.setup_optimizer()
    return recipe


def packed_length(probes) -> int:
    """Tokens of a record's packed decoder row (its shared prefix once, then each QA tail)."""
    from latentqa.decoding import Group, _pack, _shared_length

    group = Group(probes)
    return len(_pack(group, _shared_length(group))[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--records", type=int, default=12)
    p.add_argument("--batch", type=int, default=2, help="rows (records) per step")
    p.add_argument("--layer", type=int, default=14)
    p.add_argument("--layers", type=int, nargs="+", default=[7, 14, 22])
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    torch.manual_seed(0)
    variants = {"single": (recipe_for(args, [args.layer], False), args.layer),
                "together": (recipe_for(args, args.layers, True), tuple(args.layers))}
    rows = variants["single"][0].rows
    chosen = random.Random(0).sample(range(len(rows)), args.records)
    batches = [chosen[i:i + args.batch] for i in range(0, len(chosen), args.batch)]
    out = {name: {"step_s_per_example": [], "read_s_per_example": [], "examples": 0,
                  "decoder_tokens": 0, "row_tokens": 0} for name in variants}
    for k, ids in enumerate(batches):
        order = list(variants) if k % 2 == 0 else list(reversed(variants))
        for name in order:
            recipe, layer = variants[name]
            batch = recipe.collate.rows([recipe.rows[i] for i in ids])
            pairs = sum(len(p) for p in batch["probes"])
            t = time.perf_counter()
            recipe.read(batch, layer)
            read_s = time.perf_counter() - t
            t = time.perf_counter()
            recipe.train_step([ids], layer)
            step_s = time.perf_counter() - t
            o = out[name]
            o["step_s_per_example"].append(step_s / pairs)
            o["read_s_per_example"].append(read_s / pairs)
            o["examples"] += pairs
            o["decoder_tokens"] += sum(len(p.input_ids) for row in batch["probes"] for p in row)
            o["row_tokens"] += sum(packed_length(row) for row in batch["probes"])
    result = {"model": args.model, "records": args.records, "batch_rows": args.batch,
              "single_layer": args.layer, "together_layers": args.layers,
              "threads": torch.get_num_threads()}
    for name, o in out.items():
        step = statistics.median(o["step_s_per_example"])
        result[name] = {"s_per_example": round(step, 4),
                        "examples_per_s": round(1 / step, 3),
                        "target_read_s_per_example": round(
                            statistics.median(o["read_s_per_example"]), 4),
                        "decoder_tokens_per_example": round(o["decoder_tokens"]
                                                            / o["examples"], 1),
                        "packed_row_tokens_per_example": round(o["row_tokens"]
                                                               / o["examples"], 1),
                        "examples": o["examples"]}
    s, t = result["single"], result["together"]
    result["ratio_together_vs_single"] = {
        "s_per_example": round(t["s_per_example"] / s["s_per_example"], 3),
        "target_read": round(t["target_read_s_per_example"] / s["target_read_s_per_example"], 3),
        "decoder_tokens": round(t["decoder_tokens_per_example"]
                                / s["decoder_tokens_per_example"], 3),
        "packed_row_tokens": round(t["packed_row_tokens_per_example"]
                                   / s["packed_row_tokens_per_example"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
