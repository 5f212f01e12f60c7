"""Rows of different lengths into batches: the pad id, padding, and length-bucketed order.

Reading, scoring, generation, evaluation, steering, the server and training all stack token
rows the same way; this module is the one place that does it.
"""

from __future__ import annotations

import torch

from .errors import UsageError


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its end-of-sequence token.

    Padding is never attended to, read or supervised, so any real id serves; eos is the usual
    choice for chat models that ship without a pad token.
    """
    found = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    if found is None:
        raise UsageError("the tokenizer has neither a pad nor an end-of-sequence token, so "
                         "rows cannot be padded; set tokenizer.pad_token")
    return int(found)


def pad(rows, value, *, side: str = "right", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stack 1-D rows into ``[len(rows), longest]``, filling with ``value`` on ``side``.

    Right padding suits reading, scoring and training (positions need no shift); left padding
    suits generation, where every row must end where new tokens begin.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rows = [torch.as_tensor(r) for r in rows]
    if not rows:
        raise ValueError("nothing to pad: no rows")
    dtype = dtype or rows[0].dtype
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if side == "left":
            out[i, width - len(r):] = r
        else:
            out[i, :len(r)] = r
    return out


def attention_mask(rows, *, side: str = "right") -> torch.Tensor:
    """1 over each row's own tokens, 0 over its padding."""
    return pad([torch.ones(len(r), dtype=torch.long) for r in rows], 0, side=side)


def pad_tokens(rows, pad_id: int, *, side: str = "right"):
    """Stack token rows for one forward pass: ``(ids, attention_mask, masks)``.

    A row is a token sequence (list or tensor) or a ``(tokens, bool mask)`` pair; ``masks`` is
    None when no row carries one.
    """
    paired = bool(rows) and isinstance(rows[0], tuple)
    tokens = [torch.as_tensor(r[0] if paired else r, dtype=torch.long) for r in rows]
    masks = pad([torch.as_tensor(r[1], dtype=torch.bool) for r in rows], False, side=side) \
        if paired else None
    return pad(tokens, pad_id, side=side), attention_mask(tokens, side=side), masks


def length_batches(lengths: list[int], size: int, *, longest_first: bool = True):
    """Row indices in batches of ``size`` rows of similar length (little padding).

    Longest first by default, so a batch that does not fit in memory fails at once.
    """
    if size < 1:
        raise UsageError(f"batch size must be at least 1, got {size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=longest_first)
    return [order[i:i + size] for i in range(0, len(order), size)]
