"""Latent Interpretation Tuning: the training recipe, top to bottom.

One process, or several under ``torchrun`` (gloo on CPU, NCCL on GPU). Ranks share the work of
each optimizer step; the loss is the mean over every labelled token of the step across all
micro-batches and ranks, so N processes compute exactly what one process with N-fold gradient
accumulation computes. With ``distributed: ddp`` every rank holds the whole model and the
(small) adapter gradients are all-reduced directly; with ``distributed: fsdp`` the blocks are
sharded across ranks and FSDP reduces the gradients (``fsdp.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..arch import config_info, model_info
from ..data import (
    LAYOUTS,
    Collator,
    LatentQADataset,
    LengthGroupedBatchSampler,
    add_plain_dialogs,
    add_relation_records,
    add_system_swaps,
    load_data,
    load_triples,
    split_by_label,
)
from ..data.probe import IGNORE_INDEX
from ..decoder import DecoderSpec, add_decoder_adapter, add_full_finetune_adapter, save_decoder
from ..decoding import decoder_loss_sum, read_activations
from ..evaluation.heldout import heldout_losses
from ..files import file_hashes, write_json
from ..models import load_config, load_model
from . import checkpoint as ckpt
from . import fsdp
from .cache import ActivationCache
from .config import ConfigError, TrainConfig, check_layers
from .report import Reporter
from .rundir import check_out_dir, clear_run


def cpu_has_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        return "bf16-autocast"
    return "bf16-autocast" if cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "bf16-autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Warmup then the schedule, as a function of the optimizer step (not the epoch)."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" \
            else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
    return f


def sample_layer(cfg: TrainConfig, step: int) -> int:
    """The read layer for a step: seeded by (seed, step) alone, so ranks and resumes agree."""
    if len(cfg.read_layers) == 1:
        return cfg.read_layers[0]
    return random.Random(cfg.seed * 1_000_003 + step).choice(cfg.read_layers)


class Distributed:
    """Rank bookkeeping; a no-op without torchrun."""

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
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.barrier()  # without it a rank may exit while another is mid-collective
            dist.destroy_process_group()


def _labelled(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          log=print) -> dict:
    """Train a decoder into ``cfg.out_dir``. A directory that holds a run already needs
    ``resume`` (continue it, with the config it was started with) or ``overwrite`` (delete it
    first); both are checked, with the layers, before any data or weights load."""
    out_dir = Path(cfg.out_dir)
    quiet = os.environ.get("RANK", "0") != "0"
    # every rank checks before the process group forms, so none has written anything yet
    check_out_dir(cfg, resume=resume, overwrite=overwrite,
                  log=(lambda *a, **k: None) if quiet else log)
    check_layers(cfg, model_info_from_config(cfg.model))  # before any weights load
    ddp = Distributed(cfg.device)
    try:
        return _train(cfg, out_dir, ddp, resume, overwrite,
                      log if ddp.main else (lambda *a, **k: None))
    finally:
        ddp.close()


def model_info_from_config(spec: str) -> int:
    return config_info(load_config(spec)).num_blocks


def _train(cfg: TrainConfig, out_dir: Path, ddp: Distributed, resume: bool, overwrite: bool,
           log) -> dict:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = ddp.device
    precision = resolve_precision(cfg, device)
    sharded = cfg.distributed == "fsdp" and ddp.world > 1  # one process: nothing to shard
    found = ckpt.list_checkpoints(out_dir) if resume else []
    state = ckpt.load_trainer_state(found[-1]) if found else None
    if state is not None and state.get("sharded", False) != sharded:  # before weights load
        written = "fsdp on several processes" if state.get("sharded") else "ddp or one process"
        raise ConfigError(f"distributed: {found[-1]} was written by a run with {written} (the "
                          "optimizer state is laid out differently); resume it the same way")
    if ddp.main and (overwrite or (resume and not found)):  # nothing of the old run stays
        gone = clear_run(out_dir)
        if gone:
            log(f"removed the earlier run's {', '.join(gone)} from {out_dir}")
    ddp.barrier()

    # data
    data = load_data(cfg.data, system_recovery=cfg.system_recovery)
    if cfg.eval_data:
        train_data = data
        eval_data = load_data(cfg.eval_data, system_recovery=cfg.system_recovery)
    else:
        train_data, eval_data = split_by_label(data, held_out=cfg.held_out, seed=cfg.split_seed)
    # from training labels only: held-out records' user turns and prompts stay unseen
    train_data = add_system_swaps(train_data, cfg.system_swaps, seed=cfg.seed)
    train_data = add_plain_dialogs(train_data, cfg.plain_share, seed=cfg.seed)
    triples = load_triples(cfg.relation_data, exclude=cfg.relation_exclude) \
        if cfg.relation_share else []
    train_data = add_relation_records(train_data, triples, cfg.relation_share, seed=cfg.seed)

    # model: one copy of the weights; the adapter off is the target
    weights_dtype = "bf16" if precision == "bf16" else "fp32"
    loaded = load_model(cfg.model, dtype=weights_dtype, device=device)
    tok, info = loaded.tokenizer, model_info(loaded.model)
    layout = LAYOUTS[cfg.layout]
    torch.manual_seed(cfg.seed)  # adapter init does not depend on what ran before
    if cfg.full_finetune:  # a trainable copy of the blocks; the originals stay the target
        model = add_full_finetune_adapter(loaded.model)
    else:
        model = add_decoder_adapter(loaded.model, r=cfg.lora_r, alpha=cfg.lora_alpha,
                                    dropout=cfg.lora_dropout, target_modules=cfg.lora_targets)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    if state is not None:
        _load_adapter_weights(model, found[-1])  # before sharding: FSDP shards what it finds
    elif cfg.init_decoder:
        _init_from_decoder(model, Path(cfg.init_decoder), cfg)
    if sharded:
        fsdp.shard(model, device, ddp.world)
    params = [p for p in model.parameters() if p.requires_grad]
    spec = DecoderSpec(
        target=cfg.model, model_type=info.model_type, num_blocks=info.num_blocks,
        hidden_size=info.hidden_size, read_layer=cfg.read_layers[len(cfg.read_layers) // 2],
        read_layers=list(cfg.read_layers), write_layer=cfg.write_layer,
        injection=cfg.injection, layout=cfg.layout, placeholder=layout.placeholder,
        supervise=cfg.supervise)

    layer_for_probe = None if not layout.layer_prefix else cfg.read_layers[0]
    train_set = LatentQADataset(train_data, tok, layout=layout, supervise=cfg.supervise,
                                layer=layer_for_probe, max_tokens=cfg.max_tokens)
    eval_set = LatentQADataset(eval_data, tok, layout=layout, supervise=cfg.supervise,
                               layer=layer_for_probe, max_tokens=cfg.max_tokens)
    collate = Collator(tok)
    sampler = LengthGroupedBatchSampler(train_set.lengths, cfg.batch_size,
                                        num_replicas=ddp.world, rank=ddp.rank, seed=cfg.seed,
                                        drop_last=True)
    steps_per_epoch = len(sampler) // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(f"too little data for one step: {len(train_set)} examples, batch "
                          f"{cfg.batch_size} x {cfg.grad_accum} accumulation x {ddp.world} ranks")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=tuple(cfg.betas))
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    cache = None
    if cfg.activation_cache != "off":
        cache = ActivationCache(cfg.activation_cache, dtype=cfg.cache_dtype,
                                max_gb=cfg.cache_max_gb,
                                directory=out_dir / "activation_cache" / f"rank{ddp.rank}"
                                if cfg.activation_cache == "disk" else None)

    step, epoch, batches_done = 0, 0, 0
    reporter = Reporter(out_dir, enabled=ddp.main)
    if state is not None:
        if sharded:
            fsdp.load_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch = state["step"], state["epoch"]
        batches_done = state["batches_done"]
        ckpt.set_rng_state(state["rng"][ddp.rank])
        reporter.truncate_after(step)
        log(f"resumed from {found[-1]} at step {step}")
    elif resume:
        log("no checkpoint found; starting from scratch")
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", {**cfg.to_dict(), "resolved": {
            "precision": precision, "device": str(device), "world_size": ddp.world,
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "sharded": sharded,
            "train_pairs": len(train_set), "eval_pairs": len(eval_set),
            "eval_labels": sorted(eval_data.labels)[:2000]}})
    log(f"training on {len(train_set)} pairs ({len(eval_set)} held out), {total_steps} steps, "
        f"precision {precision}, {ddp.world} process(es)")

    def vectors_for(batch, example_ids, layer):
        if cache is None:
            with autocast(precision, device):
                return read_activations(model, batch["target_input_ids"].to(device),
                                        batch["target_attention_mask"].to(device),
                                        batch["read_mask"].to(device), layer)
        out = [None] * len(example_ids)
        missing = []
        for i, idx in enumerate(example_ids):
            got = cache.get((train_set.data.pairs[idx].record, layer))
            if got is None:
                missing.append(i)
            else:
                out[i] = got.to(device)
        if missing:
            sub = {k: batch[k][missing].to(device) for k in
                   ("target_input_ids", "target_attention_mask", "read_mask")}
            with autocast(precision, device):
                fresh = read_activations(model, sub["target_input_ids"],
                                         sub["target_attention_mask"], sub["read_mask"], layer)
            for i, v in zip(missing, fresh):
                out[i] = cache.put((train_set.data.pairs[example_ids[i]].record, layer),
                                   v).to(device)
        return out

    t_start, tokens_seen = time.perf_counter(), 0
    while step < total_steps:
        sampler.set_epoch(epoch)
        if batches_done:
            sampler.load_state_dict({"epoch": epoch, "batches_done": batches_done})
        batches = iter(sampler)
        while step < total_steps:
            micro = []
            for _ in range(cfg.grad_accum):
                ids = next(batches, None)
                if ids is None:
                    break
                micro.append((ids, collate([train_set[i] for i in ids])))
            if len(micro) < cfg.grad_accum:
                break  # epoch over
            layer = sample_layer(cfg, step)
            local = torch.tensor(float(sum(_labelled(b["labels"]) for _, b in micro)))
            total_tokens = ddp.sum(local.clone()).item()
            loss_total = torch.zeros(())
            for ids, batch in micro:
                vectors = vectors_for(batch, ids, layer)
                with autocast(precision, device):
                    loss_sum, _ = decoder_loss_sum(
                        model, {k: v.to(device) for k, v in batch.items()},
                        torch.cat(vectors), write_layer=cfg.write_layer, mode=cfg.injection)
                (loss_sum / total_tokens).backward()
                loss_total += loss_sum.detach().float().cpu()
                tokens_seen += int(batch["target_attention_mask"].sum()
                                   + batch["decoder_attention_mask"].sum())
            if ddp.world > 1 and not sharded:  # FSDP has reduce-scattered them in backward
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    ddp.sum(p.grad)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) \
                if cfg.grad_clip > 0 else torch.tensor(0.0)
            lr_used = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batches_done += cfg.grad_accum
            loss = ddp.sum(loss_total).item() / total_tokens

            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_start
                row = {"step": step, "epoch": epoch, "loss": loss, "layer": layer,
                       "lr": lr_used, "grad_norm": fsdp.as_float(grad_norm),
                       "tokens_per_s": tokens_seen * ddp.world / max(elapsed, 1e-9)}
                reporter.log(row)
                log(f"step {step}/{total_steps}  loss {loss:.4f}  layer {layer}  "
                    f"lr {row['lr']:.2e}  {row['tokens_per_s']:.0f} tok/s")
            if step % cfg.eval_every == 0 or step == total_steps:
                metrics = evaluate(model, eval_set, collate, cfg, precision, device, ddp,
                                   sharded)
                reporter.log({"step": step, **metrics})
                shuffled = metrics.get("eval_loss_shuffled")
                log(f"step {step}  eval loss {metrics['eval_loss']:.4f} (shuffled "
                    + (f"{shuffled:.4f})" if shuffled is not None else
                       "not measured: the held-out examples share one label)"))
            if step % cfg.save_every == 0 or step == total_steps:
                state = {"optimizer": fsdp.optimizer_state(model, optimizer) if sharded
                         else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "step": step, "epoch": epoch, "batches_done": batches_done,
                         "rng": _gather_rng(ddp), "sharded": sharded}
                saved = _saveable(model, sharded, ddp.main)
                if ddp.main:
                    ckpt.save_checkpoint(out_dir, step, saved, spec, state, cfg.keep_checkpoints)
                ddp.barrier()
        else:
            continue
        epoch, batches_done = epoch + 1, 0

    summary = {"steps": step, "epochs_started": epoch + 1, "precision": precision,
               "seconds": time.perf_counter() - t_start, "final": reporter.last_metrics(),
               "data_files": file_hashes(cfg.data), "cache": cache.stats() if cache else None}
    spec.extra = {"trained_steps": step, "data_files": summary["data_files"],
                  "final_metrics": summary["final"], "held_out": cfg.held_out,
                  "split_seed": cfg.split_seed, "system_recovery": cfg.system_recovery,
                  "plain_share": cfg.plain_share, "system_swaps": cfg.system_swaps,
                  "init_decoder": cfg.init_decoder,
                  "relation_share": cfg.relation_share,
                  "trained_relations": sorted({t.name for t in triples})}
    saved = _saveable(model, sharded, ddp.main)
    if ddp.main:
        save_decoder(saved, out_dir / "decoder", spec)
        reporter.finish(summary)
        log(f"decoder saved to {out_dir / 'decoder'}")
    ddp.barrier()
    return summary


def _gather_rng(ddp: Distributed) -> list:
    """Every rank's RNG state, so each resumes its own dropout stream."""
    mine = ckpt.rng_state()
    if ddp.world == 1:
        return [mine]
    out = [None] * ddp.world
    dist.all_gather_object(out, mine)
    return out


def _saveable(model, sharded: bool, main: bool):
    """What to hand to save_decoder: the model without peft's README, and under FSDP the
    adapter gathered whole (every rank takes part; the main rank keeps it and writes), so the
    files are those of an unsharded run."""
    return ckpt.Saveable(model, fsdp.full_weights(model, keep=main) if sharded else None)


def _load_adapter_weights(model, directory: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(directory) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{directory}: adapter weights that fit no module of this model: "
                          f"{result.unexpected_keys[:3]}")


def _init_from_decoder(model, directory: Path, cfg: TrainConfig) -> None:
    """Continued training: the LoRA weights of an earlier decoder, whose adapter must have the
    shape this config asks for."""
    import json

    written = json.loads((directory / "adapter_config.json").read_text())
    ours = model.peft_config["default"]
    if written.get("r") != ours.r or set(written.get("target_modules") or ()) != \
            set(ours.target_modules or ()):
        raise ConfigError(f"init_decoder: {directory} has LoRA r={written.get('r')} on "
                          f"{sorted(written.get('target_modules') or ())}; this config makes "
                          f"r={ours.r} on {sorted(ours.target_modules or ())}")
    _load_adapter_weights(model, directory)


def evaluate(model, eval_set, collate, cfg, precision, device, ddp, sharded=False) -> dict:
    """Held-out loss with real activations and with another record's (the shuffled control).

    Under FSDP every rank evaluates every example: a sharded forward is a collective, so all
    ranks must run the same passes (split, they would not: ranks get different batch counts).
    Held-out examples that all share one label have no shuffled control (no donor exists):
    only the real loss is reported then.
    """
    rank, world = (0, 1) if sharded else (ddp.rank, ddp.world)
    n = min(cfg.eval_examples, len(eval_set))
    idx = list(range(len(eval_set)))
    random.Random(cfg.seed).shuffle(idx)
    data = eval_set.data
    labels = {data.records[data.pairs[i].record].label for i in idx[:n]}
    conditions = ("real", "shuffled") if len(labels) > 1 else ("real",)
    totals = heldout_losses(
        model, eval_set, collate, idx[:n], layer=cfg.read_layers[len(cfg.read_layers) // 2],
        write_layer=cfg.write_layer, mode=cfg.injection, batch_size=cfg.batch_size,
        conditions=conditions, autocast=lambda: autocast(precision, device),
        device=device, rank=rank, world=world, seed=cfg.seed)
    sums = totals if sharded else ddp.sum(totals)
    out = {"eval_loss": float(sums[0, 0] / max(sums[0, 1], 1))}
    if len(conditions) > 1:
        out["eval_loss_shuffled"] = float(sums[1, 0] / max(sums[1, 1], 1))
    return out
