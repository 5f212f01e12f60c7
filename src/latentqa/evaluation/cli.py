"""``latentqa eval``: held-out loss, persona recovery, relational knowledge, and the report.

Every command runs a decoder beside its controls on the same examples; ``--json`` writes the
full result, which ``latentqa eval report`` turns into Markdown tables and plots.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..files import write_json


def finish(result: dict, show, json_path, **meta) -> int:
    """What every eval command ends with: its settings into the result, the result printed,
    and written as JSON when asked."""
    result.update(meta)
    show(result)
    if json_path:
        write_json(json_path, result)
    return 0


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
    h.add_argument("--data", nargs="+", required=True,
                   help="LatentQA files or folders, as given to the training run (its "
                        "held-out split is checked against the data hashes in the sidecar)")
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
    register_recovery(sub)
    register_relations(sub)
    register_classification(sub)
    register_report(sub)
    return sub


def cmd_heldout(args) -> int:
    import random

    from ..data import Collator, LatentQADataset, load_data
    from ..reading import load
    from .heldout import CONDITIONS, heldout_losses

    reader = load(args.decoder)
    spec = reader.spec
    # read as the trainer reads (a folder: every data file in it), so the split can match
    data = load_data(args.data, system_recovery=spec.extra.get("system_recovery", True))
    if args.split == "held-out":
        data = _held_out(data, spec, args, args.data)
    dataset = LatentQADataset(data, reader.tokenizer, supervise=spec.supervise,
                              baselines=bool(spec.instruction_gain),
                              layers=reader.read_at if spec.read_together else None)
    idx = list(range(len(dataset)))
    random.Random(args.seed).shuffle(idx)
    if args.examples:
        idx = idx[: args.examples]
    idx.sort(key=lambda i: dataset.lengths[i])  # similar lengths batch with little padding
    totals = heldout_losses(reader.model, dataset, Collator(reader.tokenizer), idx,
                            layer=reader.read_at, write_layer=spec.write_layer,
                            mode=spec.injection, norm=reader.norm,
                            instruction_gain=spec.instruction_gain, batch_size=args.batch_size,
                            conditions=CONDITIONS, seed=args.seed)
    result = {"kind": "heldout", "decoder": reader.decoder_path, "pairs": len(idx),
              "split": args.split,
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
    p.add_argument("--conditions",
                   help="comma-separated subset of the conditions (default: all five)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-null", action="store_true", help="skip the null-hallucination rate")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where what does not depend on the adapter (the text_only and "
                        "untrained_decoder scores, the records' activations) is kept for later "
                        "decoder versions (default: $LATENTQA_CACHE/eval, "
                        "~/.cache/latentqa/eval)")
    p.add_argument("--no-cache", action="store_true",
                   help="compute every condition; neither read nor write the cache")
    p.add_argument("--json", metavar="OUT", help="write the full result (with scores) as JSON")
    p.set_defaults(func=cmd_persona)


def _held_out(data, spec, args, files):
    """The labels the decoder's training run held out. The split is a function of the exact
    label set, so the files must be the ones it trained on (checked by hash when recorded)."""
    from ..data import split_by_label
    from ..errors import UsageError
    from ..files import file_hashes

    trained = spec.extra.get("data_files")
    given = file_hashes(files)
    if trained and sorted(trained.values()) != sorted(given.values()):
        names = lambda d: ", ".join(Path(k).name for k in d)  # noqa: E731
        raise UsageError(
            f"the held-out labels depend on the exact training data: this decoder was trained "
            f"on {names(trained)}, but the files given differ ({names(given)}); pass the "
            "training files, or --split all")

    held_out = getattr(args, "held_out", None)
    held_out = held_out if held_out is not None else spec.extra.get("held_out")
    seed = getattr(args, "split_seed", None)
    seed = seed if seed is not None else spec.extra.get("split_seed")
    if held_out is None or seed is None:
        raise UsageError("this decoder's sidecar does not say which labels its training run "
                        "held out; pass --held-out and --split-seed, or --split all")
    return split_by_label(data, held_out=held_out, seed=seed)[1]


def _choice_args(args, known) -> tuple[str, ...]:
    """The --conditions asked for (default: all ``known``), with --choices checked."""
    from ..errors import UsageError

    conditions = tuple(c.strip() for c in (args.conditions or ",".join(known)).split(",")
                       if c.strip())
    bad = set(conditions) - set(known)
    if bad:
        raise UsageError(f"unknown condition(s) {sorted(bad)}; choose from {', '.join(known)}")
    if args.choices < 2:
        raise UsageError("--choices must be at least 2")
    return conditions


def _items(args, reader, build, *, system_recovery: bool):
    """The files, the data evaluated (--split) and its items (``build`` with --choices and
    --seed), at most --limit of them drawn with the seed."""
    import random

    from ..data import latentqa_files, load_data

    files = latentqa_files(args.data)
    data = load_data(files, system_recovery=system_recovery)
    if args.split == "held-out":
        data = _held_out(data, reader.spec, args, files)
    items = build(data, choices=args.choices, seed=args.seed)
    if args.limit and len(items) > args.limit:
        items = sorted(random.Random(args.seed).sample(items, args.limit),
                       key=lambda i: i.record)
    return files, data, items


def cmd_persona(args) -> int:
    from tqdm import tqdm

    from ..errors import UsageError
    from ..files import file_hashes
    from ..reading import load
    from .cache import ResultCache
    from .null import null_hallucination
    from .persona import CONDITIONS, PersonaEval, build_items

    conditions = _choice_args(args, CONDITIONS)
    reader = load(args.decoder, batch_size=args.batch_size)
    files, data, items = _items(args, reader, build_items, system_recovery=False)
    if not items:
        raise UsageError("no records to evaluate (no labels with QA pairs and enough "
                        "same-family alternatives)")
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    # the caller's part of the cache key (the rest is the exact inputs and the base model)
    fields = {"data_files": sorted(file_hashes(files).values()), "split": args.split,
              "held_out": reader.spec.extra.get("held_out") if args.split == "held-out" else None,
              "split_seed": (reader.spec.extra.get("split_seed") if args.split == "held-out"
                             else None),
              "choices": args.choices, "seed": args.seed, "limit": args.limit}
    with tqdm(desc="scoring", unit="row") as bar:
        def plan(rows):
            bar.total = rows
            bar.refresh()
        result = PersonaEval(reader, batch_size=args.batch_size, progress=bar.update,
                             plan=plan).run(data, items, conditions=conditions,
                                            seed=args.seed, cache=cache, cache_fields=fields)
    if not args.no_null:
        result["null_hallucination"] = null_hallucination(reader)
    return finish(result, print_persona, args.json, kind="persona",
                  decoder=reader.decoder_path, split=args.split, choices=args.choices,
                  seed=args.seed)


def print_persona(result: dict) -> None:
    print(f"{result['n']} records, {result['choices']} choices (chance "
          f"{result['chance']:.3f}), split {result['split']}")
    pvals = result.get("mcnemar_p_vs_activations", {})
    cache = result.get("cache") or {}
    reused = cache.get("reused", [])
    for c, s in result["conditions"].items():
        p = f"  McNemar p vs activations {pvals[c]:.2g}" if c in pvals else ""
        mark = "  (from the cache)" if c in reused else ""
        print(f"  {c:<18} {s['accuracy']:.3f}  [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]{p}"
              f"{mark}")
    if cache.get("enabled"):
        print(f"cache ({cache['dir']}): reused {', '.join(reused) or 'nothing'}; computed and "
              f"saved {', '.join(cache.get('saved', [])) or 'nothing'}; the records' "
              f"activations {cache.get('activations', 'not needed')}")
    for key in ("by_data_type", "by_family"):
        print(key.replace("_", " ") + ":")
        for group, g in result[key].items():
            accs = "  ".join(f"{c} {s['accuracy']:.2f}" for c, s in g["conditions"].items())
            print(f"  {group:<20} n={g['n']:<4} {accs}")
    null = result.get("null_hallucination")
    if null:
        print(f"null-hallucination rate: {null['rate']:.2f} ({null['invented']} of {null['n']} "
              "answers about plain dialogs name a specific persona or goal)")
        hidden = null.get("hidden_instruction")
        if hidden:
            print(f"  control, the same requests under hidden instructions: {hidden['plain']} "
                  f"of {hidden['n']} answers plain ({hidden['rate']:.2f})")
        for q, c in null.get("by_question", {}).items():
            print(f"  {q:<40} plain dialogs: {c['n'] - c['invented']}/{c['n']} plain;  under "
                  f"hidden instructions: {c['plain_under_hidden']}/{c['n_hidden']} plain")


# ---- eval recovery ----------------------------------------------------------------------

def register_recovery(sub) -> None:
    p = sub.add_parser(
        "recovery", help="system-prompt recovery: rank the hidden prompt, ROUGE-L of the answer",
        description="On records whose system prompt is hidden (system records), ask the "
                    "decoder 'What instructions was the assistant given?': rank the true prompt "
                    "among prompts of the same family by mean log-probability per token (top-1 "
                    "accuracy), and score its greedy answer by ROUGE-L F1 against the true "
                    "prompt; with real activations, shuffled, no_activations, and text_only "
                    "(the base model, adapter off, shown the read turns as text).")
    p.add_argument("--data", nargs="+", required=True,
                   help="a folder of LatentQA files or the files (as for eval persona)")
    p.add_argument("--decoder", help="decoder directory (default: the shipped decoder)")
    p.add_argument("--choices", type=int, default=5,
                   help="prompts ranked per record: the true one and choices - 1 of its family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["held-out", "all"], default="held-out",
                   help="held-out: only labels the decoder's training held out; all: every "
                        "record")
    p.add_argument("--limit", type=int, default=0, help="at most this many records (0: all)")
    p.add_argument("--conditions",
                   help="comma-separated subset of activations,shuffled,no_activations,"
                        "text_only")
    p.add_argument("--max-new-tokens", type=int, default=80,
                   help="answer length for ROUGE-L (the shared data's prompts: at most 77 "
                        "tokens)")
    p.add_argument("--no-rouge", action="store_true",
                   help="rank only: skip generating answers (the slower half)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--linear-reference", metavar="PROMPTS",
                   help="also rank the items with a linear map of the same read vectors, fitted "
                        "on these system prompts with user turns (a file like "
                        "unlabeled_system.json; prompts that are candidates here are left out): "
                        "what the activations hold, beside what the decoder reads")
    p.add_argument("--reference-limit", type=int, default=2000,
                   help="prompts the linear map is fitted on, a seeded sample (0: all)")
    p.add_argument("--json", metavar="OUT", help="write the full result (every answer) as JSON")
    p.set_defaults(func=cmd_recovery)


def cmd_recovery(args) -> int:
    import time

    from tqdm import tqdm

    from ..errors import UsageError
    from ..reading import load
    from .recovery import CONDITIONS, RecoveryEval, build_items

    conditions = _choice_args(args, CONDITIONS)
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    start = time.perf_counter()
    reader = load(args.decoder, batch_size=args.batch_size)
    # records with a hidden prompt need no QA pairs: their question is the recovery question
    _files, data, items = _items(args, reader, build_items, system_recovery=True)
    if not items:
        raise UsageError("no records to evaluate: recovery needs records with a hidden system "
                        "prompt (system records) and at least one other of the same family")
    prompts = None
    if args.linear_reference:  # read before the long part, so a bad file fails at once
        import random

        from ..data.system_prompts import read_prompts
        if args.reference_limit < 0:
            raise UsageError("--reference-limit must be >= 0")
        try:
            prompts = read_prompts(args.linear_reference)
        except ValueError as e:
            raise UsageError(f"--linear-reference {args.linear_reference}: {e}") from None
        random.Random(args.seed).shuffle(prompts)
        prompts = prompts[:args.reference_limit or None]
    ev = RecoveryEval(reader, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    with tqdm(total=ev.rows(items, conditions, rouge=not args.no_rouge), desc="recovery",
              unit="row") as bar:
        ev.progress = bar.update
        result = ev.run(data, items, conditions=conditions, seed=args.seed,
                        rouge=not args.no_rouge)
    if prompts is not None:
        from .linear_recovery import linear_reference
        from .recovery import donors

        ref_start = time.perf_counter()
        try:
            result["linear_reference"] = linear_reference(
                reader, data, items, donors(items, data, args.seed), prompts)
        except ValueError as e:
            raise UsageError(f"--linear-reference {args.linear_reference}: {e}") from None
        result["seconds"]["linear_reference"] = time.perf_counter() - ref_start
    result["seconds"]["total"] = time.perf_counter() - start
    return finish(result, print_recovery, args.json, kind="recovery",
                  decoder=reader.decoder_path, split=args.split, choices=args.choices,
                  seed=args.seed, limit=args.limit, max_new_tokens=args.max_new_tokens)


def print_recovery(result: dict) -> None:
    print(f"{result['n']} records with a hidden system prompt, {result['choices']} prompts "
          f"each (chance {result['chance']:.3f}), split {result['split']}; "
          f"Q: {result['question']}")
    print(f"true prompt ranked first (by {result['ranked_by']}):")
    pvals = result["top1"].get("mcnemar_p_vs_activations", {})
    for c, s in result["top1"]["conditions"].items():
        p = f"  McNemar p vs activations {pvals[c]:.2g}" if c in pvals else ""
        print(f"  {c:<16} {s['accuracy']:.3f}  [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  "
              f"{s['correct']}/{s['n']}{p}")
    rouge = result.get("rouge_l")
    if rouge:
        print("ROUGE-L F1 of the greedy answer against the true prompt:")
        pvals = rouge.get("sign_test_p_vs_activations", {})
        for c, s in rouge["conditions"].items():
            p = f"  sign test p vs activations {pvals[c]:.2g}" if c in pvals else ""
            print(f"  {c:<16} {s['mean']:.3f}  [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]{p}")
        ref = rouge["another_prompt_of_the_family"]
        print(f"  (another prompt of the family scores {ref['mean']:.3f} against the true one)")
    linear = result.get("linear_reference")
    if linear:
        print(f"linear reference (a ridge map fitted on {linear['fitted_on']} other prompts; "
              f"{linear['ranked_by']}):")
        pvals = linear["mcnemar_p_vs_activations"]
        for c, s in linear["conditions"].items():
            p = f"  McNemar p vs activations {pvals[c]:.2g}" if c in pvals else ""
            print(f"  {c:<16} {s['accuracy']:.3f}  [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  "
                  f"{s['correct']}/{s['n']}{p}")
    print("by family:")
    for f, g in result["by_family"].items():
        accs = "  ".join(f"{c} {s['accuracy']:.2f}" for c, s in g["top1"].items())
        rl = "  ".join(f"{c} {s['mean']:.2f}" for c, s in (g.get("rouge_l") or {}).items())
        print(f"  {f:<10} n={g['n']:<4} top-1: {accs}" + (f"  ROUGE-L: {rl}" if rl else ""))
    print(f"({result['seconds']['total']:.0f} s)")


# ---- eval relations ---------------------------------------------------------------------

def register_relations(sub) -> None:
    from .relations import READS

    p = sub.add_parser(
        "relations", help="relational knowledge (six Patchscopes relations) with four baselines",
        description="Read each subject's activations in its source context and ask the decoder "
                    "for the attribute (correct: the gold object in its first 20 tokens, "
                    "ignoring case). Beside it: the untrained decoder, the text-only baseline, "
                    "shuffled activations, and a linear probe on held-out subjects.")
    p.add_argument("--data", nargs="+", required=True,
                   help="Patchscopes TSV files, or folders of them "
                        "(e.g. ../shared/data/patchscopes_factual)")
    p.add_argument("--decoder", help="decoder directory (default: the shipped decoder)")
    p.add_argument("--layers", nargs="+",
                   help="read layers: numbers, lists (10,14) or ranges (1-15) "
                        "(default: the decoder's read layer)")
    p.add_argument("--relations", help="comma-separated subset of the relations (file stems)")
    p.add_argument("--read", choices=READS, default="last",
                   help="last: the subject's last token, as Patchscopes (default); subject: "
                        "every token of the subject")
    p.add_argument("--limit", type=int, default=0,
                   help="at most this many facts per relation, drawn with the seed (0: all; "
                        "about 4,100 facts in all, slow on a CPU)")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of each object's subjects held out to test the probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", metavar="OUT", help="write the full result (every answer) as JSON")
    p.set_defaults(func=cmd_relations)


def parse_layers(values) -> list[int]:
    """``["1-3", "7,9"]`` -> ``[1, 2, 3, 7, 9]`` (sorted, without repeats)."""
    from ..errors import UsageError

    out = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                    if lo > hi:
                        raise ValueError
                    out.update(range(lo, hi + 1))
                else:
                    out.add(int(part))
            except ValueError:
                raise UsageError(f"--layers: cannot read {part!r}; give numbers, lists (10,14) "
                                "or ranges (1-15)") from None
    if not out:
        raise UsageError("--layers: no layers given")
    return sorted(out)


def cmd_relations(args) -> int:
    from tqdm import tqdm

    from ..errors import UsageError
    from ..reading import load
    from .relations import RelationsEval, limit_facts, load_relations

    if not 0 < args.test_fraction < 1:
        raise UsageError("--test-fraction must be between 0 and 1")
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    only = [r.strip() for r in args.relations.split(",") if r.strip()] if args.relations \
        else None
    relations = load_relations(args.data, only=only)
    for rel in relations:
        rel.facts = limit_facts(rel.facts, args.limit, args.seed)
    reader = load(args.decoder, batch_size=args.batch_size)
    if reader.spec.read_together and args.layers:
        raise UsageError(f"--layers: this decoder reads layers {list(reader.read_at)} together; "
                         "leave --layers out")
    layers = parse_layers(args.layers) if args.layers else [reader.read_at]
    for layer in layers if not reader.spec.read_together else ():
        reader.info.check_layer(layer, "read layer")
    # zero-shot or not: a decoder trained on relation files of the same name has seen them
    trained = set((reader.spec.extra or {}).get("trained_relations") or ())
    seen = sorted(trained & {r.name for r in relations})
    if seen:
        print(f"warning: the decoder was trained on {', '.join(seen)}: not zero-shot",
              file=sys.stderr)
    ev = RelationsEval(reader, read=args.read, batch_size=args.batch_size, seed=args.seed,
                       test_fraction=args.test_fraction)
    with tqdm(total=ev.rows(relations, layers), desc="generating", unit="answer") as bar:
        ev.progress = bar.update
        result = ev.run(relations, layers)
    result.update({"decoder": reader.decoder_path, "limit": args.limit,
                   "trained_relations": sorted(trained), "not_zero_shot": seen})
    print_relations(result)
    if args.json:
        write_json(args.json, result)
    return 0


def _acc(s: dict | None) -> str:
    if not s or not s["n"]:
        return f"{'-':<22}"
    return f"{s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]".ljust(22)


def print_relations(result: dict) -> None:
    from .relations import CONDITIONS

    print(f"read: the subject's {'last token' if result['read'] == 'last' else 'tokens'}; "
          f"correct: the object in the first {result['scored_tokens']} generated tokens; "
          f"probe and 'test' columns on held-out subjects ({result['test_fraction']:.0%})")
    for name, rel in result["relations"].items():
        skipped = ", ".join(f"{v} {k}" for k, v in rel["skipped"].items()) or "none"
        test = (f"test {rel['n_test']} facts of {rel['test_subjects']} subjects "
                f"(majority-object rate {rel['chance']:.3f})" if rel["n_test"] else
                "no test subjects (every object has a single subject): no probe")
        print(f"\n{name}: {rel['n']} facts, {rel['subjects']} subjects, {rel['objects']} "
              f"objects; {test}; rows skipped: {skipped}")
        print(f"  Q: {rel['question']}")
        for layer, res in rel["layers"].items():
            print(f"  layer {layer:<15} {'all subjects':<22} {'test subjects':<22} "
                  "McNemar p vs decoder (test)")
            for c in CONDITIONS:
                p = res["test"]["mcnemar_p_vs_decoder"].get(c)
                print(f"    {c:<19} {_acc(res['all']['conditions'].get(c))} "
                      f"{_acc(res['test']['conditions'].get(c))} "
                      f"{'' if p is None else f'{p:.2g}'}")
    for subset in ("test", "all"):
        print(f"\nmean over relations ({subset} subjects):")
        for layer, res in result["mean"].items():
            if layer == "over_layers" and len(result["layers"]) < 2:
                continue
            name = "mean of layers" if layer == "over_layers" else f"layer {layer}"
            accs = "  ".join(f"{c} {res[subset][c]:.3f}" for c in CONDITIONS
                             if c in res[subset])
            print(f"  {name:<15} {accs}")
    print(f"({result['seconds']:.0f} s)")


# ---- eval report ------------------------------------------------------------------------

def register_report(sub) -> None:
    p = sub.add_parser(
        "report", help="a Markdown report with tables and plots from eval --json results",
        description="Read JSON results of eval persona, eval relations and eval heldout and "
                    "write DIR/report.md with tables and PNG plots beside it.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="JSON files written by eval ... --json")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and plots")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0


def register_classification(sub) -> None:
    from .classification import DEFAULT_LIMIT

    p = sub.add_parser(
        "classification", help="yes/no classification of held-out texts, with three controls",
        description="Activation Oracles' classification protocol on the held-out rows of the "
                    "classification sets: one vector at each text's last token, a yes/no "
                    "question naming a label (balanced), greedy answers of up to 10 tokens; "
                    "beside it shuffled, no_activations and text_only.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the classification folder (CSV sets and paraphrases/question.json), "
                        "e.g. ../shared/data/classification")
    p.add_argument("--decoder", help="decoder directory (default: the shipped decoder)")
    p.add_argument("--sets", help="comma-separated set names (CSV stems, e.g. cities,tense; "
                                  "default: every set in DIR)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help="at most this many items per set, half Yes and half No, drawn with the "
                        "seed (0: every held-out row balance allows; default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", "--out", dest="json", metavar="OUT",
                   help="write the full result (every answer) as JSON")
    p.set_defaults(func=cmd_classification)


def cmd_classification(args) -> int:
    from tqdm import tqdm

    from ..data.classification import HELD_OUT, load_classification
    from ..errors import UsageError
    from ..reading import load
    from .classification import MAX_NEW_TOKENS, ClassificationEval, build_items

    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    only = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else None
    sets = load_classification(args.data, only=only)
    items = build_items(sets, limit=args.limit, seed=args.seed)
    if not items:
        raise UsageError("no items to evaluate (the sets' held-out rows give no balanced pair)")
    reader = load(args.decoder, batch_size=args.batch_size)
    ev = ClassificationEval(reader, batch_size=args.batch_size)
    with tqdm(total=ev.rows(items), desc="answering", unit="answer") as bar:
        ev.progress = bar.update
        result = ev.run(items)
    return finish(result, print_classification, args.json, kind="classification",
                  decoder=reader.decoder_path, split="held-out", held_out=HELD_OUT,
                  read_layer=reader.spec.read_layer, sets=[s.name for s in sets],
                  **({"read_layers": list(reader.read_at)} if reader.spec.read_together
                     else {}),
                  limit=args.limit, seed=args.seed, max_new_tokens=MAX_NEW_TOKENS)


def print_classification(result: dict) -> None:
    where = (f"layers {', '.join(map(str, result['read_layers']))} together"
             if result.get("read_layers") else f"layer {result['read_layer']}")
    print(f"{result['n']} held-out items from {len(result['by_set'])} set(s), Yes and No "
          f"balanced (chance 0.5); one vector at the last token, {where}")
    pvals = result.get("mcnemar_p_vs_activations", {})
    for c, s in result["conditions"].items():
        p = f"  McNemar p vs activations {pvals[c]:.2g}" if c in pvals else ""
        strict = result["strict"][c]["accuracy"]
        answers = ", ".join(f"{k} {v}" for k, v in sorted(result["answers"][c].items()))
        print(f"  {c:<15} {s['accuracy']:.3f}  [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  strict "
              f"{strict:.3f}  ({answers}){p}")
    for key in ("by_set", "by_answer"):
        print(key.replace("_", " ") + ":")
        for group, g in result[key].items():
            accs = "  ".join(f"{c} {s['accuracy']:.2f}" for c, s in g["conditions"].items())
            print(f"  {group:<24} n={g['n']:<4} {accs}")
    print(f"({result['seconds']:.0f} s)")
