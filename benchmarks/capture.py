"""Capture cost against a full forward, and the memory of one shared copy against two.

Prints JSON:
  capture_time_ratio   {"25%": t(capture after block k) / t(full forward), "50%": ..., "75%": ...}
  memory_ratio         RSS of target+decoder built here (one base + LoRA) over RSS of two
                       separate model copies (the reference's layout), each measured in a
                       fresh child process after a forward pass of each model. Weights are
                       first materialised in process memory, as they are on a GPU: otherwise
                       two copies mmapped from one safetensors file share pages in the OS
                       page cache and the comparison would say nothing.
  parameter_bytes_ratio  distinct parameter storage bytes, the same comparison exactly.
  load_s               seconds to load the cached default model (after the one-time GGUF
                       conversion), in a fresh process with the imports already done.

Usage: python benchmarks/capture.py [--model smollm2-135m] [--batch 4] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


def materialised(model):
    for p in model.parameters():
        p.data = p.data.clone()
    return model


def child(layout: str, model_spec: str) -> None:
    """Load models the given way and print the resident memory they added."""
    import gc

    import transformers  # noqa: F401  (import time is not load time)

    import latentqa

    t = time.perf_counter()
    tok = latentqa.load_model(model_spec).tokenizer  # also warms imports for what follows
    load_s = time.perf_counter() - t
    ids = torch.tensor([tok("Hello, how are you today?")["input_ids"]])
    gc.collect()
    before = rss_bytes()
    target = materialised(latentqa.load_model(model_spec).model)
    if layout == "shared":
        decoder = latentqa.add_decoder_adapter(target, r=16)
    else:
        decoder = latentqa.add_decoder_adapter(
            materialised(latentqa.load_model(model_spec).model), r=16)
    with torch.inference_mode():
        target(input_ids=ids)
        decoder(input_ids=ids)
    gc.collect()
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for m in (target, decoder) for p in m.parameters()}
    print(json.dumps({"bytes": rss_bytes() - before, "param_bytes": sum(storages.values()),
                      "load_s": load_s}))


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", choices=["shared", "two_copies"])
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model)

    import latentqa

    loaded = latentqa.load_model(args.model)
    model = loaded.model
    n = latentqa.model_info(model).num_blocks
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (args.batch, args.tokens), generator=gen)
    with torch.inference_mode():
        full = best_time(lambda: model(input_ids=ids, use_cache=False), args.repeats)
        ratios, seconds = {}, {"full_forward": full}
        for pct in (25, 50, 75):
            k = max(0, round(n * pct / 100) - 1)
            t = best_time(lambda: latentqa.capture(model, ids, layers=k), args.repeats)
            ratios[f"{pct}%"] = round(t / full, 3)
            seconds[f"capture_{pct}%_block_{k}"] = t

    mem = {}
    for layout in ("shared", "two_copies"):
        out = subprocess.run([sys.executable, __file__, "--child", layout, "--model", args.model],
                             capture_output=True, text=True, check=True).stdout
        mem[layout] = json.loads(out.strip().splitlines()[-1])

    print(json.dumps({
        "model": args.model,
        "num_blocks": n,
        "batch": args.batch,
        "tokens": args.tokens,
        "capture_time_ratio": ratios,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "memory_ratio": round(mem["shared"]["bytes"] / mem["two_copies"]["bytes"], 3),
        "parameter_bytes_ratio": round(
            mem["shared"]["param_bytes"] / mem["two_copies"]["param_bytes"], 3),
        "memory_bytes": {k: {"rss": v["bytes"], "params": v["param_bytes"]}
                         for k, v in mem.items()},
        "load_s": round(min(v["load_s"] for v in mem.values()), 3),
        "torch_threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
