"""Decoder training throughput: the trainer's own ``Recipe.train_step`` against the reference.

Three ways to train on the same LatentQA examples (the shared data's training labels), in one
process, their steps interleaved so that machine noise hits them alike:
  reference       what the paper's code does: fp32, separate target and decoder copies, the
                  full target forward (every block and the lm_head, all hidden states),
                  logits over the whole decoder sequence, one pair per row, random batches;
  one_pair        ``Recipe.train_step`` with ``pack_questions: false``: one copy of the weights
                  (adapter off reads the target), the target stops after the read block,
                  log-probs only at labelled positions, length-grouped batches;
  packed          ``Recipe.train_step`` with ``pack_questions: true`` (the default): a record's
                  QA pairs share one row, its placeholders and the probe's opening run once.
An example is one (record, QA pair); the same examples are timed in every variant, with about
the same number of examples per step. Peak memory (RSS high-water mark) is measured in a fresh
child process per variant over the same steps. The activation cache is timed on the packed
variant: a pass over the batches computing the target's activations, then one reading them.

Quality: fresh decoders are trained with ``one_pair`` and ``packed`` through the trainer's own
loop pieces (sampler, ``train_step``) on the same number of examples from the same
initialisation, then ``Recipe.evaluate`` gives their held-out loss; two seeds each, so that the
seed-to-seed difference within a variant says what noise is.

Prints JSON: examples_per_s, labelled_tokens_per_s, speedup_vs_reference,
speedup_vs_one_pair_per_row, peak_rss_bytes, memory_ratio (packed / reference),
cache_step_s, heldout_loss.
Usage: python benchmarks/train_throughput.py [--records 48] [--batch 4] [--precision auto]
       [--train-examples 240] [--seeds 0 1] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "latentqa"
FILES = ("system.json", "control.json", "stimulus.json", "stimulus_completion.json", "qa.json")


def recipe_for(args, *, pack: bool, seed: int = 0, batch: int | None = None,
               model: bool = True):
    """A trainer recipe set up as ``latentqa train`` sets it up (no run directory written);
    with ``model=False`` its data only (no weights loaded)."""
    from latentqa.train.config import TrainConfig
    from latentqa.train.distributed import Distributed
    from latentqa.train.recipe import Recipe

    cfg = TrainConfig(model=args.model, data=[str(Path(args.data) / f) for f in FILES],
                      read_layers=[args.layer], pack_questions=pack, seed=seed,
                      batch_size=batch or args.batch, lr=2e-4, warmup_steps=5,
                      schedule="constant", eval_examples=args.eval_examples,
                      precision=args.precision,
                      out_dir=tempfile.mkdtemp(prefix="lqa-bench-"))
    recipe = Recipe(cfg, Distributed("cpu"), log=lambda *a, **k: None)
    recipe.setup_data()
    if model:
        recipe.setup_model()
        recipe.setup_optimizer()
    return recipe


def plan(args, packed, one_pair):
    """The same examples for every variant: ``args.records`` training records (rows of the
    packed recipe); packed batches of ``args.batch`` rows, one-pair and reference batches of
    as many pairs as a packed batch holds on average."""
    rng = random.Random(0)
    rows = rng.sample(range(len(packed.rows)), args.records)
    assert packed.train_data.pairs == one_pair.train_data.pairs
    pairs = [p for r in rows for p in packed.rows.pairs(r)]
    per_batch = max(1, round(len(pairs) / len(rows) * args.batch))

    def grouped(ids, lengths, size):  # length-grouped, then in random order, as the sampler
        ids = sorted(ids, key=lambda i: lengths[i])
        out = [ids[i:i + size] for i in range(0, len(ids), size)]
        rng.shuffle(out)
        return out

    shuffled = pairs[:]
    rng.shuffle(shuffled)
    return {"packed": grouped(rows, packed.rows.lengths, args.batch),
            "one_pair": grouped(pairs, one_pair.rows.lengths, per_batch),
            "reference": [shuffled[i:i + per_batch] for i in range(0, len(shuffled),
                                                                   per_batch)]}


class Reference:
    """The reference's layout: two model copies, full forwards, full-sequence logits, fp32."""

    def __init__(self, one_pair, layer: int):
        import latentqa
        from latentqa.data import Collator

        self.dataset, self.collate = one_pair.train_set, Collator(one_pair.tokenizer)
        # two copies: the frozen target and the decoder, as the reference keeps them
        self.target = latentqa.load_model(one_pair.cfg.model).model.eval().requires_grad_(False)
        self.decoder = latentqa.add_decoder_adapter(latentqa.load_model(one_pair.cfg.model).model)
        self.decoder.train()
        self.layer = layer
        self.opt = torch.optim.AdamW([p for p in self.decoder.parameters() if p.requires_grad],
                                     lr=2e-4)

    def step(self, pairs):
        import latentqa
        from latentqa.data import IGNORE_INDEX

        batch = self.collate([self.dataset[i] for i in pairs])
        with torch.no_grad():
            out = self.target(input_ids=batch["target_input_ids"],
                              attention_mask=batch["target_attention_mask"],
                              output_hidden_states=True)
        vectors = torch.cat(latentqa.gather(out.hidden_states[self.layer + 1],
                                            batch["read_mask"]))
        with latentqa.inject(self.decoder, 0, batch["placeholder_mask"], vectors):
            loss = self.decoder(input_ids=batch["decoder_input_ids"],
                                attention_mask=batch["decoder_attention_mask"],
                                labels=batch["labels"]).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return len(pairs), int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def ours(recipe, layer):
    def step(rows):
        out = recipe.train_step([rows], layer)
        return int(out["examples"]), int(out["labelled_tokens"])
    return step


def peak_rss() -> int:
    """This process's RSS high-water mark. VmHWM, not getrusage: ru_maxrss survives exec, so a
    child would report its parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args) -> None:
    """One variant alone, for its peak memory: only its own weights are loaded."""
    packed = recipe_for(args, pack=True, model=args.child == "packed")
    one_pair = recipe_for(args, pack=False, model=args.child == "one_pair")
    batches = plan(args, packed, one_pair)[args.child]
    if args.child == "reference":
        run = Reference(one_pair, args.layer).step
    else:
        run = ours(packed if args.child == "packed" else one_pair, args.layer)
    for b in batches[: args.memory_steps]:
        run(b)
    print(json.dumps({"peak_rss_bytes": peak_rss()}))


def peak_child(variant: str, args) -> int:
    cmd = [sys.executable, __file__, "--child", variant, *argv_of(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_bytes"]


def argv_of(args) -> list[str]:
    return ["--records", str(args.records), "--batch", str(args.batch), "--data", str(args.data),
            "--model", args.model, "--layer", str(args.layer), "--memory-steps",
            str(args.memory_steps), "--precision", args.precision]


def heldout_after(args, pack: bool, seed: int, examples: int) -> dict:
    """A fresh decoder trained by the trainer's pieces on ``examples`` examples, then its
    held-out loss (``Recipe.evaluate``: real and shuffled activations)."""
    from latentqa.train.recipe import sample_layer

    recipe = recipe_for(args, pack=pack, seed=seed,
                        batch=args.batch if pack else round(args.batch * args.pairs_per_row))
    seen, step, t = 0, 0, time.perf_counter()
    batches = recipe.batches(0)
    while seen < examples:
        ids = next(batches)
        seen += int(recipe.train_step([ids], sample_layer(recipe.cfg, step))["examples"])
        step += 1
    seconds = time.perf_counter() - t
    return {**recipe.evaluate(), "examples": seen, "steps": step, "train_seconds": seconds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=48)
    ap.add_argument("--batch", type=int, default=4, help="rows per packed step")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--train-examples", type=int, default=240)
    ap.add_argument("--eval-examples", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--memory-steps", type=int, default=4)
    ap.add_argument("--precision", default="auto", help="the trainer's precision for our two "
                    "variants (auto: bf16 autocast where the CPU has bf16, else fp32); the "
                    "reference is fp32 always")
    ap.add_argument("--child", choices=["reference", "one_pair", "packed"])
    args = ap.parse_args()
    if args.child:
        return child(args)

    packed = recipe_for(args, pack=True)
    one_pair = recipe_for(args, pack=False)
    batches = plan(args, packed, one_pair)
    reference = Reference(one_pair, args.layer)
    steps = {"reference": reference.step, "one_pair": ours(one_pair, args.layer),
             "packed": ours(packed, args.layer)}
    for name, run in steps.items():  # warm-up, not timed
        run(batches[name][0])
    seconds = dict.fromkeys(steps, 0.0)
    counts = {name: [0, 0] for name in steps}
    for k in range(max(len(b) for b in batches.values())):
        for name, run in steps.items():
            if k < len(batches[name]):
                t = time.perf_counter()
                n, labelled = run(batches[name][k])
                seconds[name] += time.perf_counter() - t
                counts[name][0] += n
                counts[name][1] += labelled
    eps = {n: counts[n][0] / seconds[n] for n in steps}
    tps = {n: counts[n][1] / seconds[n] for n in steps}
    del reference

    # the activation cache, on the packed variant: the same batches computing, then reading
    from latentqa.train.cache import ActivationCache

    packed.cache = ActivationCache("memory", dtype="fp32", max_gb=2.0)
    cache_s = {"off": [], "on": []}
    for mode in ("off", "on"):  # the first pass fills the cache (its cost: the cache off)
        for b in batches["packed"]:
            t = time.perf_counter()
            packed.train_step([b], args.layer)
            cache_s[mode].append(time.perf_counter() - t)
    packed_precision = packed.precision
    del packed, one_pair

    args.pairs_per_row = counts["packed"][0] / args.records
    quality = {variant: {str(seed): heldout_after(args, variant == "packed", seed,
                                                  args.train_examples)
                         for seed in args.seeds} for variant in ("one_pair", "packed")}
    peaks = {v: peak_child(v, args) for v in ("reference", "one_pair", "packed")}

    def spread(variant):
        losses = [q["eval_loss"] for q in quality[variant].values()]
        return max(losses) - min(losses)

    print(json.dumps({
        "model": args.model, "records": args.records, "batch_rows": args.batch,
        "precision_ours": packed_precision, "precision_reference": "fp32",
        "examples": {n: c[0] for n, c in counts.items()},
        "seconds": {n: round(s, 2) for n, s in seconds.items()},
        "examples_per_s": {n: round(v, 3) for n, v in eps.items()},
        "labelled_tokens_per_s": {n: round(v, 1) for n, v in tps.items()},
        "speedup_vs_reference": round(eps["packed"] / eps["reference"], 3),
        "speedup_vs_one_pair_per_row": round(eps["packed"] / eps["one_pair"], 3),
        "one_pair_speedup_vs_reference": round(eps["one_pair"] / eps["reference"], 3),
        "peak_rss_bytes": peaks,
        "memory_ratio": round(peaks["packed"] / peaks["reference"], 3),
        "memory_ratio_one_pair": round(peaks["one_pair"] / peaks["reference"], 3),
        "cache_step_s": {k: round(sum(v) / len(v), 3) for k, v in cache_s.items()},
        "cache_speedup": round(sum(cache_s["off"]) / sum(cache_s["on"]), 3),
        "heldout_loss": quality,
        "heldout_loss_difference": round(
            sum(q["eval_loss"] for q in quality["packed"].values()) / len(args.seeds)
            - sum(q["eval_loss"] for q in quality["one_pair"].values()) / len(args.seeds), 4),
        "heldout_loss_seed_spread": {v: round(spread(v), 4) for v in quality},
        "torch_threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
