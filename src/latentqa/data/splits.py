"""Held-out behaviours: a seeded hash decides, label by label, which labels are held out.

Each label's fate depends only on the label and the seed, never on what else is in the files,
so adding data never moves an existing label between train and held-out. The held-out share is
``fraction`` in expectation (exactly so only for many labels). ``drop_held_out_overlap`` then
removes training records that share a text with a held-out record.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

from .loading import LatentQAData
from .records import Record, text_key


def label_hash(label: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by (seed, label); stable across runs and machines."""
    digest = hashlib.blake2b(f"{seed}\x00{label}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_held_out(label: str, fraction: float, seed: int = 0) -> bool:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1], got {fraction}")
    return label_hash(label, seed) < fraction


def split_labels(labels: Iterable[str], held_out: float = 0.1,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """(train labels, held-out labels), each sorted."""
    labels = sorted(set(labels))
    out = [lab for lab in labels if is_held_out(lab, held_out, seed)]
    chosen = set(out)
    return [lab for lab in labels if lab not in chosen], out


def split_by_label(data: LatentQAData, held_out: float = 0.1,
                   seed: int = 0) -> tuple[LatentQAData, LatentQAData]:
    """(train data, held-out data): every record and QA pair of a label lands on one side."""
    train, test = split_labels(data.labels, held_out, seed)
    return data.subset(train), data.subset(test)


def record_texts(record: Record) -> set[str]:
    """The ``text_key`` of every message of a record: system prompt, user turns, replies."""
    return {text_key(m["content"]) for m in record.messages}


_WORDS = re.compile(r"[a-z0-9]+")


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORDS.findall(text.casefold()))


def _near(a: frozenset[str], b: frozenset[str], threshold: float) -> bool:
    return bool(a or b) and len(a & b) >= threshold * len(a | b)


def drop_held_out_overlap(train: LatentQAData, held_out, *,
                          near: float | None = None) -> tuple[LatentQAData, int]:
    """``train`` without every record that shares a text with a held-out record, and how many
    records were dropped.

    A training record is dropped when its system prompt, any user turn or any reply equals
    (white space folded, case ignored: ``text_key``) any message of a record of ``held_out``
    (a ``LatentQAData`` or records). Labels split held-out behaviours from training ones, but
    the same user turn, or a swap's prompt, can still appear on both sides; call this after
    every extra record source (swaps, unlabeled prompts, plain dialogs) has been added. The QA
    of labels that lose all their records goes with them.

    ``near`` (a word-set Jaccard in (0, 1]) also drops training records whose first message
    (the system prompt, or the instruction of control and stimulus records) is that close to a
    held-out record's first message: a few upstream train prompts are one word away from eval
    prompts ("please try to include" / "please include").
    """
    if near is not None and not 0.0 < near <= 1.0:
        raise ValueError(f"near must be in (0, 1], got {near}")
    records = held_out.records if isinstance(held_out, LatentQAData) else list(held_out)
    banned = set().union(set(), *(record_texts(r) for r in records))
    held_firsts = {_words(r.messages[0]["content"]) for r in records} if near else set()
    verdict: dict[str, bool] = {}  # first message -> near a held-out one

    def close(record: Record) -> bool:
        text = record.messages[0]["content"]
        if text not in verdict:
            words = _words(text)
            verdict[text] = any(_near(words, h, near) for h in held_firsts)
        return verdict[text]

    kept = [r for r in train.records
            if banned.isdisjoint(record_texts(r)) and not (near and close(r))]
    dropped = len(train.records) - len(kept)
    if not dropped:
        return train, 0
    gone = {r.label for r in train.records} - {r.label for r in kept}
    return train.with_records(kept, {k: v for k, v in train.qa.items() if k not in gone}), dropped
