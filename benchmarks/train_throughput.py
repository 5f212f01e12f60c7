"""Decoder training throughput: our trainer's step against the reference implementation's.

Both sides train on the same LatentQA examples, batch 4, in one process, alternating so that
machine noise hits both alike:
  ours      one copy of the weights (LoRA on the target; adapter off reads the target), the
            target forward stops after the read block, log-probs only at labelled positions,
            length-grouped batches, the trainer's precision (bf16 autocast where the CPU has
            bf16 instructions, fp32 otherwise);
  baseline  what the reference does: fp32, separate target and decoder copies, the full
            target forward (all blocks and the lm_head, hidden states of every layer),
            logits over the whole decoder sequence, batches in random order.
Peak memory is measured in a fresh child process per side (RSS high-water mark). Our side is
also run with gradient checkpointing (the trainer's option), which trades speed for memory.
The activation cache is timed too: a step whose target activations are cached against one
that computes them.

Prints JSON with speedup, memory_ratio, tokens_per_s, cache_step_s.
Usage: python benchmarks/train_throughput.py [--steps 6] [--batch 4] [--data DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "latentqa"


def setup(args):
    import latentqa
    from latentqa.data import Collator, LatentQADataset, LengthGroupedBatchSampler, load_data

    files = [str(Path(args.data) / f) for f in ("system.json", "stimulus.json", "qa.json")]
    data = load_data(files)
    loaded = latentqa.load_model(args.model)
    dataset = LatentQADataset(data, loaded.tokenizer)
    rng = random.Random(0)
    pool = rng.sample(range(len(dataset)), args.batch * args.steps * 4)
    grouped = LengthGroupedBatchSampler([dataset.lengths[i] for i in pool], args.batch,
                                        num_replicas=1, rank=0, seed=0, group_batches=4)
    ours = [[pool[i] for i in b] for b in grouped][: args.steps]
    used = [i for b in ours for i in b]
    shuffled = used[:]
    rng.shuffle(shuffled)  # the same examples, in random order as the reference batches them
    baseline = [shuffled[i:i + args.batch] for i in range(0, len(shuffled), args.batch)]
    return loaded, dataset, Collator(loaded.tokenizer), ours, baseline


class Ours:
    def __init__(self, loaded, layer, write_layer, precision, checkpointing=False):
        import latentqa

        self.model = latentqa.add_decoder_adapter(loaded.model)
        if checkpointing:  # as the trainer's gradient_checkpointing option does
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        self.model.train()
        self.layer, self.write_layer, self.precision = layer, write_layer, precision
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                     lr=1e-4)
        self.cache = {}

    def step(self, batch, keys=None):
        from latentqa.decoding import decoder_loss_sum, read_activations
        from latentqa.train.loop import autocast

        with autocast(self.precision, torch.device("cpu")):
            if keys is not None and all(k in self.cache for k in keys):
                vectors = [self.cache[k] for k in keys]
            else:
                vectors = read_activations(self.model, batch["target_input_ids"],
                                           batch["target_attention_mask"], batch["read_mask"],
                                           self.layer)
                if keys is not None:
                    self.cache.update(zip(keys, vectors))
            loss, n = decoder_loss_sum(self.model, batch, torch.cat(vectors),
                                       write_layer=self.write_layer)
            (loss / n).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Baseline:
    """The reference's layout: two model copies, full forwards, full-sequence logits, fp32."""

    def __init__(self, loaded, layer, write_layer):
        import latentqa

        self.target = loaded.model.eval()
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.decoder = latentqa.add_decoder_adapter(copy.deepcopy(loaded.model))
        self.decoder.train()
        self.layer, self.write_layer = layer, write_layer
        self.opt = torch.optim.AdamW([p for p in self.decoder.parameters() if p.requires_grad],
                                     lr=1e-4)

    def step(self, batch):
        import latentqa

        with torch.no_grad():
            out = self.target(input_ids=batch["target_input_ids"],
                              attention_mask=batch["target_attention_mask"],
                              output_hidden_states=True)
        hidden = out.hidden_states[self.layer + 1]
        vectors = torch.cat(latentqa.gather(hidden, batch["read_mask"]))
        with latentqa.inject(self.decoder, self.write_layer, batch["placeholder_mask"], vectors):
            loss = self.decoder(input_ids=batch["decoder_input_ids"],
                                attention_mask=batch["decoder_attention_mask"],
                                labels=batch["labels"]).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def peak_rss() -> int:
    """This process's RSS high-water mark. VmHWM, not getrusage: ru_maxrss survives exec, so a
    child would report its parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def tokens(batch) -> int:
    return int(batch["target_attention_mask"].sum() + batch["decoder_attention_mask"].sum())


def peak_child(side: str, args) -> int:
    cmd = [sys.executable, __file__, "--child", side, "--steps", str(args.steps), "--batch",
           str(args.batch), "--data", str(args.data), "--model", args.model]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--child", choices=["ours", "ours_checkpointing", "baseline"])
    args = ap.parse_args()

    from latentqa.train.config import TrainConfig
    from latentqa.train.loop import resolve_precision

    precision = resolve_precision(TrainConfig(), torch.device("cpu"))
    loaded, dataset, collate, our_batches, base_batches = setup(args)
    batches = {"ours": [collate([dataset[i] for i in b]) for b in our_batches],
               "baseline": [collate([dataset[i] for i in b]) for b in base_batches]}

    if args.child:
        if args.child == "baseline":
            side = Baseline(loaded, args.layer, 0)
        else:
            side = Ours(loaded, args.layer, 0, precision,
                        checkpointing=args.child == "ours_checkpointing")
        for b in batches["baseline" if args.child == "baseline" else "ours"]:
            side.step(b)
        print(json.dumps({"peak_rss_bytes": peak_rss()}))
        return

    ours = Ours(copy.deepcopy(loaded), args.layer, 0, precision)  # its own copy, for the adapter
    ours_gc = Ours(copy.deepcopy(loaded), args.layer, 0, precision, checkpointing=True)
    baseline = Baseline(loaded, args.layer, 0)
    sides = {"ours": (ours, "ours"), "ours_checkpointing": (ours_gc, "ours"),
             "baseline": (baseline, "baseline")}
    for side, data in sides.values():  # warm-up
        side.step(batches[data][0])
    seconds = dict.fromkeys(sides, 0.0)
    for k in range(args.steps):
        for name, (side, data) in sides.items():
            t = time.perf_counter()
            side.step(batches[data][k])
            seconds[name] += time.perf_counter() - t
    n_tokens = {name: sum(tokens(b) for b in batches[data]) for name, (_, data) in sides.items()}
    tps = {side: n_tokens[side] / seconds[side] for side in seconds}
    del ours_gc

    # the activation cache: the same batches, first filling the cache, then reading it
    keys = [[("ex", i) for i in b] for b in our_batches]
    cache_times = {"off": [], "on": []}
    for b, k in zip(batches["ours"], keys):
        t = time.perf_counter()
        ours.step(b, keys=k)  # computes (and fills the cache): the cost with the cache off
        cache_times["off"].append(time.perf_counter() - t)
    for b, k in zip(batches["ours"], keys):
        t = time.perf_counter()
        ours.step(b, keys=k)  # all hits
        cache_times["on"].append(time.perf_counter() - t)

    del baseline, ours
    peaks = {side: peak_child(side, args) for side in ("ours", "ours_checkpointing", "baseline")}
    print(json.dumps({
        "model": args.model, "batch": args.batch, "steps": args.steps,
        "precision_ours": precision, "precision_baseline": "fp32",
        "tokens": n_tokens,
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "speedup": round(tps["ours"] / tps["baseline"], 3),
        "peak_rss_bytes": peaks,
        "memory_ratio": round(peaks["ours"] / peaks["baseline"], 3),
        # the trainer's gradient_checkpointing option: memory for recomputation
        "checkpointing": {
            "speedup": round(tps["ours_checkpointing"] / tps["baseline"], 3),
            "memory_ratio": round(peaks["ours_checkpointing"] / peaks["baseline"], 3)},
        "cache_step_s": {k: round(sum(v) / len(v), 3) for k, v in cache_times.items()},
        "cache_speedup": round(sum(cache_times["off"]) / sum(cache_times["on"]), 3),
        "torch_threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
