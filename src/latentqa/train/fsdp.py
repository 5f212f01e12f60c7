"""FSDP for the trainer: torch's ``fully_shard`` (FSDP2) on every transformer block and the body.

Each block is one FSDP unit (its parameters gathered for its forward and backward, then freed);
the body (the model without its lm_head) is the root unit. Gradients are reduce-scattered as
*sums* (the loss is already divided by the global labelled-token count), so FSDP computes what
DDP computes. Checkpoints hold gathered, unsharded weights: the saved decoder is the same peft
adapter a DDP run writes, and the optimizer state is keyed by parameter name, unsharded.

What the rest of latentqa does not expect from a sharded model, handled here:

- The input embeddings and the lm_head stay whole on every rank (``ignored_params``): the
  decoding code calls the lm_head outside the body, where FSDP would never gather it, and the
  two may be one tied tensor. Both are frozen in LoRA and in full fine-tuning.
- ``capture`` ends the target's pass by raising from a block's hook, so the root never finishes
  its forward; a hook resets FSDP's per-pass state then (``reset_iter_state``, made for this).
- A full fine-tuning block is a frozen original plus a trainable copy: each is its own unit,
  so a pass gathers only the one it runs.
- Under FSDP every sharded forward is a collective, so all ranks must run the same passes: the
  trainer evaluates every held-out example on every rank and refuses the activation cache.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

from ..arch import find_blocks
from .config import ConfigError


def shard(model, device: torch.device, world: int) -> None:
    """Shard the peft ``model`` in place across the ``world`` ranks of the process group."""
    from peft.tuners.ln_tuning.layer import LNTuningLayer
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    base = model.get_base_model()
    body = base.get_decoder()
    whole = {base.get_input_embeddings().weight}
    if base.get_output_embeddings() is not None:
        whole.add(base.get_output_embeddings().weight)
    _, blocks = find_blocks(model)
    for block in blocks:
        units = ([block.base_layer, *block.ln_tuning_layers.values()]
                 if isinstance(block, LNTuningLayer) else [block])
        for unit in units:
            fully_shard(unit, mesh=mesh)
    # The root reshards after its forward too (FSDP keeps a root gathered by default): it holds
    # little (the final norm), and this way the parameters the model shows between passes are
    # always the sharded ones the optimizer holds, which saving the optimizer state relies on.
    fully_shard(body, mesh=mesh, ignored_params=whole, reshard_after_forward=True)
    loose = [n for n, p in model.named_parameters()
             if p.requires_grad and not isinstance(p, DTensor)]
    if loose:  # e.g. LoRA on the lm_head: FSDP would neither shard it nor reduce its gradients
        raise ConfigError(f"distributed: with fsdp only the blocks may train, not {loose[0]} "
                          "(leave the lm_head and embeddings out of lora_targets)")
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # sum, not FSDP's default mean: each rank's loss is already a share of the global one
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    body.register_forward_hook(_reset_if_aborted, always_call=True)


def _reset_if_aborted(module, _args, output):
    # Runs after every pass of the body; output is None only when the pass raised (capture's
    # early stop): FSDP's own post-forward did not run, so it would take the next pass for the
    # rest of this one. reset_iter_state is FSDP2's recovery for exactly that case.
    if output is None:
        module.reset_iter_state()


def full_weights(model, keep: bool) -> dict[str, torch.Tensor]:
    """Every trainable parameter gathered whole, one at a time (a collective: every rank calls
    it); only the rank that ``keep``s them (the one that writes) holds them, on CPU."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            whole = p.full_tensor() if isinstance(p, DTensor) else p
            if keep:
                out[name] = whole.detach().cpu()
    return out


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state gathered whole and keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Shard a saved ``optimizer_state`` back onto this rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def as_float(value: torch.Tensor) -> float:
    """A scalar that may be a replicated DTensor (the gradient norm of sharded gradients)."""
    return float(value.full_tensor() if isinstance(value, DTensor) else value)
