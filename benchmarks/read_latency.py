"""Reading speed: one answer's warm latency, and batched against one-by-one throughput.

Prints JSON:
  single_answer_s     median warm wall time of ``ask`` for one 32-token answer about a dialog
                      of about 100 tokens (the target's read pass, the decoder's prompt pass
                      with injection, 31 cached decoding steps)
  batch_speedup       (time for N dialog x question pairs one call each) / (time for the same
                      pairs in one batched ``ask``)
  plus the raw times, token counts and settings.

Every answer is forced to exactly ``--answer-tokens`` tokens (generation_config.min_new_tokens),
so early stops do not flatter either side.

Usage: python benchmarks/read_latency.py [--decoder DIR] [--pairs 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

DIALOG = [
    {"role": "system", "content": "You are a pirate. Always talk like a pirate."},
    {"role": "user", "content": "I am planning a trip to the coast next month with two friends. "
                                "We want to go sailing, eat fresh seafood and maybe visit an old "
                                "lighthouse. What should we pack, and is there anything we "
                                "should be careful about?"},
    {"role": "assistant", "content": "Arr, pack a warm coat, a sturdy pair of boots and a hat "
                                     "against the sun, matey! Mind the tides and the weather, "
                                     "and never sail without a life jacket."},
]
QUESTIONS = ["What is the persona of the assistant?", "How does the assistant speak?",
             "What is the assistant trying to do?", "Is the assistant being honest?"]


def timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth_floor(model, tokens: int) -> dict:
    """What memory bandwidth alone allows: each decoding step reads every weight once, so
    ``tokens`` steps cannot take less than tokens x weight bytes / bandwidth. The bandwidth is
    measured here with a matrix-vector product the size of the lm_head."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    w = torch.randn(49152, 576)
    x = torch.randn(1, 576)
    w @ x.T
    seconds = timed(lambda: [w @ x.T for _ in range(20)], 3) / 20
    bandwidth = w.numel() * w.element_size() / seconds
    return {"weight_bytes": weight_bytes, "matvec_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "decode_floor_s": round(tokens * weight_bytes / bandwidth, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoder", help="decoder directory (default: the shipped one)")
    ap.add_argument("--target")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from latentqa.chat import render_dialog
    from latentqa.reading import load

    lqa = load(args.decoder, args.target, batch_size=args.batch_size)
    lqa.model.generation_config.min_new_tokens = args.answer_tokens
    n = args.answer_tokens
    dialog_tokens = len(render_dialog(lqa.tokenizer, DIALOG).input_ids)
    read_tokens = len(lqa.activations(DIALOG)[0])

    ask_one = lambda: lqa.ask(DIALOG, QUESTIONS[0], max_new_tokens=n)  # noqa: E731
    ask_one()  # warm-up: first calls pay for lazy initialisation
    single = timed(ask_one, args.repeats)
    print(f"single answer: {single:.2f} s", file=sys.stderr)

    # Distinct dialogs (the user turn varies), so nothing is shared between pairs.
    per_q = len(QUESTIONS)
    dialogs = [[DIALOG[0], dict(DIALOG[1], content=f"({i}) " + DIALOG[1]["content"]), DIALOG[2]]
               for i in range(-(-args.pairs // per_q))]
    pairs = [(d, q) for d in range(len(dialogs)) for q in QUESTIONS][:args.pairs]
    batched = timed(lambda: lqa.answer_pairs(dialogs, pairs, max_new_tokens=n))
    print(f"{len(pairs)} pairs batched: {batched:.2f} s", file=sys.stderr)
    one_by_one = timed(lambda: [lqa.answer_pairs([dialogs[d]], [(0, q)], max_new_tokens=n)
                                for d, q in pairs])
    floor = bandwidth_floor(lqa.model, n)
    print(json.dumps({
        "single_answer_s": round(single, 3),
        "batch_speedup": round(one_by_one / batched, 2),
        "batched_s": round(batched, 2),
        "one_by_one_s": round(one_by_one, 2),
        "pairs": len(pairs),
        "batch_size": args.batch_size,
        "answer_tokens": n,
        "dialog_tokens": dialog_tokens,
        "read_tokens": read_tokens,
        "torch_threads": torch.get_num_threads(),
        **floor,
        "decoder": lqa.decoder_path,
    }, indent=2))


if __name__ == "__main__":
    main()
