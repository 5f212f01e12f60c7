"""Checkpoints: the adapter (peft, safetensors) + sidecar, and the trainer's state.

A checkpoint directory is written under a temporary name and renamed into place, so one that
exists is complete; a run killed mid-write leaves only a ``.tmp`` folder, ignored and removed.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..decoder import DecoderSpec, save_decoder

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


class Gathered:
    """``model`` as ``save_decoder`` sees it, but saving given adapter weights: under FSDP the
    model's own are shards, so the trainer gathers them first (peft's ``save_pretrained`` takes
    a ``state_dict``). The files are the ones an unsharded model writes."""

    def __init__(self, model, weights: dict):
        self.model, self.weights = model, weights

    def save_pretrained(self, directory, **kwargs):
        self.model.save_pretrained(directory, state_dict=self.weights, **kwargs)


def save_checkpoint(out_dir: Path, step: int, model, spec: DecoderSpec, trainer_state: dict,
                    keep: int) -> Path:
    final = checkpoint_dir(out_dir, step)
    save_decoder(model, final, spec)
    # trainer state goes in after the adapter, inside the finished directory, atomically too
    tmp = final / (STATE + ".tmp")
    torch.save(trainer_state, tmp)
    tmp.rename(final / STATE)
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
