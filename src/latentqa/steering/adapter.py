"""The steering adapter: a second LoRA on the same weights, on the target's blocks up to the
read layer, trained while the decoder's adapter stays frozen.

One copy of the base weights carries both adapters; ``active`` says which one a forward pass
uses. The target pass runs with the steering adapter only, the decoder pass with the decoder's
only. peft's ``set_adapter`` also flips ``requires_grad``, and autograd drops the gradient of a
leaf whose flag is off at backward time, so ``active`` restores the flags right away: steering
parameters always train, decoder parameters never do.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..arch import find_blocks
from ..errors import MissingFileError
from ..files import atomic_dir

STEER_ADAPTER = "steer"
SIDECAR = "latentqa_steer.json"


@dataclass
class SteerSpec:
    """What a saved steering adapter is for, stored beside it."""

    target: str
    decoder: str
    read_layer: int
    blocks: list[int]
    control: str  # the instruction, or the control file
    qa: list[list[str]]
    steps: int
    per_layer: bool = False
    extra: dict = field(default_factory=dict)
    # a decoder that reads layers together: those layers (read_layer is the deepest)
    read_layers: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, directory) -> "SteerSpec":
        path = Path(directory) / SIDECAR
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def block_linear_names(model, blocks) -> list[str]:
    """Names (relative to the plain model) of the linear layers inside ``blocks``."""
    from transformers.pytorch_utils import Conv1D

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix, _ = find_blocks(base)
    wanted = tuple(f"{prefix}.{k}." for k in blocks)
    names = set()
    for name, module in base.named_modules():
        name = name.removesuffix(".base_layer")
        if (isinstance(module, (torch.nn.Linear, Conv1D)) and name.startswith(wanted)
                and ".lora_" not in name):
            names.add(name)
    return sorted(names)


def add_steering_adapter(model, blocks, *, r: int = 16, alpha: int = 32,
                         dropout: float = 0.0, name: str = STEER_ADAPTER):
    """Add a fresh steering LoRA on ``blocks`` of the peft ``model`` (which holds the decoder)."""
    from peft import LoraConfig

    targets = block_linear_names(model, blocks)
    if not targets:
        raise ValueError(f"no linear layers found in blocks {list(blocks)}")
    model.add_adapter(name, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                       target_modules=targets))
    params = adapter_parameters(model, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def adapter_parameters(model, name: str) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]


@contextlib.contextmanager
def active(model, name: str):
    """Run ``model`` with only adapter ``name`` on; gradients flags kept as they were."""
    flags = {p: p.requires_grad for p in model.parameters()}
    before = model.base_model.active_adapters if hasattr(model.base_model, "active_adapters") \
        else model.active_adapter
    model.base_model.set_adapter(name)
    for p, f in flags.items():
        p.requires_grad_(f)
    try:
        yield model
    finally:
        model.base_model.set_adapter(before)
        for p, f in flags.items():
            p.requires_grad_(f)


def save_steering(model, directory, spec: SteerSpec, *, name: str = STEER_ADAPTER) -> Path:
    """The steering adapter alone, as a plain peft adapter directory (loads as ``default``),
    plus its sidecar; written to a temporary directory, then renamed."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        state = get_peft_model_state_dict(model, adapter_name=name)
        save_file({k: v.detach().contiguous() for k, v in state.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = model.peft_config[name]
        config.base_model_name_or_path = spec.target
        config.save_pretrained(str(tmp))
        (tmp / SIDECAR).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    return directory


def load_steering(model, directory, *, name: str = STEER_ADAPTER):
    """Attach a saved steering adapter to ``model`` (plain or peft); returns the peft model."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / "adapter_model.safetensors").exists():
        raise MissingFileError(f"{directory} holds no adapter_model.safetensors (latentqa "
                                "loads adapters only from safetensors)")
    if hasattr(model, "load_adapter") and hasattr(model, "peft_config"):
        model.load_adapter(str(directory), adapter_name=name)
        return model
    return PeftModel.from_pretrained(model, str(directory), adapter_name=name)
