"""``latentqa train --config FILE [key=value ...] [--out DIR] [--resume]``."""

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
                   help="continue from the latest checkpoint in the output directory")
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
    from .config import check_layers
    from .loop import model_info_from_config, train

    try:
        check_layers(cfg, model_info_from_config(cfg.model))
        train(cfg, resume=args.resume)  # may refuse a checkpoint it cannot resume
    except ConfigError as e:
        raise UsageError(f"bad training config: {e}") from None
    return 0
