"""Checkpoints: the adapter (peft, safetensors) + sidecar, and the trainer's state.

A checkpoint directory is written under a temporary name and renamed into place, and its
trainer state last, so one that holds ``trainer_state.pt`` is complete; a run killed mid-write
leaves a hidden temporary folder or a directory without trainer state, both ignored.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..decoder import DecoderSpec, save_decoder
from ..files import atomic_file

STATE = "trainer_state.pt"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:07d}"


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Saveable:
    """``model`` as ``save_decoder`` sees it. peft's ``save_pretrained`` also writes a README.md
    model card that is a template ("[More Information Needed]"); it is removed in the
    temporary directory, before that is renamed into place. With ``weights``, those adapter
    weights are saved instead of the model's own: under FSDP these are shards, so the trainer
    gathers them first (``save_pretrained`` takes a ``state_dict``), and the files are the ones
    an unsharded model writes."""

    def __init__(self, model, weights: dict | None = None):
        self.model, self.weights = model, weights

    def save_pretrained(self, directory, **kwargs):
        if self.weights is not None:
            kwargs["state_dict"] = self.weights
        self.model.save_pretrained(directory, **kwargs)
        (Path(directory) / "README.md").unlink(missing_ok=True)


def save_checkpoint(out_dir: Path, step: int, model, spec: DecoderSpec, trainer_state: dict,
                    keep: int) -> Path:
    final = checkpoint_dir(out_dir, step)
    save_decoder(model if isinstance(model, Saveable) else Saveable(model), final, spec)
    # trainer state goes in after the adapter, inside the finished directory, atomically too:
    # a directory without it is incomplete (list_checkpoints)
    with atomic_file(final / STATE, "wb") as f:
        torch.save(trainer_state, f)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory without trainer state is incomplete)."""
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def load_trainer_state(path: Path) -> dict:
    # weights_only: tensors and plain containers only, never pickled code
    return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)
