"""Pad a list of ``Example`` into batch tensors for the target and the decoder."""

from __future__ import annotations

import torch

from .. import batching
from ..batching import attention_mask, pad
from .probe import IGNORE_INDEX


class Collator:
    """Right padding by default (positions need no shifting); pad id from the tokenizer, its
    end-of-sequence id when it has no pad token. Padding is never read, written or supervised:
    masks are padded with False and labels with -100."""

    def __init__(self, tokenizer=None, *, pad_id: int | None = None, padding_side: str = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_id is None:
            if tokenizer is None:
                raise ValueError("give a tokenizer or pad_id=")
            pad_id = batching.pad_id(tokenizer)
        self.pad_id, self.side = int(pad_id), padding_side

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        side = self.side
        decoder = [e.decoder_input_ids for e in examples]
        return {
            **self._target(examples),
            "decoder_input_ids": pad(decoder, self.pad_id, side=side),
            "decoder_attention_mask": attention_mask(decoder, side=side),
            "placeholder_mask": pad([e.placeholder_mask for e in examples], False, side=side),
            "labels": pad([e.labels for e in examples], IGNORE_INDEX, side=side),
        }

    def rows(self, rows) -> dict:
        """A batch of ``Row``s: the target's side padded as for examples, the probes as given
        (``decoding.grouped_logprobs`` packs each row's probes itself)."""
        if not rows:
            raise ValueError("cannot collate an empty batch")
        return {**self._target(rows), "probes": [r.probes for r in rows],
                "records": [r.record for r in rows]}

    def _target(self, items) -> dict[str, torch.Tensor]:
        """The target's side of examples or rows: input ids, attention mask, read mask."""
        target = [x.target_input_ids for x in items]
        out = {"target_input_ids": pad(target, self.pad_id, side=self.side),
               "target_attention_mask": attention_mask(target, side=self.side),
               "read_mask": pad([x.read_mask for x in items], False, side=self.side)}
        if all(getattr(x, "baseline_ids", None) is not None for x in items):
            base = [x.baseline_ids for x in items]
            out.update(baseline_input_ids=pad(base, self.pad_id, side=self.side),
                       baseline_attention_mask=attention_mask(base, side=self.side),
                       baseline_read_mask=pad([x.baseline_mask for x in items], False,
                                              side=self.side))
        return out


BASELINE_KEYS = ("baseline_input_ids", "baseline_attention_mask", "baseline_read_mask")


def baseline_of(batch: dict, device=None, rows=None):
    """A collated batch's baseline reads (``read_activations``' ``baseline``; only ``rows``
    when given), or None when it has none."""
    if BASELINE_KEYS[0] not in batch:
        return None
    out = tuple(batch[k] if rows is None else batch[k][rows] for k in BASELINE_KEYS)
    return out if device is None else tuple(t.to(device) for t in out)
