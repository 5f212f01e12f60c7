"""``latentqa steer``, ``latentqa generate`` and ``latentqa eval crows``."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_json, write_jsonl, write_text
from .run import SteerConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "steer", help="train a steering adapter on the target with the decoder's loss",
        description="Train a LoRA on the target's blocks up to the read layer so that the "
                    "frozen decoder, reading the target on the steering prompts, gives the "
                    "control's answers; then measure the target before and after on held-out "
                    "prompts.")
    p.add_argument("--control", required=True,
                   help="a control JSON file ({instruction: [[question, answer], ...]}, as "
                        "../shared/data/latentqa/controls/*.json) or an instruction text")
    p.add_argument("--prompts", help="steering prompts (.txt one per line, .jsonl with "
                                     "'prompt', or a .json list) or a built-in set by name "
                                     "(neutral, troubles); default: neutral")
    p.add_argument("--eval-prompts", help="evaluation prompts, a file or a built-in set "
                                          "(default: a held-back quarter of --prompts)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--steps", type=int, default=SteerConfig.steps)
    p.add_argument("--lr", type=float, default=SteerConfig.lr)
    p.add_argument("--batch-size", type=int, default=SteerConfig.batch_size)
    p.add_argument("--lora-r", type=int, default=SteerConfig.lora_r)
    p.add_argument("--per-layer", action="store_true",
                   help="decode every block's output up to the read layer, each block trained "
                        "on its own loss (the paper's per-layer variant)")
    p.add_argument("--fluency-weight", type=float, default=SteerConfig.fluency_weight,
                   help="weight of a KL(unsteered || steered) term that keeps the target's "
                        "language model close to the original (default: %(default)s; 0: the "
                        "control loss alone, which at useful learning rates degrades the "
                        "target)")
    p.add_argument("--fluency-tokens", choices=("read", "prompt"),
                   default=SteerConfig.fluency_tokens,
                   help="where the KL applies: the user's prompt only (default), or every read "
                        "token, which also holds the reply to the unsteered one and so pulls "
                        "against the steering")
    p.add_argument("--no-replies", action="store_true",
                   help="read the prompts alone, not also followed by the target's own reply")
    p.add_argument("--topic", help="comma-separated keywords whose mention rate is measured "
                                   "(or 'vegan' for the built-in veganism set)")
    p.add_argument("--eval-tokens", type=int, default=SteerConfig.eval_tokens,
                   help="tokens per evaluation reply")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder", help="decoder directory (default: the shipped decoder)")
    p.add_argument("--target", help="target model (default: the decoder's)")
    p.set_defaults(func=cmd_steer)

    g = subparsers.add_parser("generate", help="sample the target, plain or steered",
                              description="Replies of the target to each prompt, with a "
                                          "steering adapter (--adapter) or without.")
    g.add_argument("--prompts", required=True,
                   help="a prompts file or a built-in set by name (neutral, troubles)")
    g.add_argument("--adapter", help="a steering adapter directory written by latentqa steer")
    g.add_argument("--target", help="target model (default: the adapter's, else smollm2-135m)")
    g.add_argument("--system", help="a system prompt for every prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", help="write {prompt, response} JSONL here (default: print)")
    g.set_defaults(func=cmd_generate)


def _topic(spec):
    from .measure import VEGAN_KEYWORDS

    if not spec:
        return None
    if spec.strip().lower() == "vegan":
        return VEGAN_KEYWORDS
    return [k.strip() for k in spec.split(",") if k.strip()]


def cmd_steer(args) -> int:
    from ..errors import UsageError
    from ..reading import load
    from ..train.report import plot_losses
    from .adapter import STEER_ADAPTER, load_steering
    from .control import load_control
    from .prompts import builtin_prompts, prompts_from
    from .report import markdown, measure
    from .run import steer

    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.fluency_weight < 0:
        raise UsageError("--steps and --batch-size must be at least 1, --lr positive and "
                        "--fluency-weight not negative")
    prompts = prompts_from(args.prompts) if args.prompts else builtin_prompts("neutral")
    eval_prompts = prompts_from(args.eval_prompts) if args.eval_prompts else None
    if args.control.endswith(".json"):
        load_control(args.control)  # a bad file fails before the model loads
    out = Path(args.out)
    reader = load(args.decoder, args.target)
    if args.per_layer and reader.spec.read_together:  # before the control reads anything
        raise UsageError(f"--per-layer decodes one block at a time, but this decoder reads "
                         f"layers {list(reader.spec.read_layers)} together; leave it out")
    control = load_control(args.control, reader, prompts)
    cfg = SteerConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      lora_r=args.lora_r, lora_alpha=2 * args.lora_r, per_layer=args.per_layer,
                      fluency_weight=args.fluency_weight, fluency_tokens=args.fluency_tokens,
                      with_replies=not args.no_replies,
                      eval_tokens=args.eval_tokens,
                      seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    result = steer(reader, control, prompts, out / "adapter", eval_prompts=eval_prompts,
                   config=cfg)
    write_jsonl(out / "generations_before.jsonl",
                 [{"prompt": p, "response": r} for p, r in zip(result.eval_prompts,
                                                               result.before)])
    write_jsonl(out / "generations_after.jsonl",
                 [{"prompt": p, "response": r} for p, r in zip(result.eval_prompts,
                                                               result.after)])
    plot_losses([{"step": i + 1, "loss": v} for i, v in enumerate(result.losses)],
                out / "loss.png")
    model = load_steering(reader.model, result.adapter_dir, name=STEER_ADAPTER)
    try:
        m = measure(model, reader.tokenizer, result.eval_prompts, result.before, result.after,
                    topic_keywords=_topic(args.topic), seed=args.seed)
    finally:
        model.delete_adapter(STEER_ADAPTER)
    summary = {"control": control.instruction or control.source, "target": reader.spec.target,
               "decoder": reader.decoder_path, "read_layer": reader.spec.read_layer,
               **({"read_layers": list(reader.read_at)} if reader.spec.read_together else {}),
               "steps": cfg.steps, "per_layer": cfg.per_layer, "seconds": result.seconds,
               "first_loss": result.losses[0], "final_loss": result.losses[-1],
               "losses": result.losses, "fluency_kl": result.fluency_kl,
               "config": vars(args) | {"func": None},
               "qa": [list(p) for p in control.qa], "measurements": m}
    write_text(out / "config.json", json.dumps({k: v for k, v in vars(args).items()
                                                 if k != "func"}, indent=2) + "\n")
    write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items()
                                                  if k != "config"}, indent=2) + "\n")
    write_text(out / "report.md", markdown(summary, m))
    print(markdown(summary, m))
    print(f"steering adapter, generations and report written to {out}")
    return 0


def cmd_generate(args) -> int:
    from ..errors import UsageError
    from ..models import DEFAULT_MODEL, load_model
    from .adapter import STEER_ADAPTER, SteerSpec, load_steering
    from .generate import generate_replies
    from .prompts import prompts_from

    prompts = prompts_from(args.prompts)
    target = args.target
    if args.adapter:
        adapter = Path(args.adapter)
        if not (adapter / "adapter_model.safetensors").exists():
            raise UsageError(f"{adapter} is not a steering adapter (no adapter_model.safetensors)")
        if target is None and (adapter / "latentqa_steer.json").exists():
            target = SteerSpec.read(adapter).target
    loaded = load_model(target or DEFAULT_MODEL)
    model = loaded.model
    if args.adapter:
        model = load_steering(model, args.adapter, name=STEER_ADAPTER)
    replies = generate_replies(model, loaded.tokenizer, prompts,
                               adapter=STEER_ADAPTER if args.adapter else None,
                               system=args.system, max_new_tokens=args.max_new_tokens,
                               do_sample=args.sample, temperature=args.temperature,
                               top_p=args.top_p, seed=args.seed)
    rows = [{"prompt": p, "response": r} for p, r in zip(prompts, replies)]
    if args.out:
        write_jsonl(Path(args.out), rows)
        print(f"{len(rows)} responses written to {args.out}")
    else:
        for r in rows:
            print(json.dumps(r))
    return 0


def register_crows(sub) -> None:
    """``latentqa eval crows``: the paper's debiasing metrics, plain vs steered vs prompted."""
    c = sub.add_parser("crows", help="CrowS-Pairs bias metrics: target, steered, prompted",
                       description="Mean log-likelihood difference (stereotyped minus "
                                   "anti-stereotyped sentence) and the share of pairs where "
                                   "the stereotyped one is more likely, with bootstrap "
                                   "intervals, for the plain target, a steering adapter, and a "
                                   "fairness system prompt (the prompting baseline).")
    c.add_argument("--data", required=True, help="the CrowS-Pairs CSV or its folder")
    c.add_argument("--adapter", help="a steering adapter directory")
    c.add_argument("--target", help="target model (default: the adapter's, else smollm2-135m)")
    c.add_argument("--system", default=FAIRNESS_PROMPT,
                   help="the prompting baseline's system prompt ('' to skip it)")
    c.add_argument("--limit", type=int, default=0, help="at most this many pairs (0: all)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", metavar="OUT")
    c.set_defaults(func=cmd_crows)


FAIRNESS_PROMPT = ("You are an unbiased assistant. You treat people of every race, gender, "
                   "religion, age, nationality, ability and background equally and never rely "
                   "on stereotypes.")


def cmd_crows(args) -> int:
    from ..errors import UsageError
    from ..models import DEFAULT_MODEL, load_model
    from .adapter import STEER_ADAPTER, SteerSpec, load_steering
    from .measure import crows_pairs, read_crows

    try:
        rows = read_crows(args.data, args.limit)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    target = args.target
    if args.adapter and target is None and (Path(args.adapter) / "latentqa_steer.json").exists():
        target = SteerSpec.read(args.adapter).target
    loaded = load_model(target or DEFAULT_MODEL)
    model = loaded.model
    if args.adapter:
        model = load_steering(model, args.adapter, name=STEER_ADAPTER)
    result = {"n": len(rows), "conditions": {}}
    result["conditions"]["target"] = crows_pairs(model, loaded.tokenizer, rows, seed=args.seed)
    if args.adapter:
        result["conditions"]["steered"] = crows_pairs(model, loaded.tokenizer, rows,
                                                      adapter=STEER_ADAPTER, seed=args.seed)
    if args.system:
        result["conditions"]["prompted"] = crows_pairs(model, loaded.tokenizer, rows,
                                                       system=args.system, seed=args.seed)
        result["system_prompt"] = args.system
    print(f"CrowS-Pairs, {len(rows)} pairs")
    for name, r in result["conditions"].items():
        d, s = r["loglik_diff"], r["stereotype_preferred"]
        print(f"  {name:<9} loglik diff {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, "
              f"{d['ci95'][1]:+.3f}]   stereotype preferred {s['mean']:.3f} "
              f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
    if args.json:
        write_json(args.json, result)
    return 0
