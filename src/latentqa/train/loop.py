"""``latentqa train``: the recipe's parts (``recipe.py``) in a loop, with resume and reports.

One process, or several under ``torchrun`` (gloo on CPU, NCCL on GPU). Ranks share the work of
each optimizer step (``distributed: ddp``: torch's DistributedDataParallel; ``fsdp``: blocks
sharded, ``fsdp.py``). A run checkpoints every ``save_every`` steps and ``--resume`` continues
it exactly: the adapter, optimizer, schedule, sampler position and every rank's RNG come back.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch

from ..arch import config_info
from ..files import file_hashes, write_json
from ..models import load_config
from ..provenance import invocation
from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, check_layers
from .distributed import Distributed
from .recipe import Recipe, sample_layer
from .report import Reporter
from .rundir import check_out_dir, clear_run


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
    check_layers(cfg, config_info(load_config(cfg.model)).num_blocks)  # before weights load
    dist = Distributed(cfg.device)
    try:
        return _train(cfg, out_dir, dist, resume, overwrite,
                      log if dist.main else (lambda *a, **k: None))
    finally:
        dist.close()


FIT_AT = (20, 100, 500)  # steps done (this process) at which a time budget re-times the run


def fit_to_budget(budget_s: float, elapsed_s: float, step: int, planned: int,
                  per_step_s: float) -> int:
    """The last step a run can reach within ``budget_s`` at ``per_step_s`` a step, and never
    past ``planned``; over budget: now."""
    if elapsed_s >= budget_s:
        return step
    return min(planned, step + max(1, int((budget_s - elapsed_s) / per_step_s)))


def _train(cfg: TrainConfig, out_dir: Path, dist: Distributed, resume: bool, overwrite: bool,
           log) -> dict:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    recipe = Recipe(cfg, dist, log)
    found = ckpt.list_checkpoints(out_dir) if resume else []
    state = ckpt.load_trainer_state(found[-1]) if found else None
    if state is not None and state.get("sharded", False) != recipe.sharded:  # before weights
        written = "fsdp on several processes" if state.get("sharded") else "ddp or one process"
        raise ConfigError(f"distributed: {found[-1]} was written by a run with {written} (the "
                          "optimizer state is laid out differently); resume it the same way")
    if dist.main and (overwrite or (resume and not found)):  # nothing of the old run stays
        gone = clear_run(out_dir)
        if gone:
            log(f"removed the earlier run's {', '.join(gone)} from {out_dir}")
    dist.barrier()

    recipe.setup_data()
    recipe.setup_model(found[-1] if state is not None else None)
    recipe.setup_optimizer(state)
    step, epoch, batches_done = 0, 0, 0
    reporter = Reporter(out_dir, enabled=dist.main)
    if state is not None:
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_done"]
        ckpt.set_rng_state(state["rng"][dist.rank])
        reporter.truncate_after(step)
        log(f"resumed from {found[-1]} at step {step}")
    elif resume:
        log("no checkpoint found; starting from scratch")
    total = recipe.total_steps
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", {**cfg.to_dict(), "resolved": {
            "precision": recipe.precision, "device": str(dist.device),
            "world_size": dist.world, "total_steps": total,
            "steps_per_epoch": recipe.steps_per_epoch, "sharded": recipe.sharded,
            "train_pairs": len(recipe.train_set), "train_rows": len(recipe.rows),
            "eval_pairs": len(recipe.eval_set),
            "eval_labels": sorted(recipe.eval_data.labels)[:2000]}})
        reporter.add_stage({**invocation(), "from_step": step, "device": str(dist.device),
                            "world_size": dist.world, "precision": recipe.precision,
                            "data_files": file_hashes([*cfg.data,
                                                       *recipe.extra_data_files()])})
    log(f"training on {len(recipe.train_set)} pairs in {len(recipe.rows)} rows "
        f"({len(recipe.eval_set)} pairs held out), {total} steps, precision "
        f"{recipe.precision}, {dist.world} process(es)")

    t_start, examples, labelled = time.perf_counter(), 0.0, 0.0
    first_step, fit_mark = step, (0, 0.0)
    while step < total:
        batches = recipe.batches(epoch, batches_done)
        while step < total:
            micro = [ids for ids in (next(batches, None) for _ in range(cfg.grad_accum))
                     if ids is not None]
            if len(micro) < cfg.grad_accum:
                break  # epoch over
            layer = sample_layer(cfg, step)
            result = recipe.train_step(micro, layer)
            step += 1
            batches_done += cfg.grad_accum
            examples += result["examples"]
            labelled += result["labelled_tokens"]
            done = step - first_step
            # every rank checks at the same steps and they agree on the end (a collective)
            if cfg.max_minutes and step < total and (done in FIT_AT or step % cfg.log_every == 0):
                now, budget = time.perf_counter() - t_start, cfg.max_minutes * 60
                if done in FIT_AT:  # the pace since the last fit: the first steps run slow
                    per_step = (now - fit_mark[1]) / (done - fit_mark[0])
                    fit_mark = (done, now)
                    fitted = fit_to_budget(budget, now, step, recipe.planned_steps, per_step)
                else:
                    fitted = step if now >= budget else total
                fitted = dist.min_int(fitted)
                if fitted != total:
                    total = fitted
                    recipe.end_at(total)
                    log(f"step {step}: {cfg.max_minutes:g} min budget, the run ends at step "
                        f"{total}")

            if step % cfg.log_every == 0 or step == total:
                elapsed = max(time.perf_counter() - t_start, 1e-9)
                row = {"step": step, "epoch": epoch, "loss": result["loss"], "layer": layer,
                       "lr": result["lr"], "grad_norm": result["grad_norm"],
                       "examples_per_s": examples / elapsed,
                       "labelled_tokens_per_s": labelled / elapsed,
                       **({"contrast": result["contrast"]} if "contrast" in result else {})}
                reporter.log(row)
                log(f"step {step}/{total}  loss {row['loss']:.4f}  "
                    + (f"contrast {row['contrast']:.4f}  " if "contrast" in row else "")
                    + f"layer {layer}  lr {row['lr']:.2e}  {row['examples_per_s']:.2f} "
                    "examples/s")
            if step % cfg.eval_every == 0 or step == total:
                metrics = recipe.evaluate()
                reporter.log({"step": step, **metrics})
                shuffled = metrics.get("eval_loss_shuffled")
                log(f"step {step}  eval loss {metrics['eval_loss']:.4f} (shuffled "
                    + (f"{shuffled:.4f})" if shuffled is not None else
                       "not measured: the held-out examples share one label)"))
            if step % cfg.save_every == 0 or step == total:
                recipe.checkpoint(out_dir, step=step, epoch=epoch, batches_done=batches_done)
        else:
            continue
        epoch, batches_done = epoch + 1, 0

    summary = {"steps": step, "epochs_started": epoch + 1, "precision": recipe.precision,
               "planned_steps": recipe.planned_steps,
               "seconds": time.perf_counter() - t_start, "final": reporter.last_metrics(),
               **recipe.summary_inputs(), "stages": reporter.stages()}
    recipe.save_decoder(out_dir / "decoder", summary)
    if dist.main:
        reporter.finish(summary)
        log(f"decoder saved to {out_dir / 'decoder'}")
    dist.barrier()
    return summary
