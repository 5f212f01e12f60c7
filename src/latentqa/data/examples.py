"""Token-level training examples: what the target reads and what the decoder is trained on.

An ``Example`` pairs the target's input ids with its read mask (the tokens whose activations
are captured: the whole turns of the record's read messages, never a masked turn nor a default
system prompt the template injects) and the decoder's probe, with one placeholder per read token.
A ``Row`` is the same for every QA pair of one record: one read of the target, several probes
(the trainer packs them into one decoder row, ``decoding.grouped_logprobs``).

With ``layers`` (several layers read together) each probe has one labelled group of
placeholders per layer, each as many as the read tokens (``probe.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ReadingError
from ..selection import Read, render_baseline, render_read
from .layouts import PAPER_LAYOUT, ProbeLayout
from .loading import LatentQAData
from .probe import ProbeBuilder
from .records import Record


@dataclass
class TargetInput:
    input_ids: torch.Tensor  # long [T]
    read_mask: torch.Tensor  # bool [T]
    # the dialog without its instruction, read at the same tokens (``instruction_gain``), or None
    baseline_ids: torch.Tensor | None = None
    baseline_mask: torch.Tensor | None = None


@dataclass
class Example:
    target_input_ids: torch.Tensor  # long [T]
    read_mask: torch.Tensor  # bool [T]; read_mask.sum() x layers read == placeholder_mask.sum()
    decoder_input_ids: torch.Tensor  # long [D]
    placeholder_mask: torch.Tensor  # bool [D]
    labels: torch.Tensor  # long [D], -100 except on supervised tokens
    baseline_ids: torch.Tensor | None = None  # see TargetInput
    baseline_mask: torch.Tensor | None = None

    @property
    def num_read(self) -> int:
        return int(self.read_mask.sum())


def render_target(tokenizer, record: Record, *, max_tokens: int | None = None,
                  baseline: bool = False) -> TargetInput:
    """What the target reads of ``record``; with ``baseline``, also the same dialog without
    its instruction (``selection.render_baseline``; a single-token read is its own)."""
    # Whole turns: a read turn's role header and end marker are read too (they carry the
    # model's state at those points), never a default system prompt the template injects.
    rendered, read_mask = render_read(
        tokenizer, record.messages, Read.of_messages(*record.read), max_tokens=max_tokens,
        add_generation_prompt=record.generation_prompt)
    if record.read_span is not None:
        span = rendered.char_tokens(record.read[0], *record.read_span)
        if span is None:
            raise ValueError(f"{record.source or 'record'} #{record.index}: no token covers "
                             f"characters {record.read_span} of message {record.read[0]}")
        read_mask = torch.zeros(len(rendered.input_ids), dtype=torch.bool)
        read_mask[span[1] - 1] = True
    ids = torch.tensor(rendered.input_ids, dtype=torch.long)
    if not baseline:
        return TargetInput(ids, read_mask)
    if record.read_span is not None:
        return TargetInput(ids, read_mask, ids, read_mask)
    try:
        base_ids, base_mask = render_baseline(
            tokenizer, record.messages, record.read, ids, read_mask,
            max_tokens=max_tokens, add_generation_prompt=record.generation_prompt)
    except ReadingError as e:
        raise ValueError(f"{record.source or 'record'} #{record.index}: {e}") from None
    return TargetInput(ids, read_mask, base_ids, base_mask)


def build_example(tokenizer, record: Record, question: str, answer: str, *,
                  layout: ProbeLayout = PAPER_LAYOUT, supervise: str = "reply_and_answer",
                  layer: int | None = None, max_tokens: int | None = None,
                  builder: ProbeBuilder | None = None, layers=None) -> Example:
    """The example for one (record, QA) pair. Pass a ``builder`` to reuse probe work."""
    target = render_target(tokenizer, record, max_tokens=max_tokens)
    builder = builder or ProbeBuilder(tokenizer, layout, cache=False)
    probe = builder.build(int(target.read_mask.sum()), question, answer, supervise=supervise,
                          layer=layer, layers=layers)
    return Example(target.input_ids, target.read_mask, probe.input_ids, probe.placeholder_mask,
                   probe.labels)


class LatentQADataset(torch.utils.data.Dataset):
    """Examples over ``data.pairs``, tokenized lazily; target renderings cached per record.
    ``layers``: the layers read together (probes with one placeholder group each)."""

    def __init__(self, data: LatentQAData, tokenizer, *, layout: ProbeLayout = PAPER_LAYOUT,
                 supervise: str = "reply_and_answer", layer: int | None = None,
                 max_tokens: int | None = None, layers=None, baselines: bool = False):
        self.data, self.tokenizer, self.baselines = data, tokenizer, baselines
        self.supervise, self.layer, self.max_tokens = supervise, layer, max_tokens
        self.layers = None if layers is None else tuple(layers)
        self.builder = ProbeBuilder(tokenizer, layout)
        self._targets: dict[int, TargetInput] = {}

    def __len__(self) -> int:
        return len(self.data.pairs)

    def target(self, record_index: int) -> TargetInput:
        if record_index not in self._targets:
            self._targets[record_index] = render_target(
                self.tokenizer, self.data.records[record_index], max_tokens=self.max_tokens,
                baseline=self.baselines)
        return self._targets[record_index]

    def __getitem__(self, i: int) -> Example:
        return self.example(i)

    def example(self, i: int, record: int | None = None) -> Example:
        """Pair ``i``'s QA read from ``record``'s dialog (default: the pair's own). Another
        record's is the shuffled control: its read goes in whole, the probe sized for it."""
        target = self.target(self.data.pairs[i].record if record is None else record)
        probe = self.probe(i, int(target.read_mask.sum()))
        return Example(target.input_ids, target.read_mask, probe.input_ids,
                       probe.placeholder_mask, probe.labels, target.baseline_ids,
                       target.baseline_mask)

    def probe(self, i: int, n: int):
        """Pair ``i``'s decoder probe with ``n`` placeholders (per layer read)."""
        pair = self.data.pairs[i]
        return self.builder.build(n, pair.question, pair.answer, supervise=self.supervise,
                                  layer=self.layer, layers=self.layers)

    @property
    def lengths(self) -> list[int]:
        """Cheap size of each example (characters), for length-grouped batching without
        tokenizing everything up front; characters track tokens closely enough to group by."""
        if not hasattr(self, "_lengths"):
            records = self.data.records
            # the target's whole dialog plus the decoder's read span, question and answer
            sizes = [sum(len(m["content"]) for m in r.messages)
                     + sum(len(r.messages[j]["content"]) for j in r.read) for r in records]
            self._lengths = [sizes[p.record] + len(p.question) + len(p.answer)
                             for p in self.data.pairs]
        return self._lengths


@dataclass
class Row:
    """Every QA pair of one record: the target's input once, one probe per pair."""

    record: int  # index into ``LatentQAData.records``
    target_input_ids: torch.Tensor  # long [T]
    read_mask: torch.Tensor  # bool [T]
    probes: list  # of data.probe.Probe, one per pair, in the record's pair order
    baseline_ids: torch.Tensor | None = None  # see TargetInput
    baseline_mask: torch.Tensor | None = None


class LatentQARows(torch.utils.data.Dataset):
    """``Row``s of a ``LatentQADataset``: one per record with pairs, or one per pair
    (``per_record=False``: the one-pair-per-row layout, each row a single probe)."""

    def __init__(self, examples: LatentQADataset, *, per_record: bool = True):
        self.examples, self.data = examples, examples.data
        groups: dict[int, list[int]] = {}
        for i, pair in enumerate(self.data.pairs):
            groups.setdefault(pair.record, []).append(i)
        self.rows = list(groups.values()) if per_record else [[i] for i in
                                                              range(len(self.data.pairs))]

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self, i: int) -> list[int]:
        """Indices (into ``data.pairs``) of row ``i``'s pairs."""
        return self.rows[i]

    def record(self, i: int) -> int:
        return self.data.pairs[self.rows[i][0]].record

    def __getitem__(self, i: int) -> Row:
        record = self.record(i)
        target = self.examples.target(record)
        return Row(record, target.input_ids, target.read_mask,
                   self.probes(i, int(target.read_mask.sum())), target.baseline_ids,
                   target.baseline_mask)

    def probes(self, i: int, n: int) -> list:
        """Row ``i``'s probes with ``n`` placeholders (per layer read): its own read's count,
        or another record's, to carry that record's activations whole (the shuffled control)."""
        return [self.examples.probe(k, n) for k in self.rows[i]]

    @property
    def lengths(self) -> list[int]:
        """Cheap size of each row (characters): its target dialog once, each pair's probe."""
        per_pair, records = self.examples.lengths, self.data.records
        out = []
        for row in self.rows:
            r = records[self.data.pairs[row[0]].record]
            dialog = sum(len(m["content"]) for m in r.messages)
            out.append(dialog + sum(per_pair[k] - dialog for k in row))
        return out
