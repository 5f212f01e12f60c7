"""The process group, if any: rank bookkeeping for the trainer, a no-op without torchrun.

With ``distributed: ddp`` the decoder's loss module is wrapped in torch's
``DistributedDataParallel`` (``wrap``), which all-reduces each gradient bucket while the
backward pass is still running; with ``distributed: fsdp`` the blocks are sharded instead
(``fsdp.py``) and FSDP reduces the gradients.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


class Distributed:
    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_pref == "auto":
            device_pref = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device_pref)
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self._reduce(value, dist.ReduceOp.SUM) if self.world > 1 else value

    def min_int(self, value: int) -> int:
        """The smallest of the ranks' ``value``s (every rank must call it)."""
        if self.world == 1:
            return value
        return int(self._reduce(torch.tensor([value]), dist.ReduceOp.MIN).item())

    def _reduce(self, value: torch.Tensor, op) -> torch.Tensor:
        # NCCL reduces only tensors on the rank's GPU; gloo takes them where they are
        out = value.to(self.device)
        dist.all_reduce(out, op=op)
        return out.to(value.device)

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.barrier()  # without it a rank may exit while another is mid-collective
            dist.destroy_process_group()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DDP when there are several processes, else as it is."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    @staticmethod
    def no_sync(module: torch.nn.Module, last: bool):
        """Skip DDP's gradient all-reduce on every micro-batch but a step's last."""
        if last or not hasattr(module, "no_sync"):
            return contextlib.nullcontext()
        return module.no_sync()
