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

``add_system_swaps`` draws donors per record (the trainer's ``system_swaps``; kept as it is so
that earlier decoders' data can be rebuilt). ``balanced_swaps`` is the general form for many
prompts with one record each (data/system_prompts.py): each round is a permutation, so every
prompt is heard under exactly as many other user turns as every user turn gets other prompts.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

from .loading import LatentQAData
from .records import Record, text_key

SWAP_SOURCE = "system-swap"


def swap_record(record: Record, donor: Record, *, source: str = SWAP_SOURCE,
                index: int = -1) -> Record:
    """``record``'s turns after its system prompt, under ``donor``'s system prompt and label."""
    messages = (donor.messages[0],) + record.messages[1:]
    return dataclasses.replace(record, messages=messages, label=donor.label,
                               recovery=donor.recovery, source=source, index=index)


def balanced_swaps(records: list[Record], per_record: int, *, seed: int = 0,
                   source: str = SWAP_SOURCE) -> list[Record]:
    """``per_record`` rounds of swaps over ``records`` (each with a hidden system prompt).

    A round gives every record's turns the prompt of another record (a seeded cyclic
    permutation), so each prompt and each user turn is used once per round. A swap never puts a
    prompt over a user turn it already comes with (texts compared by ``text_key``: a turn that
    recurs under several prompts is the own turn of each), never pairs two records of one label
    and never repeats a (prompt, turns) pair; a record left with no valid donor after repair
    simply gets no swap in that round.
    """
    if per_record < 0:
        raise ValueError(f"swaps per record must be >= 0, got {per_record}")
    bad = [r.index for r in records if not _swappable(r)]
    if bad:
        raise ValueError(f"records without a hidden system prompt cannot be swapped: {bad[:5]}")
    n = len(records)
    if per_record == 0 or n < 2:
        return []
    prompts = [text_key(r.messages[0]["content"]) for r in records]
    turns = [tuple(text_key(m["content"]) for m in r.messages[1:]) for r in records]
    own = defaultdict(set)  # prompt -> the turns it already comes with
    for p, t in zip(prompts, turns):
        own[p].add(t)
    seen = set(zip(prompts, turns))

    def ok(i: int, d: int | None) -> bool:
        return d is not None and records[i].label != records[d].label and \
            turns[i] not in own[prompts[d]] and (prompts[d], turns[i]) not in seen

    rng = random.Random(seed)
    out: list[Record] = []
    for _ in range(per_record):
        order = list(range(n))
        rng.shuffle(order)
        donor: list[int | None] = [0] * n
        for p, i in enumerate(order):
            donor[i] = order[(p + 1) % n]
        for i in order:  # repair the few invalid ones by exchanging donors with another record
            if ok(i, donor[i]):
                continue
            for j in rng.sample(range(n), min(n, 256)):
                if j != i and ok(i, donor[j]) and ok(j, donor[i]):
                    donor[i], donor[j] = donor[j], donor[i]
                    break
            else:
                donor[i] = None
        for i in range(n):
            d = donor[i]
            if ok(i, d):  # checked again: an earlier swap of this round may have used the pair
                seen.add((prompts[d], turns[i]))
                out.append(swap_record(records[i], records[d], source=source, index=len(out)))
    return out


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
            swaps.append(swap_record(record, donor, index=len(swaps)))
    return data.with_records(list(data.records) + swaps)
