"""Counts, token lengths and problems of a set of data files (``latentqa data stats``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..chat import ChatTemplateError, DialogTooLongError
from ..errors import MissingFileError
from .errors import Problem
from .examples import render_target
from .layouts import PAPER_LAYOUT, ProbeLayout
from .loading import LatentQAData, expand_paths, read_data
from .probe import ProbeBuilder

PERCENTILES = (0, 50, 90, 99, 100)


def percentiles(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    values = sorted(values)
    out = {"count": len(values), "mean": round(sum(values) / len(values), 1)}
    for p in PERCENTILES:  # nearest rank
        out[f"p{p}"] = values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))] \
            if p else values[0]
    return out


def count(data: LatentQAData) -> dict:
    records = data.records
    by_kind_family = Counter(f"{r.kind}/{r.family}" for r in records)
    qa_pairs = sum(1 for p in data.pairs if not p.derived)
    return {
        "records": len(records),
        "by_kind": dict(sorted(Counter(r.kind for r in records).items())),
        "by_family": dict(sorted(Counter(r.family for r in records).items())),
        "by_kind_and_family": dict(sorted(by_kind_family.items())),
        "labels": len({r.label for r in records}),
        "qa_labels": len(data.qa),
        "qa_labels_without_records": len(set(data.qa) - {r.label for r in records}),
        "pairs": len(data.pairs),
        "pairs_from_qa": qa_pairs,
        "pairs_system_recovery": len(data.pairs) - qa_pairs,
    }


def token_lengths(data: LatentQAData, tokenizer, *, layout: ProbeLayout = PAPER_LAYOUT,
                  layer: int | None = None) -> tuple[dict, list[Problem]]:
    """Percentiles of the target's read length and the decoder's full prompt length."""
    builder = ProbeBuilder(tokenizer, layout)
    read, target, decoder, problems = {}, [], [], []
    for i, r in enumerate(data.records):
        try:
            t = render_target(tokenizer, r)
        except (ChatTemplateError, DialogTooLongError, ValueError) as e:
            problems.append(Problem(r.source, f"record {r.index}", None, str(e), r.index))
            continue
        read[i] = int(t.read_mask.sum())
        target.append(len(t.input_ids))
    for p in data.pairs:
        if p.record in read:
            probe = builder.build(read[p.record], p.question, p.answer, layer=layer)
            decoder.append(len(probe.input_ids))
    return {"target_total": percentiles(target), "target_read": percentiles(list(read.values())),
            "decoder_prompt": percentiles(decoder)}, problems


def compute_stats(paths, tokenizer=None, *, system_recovery: bool = True,
                  layout: ProbeLayout = PAPER_LAYOUT, layer: int | None = None) -> dict:
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        if Path(p).is_dir() and not expand_paths([p]):
            raise MissingFileError(f"{p} holds no .json or .jsonl files")
    data, problems = read_data(paths, system_recovery=system_recovery)
    if not data.records and not data.qa and not problems:  # "[]", "{}": nothing to count
        problems = [Problem(f, None, None, "holds no records or QA pairs") for f in data.files]
    report = {"files": data.files, "system_recovery": system_recovery, **count(data)}
    if tokenizer is not None:
        report["tokens"], more = token_lengths(data, tokenizer, layout=layout, layer=layer)
        problems += more
    report["problems"] = [str(p) for p in problems]
    return report
