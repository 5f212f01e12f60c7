"""A bounded cache of the frozen target's read activations, per (record, layer), where a layer
may be a tuple of layers read together (their vectors one after another).

The target never changes during decoder training, and every QA pair of a label reuses the same
records across epochs, so each record's activations need computing once per layer. Values pass
through the cache dtype whether they were just computed or found, so a run's numbers do not
depend on what happened to be cached (a resumed run matches an uninterrupted one).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

from ..files import write_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ActivationCache:
    def __init__(self, mode: str = "memory", *, dtype: str = "bf16", max_gb: float = 2.0,
                 directory: str | os.PathLike | None = None):
        if mode not in ("memory", "disk"):
            raise ValueError(f"cache mode must be 'memory' or 'disk', got {mode!r}")
        if mode == "disk" and directory is None:
            raise ValueError("a disk cache needs a directory")
        self.mode, self.dtype, self.max_bytes = mode, DTYPES[dtype], int(max_gb * 2**30)
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def _path(self, key) -> Path:
        record, layer = key  # layer: one, or a tuple of layers read together
        layer = layer if isinstance(layer, int) else "+".join(map(str, layer))
        return self.directory / f"r{record}-l{layer}.safetensors"

    def get(self, key) -> torch.Tensor | None:
        if self.mode == "memory":
            value = self._memory.get(key)
            if value is not None:
                self._memory.move_to_end(key)
        else:
            path = self._path(key)
            value = None
            if path.exists():
                from safetensors.torch import load_file

                value = load_file(str(path))["h"]
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key, value: torch.Tensor) -> torch.Tensor:
        """Store (if there is room) and return the value as the cache holds it."""
        value = value.detach().to("cpu", self.dtype).contiguous()
        size = value.numel() * value.element_size()
        if self.mode == "memory":
            while self._memory and self.bytes + size > self.max_bytes:
                _, evicted = self._memory.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()
            if size <= self.max_bytes:
                self._memory[key] = value
                self.bytes += size
        elif self.bytes + size <= self.max_bytes:
            from safetensors.torch import save

            write_bytes(self._path(key), save({"h": value}))
            self.bytes += size
        return value

    def stats(self) -> dict:
        return {"mode": self.mode, "hits": self.hits, "misses": self.misses,
                "bytes": self.bytes}
