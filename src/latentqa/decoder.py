"""The decoder is the target plus a LoRA adapter: one copy of the base weights serves both.

With the adapter disabled the model *is* the frozen target (its activations are read that way);
with it enabled it is the decoder. peft does the bookkeeping.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .files import atomic_dir


def add_decoder_adapter(
    model: torch.nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    adapter_name: str = "default",
    init_lora_weights: bool = True,
):
    """Wrap ``model`` in a peft model with a fresh LoRA adapter; the base weights are shared."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        task_type="CAUSAL_LM", init_lora_weights=init_lora_weights,
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


def load_decoder_adapter(model: torch.nn.Module, adapter_dir: str | Path, *,
                         adapter_name: str = "default", trainable: bool = False):
    """Attach a saved peft adapter (safetensors only) to ``model``."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").exists():
        raise FileNotFoundError(
            f"{adapter_dir} holds no adapter_model.safetensors; latentqa loads adapters only "
            "from safetensors"
        )
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name,
                                     is_trainable=trainable)


@contextlib.contextmanager
def as_target(model: torch.nn.Module):
    """Run ``model`` as the plain target: adapters off if it has any, unchanged otherwise."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield model
        return
    # peft re-enables adapters through set_adapter, which makes them trainable; keep the flags
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with disable():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


SIDECAR = "latentqa_decoder.json"
SIDECAR_VERSION = 1


@dataclass
class DecoderSpec:
    """Everything needed to use a saved decoder adapter, stored beside it as JSON."""

    target: str  # the target model spec it was trained on
    model_type: str
    num_blocks: int
    hidden_size: int
    read_layer: int  # the default layer to read at
    write_layer: int
    injection: str = "replace"
    layout: str = "paper"
    placeholder: str = "?"
    read_layers: list[int] = field(default_factory=list)  # all layers seen in training
    supervise: str = "reply_and_answer"
    extra: dict = field(default_factory=dict)  # training summary, data hashes, ...
    format_version: int = SIDECAR_VERSION

    @classmethod
    def read(cls, directory: str | Path) -> "DecoderSpec":
        path = Path(directory) / SIDECAR
        if not path.exists():
            raise FileNotFoundError(
                f"{directory} is not a latentqa decoder: it has no {SIDECAR} (the sidecar "
                "written by `latentqa train` that says which target, layers and probe to use)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path} is not a valid decoder sidecar: {e}") from None


def save_decoder(model, directory: str | Path, spec: DecoderSpec, *,
                 dtype: torch.dtype | None = None) -> Path:
    """Save the adapter (peft format, safetensors) and its sidecar atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if dtype is not None:  # e.g. ship bf16: half the size, no loss that matters for LoRA
            from safetensors.torch import load_file, save_file

            f = tmp / "adapter_model.safetensors"
            save_file({k: v.to(dtype).contiguous() for k, v in load_file(str(f)).items()},
                      str(f), metadata={"format": "pt"})
        (tmp / SIDECAR).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    return directory
