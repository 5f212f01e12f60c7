"""Evaluation results that do not depend on the decoder's adapter, kept between runs.

``eval persona``'s ``text_only`` and ``untrained_decoder`` conditions run the target with the
adapter off, and the records' activations are read with it off, so every decoder version
trained on the same target gets the same ones. They are stored here, one JSON file per
condition (one safetensors file for the activations), named by a hash of everything that can
change them (``key``): the base model's weights and config, the exact token ids the model is fed
(data records, questions, candidates, chat template, probe layout, text-only prompt), the data
file hashes, split, choices, seed and limit, and for conditions that inject activations the
read layer, write layer and injection mode; plus dtype, device and the torch and transformers
versions. Change any of them and the key changes: the result is recomputed, never reused.

Where: ``--cache-dir``, else ``$LATENTQA_CACHE/eval`` (default ``~/.cache/latentqa/eval``, the
folder converted models already use), never inside the repository. Files are written whole or
not at all (``latentqa.files``); a file that cannot be read or does not match its key is
ignored with a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ..files import atomic_file, write_json

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    from ..models import cache_dir

    return cache_dir() / "eval"


def digest(obj) -> str:
    """A stable hash of a JSON-able object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensor_digest(tensors) -> str:
    """A hash of tensors' dtypes, shapes and exact values, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def base_fingerprint(model) -> str:
    """A hash of the target under the decoder: its config and every weight the adapter leaves
    alone (adapter parameters excluded, peft's wrapper names stripped), so two decoder versions
    trained on the same target share it. About a second for a 135M model on a CPU."""
    adapters = set(getattr(model, "peft_config", None) or ())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = hashlib.sha256()
    config = {k: v for k, v in base.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "torch_dtype",
                                                     "dtype")}
    h.update(digest(config).encode())
    seen = set()
    for name, p in sorted(base.named_parameters(remove_duplicate=False), key=lambda x: x[0]):
        parts = name.split(".")
        if adapters & set(parts) or p.data_ptr() in seen:
            continue  # an adapter's own weights, or a tied weight seen already
        seen.add(p.data_ptr())
        h.update(".".join(x for x in parts if x != "base_layer").encode())
        h.update(tensor_digest([p]).encode())
    return h.hexdigest()


def environment(model) -> dict:
    """What else changes the numbers a model gives: dtype, device, library versions."""
    import transformers

    p = next(model.parameters())
    return {"dtype": str(p.dtype), "device": p.device.type, "torch": torch.__version__,
            "transformers": transformers.__version__}


class ResultCache:
    """One JSON file per (evaluation, condition, key) under ``directory``."""

    def __init__(self, directory=None, *, warn=None):
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))

    @staticmethod
    def key(fields: dict) -> str:
        return digest({"format": CACHE_FORMAT, **fields})

    def path(self, name: str, key: str) -> Path:
        return self.directory / f"{name}-{key[:32]}.json"

    def load(self, name: str, fields: dict, check=None):
        """The payload stored for ``fields``, or None (nothing stored, or a file that cannot
        be used: warned about and ignored). ``check(payload)`` raises ValueError on a payload
        of the wrong shape."""
        key = self.key(fields)
        path = self.path(name, key)
        if not path.exists():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(stored, dict) or stored.get("key") != key:
                raise ValueError("its key does not match its name")
            payload = stored["payload"]
            if check is not None:
                check(payload)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            self.warn(f"ignoring the cache file {path} ({type(e).__name__}: {e}); recomputing")
            return None
        return payload

    def load_tensors(self, name: str, fields: dict, check=None) -> dict | None:
        """Tensors stored by ``save_tensors`` for ``fields`` (safetensors), or None, as
        ``load``; ``check(tensors)`` raises ValueError on tensors of the wrong shape."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        key = self.key(fields)
        path = self.path(name, key).with_suffix(".safetensors")
        if not path.exists():
            return None
        try:
            raw = path.read_bytes()
            header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
            if (header.get("__metadata__") or {}).get("key") != key:
                raise ValueError("its key does not match its name")
            tensors = load(raw)
            if check is not None:
                check(tensors)
        except (OSError, ValueError, SafetensorError, UnicodeDecodeError) as e:
            self.warn(f"ignoring the cache file {path} ({type(e).__name__}: {e}); recomputing")
            return None
        return tensors

    def save_tensors(self, name: str, fields: dict, tensors: dict) -> Path | None:
        from safetensors.torch import save

        key = self.key(fields)
        path = self.path(name, key).with_suffix(".safetensors")
        try:
            data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                        metadata={"key": key, "name": name})
            with atomic_file(path, "wb") as f:
                f.write(data)
        except OSError as e:
            self.warn(f"could not write the cache file {path} ({e})")
            return None
        return path

    def save(self, name: str, fields: dict, payload) -> Path | None:
        """Store ``payload`` atomically; a cache that cannot be written only warns."""
        key = self.key(fields)
        path = self.path(name, key)
        try:
            write_json(path, {"format": CACHE_FORMAT, "name": name, "key": key,
                              "fields": fields, "payload": payload}, indent=None)
        except OSError as e:
            self.warn(f"could not write the cache file {path} ({e})")
            return None
        return path
