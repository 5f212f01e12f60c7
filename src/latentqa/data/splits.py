"""Held-out behaviours: a seeded hash decides, label by label, which labels are held out.

Each label's fate depends only on the label and the seed, never on what else is in the files,
so adding data never moves an existing label between train and held-out. The held-out share is
``fraction`` in expectation (exactly so only for many labels).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from .loading import LatentQAData


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
