"""Token ids of the decoder's probe, with placeholder positions and training labels.

The probe is rendered with the decoder's chat template (``render_dialog``) around a sentinel;
the text is then tokenized in pieces cut at the sentinel and at the supervised spans, and the
sentinel's piece is replaced by one placeholder id per read activation. Building the ids
directly means the count is exact whatever the tokenizer does to "? ? ?", and cutting at the
answer's start makes the generation prompt an exact prefix of the training sequence.

With ``layers`` (several layers read together) the layout holds one sentinel per layer, each
after its label (``layouts.layer_groups``); each becomes N placeholder ids, so the probe has
len(layers) x N placeholders, group by group, matching vectors concatenated in layer order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..batching import attention_mask, pad
from ..chat import render_dialog
from .layouts import PAPER_LAYOUT, PLACEHOLDERS, ProbeLayout

IGNORE_INDEX = -100
SUPERVISE = ("reply_and_answer", "answer")
_GENERATE = "\ue00cgenerate\ue00d"  # stands for the answer the decoder is to write


@dataclass
class Probe:
    input_ids: torch.Tensor  # long [D]
    placeholder_mask: torch.Tensor  # bool [D], exactly N True
    labels: torch.Tensor  # long [D], IGNORE_INDEX except on supervised tokens


def placeholder_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the placeholder {text!r} is {len(ids)} tokens for this tokenizer; a "
                         "probe layout needs a placeholder that is exactly one token")
    return ids[0]


def _turn_end(rendered, message: int) -> int:
    """End (in characters) of a message's turn: its content plus the end-of-turn marker."""
    return max(e for (_s, e), t in zip(rendered.offsets, rendered.turn_index) if t == message)


class ProbeBuilder:
    """Builds probes for one tokenizer and layout, caching the N-independent part per question."""

    def __init__(self, tokenizer, layout: ProbeLayout = PAPER_LAYOUT, *, cache: bool = True):
        self.tokenizer, self.layout = tokenizer, layout
        self.placeholder_id = placeholder_token_id(tokenizer, layout.placeholder)
        self._cache: dict | None = {} if cache else None

    def build(self, num_placeholders: int, question: str, answer: str | None = None, *,
              supervise: str = "reply_and_answer", layer: int | None = None,
              layers=None) -> Probe:
        """The probe for N read activations; with ``answer=None`` it ends in the decoder's
        generation prompt (for reading), with an answer it is a training or scoring sequence.
        ``layers``: the layers read together, one labelled group of N placeholders each."""
        if supervise not in SUPERVISE:
            raise ValueError(f"supervise must be one of {SUPERVISE}, got {supervise!r}")
        if num_placeholders < 1:
            raise ValueError("a probe needs at least one placeholder (nothing was read)")
        if layers is not None:
            layers = tuple(layers)
            if not layers:
                raise ValueError("layers: give at least one layer (or None for one run)")
        key = (question, answer, supervise, layer) if layers is None else \
            (question, answer, supervise, layer, layers)
        pieces = self._cache.get(key) if self._cache is not None else None
        if pieces is None:
            pieces = self._pieces(question, answer, supervise, layer, layers)
            if self._cache is not None:
                self._cache[key] = pieces
        ids, placeholder, labels = [], [], []
        for kind, piece in pieces:
            if kind == "placeholders":
                piece = [self.placeholder_id] * num_placeholders
            ids += piece
            placeholder += [kind == "placeholders"] * len(piece)
            labels += piece if kind == "supervised" else [IGNORE_INDEX] * len(piece)
        probe = Probe(torch.tensor(ids, dtype=torch.long),
                      torch.tensor(placeholder, dtype=torch.bool),
                      torch.tensor(labels, dtype=torch.long))
        groups = 1 if layers is None else len(layers)
        assert int(probe.placeholder_mask.sum()) == num_placeholders * groups
        return probe

    def _pieces(self, question, answer, supervise, layer,
                layers=None) -> list[tuple[str, list[int]]]:
        if layers is None:  # the call of a single run, as it always was
            messages, reply, answer_at = self.layout.dialog(question, answer, layer)
        else:
            messages, reply, answer_at = self.layout.dialog(question, answer, layer, layers)
        if answer is None:  # render a stand-in answer turn and cut where its content starts
            messages.append({"role": self.layout.reply_role, "content": _GENERATE})
        rendered = render_dialog(self.tokenizer, messages)
        text = rendered.text
        end = rendered.char_spans[-1][0] if answer is None else len(text)
        supervised = [m for m in (answer_at, reply if supervise == "reply_and_answer" else None)
                      if m is not None]
        spans = [(rendered.char_spans[m][0], _turn_end(rendered, m)) for m in supervised]
        starts = _occurrences(text, PLACEHOLDERS)  # one per group: one without ``layers``
        cuts = sorted({0, end, *[c for span in spans for c in span if c <= end],
                       *[c for s in starts for c in (s, s + len(PLACEHOLDERS)) if c <= end]})
        pieces = []
        for a, b in zip(cuts, cuts[1:]):
            if a in starts:
                pieces.append(("placeholders", []))
                continue
            kind = "supervised" if any(s <= a and b <= e for s, e in spans) else "text"
            pieces.append((kind, self.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]))
        return pieces


def _occurrences(text: str, sentinel: str) -> list[int]:
    """Where each ``sentinel`` starts in ``text``, in order (at least one)."""
    found = [text.index(sentinel)]
    while (at := text.find(sentinel, found[-1] + len(sentinel))) >= 0:
        found.append(at)
    return found


def build_probe(tokenizer, num_placeholders: int, question: str, answer: str | None = None, *,
                layout: ProbeLayout = PAPER_LAYOUT, supervise: str = "reply_and_answer",
                layer: int | None = None, layers=None) -> Probe:
    """One probe; see ``ProbeBuilder.build`` (use a builder to reuse work across calls)."""
    return ProbeBuilder(tokenizer, layout, cache=False).build(
        num_placeholders, question, answer, supervise=supervise, layer=layer, layers=layers)


def pad_probes(probes, pad_id: int, side: str):
    """Stack probes: ids, attention mask, placeholder mask, labels, padded on ``side``."""
    ids = [p.input_ids for p in probes]
    return (pad(ids, pad_id, side=side), attention_mask(ids, side=side),
            pad([p.placeholder_mask for p in probes], False, side=side),
            pad([p.labels for p in probes], IGNORE_INDEX, side=side))
