"""``latentqa train --config FILE [key=value ...] [--out DIR] [--resume | --overwrite]``."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a decoder (Latent Interpretation Tuning)",
        description="Train a decoder. Options come from --config (YAML or TOML) and key=value "
                    "overrides, e.g. `latentqa train --config c.yaml lr=3e-4 max_steps=200`. "
                    "Run several processes with `torchrun --nproc-per-node N -m latentqa.cli "
                    "train ...`.")
    p.add_argument("--config", help="YAML or TOML file of options")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override an option")
    p.add_argument("--out", help="output directory (same as out_dir=...)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output directory, with the "
                        "config the run was started with (only logging, evaluation and "
                        "checkpoint cadence may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in the output directory, then train there "
                        "(without it, or --resume, such a directory is refused)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit without training")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..errors import UsageError
    from .config import ConfigError, build_config, parse_overrides, read_config_file

    try:
        values = read_config_file(args.config) if args.config else {}
        values.update(parse_overrides(args.overrides))
        if args.out:
            values["out_dir"] = args.out
        cfg = build_config(values)
    except ConfigError as e:
        raise UsageError(f"bad training config: {e}") from None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from .loop import train

    try:  # the output directory and the layers are checked before anything loads
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as e:
        raise UsageError(f"bad training config: {e}") from None
    return 0
