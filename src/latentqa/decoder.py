"""The decoder is the target plus a LoRA adapter: one copy of the base weights serves both.

With the adapter disabled the model *is* the frozen target (its activations are read that way);
with it enabled it is the decoder. peft does the bookkeeping.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


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
    with disable():
        yield model
