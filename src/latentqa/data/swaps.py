"""Swapped system prompts: one user turn under several hidden instructions.

In the paper's ``system`` records every user turn appears once, under the one system prompt it
was written for, so the decoder can answer "what persona?" from the user turn's *text* (which
was chosen to suit the persona) without reading what the hidden prompt did to the activations.
Our decoders learned exactly that: on held-out ``system`` records they barely beat shuffled
activations, although a linear probe finds the hidden prompt in the same activations.

A swap record keeps a system record's user turn and gives it another training record's system
prompt and label. The target really runs under that prompt, so its activations carry it and the
label's QA pairs (and the system-prompt-recovery pair) are true of the dialog; but the text the
decoder reads no longer matches the answer, and the same user turn now comes with different
answers. Only the activations tell them apart, which is what the decoder should learn to use.

Build swaps from training labels only (after the held-out split): held-out prompts never appear.
"""

from __future__ import annotations

import dataclasses
import random

from .loading import LatentQAData
from .records import Record

SWAP_SOURCE = "system-swap"


def _swappable(record: Record) -> bool:
    """A hidden system prompt followed by the turns that are read."""
    return record.hidden_system_prompt is not None and record.read_span is None


def add_system_swaps(data: LatentQAData, per_record: int, *, seed: int = 0) -> LatentQAData:
    """``data`` plus ``per_record`` swap records for every record with a hidden system prompt:
    its read turns under the system prompt (and with the label) of another such record of a
    different label, drawn with ``seed`` without repeats."""
    if per_record < 0:
        raise ValueError(f"system swaps per record must be >= 0, got {per_record}")
    donors = [r for r in data.records if _swappable(r)]
    if per_record == 0 or len({r.label for r in donors}) < 2:
        return data
    rng = random.Random(seed)
    swaps = []
    for record in donors:
        others = [d for d in donors if d.label != record.label]
        for donor in rng.sample(others, min(per_record, len(others))):
            messages = (donor.messages[0],) + record.messages[1:]
            swaps.append(dataclasses.replace(record, messages=messages, label=donor.label,
                                             source=SWAP_SOURCE, index=len(swaps)))
    return data.with_records(list(data.records) + swaps)
