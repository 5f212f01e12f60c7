"""The ``latentqa`` command: a thin layer over the Python API.

Each area registers its own subcommands (``register(subparsers)``) so this file stays a table
of contents. Errors the user can fix (``LatentQAError``) are printed as one line, without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import LatentQAError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="target model: smollm2-135m (built in), a local HF folder, a .gguf "
                        "file, or a hub id (default: %(default)s)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (off by default)")


SAMPLE_DIALOG = [
    {"role": "system", "content": "You are a pirate. Speak like one."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Arr, 'tis Paris, matey!"},
]


def cmd_info(args) -> int:
    from .info import describe_model
    from .models import load_model

    loaded = load_model(args.model, dtype=args.dtype, device=args.device,
                        trust_remote_code=args.trust_remote_code)
    report = describe_model(loaded, SAMPLE_DIALOG)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model          {report['spec']}  ({report['source']})")
    print(f"architecture   {report['architecture']} ({report['model_type']})")
    last = report["num_blocks"] - 1
    print(f"blocks         {report['num_blocks']}  (read/write layers 0..{last})")
    print(f"hidden size    {report['hidden_size']}")
    print(f"context        {report['max_positions']} tokens")
    print(f"parameters     {report['parameters']:,}")
    print(f"chat template  {'yes' if report['chat_template'] else 'NO'}")
    if report.get("sample_error"):
        print(f"               {report['sample_error']}")
    if report.get("sample"):
        sample = report["sample"]
        print(f"\nsample dialog, {sample['num_tokens']} tokens:")
        for span in sample["spans"]:
            print(f"  tokens {span['start']:>3}-{span['end'] - 1:<3} {span['owner']:<22} "
                  f"{span['text']!r}")
        for note in sample["notes"]:
            print(f"  note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentqa",
        description="Ask a language model's activations questions in plain English.",
    )
    parser.add_argument("--version", action="version", version=f"latentqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="describe a model: blocks, sizes, chat-template spans")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    data = sub.add_parser("data", help="LatentQA data: statistics, validation, generation")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])
    for module in ("latentqa.data.cli", "latentqa.datagen.cli"):
        _register(module, data_sub)
    evaluations = None
    for module in ("latentqa.reading.cli", "latentqa.train.cli", "latentqa.evaluation.cli",
                   "latentqa.steering.cli", "latentqa.serve.cli"):
        added = _register(module, sub)
        evaluations = added if module == "latentqa.evaluation.cli" else evaluations
    if evaluations is not None:  # steering's own measurement, listed with the evaluations
        _register("latentqa.steering.cli", evaluations, "register_crows")
    return parser


def _register(module: str, subparsers, function: str = "register"):
    import importlib
    import importlib.util

    try:  # areas not built yet simply add no commands; errors inside a built one still raise
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:
        return None
    return getattr(importlib.import_module(module), function)(subparsers)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LatentQAError as e:
        print(f"latentqa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentqa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
