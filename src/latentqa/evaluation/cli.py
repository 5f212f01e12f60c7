"""``latentqa eval heldout``: held-out decoder loss with real, shuffled and no-adapter controls."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a decoder, always beside its controls")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    h = sub.add_parser(
        "heldout", help="held-out loss: real vs shuffled activations vs the untrained decoder",
        description="Mean loss per labelled token on held-out (record, QA) pairs, with the "
                    "record's activations (real), another label's activations (shuffled), and "
                    "the record's activations read with the adapter off (untrained).")
    h.add_argument("--decoder", help="decoder directory (default: the shipped decoder)")
    h.add_argument("--data", nargs="+", required=True, help="LatentQA files or folders")
    h.add_argument("--split", choices=["held-out", "all"], default="held-out",
                   help="held-out: the labels the decoder's training run held out (from its "
                        "sidecar, or --held-out/--split-seed); all: every pair")
    h.add_argument("--held-out", type=float, help="fraction of labels held out in training")
    h.add_argument("--split-seed", type=int, help="the training run's split_seed")
    h.add_argument("--examples", type=int, default=0, help="at most this many pairs (0: all)")
    h.add_argument("--batch-size", type=int, default=8)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    h.set_defaults(func=cmd_heldout)


def cmd_heldout(args) -> int:
    import random

    from ..cli import UserError
    from ..data import Collator, LatentQADataset, load_data, split_by_label
    from ..reading import load
    from .heldout import CONDITIONS, heldout_losses

    reader = load(args.decoder)
    spec = reader.spec
    data = load_data(args.data, system_recovery=spec.extra.get("system_recovery", True))
    if args.split == "held-out":
        held_out = args.held_out if args.held_out is not None else spec.extra.get("held_out")
        seed = args.split_seed if args.split_seed is not None else spec.extra.get("split_seed")
        if held_out is None or seed is None:
            raise UserError("this decoder's sidecar does not say which labels its training run "
                            "held out; pass --held-out and --split-seed, or --split all")
        _, data = split_by_label(data, held_out=held_out, seed=seed)
    dataset = LatentQADataset(data, reader.tokenizer, supervise=spec.supervise)
    idx = list(range(len(dataset)))
    random.Random(args.seed).shuffle(idx)
    if args.examples:
        idx = idx[: args.examples]
    totals = heldout_losses(reader.model, dataset, Collator(reader.tokenizer), idx,
                            layer=spec.read_layer, write_layer=spec.write_layer,
                            mode=spec.injection, batch_size=args.batch_size,
                            conditions=CONDITIONS)
    result = {"decoder": reader.decoder_path, "pairs": len(idx), "split": args.split,
              "labels": len({data.records[data.pairs[i].record].label for i in idx}),
              "loss": {c: float(totals[k, 0] / max(totals[k, 1], 1))
                       for k, c in enumerate(CONDITIONS)},
              "tokens": {c: int(totals[k, 1]) for k, c in enumerate(CONDITIONS)}}
    print(f"{result['pairs']} pairs, {result['labels']} labels ({args.split})")
    for c in CONDITIONS:
        print(f"  {c:<10} loss {result['loss'][c]:.4f}  over {result['tokens'][c]} tokens")
    if args.json:
        out = Path(args.json)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.rename(out)
    return 0
