"""``latentqa data generate``: registered into the ``latentqa data`` group by ``latentqa.cli``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .errors import DatagenError
from .prompts import KINDS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate LatentQA data (behaviours, dialogs, QA pairs) with an LLM",
        description="Generate a LatentQA dataset into --out: behaviours -> 4-turn dialogs -> "
                    "QA pairs -> control/stimulus/stimulus_completion/system/qa.json. Run the "
                    "same command again to resume an interrupted run.")
    p.add_argument("--out", required=True, type=Path, help="output directory (work files and "
                   "the LatentQA files)")
    what = p.add_argument_group("what to generate")
    what.add_argument("--num-behaviours", type=int, default=None,
                      help="behaviours to generate (default 5; with --seeds: all seeds)")
    what.add_argument("--kinds", default=",".join(KINDS),
                      help="comma-separated behaviour kinds (default: %(default)s)")
    what.add_argument("--seeds", type=Path, help="JSON/JSONL list of {kind, description, "
                      "category?} behaviours to use instead of generating them")
    what.add_argument("--qa-for", type=Path, metavar="FILE",
                      help="only write QA pairs for the system prompts in FILE (a list of "
                           "{system, stimulus_user, label?}); writes system.json and qa.json")
    what.add_argument("--limit", type=int, help="with --qa-for: the first N labels only")
    what.add_argument("--qa-pairs", type=int, default=2, help="QA pairs per label (default 2)")
    be = p.add_argument_group("generator model")
    be.add_argument("--backend", choices=("local", "openai"),
                    help="local transformers model, or an OpenAI-compatible endpoint "
                         "(default: openai if --base-url is given, else local)")
    be.add_argument("--model", help="local: a model spec (default smollm2-135m); openai: the "
                    "model name (required)")
    be.add_argument("--base-url", help="OpenAI-compatible API root, e.g. "
                    "http://127.0.0.1:8000/v1 (POSTs to BASE_URL/chat/completions)")
    be.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the "
                    "API key (default: OPENAI_API_KEY if set; no key otherwise)")
    be.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    be.add_argument("--http-retries", type=int, default=5,
                    help="retries of failed HTTP requests, with exponential backoff (default 5)")
    be.add_argument("--http-backoff", type=float, default=1.0, metavar="SECONDS",
                    help="wait before the first HTTP retry; doubles each retry (default 1)")
    be.add_argument("--dtype", default="fp32", help="local model dtype (default: fp32)")
    be.add_argument("--device", default="cpu", help="local model device (default: cpu)")
    gen = p.add_argument_group("sampling")
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--max-tokens", type=int, default=96, help="tokens per model call")
    gen.add_argument("--seed", type=int, default=0, help="base seed (local sampling is "
                     "seeded per field, so a rerun repeats itself)")
    gen.add_argument("--max-retries", type=int, default=3,
                     help="new tries after an invalid output, per field (default 3)")
    gen.add_argument("--concurrency", type=int, default=4,
                     help="model calls in flight at once (local backend: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log every rejected output")
    p.set_defaults(func=cmd_generate)
    register_replies(subparsers)


def register_replies(subparsers) -> None:
    from ..cli import _add_model_args  # the target's --model, --dtype, --device, ...

    p = subparsers.add_parser(
        "replies", help="the target's own reply to each LatentQA record, as JSONL dialogs",
        description="Generate the target's reply to each record of LatentQA files (system: to "
                    "the user turn under the system prompt; stimulus, stimulus_completion: to "
                    "stimulus_user after the control turn and its reply; control: to the "
                    "control turn) and write one JSONL dialog per valid reply, read like the "
                    "paper's records plus the reply. Empty, repetitive and echoed replies are "
                    "dropped and counted. Run the same command again to resume.")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="LatentQA record files (system.json, unlabeled_system.json, "
                        "stimulus.json, stimulus_completion.json, control.json) and the qa "
                        "files for their labels (qa.json)")
    p.add_argument("--out", required=True, type=Path, metavar="OUT.jsonl",
                   help="the dialogs file; work files and summary.json go to OUT.work/")
    _add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="tokens per reply; a reply cut by the limit is cut back to its last "
                        "whole sentence (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (default); above 0: sampled, seeded per batch")
    p.add_argument("--top-p", type=float, default=1.0, help="with sampling (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="replies generated at once, batched by prompt length (default: "
                        "%(default)s)")
    p.add_argument("--limit", type=int, help="only the first N distinct dialogs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replies)


def cmd_replies(args) -> int:
    from .replies import RepliesConfig, generate_replies, work_dir

    cfg = RepliesConfig(data=list(args.data), out=args.out, model=args.model,
                        dtype=args.dtype, device=args.device,
                        trust_remote_code=args.trust_remote_code,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                        limit=args.limit, progress=not args.no_progress)
    summary = generate_replies(cfg)
    print(f"{summary.line()}; summary in {work_dir(args.out) / 'summary.json'}")
    return 0


def make_backend(args):
    from .backends import LocalBackend, OpenAIBackend

    kind = args.backend or ("openai" if args.base_url else "local")
    if kind == "local":
        return LocalBackend.from_spec(args.model or "smollm2-135m", dtype=args.dtype,
                                      device=args.device)
    if not args.base_url:
        raise DatagenError("--backend openai needs --base-url")
    if not args.model:
        raise DatagenError("--backend openai needs --model (the model name the server knows)")
    var = args.api_key_env or "OPENAI_API_KEY"
    key = os.environ.get(var)
    if args.api_key_env and not key:
        raise DatagenError(f"--api-key-env {var}: environment variable {var} is not set")
    return OpenAIBackend(args.base_url, args.model, api_key=key, timeout=args.timeout,
                         retries=args.http_retries, backoff=args.http_backoff)


def cmd_generate(args) -> int:
    from .pipeline import GenerateConfig, generate, qa_for

    logging.basicConfig(format="latentqa: %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    cfg = GenerateConfig(out_dir=args.out, num_behaviours=args.num_behaviours, kinds=kinds,
                         seeds_file=args.seeds, qa_pairs=args.qa_pairs,
                         concurrency=args.concurrency, max_retries=args.max_retries,
                         temperature=args.temperature, max_tokens=args.max_tokens,
                         seed=args.seed, progress=not args.no_progress)
    if args.qa_for and args.seeds:
        raise DatagenError("--qa-for and --seeds cannot be combined")
    if args.qa_for and not args.qa_for.is_file():
        raise DatagenError(f"--qa-for {args.qa_for}: no such file")
    backend = make_backend(args)
    if args.qa_for:
        s = qa_for(backend, args.qa_for, cfg, limit=args.limit)
    else:
        s = generate(backend, cfg)
    counts = ", ".join(f"{n} {name}" for name, n in s.records.items())
    print(f"wrote {s.labels} labels to {s.out_dir} ({counts}); "
          f"{s.rejected} invalid outputs rejected and retried")
    if s.failed:
        print(f"latentqa: {len(s.failed)} units had no valid output (see "
              f"{s.out_dir / 'work' / 'rejected.jsonl'}); run again, or with another --seed, "
              "to retry them", file=sys.stderr)
        return 1
    return 0


__all__ = ["register", "register_replies", "make_backend", "cmd_generate", "cmd_replies"]
