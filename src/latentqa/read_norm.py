"""Standardise the vectors a decoder is given before they are written into it.

A block's residual stream is mostly an offset shared by every token, with a few dimensions of
large and nearly constant size; what a hidden system prompt changes in the tokens after it is
a small part of each vector (docs/results.md, "Standardised reads"). Written as they are,
those vectors reach the decoder with the part that differs between dialogs buried under the
part that does not, and many times larger than any hidden state at the write layer. A linear
reader standardises its features first; ``ReadNorm`` does the same for the decoder: per read
layer, subtract the mean read vector and divide each dimension by its standard deviation (both
fitted on training reads), then scale every vector to the typical norm of the target's own
residual stream after the write layer.

The statistics belong to the decoder: they are fitted once when its training starts, saved in
its sidecar, and applied wherever it is given vectors (``activations.inject``), so reading,
scoring, evaluation, steering and training see the same transform. Callers keep handling the
raw activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

READ_NORMS = ("none", "standardize")


@dataclass
class ReadNorm:
    """Per read layer (in the order a row's vectors come: layers read together one after
    another), ``(v - mean) / std * gain``."""

    mean: torch.Tensor  # [layers, hidden]
    std: torch.Tensor  # [layers, hidden]
    gain: float

    @classmethod
    def fit(cls, rows: list[torch.Tensor], layers: int, write_norm: float) -> "ReadNorm":
        """From read vectors (one ``[layers * n, hidden]`` tensor per row) and the mean norm
        of the residual stream after the write layer, which standardised vectors will have."""
        if not rows:
            raise ValueError("a read norm needs at least one row of vectors to fit on")
        per_layer = [torch.cat([r.float().chunk(layers)[k] for r in rows]) for k in range(layers)]
        if min(len(x) for x in per_layer) < 2:
            raise ValueError("a read norm needs at least two read vectors per layer")
        mean = torch.stack([x.mean(0) for x in per_layer])
        std = torch.stack([x.std(0) for x in per_layer])
        # a dimension that never varies carries nothing; do not blow it up
        std = torch.maximum(std, std.mean(-1, keepdim=True) * 1e-3)
        return cls(mean.cpu(), std.cpu(), float(write_norm) / math.sqrt(mean.shape[-1]))

    @property
    def layers(self) -> int:
        return self.mean.shape[0]

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        """One row's vectors, ``[layers * n, hidden]``, standardised (differentiable)."""
        mean = self.mean.to(device=row.device, dtype=row.dtype)
        std = self.std.to(device=row.device, dtype=row.dtype)
        if self.layers == 1:
            return (row - mean[0]) / std[0] * self.gain
        parts = row.chunk(self.layers)
        if len(parts) != self.layers or len({len(p) for p in parts}) != 1:
            raise ValueError(f"{len(row)} vectors do not split into {self.layers} equal layer "
                             "groups")
        return torch.cat([(p - mean[k]) / std[k] * self.gain for k, p in enumerate(parts)])

    def to_dict(self) -> dict:
        return {"kind": "standardize", "gain": self.gain, "mean": self.mean.tolist(),
                "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "ReadNorm | None":
        """The norm a sidecar stores (None: the decoder takes raw vectors); ``ValueError``
        with the reason if it is malformed."""
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("kind") != "standardize":
            raise ValueError(f"read_norm must be an object of kind 'standardize', got {raw!r:.80}")
        try:
            mean = torch.tensor(raw["mean"], dtype=torch.float32)
            std = torch.tensor(raw["std"], dtype=torch.float32)
            gain = float(raw["gain"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"read_norm is malformed: {e}") from None
        if mean.ndim != 2 or mean.shape != std.shape or not bool((std > 0).all()):
            raise ValueError(f"read_norm needs mean and std of the same [layers, hidden] shape "
                             f"and positive std, got {tuple(mean.shape)} and {tuple(std.shape)}")
        return cls(mean, std, gain)
