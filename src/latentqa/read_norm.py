"""Standardise the vectors a decoder is given before they are written into it.

A block's residual stream is mostly an offset shared by every token, with a few dimensions of
large and nearly constant size; what a hidden system prompt changes in the tokens after it is
a small part of each vector (docs/results.md, "Standardised reads"). Written as they are,
those vectors reach the decoder with the part that differs between dialogs buried under the
part that does not, and larger than the hidden states at the write layer. A linear
reader standardises its features first; ``ReadNorm`` does the same for the decoder: per read
layer, subtract the mean read vector and divide each dimension by its standard deviation (both
fitted on training reads), then scale every vector to the typical norm of the target's own
residual stream after the write layer (``standardize``), or to that residual stream's own mean
and spread in each dimension (``match``).

The statistics belong to the decoder: they are fitted once when its training starts, saved in
its sidecar, and applied wherever it is given vectors (``activations.inject``), so reading,
scoring, evaluation, steering and training see the same transform. Callers keep handling the
raw activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

READ_NORMS = ("none", "standardize", "match")


@dataclass
class ReadNorm:
    """Per read layer (in the order a row's vectors come: layers read together one after
    another), ``(v - mean) / std * out_std + out_mean``.

    ``standardize``: ``out_mean`` 0 and ``out_std`` one number for every dimension, so that
    the vectors have the write layer's mean norm. ``match``: ``out_mean`` and ``out_std`` are
    the write layer's own per-dimension mean and spread, so every dimension of a written vector
    has the mean and spread the decoder's hidden states have there (a residual stream's large
    constant dimensions included), while its variation is the read's.
    """

    mean: torch.Tensor  # [layers, hidden]
    std: torch.Tensor  # [layers, hidden]
    out_mean: torch.Tensor  # [hidden]
    out_std: torch.Tensor  # [hidden]
    kind: str = "standardize"

    @classmethod
    def fit(cls, rows: list[torch.Tensor], layers: int, written: list[torch.Tensor],
            kind: str = "standardize") -> "ReadNorm":
        """From read vectors (one ``[layers * n, hidden]`` tensor per row) and the residual
        stream after the write layer at the same tokens (one ``[n, hidden]`` per row)."""
        if kind not in READ_NORMS[1:]:
            raise ValueError(f"read norm kind must be one of {READ_NORMS[1:]}, got {kind!r}")
        if not rows:
            raise ValueError("a read norm needs at least one row of vectors to fit on")
        per_layer = [torch.cat([r.float().chunk(layers)[k] for r in rows]) for k in range(layers)]
        here = torch.cat([w.float() for w in written])
        if min(len(x) for x in per_layer) < 2 or len(here) < 2:
            raise ValueError("a read norm needs at least two read vectors per layer")
        mean, std = _moments([x for x in per_layer])
        (out_mean,), (out_std,) = _moments([here])
        if kind == "standardize":
            hidden = mean.shape[-1]
            out_mean = torch.zeros(hidden)
            out_std = torch.full((hidden,), float(here.norm(dim=-1).mean()) / math.sqrt(hidden))
        return cls(mean, std, out_mean, out_std, kind)

    @property
    def layers(self) -> int:
        return self.mean.shape[0]

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        """One row's vectors, ``[layers * n, hidden]``, transformed (differentiable)."""
        mean, std, out_mean, out_std = (t.to(device=row.device, dtype=row.dtype) for t in
                                        (self.mean, self.std, self.out_mean, self.out_std))
        if self.layers == 1:
            return (row - mean[0]) / std[0] * out_std + out_mean
        parts = row.chunk(self.layers)
        if len(parts) != self.layers or len({len(p) for p in parts}) != 1:
            raise ValueError(f"{len(row)} vectors do not split into {self.layers} equal layer "
                             "groups")
        return torch.cat([(p - mean[k]) / std[k] * out_std + out_mean
                          for k, p in enumerate(parts)])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "out_mean": self.out_mean.tolist(), "out_std": self.out_std.tolist()}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "ReadNorm | None":
        """The norm a sidecar stores (None: the decoder takes raw vectors); ``ValueError``
        with the reason if it is malformed."""
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("kind") not in READ_NORMS[1:]:
            raise ValueError(f"read_norm must be an object whose kind is one of "
                             f"{READ_NORMS[1:]}, got {raw!r:.80}")
        try:
            mean, std, out_mean, out_std = (torch.tensor(raw[k], dtype=torch.float32) for k in
                                            ("mean", "std", "out_mean", "out_std"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"read_norm is malformed: {e}") from None
        hidden = (mean.shape[-1],) if mean.ndim else ()
        if (mean.ndim != 2 or mean.shape != std.shape or out_mean.shape != hidden
                or out_std.shape != hidden or not bool((std > 0).all())):
            raise ValueError(f"read_norm needs mean and std of one [layers, hidden] shape with "
                             f"positive std, and out_mean and out_std of [hidden], got "
                             f"{tuple(mean.shape)}, {tuple(std.shape)}, "
                             f"{tuple(out_mean.shape)}, {tuple(out_std.shape)}")
        return cls(mean, std, out_mean, out_std, raw["kind"])


def _moments(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the mean and standard deviation of each dimension, ``[groups, hidden]``; a
    dimension that never varies carries nothing, so its spread is floored rather than zero."""
    mean = torch.stack([x.mean(0) for x in groups])
    std = torch.stack([x.std(0) for x in groups])
    return mean, torch.maximum(std, std.mean(-1, keepdim=True) * 1e-3)
