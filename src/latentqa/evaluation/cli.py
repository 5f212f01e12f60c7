"""``latentqa eval heldout``: held-out decoder loss with real, shuffled and no-adapter controls."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path, obj) -> None:
    """Write JSON whole or not at all (temporary file, then rename)."""
    out = Path(path)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.rename(out)


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
    register_persona(sub)


def cmd_heldout(args) -> int:
    import random

    from ..data import Collator, LatentQADataset, load_data
    from ..reading import load
    from .heldout import CONDITIONS, heldout_losses

    reader = load(args.decoder)
    spec = reader.spec
    data = load_data(args.data, system_recovery=spec.extra.get("system_recovery", True))
    if args.split == "held-out":
        data = _held_out(data, spec, args)
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
        write_json(args.json, result)
    return 0


def register_persona(sub) -> None:
    p = sub.add_parser(
        "persona", help="persona recovery as multiple choice, with five controls",
        description="For each record, rank its label's first answer against answers of other "
                    "labels of the same family, under the conditions activations, shuffled, "
                    "no_activations, text_only and untrained_decoder; plus the "
                    "null-hallucination rate on plain dialogs.")
    p.add_argument("--data", nargs="+", required=True,
                   help="a folder of LatentQA files (system.json, control.json, stimulus.json, "
                        "stimulus_completion.json, qa.json) or the files")
    p.add_argument("--decoder", help="decoder directory (default: the shipped decoder)")
    p.add_argument("--choices", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["held-out", "all"], default="held-out",
                   help="held-out: only labels the decoder's training held out (its sidecar "
                        "says which); all: every record")
    p.add_argument("--limit", type=int, default=0, help="at most this many records (0: all)")
    p.add_argument("--conditions", default=",".join(PERSONA_CONDITIONS),
                   help="comma-separated subset of the conditions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-null", action="store_true", help="skip the null-hallucination rate")
    p.add_argument("--json", metavar="OUT", help="write the full result (with scores) as JSON")
    p.set_defaults(func=cmd_persona)


PERSONA_CONDITIONS = ("activations", "shuffled", "no_activations", "text_only",
                      "untrained_decoder")


def _held_out(data, spec, args):
    from ..cli import UserError
    from ..data import split_by_label

    held_out = getattr(args, "held_out", None)
    held_out = held_out if held_out is not None else spec.extra.get("held_out")
    seed = getattr(args, "split_seed", None)
    seed = seed if seed is not None else spec.extra.get("split_seed")
    if held_out is None or seed is None:
        raise UserError("this decoder's sidecar does not say which labels its training run "
                        "held out; pass --held-out and --split-seed, or --split all")
    return split_by_label(data, held_out=held_out, seed=seed)[1]


def cmd_persona(args) -> int:
    import random

    from tqdm import tqdm

    from ..cli import UserError
    from ..data import load_data
    from ..reading import load
    from .null import null_hallucination
    from .persona import PersonaEval, build_items

    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    bad = set(conditions) - set(PERSONA_CONDITIONS)
    if bad:
        raise UserError(f"unknown condition(s) {sorted(bad)}; choose from "
                        f"{', '.join(PERSONA_CONDITIONS)}")
    if args.choices < 2:
        raise UserError("--choices must be at least 2")
    reader = load(args.decoder, batch_size=args.batch_size)
    data = load_data(args.data, system_recovery=False)
    if args.split == "held-out":
        data = _held_out(data, reader.spec, args)
    items = build_items(data, choices=args.choices, seed=args.seed)
    if args.limit and len(items) > args.limit:
        items = sorted(random.Random(args.seed).sample(items, args.limit),
                       key=lambda i: i.record)
    if not items:
        raise UserError("no records to evaluate (no labels with QA pairs and enough "
                        "same-family alternatives)")
    rows = sum(len(i.candidates) for i in items) * len(conditions)
    with tqdm(total=rows, desc="scoring", unit="row") as bar:
        result = PersonaEval(reader, batch_size=args.batch_size, progress=bar.update).run(
            data, items, conditions=conditions, seed=args.seed)
    if not args.no_null:
        result["null_hallucination"] = null_hallucination(reader)
    result.update({"decoder": reader.decoder_path, "split": args.split,
                   "choices": args.choices, "seed": args.seed})
    print_persona(result)
    if args.json:
        write_json(args.json, result)
    return 0


def print_persona(result: dict) -> None:
    print(f"{result['n']} records, {result['choices']} choices (chance "
          f"{result['chance']:.3f}), split {result['split']}")
    pvals = result.get("mcnemar_p_vs_activations", {})
    for c, s in result["conditions"].items():
        p = f"  McNemar p vs activations {pvals[c]:.2g}" if c in pvals else ""
        print(f"  {c:<18} {s['accuracy']:.3f}  [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]{p}")
    for key in ("by_data_type", "by_family"):
        print(key.replace("_", " ") + ":")
        for group, g in result[key].items():
            accs = "  ".join(f"{c} {s['accuracy']:.2f}" for c, s in g["conditions"].items())
            print(f"  {group:<20} n={g['n']:<4} {accs}")
    null = result.get("null_hallucination")
    if null:
        print(f"null-hallucination rate: {null['rate']:.2f} ({null['invented']} of {null['n']} "
              "answers about plain dialogs name a specific persona or goal)")
