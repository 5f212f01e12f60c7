"""Pad a list of ``Example`` into batch tensors for the target and the decoder."""

from __future__ import annotations

import torch

from .probe import IGNORE_INDEX


def _pad(rows: list[torch.Tensor], value, side: str) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if side == "right":
            out[i, : len(r)] = r
        else:
            out[i, width - len(r):] = r
    return out


class Collator:
    """Right padding by default (positions need no shifting); pad id from the tokenizer, its
    end-of-sequence id when it has no pad token. Padding is never read, written or supervised:
    masks are padded with False and labels with -100."""

    def __init__(self, tokenizer=None, *, pad_id: int | None = None, padding_side: str = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_id is None and tokenizer is not None:
            pad_id = tokenizer.pad_token_id
            if pad_id is None:
                pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("no pad id: the tokenizer has neither a pad nor an eos token; "
                             "pass pad_id=")
        self.pad_id, self.side = int(pad_id), padding_side

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        side = self.side

        def ones(rows):
            return [torch.ones(len(r), dtype=torch.long) for r in rows]

        target = [e.target_input_ids for e in examples]
        decoder = [e.decoder_input_ids for e in examples]
        return {
            "target_input_ids": _pad(target, self.pad_id, side),
            "target_attention_mask": _pad(ones(target), 0, side),
            "read_mask": _pad([e.read_mask for e in examples], False, side),
            "decoder_input_ids": _pad(decoder, self.pad_id, side),
            "decoder_attention_mask": _pad(ones(decoder), 0, side),
            "placeholder_mask": _pad([e.placeholder_mask for e in examples], False, side),
            "labels": _pad([e.labels for e in examples], IGNORE_INDEX, side),
        }
