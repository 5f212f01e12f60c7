"""Where a training step's time goes, on whatever device the trainer picks (run it on a GPU).

Builds the trainer's own ``Recipe`` from a config, runs a few warm-up steps, then times
``Recipe.train_step`` over the next steps under torch's profiler and Python's cProfile. On a GPU
the telling number is ``device_busy_share``: the kernels' summed time over the steps' wall time.
Far below 1, the step waits on Python and kernel launches, not on arithmetic, and a bigger chip
buys little; the cProfile rows then say which Python code to cut.

Prints JSON: steps_per_s, examples_per_s, device_busy_share (null on a CPU), top_python (by
cumulative time, share of the profiled wall time), top_ops (by self device time on a GPU, self CPU
time on a CPU).
Usage: python benchmarks/train_step_profile.py [--config configs/smollm2-135m-v9.yaml]
       [--warmup 5] [--steps 10] [key=value ...]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import torch

from latentqa.train import build_config
from latentqa.train.config import read_config_file
from latentqa.train.distributed import Distributed
from latentqa.train.recipe import Recipe, sample_layer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smollm2-135m-v9.yaml")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    raw = read_config_file(args.config)
    raw.update(dict(o.split("=", 1) for o in args.overrides))
    raw.update(max_minutes=0, max_steps=args.warmup + args.steps)
    cfg = build_config(raw)
    dist = Distributed(cfg.device)
    recipe = Recipe(cfg, dist, log=lambda *a, **k: None)
    recipe.setup_data()
    recipe.setup_model()
    recipe.setup_optimizer()
    batches = recipe.batches(0)
    cuda = recipe.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(k: int) -> int:
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        return recipe.train_step(micro, sample_layer(cfg, k))["examples"]

    for k in range(args.warmup):
        step(k)
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    python = cProfile.Profile()
    examples = 0
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        python.enable()
        for k in range(args.warmup, args.warmup + args.steps):
            examples += step(k)
        sync()
        python.disable()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    if cuda:
        busy = sum(e.self_device_time_total for e in events) / 1e6 / wall
        key = lambda e: e.self_device_time_total  # noqa: E731
    else:
        busy, key = None, (lambda e: e.self_cpu_time_total)
    stats = pstats.Stats(python)
    rows = sorted(((v[3], f"{k[0].rsplit('/', 2)[-1]}:{k[1]}({k[2]})")
                   for k, v in stats.stats.items()), reverse=True)
    print(json.dumps({
        "device": str(recipe.device), "precision": recipe.precision, "config": args.config,
        "batch_rows": cfg.batch_size, "steps": args.steps,
        "steps_per_s": args.steps / wall, "examples_per_s": examples / wall,
        "device_busy_share": busy,
        "top_python": [{"function": name, "cumulative_share": round(t / wall, 3)}
                       for t, name in rows[:25]],
        "top_ops": [{"op": e.key, "count": e.count, "share": round(key(e) / 1e6 / wall, 3)}
                    for e in sorted(events, key=key, reverse=True)[:15]],
    }, indent=1))
    dist.close()


if __name__ == "__main__":
    main()
