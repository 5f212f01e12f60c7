"""``latentqa read``, ``latentqa score`` and ``latentqa demo``.

    latentqa read --system "You are a pirate." --user "Hi!" -q "What is the persona?"
    latentqa score dialog.json -q "Describe the assistant." -c "a pirate" -c "a chef" --json
    latentqa read --batch rows.jsonl --output answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..activations import INJECTION_MODES
from ..errors import UsageError
from ..validation import check_sampling, check_text, check_texts
from .errors import ReadingError

FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
         "top_p": "--top-p", "seed": "--seed"}


class _Message(argparse.Action):
    """--system/--user/--assistant append to one list, so their order is the dialog's."""

    def __call__(self, parser, namespace, value, option_string=None):
        messages = list(getattr(namespace, "messages", None) or [])
        messages.append({"role": option_string.lstrip("-"), "content": value})
        namespace.messages = messages


def add_decoder_args(p: argparse.ArgumentParser) -> None:
    """The options that pick and load a decoder and its target (``read``, ``score``, ``demo``
    and ``serve``); ``load_reader(args)`` loads what they name."""
    g = p.add_argument_group("decoder and target")
    g.add_argument("--decoder", metavar="DIR",
                   help="decoder directory (default: the shipped smollm2-135m decoder)")
    g.add_argument("--target", metavar="SPEC",
                   help="target model (default: the one the decoder was trained on)")
    g.add_argument("--preset", help="options for a decoder without a sidecar: latentqa-paper")
    g.add_argument("--layout", help="probe layout of a decoder without a sidecar: paper, "
                                    "activation_oracles")
    g.add_argument("--layer", "--read-layer", dest="layer", type=int,
                   help="read the target after this block (default: the decoder's; not for "
                        "a decoder that reads several layers together)")
    g.add_argument("--write-layer", type=int, help="inject after this block (default: the "
                                                   "decoder's)")
    g.add_argument("--injection", choices=INJECTION_MODES)
    g.add_argument("--allow-other-target", action="store_true",
                   help="accept a target whose name differs from the decoder's (sizes must "
                        "still match)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")


def load_reader(args):
    """The Reader the ``add_decoder_args`` options (and ``--batch-size``) name."""
    from ..models import resolve_dtype
    from .reader import load

    if args.batch_size < 1:  # mistakes in options are told before the weights load
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        resolve_dtype(args.dtype)
    except ValueError as e:
        raise UsageError(f"--dtype: {e}") from None
    return load(args.decoder, args.target, preset=args.preset, layout=args.layout,
                read_layer=args.layer, write_layer=args.write_layer, injection=args.injection,
                device=args.device, dtype=args.dtype, allow_other_target=args.allow_other_target,
                batch_size=args.batch_size)


def _common(p: argparse.ArgumentParser) -> None:
    add_decoder_args(p)
    r = p.add_argument_group("reading")
    r.add_argument("--read", metavar="SEL", help="which tokens to read: after-system (default),"
                   " messages:1,2, tokens:START:END, last:N")
    r.add_argument("--control", choices=("shuffled", "none"),
                   help="shuffled: another dialog's activations; none: inject nothing")
    r.add_argument("--max-new-tokens", type=int, default=48)
    r.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int)
    r.add_argument("--batch-size", type=int, default=16)


def _inputs(p: argparse.ArgumentParser, *, scoring: bool) -> None:
    p.add_argument("dialog", nargs="?", metavar="DIALOG_FILE",
                   help="a JSON list of messages, or a JSONL of dialogs (docs/data.md)")
    for role in ("system", "user", "assistant"):
        p.add_argument(f"--{role}", action=_Message, metavar="TEXT",
                       help=f"a {role} message (repeat; order is kept)")
    p.add_argument("-q", "--question", action="append", default=[],
                   help="a question for the decoder (repeat for several)")
    if scoring:
        p.add_argument("-c", "--candidate", action="append", default=[],
                       help="a candidate answer to score (repeat)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--batch", metavar="ROWS.jsonl",
                   help="batch mode: one dialog x question row per line (docs/reading.md)")
    p.add_argument("-o", "--output", metavar="OUT.jsonl", help="batch output (default: stdout)")
    p.set_defaults(messages=None)


def register(subparsers) -> None:
    p = subparsers.add_parser("read", help="ask a decoder questions about a dialog's "
                                           "activations")
    _inputs(p, scoring=False)
    _common(p)
    p.set_defaults(func=cmd_read)
    p = subparsers.add_parser("score", help="score candidate answers about a dialog's "
                                            "activations")
    _inputs(p, scoring=True)
    _common(p)
    p.set_defaults(func=cmd_score)
    p = subparsers.add_parser("demo", help="read hidden system prompts from SmolLM2's "
                                           "activations")
    _common(p)
    p.set_defaults(func=cmd_demo)


def _load(args):
    return load_reader(args)


def _generation(args) -> dict:
    """The generation settings, checked by the rules the server applies."""
    check_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed, names=FLAGS)
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed)


def _dialogs(args) -> tuple[list, list]:
    """(dialogs, per-dialog read selections) from the file or the message flags."""
    from ..selection import as_read
    from .dialogs_io import read_dialog_file

    if args.dialog and args.messages:
        raise ReadingError("give a dialog file or --system/--user/--assistant, not both")
    if args.dialog:
        found = read_dialog_file(args.dialog)
    elif args.messages:
        for m in args.messages:  # name the flag: "--user is not valid Unicode..."
            check_text(m["content"], f"--{m['role']}", allow_empty=True)
        found = [(args.messages, None)]
    else:
        raise ReadingError("no dialog: give a dialog file or --system/--user/--assistant "
                           "messages (or --batch ROWS.jsonl)")
    # --read applies to every dialog; a JSONL line's own 'read' (message indices) otherwise
    reads = [as_read(args.read) if args.read or r is None else as_read(r) for _, r in found]
    return _checked([m for m, _ in found]), reads


def _questions(args) -> list[str]:
    if not args.question:
        raise ReadingError("no questions: give at least one --question")
    return check_texts(args.question, "--question")


def _candidates(args) -> list[str]:
    if not args.candidate:
        raise ReadingError("no candidates: give at least one --candidate")
    return check_texts(args.candidate, "--candidate", kind="candidate")


def cmd_read(args) -> int:
    if args.batch:
        return _batch(args, scoring=False)
    dialogs, reads = _dialogs(args)
    questions, generation = _questions(args), _generation(args)
    lqa = _load(args)
    pairs = [(d, q) for d in range(len(dialogs)) for q in questions]
    answers = lqa.answer_pairs(dialogs, pairs, read=reads, control=args.control, **generation)
    results = [{"question": q, "answer": a} for (_, q), a in zip(pairs, answers)]
    if len(dialogs) > 1:
        for r, (d, _) in zip(results, pairs):
            r["dialog"] = d
    if args.json:
        print(json.dumps({"answers": results}, indent=2, ensure_ascii=False))
        return 0
    for r in results:
        prefix = f"[dialog {r['dialog']}] " if "dialog" in r else ""
        print(f"{prefix}Q: {r['question']}\n{' ' * len(prefix)}A: {r['answer']}\n")
    return 0


def cmd_score(args) -> int:
    if args.batch:
        return _batch(args, scoring=True)
    dialogs, reads = _dialogs(args)
    questions, candidates = _questions(args), _candidates(args)
    lqa = _load(args)
    pairs = [(d, q) for d in range(len(dialogs)) for q in questions]
    scores = lqa.score_pairs(dialogs, pairs, [candidates] * len(pairs), read=reads,
                             control=args.control)
    results = [s.to_dict() | ({"dialog": d} if len(dialogs) > 1 else {})
               for (d, _), s in zip(pairs, scores)]
    if args.json:
        print(json.dumps({"scores": results}, indent=2, ensure_ascii=False))
        return 0
    for (d, _), s in zip(pairs, scores):
        prefix = f"[dialog {d}] " if len(dialogs) > 1 else ""
        print(f"{prefix}Q: {s.question}")
        print(f"  {'mean':>7} {'total':>8} {'tokens':>6}  candidate (best first)")
        for c in s.ranking():
            print(f"  {c.mean_logprob:7.3f} {c.logprob:8.2f} {c.num_tokens:6d}  {c.candidate}")
        print()
    return 0


def _checked(dialogs):
    from .inputs import as_dialogs

    return as_dialogs(list(dialogs))[0]


def _batch(args, *, scoring: bool) -> int:
    """Rows from a JSONL file to a JSONL output, in chunks, with a progress bar. Every row is
    checked (context length included) before anything is written, and ``-o`` is written under
    a temporary name and renamed at the end: a failure leaves no half-written output."""
    import contextlib

    from tqdm import tqdm

    from ..errors import LatentQAError
    from ..files import atomic_file
    from .dialogs_io import read_batch_rows

    if args.output:
        _check_output(args.output, args.batch)
    generation = {} if scoring else _generation(args)
    rows = read_batch_rows(args.batch, need_candidates=scoring)
    for row in rows:
        row["read"] = _row_read(args, row)
    lqa = _load(args)
    for row in rows:
        _check_fits(lqa, row, args.batch, scoring)
    total = sum(len(r["questions"]) * (len(r["candidates"]) if scoring else 1) for r in rows)
    output = atomic_file(args.output) if args.output else contextlib.nullcontext(sys.stdout)
    with output as out, tqdm(total=total, unit="row" if not scoring else "cand",
                             file=sys.stderr, disable=None) as bar:
        for start in range(0, len(rows), 64):  # write as we go; bounded memory
            chunk = rows[start:start + 64]
            try:
                results = _batch_chunk(lqa, args, chunk, scoring, generation, bar.update)
            except LatentQAError as e:  # what the row checks above cannot see (a control)
                lines = sorted({chunk[0]["line"], chunk[-1]["line"]})
                raise ReadingError(f"{args.batch}, line{'s' if len(lines) > 1 else ''} "
                                   f"{'-'.join(map(str, lines))}: {e}") from None
            for i, result in results:
                row = dict(chunk[i]["extra"], line=chunk[i]["line"], **result)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
    return 0


def _check_output(output, batch) -> None:
    """Refuse, before any model loads, an ``-o`` that is the input itself or that cannot be
    written: a folder, or a path below a file or a folder we may not write to."""
    import os

    if _same_file(output, batch):
        raise UsageError(f"-o {output} is the batch input itself; write the results to "
                         "another file")
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"-o {output} is a folder; give a file name, e.g. "
                         f"{path / 'out.jsonl'}")
    parent = path.absolute().parent
    while not parent.exists():  # atomic_file creates the missing folders
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"-o {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"-o {output}: cannot write in {parent} (permission denied)")


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _row_read(args, row):
    from ..selection import as_read

    try:
        return as_read(args.read) if args.read or row["read"] is None else as_read(row["read"])
    except ReadingError as e:
        raise ReadingError(f"{args.batch}, line {row['line']}: {e}") from None


def _check_fits(lqa, row, path, scoring: bool) -> None:
    """Render the row's dialog and build its decoder prompts as the reader will (tokenizing
    only), so that a row over the context is named by its line before any output."""
    from ..errors import LatentQAError
    from ..selection import render_read

    try:
        _, mask = render_read(lqa.tokenizer, row["messages"], row["read"],
                              max_tokens=lqa.info.max_positions)
        count = int(mask.sum())
        for question in row["questions"]:
            for candidate in row["candidates"] if scoring else [None]:
                lqa.probe(count, question, candidate)
    except LatentQAError as e:
        raise ReadingError(f"{path}, line {row['line']}: {e}") from None


def _batch_chunk(lqa, args, chunk, scoring, generation, progress) -> list[tuple[int, dict]]:
    """[(row index in the chunk, result), ...] for every question of every row."""
    dialogs = [r["messages"] for r in chunk]
    reads = [r["read"] for r in chunk]
    pairs = [(i, q) for i, r in enumerate(chunk) for q in r["questions"]]
    if scoring:
        cands = [chunk[i]["candidates"] for i, _ in pairs]
        got = lqa.score_pairs(dialogs, pairs, cands, read=reads, control=args.control,
                              progress=progress)
        results = [{"question": s.question, "scores": s.to_dict()["candidates"],
                    "best": s.best} for s in got]
    else:
        got = lqa.answer_pairs(dialogs, pairs, read=reads, control=args.control,
                               progress=progress, **generation)
        results = [{"question": q, "answer": a} for (_, q), a in zip(pairs, got)]
    return [(i, result) for (i, _), result in zip(pairs, results)]


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(_load(args), max_new_tokens=args.max_new_tokens, control=args.control)
    return 0
