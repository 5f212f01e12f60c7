"""``latentqa data stats PATH...``: what is in the files, and everything wrong with them."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stats", help="count records and QA pairs, token lengths, and list every problem",
        description="Count records by data type and label family, (record, QA) pairs, token "
                    "lengths, and list every validation problem. Exits 1 when there are problems.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="record files (system/control/stimulus/stimulus_completion .json), qa "
                        "files (qa.json), .jsonl dialog files, or folders of them")
    p.add_argument("--model", default="smollm2-135m",
                   help="tokenizer for the token lengths (default: %(default)s)")
    p.add_argument("--no-tokens", action="store_true",
                   help="skip token lengths (no tokenizer is loaded)")
    p.add_argument("--no-system-recovery", action="store_true",
                   help="do not derive 'What instructions was the assistant given?' pairs from "
                        "hidden system prompts")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (off by default)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    from .stats import compute_stats

    tokenizer = None
    if not args.no_tokens:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    report = compute_stats(args.paths, tokenizer,
                           system_recovery=not args.no_system_recovery)
    if tokenizer is not None:
        report["model"] = args.model
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 1 if report["problems"] else 0


def _print(r: dict) -> None:
    print(f"files            {len(r['files'])}")
    for f in r["files"]:
        print(f"  {f}")
    print(f"records          {r['records']:,}")
    for kind, n in r["by_kind"].items():
        print(f"  {kind:<22} {n:>7,}")
    print("label families")
    for fam, n in r["by_family"].items():
        print(f"  {fam + '-' if fam != 'other' else fam:<22} {n:>7,}")
    print(f"labels           {r['labels']:,} with records; {r['qa_labels']:,} in qa files "
          f"({r['qa_labels_without_records']:,} of them with no records)")
    recovery = "on" if r["system_recovery"] else "off"
    print(f"(record, QA) pairs {r['pairs_from_qa']:,} from QA + {r['pairs_system_recovery']:,} "
          f"system-prompt recovery ({recovery}) = {r['pairs']:,}")
    if "tokens" in r:
        print(f"token lengths ({r.get('model', '')})  " +
              "  ".join(f"{k:>6}" for k in ("mean", "p0", "p50", "p90", "p99", "p100")))
        for name, row in r["tokens"].items():
            if row.get("count"):
                print(f"  {name:<22} " + "  ".join(
                    f"{row[k]:>6}" for k in ("mean", "p0", "p50", "p90", "p99", "p100")))
    problems = r["problems"]
    print(f"problems         {len(problems):,}")
    for p in problems:
        print(f"  {p}")
