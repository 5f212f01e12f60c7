"""Latent Interpretation Tuning as plain parts, composed by ``loop.train``.

    recipe = Recipe(cfg, dist, log)
    recipe.setup_data()                 # files -> split -> extra records -> rows of probes
    recipe.setup_model(checkpoint)      # one copy of the weights, LoRA on it (adapter off: target)
    recipe.setup_optimizer(state)       # AdamW/SGD, the per-step schedule, the batch sampler
    recipe.train_step(micro_batches)    # read the target, decode, backward, one optimizer step
    recipe.evaluate()                   # held-out loss, real and shuffled activations
    recipe.checkpoint(...) / recipe.save_decoder(...)

A row is one record with all its QA pairs (``pack_questions``): the target is read once and the
decoder runs the record's placeholders and the probe's opening once, each QA block attending to
that prefix and to itself only (``decoding.rows_loss_sum``). The loss is the mean over every
labelled token of the step across micro-batches and ranks, the same number and gradients as one
pair per row, so N processes compute what one process with N-fold accumulation computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
from pathlib import Path

import torch

from ..arch import model_info
from ..batching import pad_id
from ..chat import DialogTooLongError
from ..controls import NoDonorError, shuffled_donors
from ..data import (
    IGNORE_INDEX,
    LAYOUTS,
    Collator,
    LatentQADataset,
    LatentQARows,
    LengthGroupedBatchSampler,
    Row,
    add_plain_dialogs,
    add_relation_records,
    add_system_prompt_records,
    add_system_swaps,
    baseline_of,
    drop_held_out_overlap,
    is_held_out,
    load_data,
    load_triples,
    render_target,
    split_by_label,
)
from ..data.classification import add_classification_records, load_classification
from ..data.context import add_context_prediction
from ..data.records import Record
from ..decoder import DecoderSpec, add_decoder_adapter, add_full_finetune_adapter, save_decoder
from ..decoding import read_activations, rows_logprobs
from ..evaluation.heldout import heldout_losses
from ..files import file_hashes
from ..models import load_model, load_tokenizer
from ..read_norm import ReadNorm
from . import checkpoint as ckpt
from . import fsdp
from .cache import ActivationCache
from .config import ConfigError, TrainConfig
from .distributed import Distributed


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


def sample_layer(cfg: TrainConfig, step: int) -> int | tuple[int, ...]:
    """The read layer for a step: seeded by (seed, step) alone, so ranks and resumes agree.
    With ``read_together`` every step reads them all: the tuple of ``read_layers``."""
    if cfg.read_together:  # multi-layer reads
        return tuple(cfg.read_layers)
    if len(cfg.read_layers) == 1:
        return cfg.read_layers[0]
    return random.Random(cfg.seed * 1_000_003 + step).choice(cfg.read_layers)


class DecoderLoss(torch.nn.Module):
    """The decoder's summed loss over a batch of rows, as a module so that DDP can wrap it
    (DDP synchronises the gradients of what runs inside its ``forward``)."""

    def __init__(self, model, *, pad_id: int, write_layer: int, mode: str, norm=None,
                 share_opening: bool = True):
        super().__init__()
        self.model = model
        self.pad_id, self.write_layer, self.mode, self.norm = pad_id, write_layer, mode, norm
        self.share_opening = share_opening

    def forward(self, probes: list[list], vectors: list[torch.Tensor],
                shuffled: tuple[list[int], list[list], list[torch.Tensor]] | None = None):
        """``(loss_sum, labelled_tokens, contrast_sum)``. With ``shuffled`` (rows that have a
        donor, their QA pairs as probes sized for the donor's read, and that read's
        activations, whole), ``contrast_sum`` adds, over those rows' QA pairs,
        ``softplus(-(mean log-prob of the answer under its own activations - under the
        donor's))``: the plain loss is satisfied by an answer's prior, this term only by what
        the activations add (the gap the shuffled control measures)."""
        kw = dict(pad_id=self.pad_id, write_layer=self.write_layer, mode=self.mode,
                  norm=self.norm, share_opening=self.share_opening)
        real = rows_logprobs(self.model, probes, vectors, **kw)
        logp = torch.cat([x for row in real for x in row])
        contrast = logp.new_zeros(())
        if shuffled is not None:
            rows, donor_probes, donor_vectors = shuffled
            other = rows_logprobs(self.model, donor_probes, donor_vectors, **kw)
            gaps = torch.stack([a.mean() - b.mean() for i, rb in zip(rows, other)
                                for a, b in zip(real[i], rb)])
            contrast = torch.nn.functional.softplus(-gaps).sum()
        return -logp.sum(), logp.numel(), contrast


class Recipe:
    def __init__(self, cfg: TrainConfig, dist: Distributed, log=print):
        self.cfg, self.dist, self.log = cfg, dist, log
        self.device = dist.device
        self.precision = resolve_precision(cfg, self.device)
        # one process: nothing to shard
        self.sharded = cfg.distributed == "fsdp" and dist.world > 1

    # ---- data -------------------------------------------------------------------------

    def setup_data(self) -> None:
        """Training and held-out data; extra records are built from training labels only, so
        held-out records' user turns and prompts stay unseen."""
        cfg = self.cfg
        data = load_data(cfg.data, system_recovery=cfg.system_recovery)
        if cfg.eval_data:
            train, held_out = data, load_data(cfg.eval_data, system_recovery=cfg.system_recovery)
        else:
            train, held_out = split_by_label(data, held_out=cfg.held_out, seed=cfg.split_seed)
        if cfg.train_labels < 1:
            train = train.subset(lab for lab in train.labels
                                 if is_held_out(lab, cfg.train_labels, seed=cfg.split_seed + 1))
        train = add_system_swaps(train, cfg.system_swaps, seed=cfg.seed)
        if cfg.system_prompt_data:
            train = add_system_prompt_records(
                train, cfg.system_prompt_data, recovery_questions=cfg.system_prompt_questions,
                swaps_per_record=cfg.system_prompt_swaps,
                descriptions=cfg.system_prompt_descriptions,
                max_answer_chars=cfg.system_prompt_answer_chars,
                limit=cfg.system_prompt_limit or None, seed=cfg.seed)
        self.dropped_overlap = 0
        if cfg.held_out_hygiene:  # before the shares below, which draw on the training texts
            train, self.dropped_overlap = drop_held_out_overlap(
                train, held_out, near=cfg.held_out_near or None)
            if self.dropped_overlap and not train.records:
                raise ConfigError(
                    f"held_out_hygiene: every training record ({self.dropped_overlap}) shares "
                    "a text with a held-out record (is eval_data the training data?); set "
                    "held_out_hygiene: false to train on them anyway")
            if self.dropped_overlap:
                self.log(f"dropped {self.dropped_overlap} training records that share a text "
                         "with a held-out record")
        train = add_plain_dialogs(train, cfg.plain_share, seed=cfg.seed)
        self.triples = load_triples(cfg.relation_data, exclude=cfg.relation_exclude) \
            if cfg.relation_share else []
        train = add_relation_records(train, self.triples, cfg.relation_share, seed=cfg.seed)
        if cfg.classification_share:
            sets = load_classification(cfg.classification_data,
                                       only=cfg.classification_sets or None)
            train = add_classification_records(train, cfg.classification_share, sets=sets,
                                               seed=cfg.seed)
        self.train_data = add_context_prediction(train, cfg.context_share, seed=cfg.seed)
        self.eval_data = held_out
        # examples are tokenized lazily; the tokenizer alone reads no weights
        tokenizer = self.tokenizer = load_tokenizer(cfg.model)
        layout = LAYOUTS[cfg.layout]
        layer = cfg.read_layers[0] if layout.layer_prefix else None
        make = lambda data: LatentQADataset(data, tokenizer, layout=layout,  # noqa: E731
                                            supervise=cfg.supervise, layer=layer,
                                            max_tokens=cfg.max_tokens,
                                            layers=_together(cfg),
                                            baselines=bool(cfg.instruction_gain))
        self.train_set, self.eval_set = make(self.train_data), make(self.eval_data)
        self.rows = LatentQARows(self.train_set, per_record=cfg.pack_questions)
        self._hidden_prompts = None  # the contrast's pool of donor prompts, built on first use
        self.collate = Collator(tokenizer)

    # ---- model ------------------------------------------------------------------------

    def setup_model(self, checkpoint: Path | None = None) -> None:
        """(After ``setup_data``.) One copy of the weights with the trainable adapter; from
        ``checkpoint`` (a resume) or ``init_decoder`` (continued training) or fresh. Sharded
        or wrapped for DDP last."""
        cfg = self.cfg
        loaded = load_model(cfg.model, dtype="bf16" if self.precision == "bf16" else "fp32",
                            device=self.device)
        info = model_info(loaded.model)
        torch.manual_seed(cfg.seed)  # adapter init does not depend on what ran before
        if cfg.full_finetune:  # a trainable copy of the blocks; the originals stay the target
            model = add_full_finetune_adapter(loaded.model)
        else:
            model = add_decoder_adapter(loaded.model, r=cfg.lora_r, alpha=cfg.lora_alpha,
                                        dropout=cfg.lora_dropout,
                                        target_modules=cfg.lora_targets)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        if checkpoint is not None:
            load_adapter_weights(model, checkpoint)  # before sharding: FSDP shards what it finds
        elif cfg.init_decoder:
            init_from_decoder(model, Path(cfg.init_decoder))
        self.model = model
        self.norm = self.read_norm(checkpoint)  # before sharding: it reads the whole target
        if self.sharded:
            fsdp.shard(model, self.device, self.dist.world)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # FSDP gathers a unit's weights for one forward and its backward: the body runs once
        loss = DecoderLoss(model, pad_id=pad_id(self.tokenizer), write_layer=cfg.write_layer,
                           mode=cfg.injection, norm=self.norm,
                           share_opening=not self.sharded)
        self.loss = loss if self.sharded else self.dist.wrap(loss)
        layout = LAYOUTS[cfg.layout]
        self.spec = DecoderSpec(
            target=cfg.model, model_type=info.model_type, num_blocks=info.num_blocks,
            hidden_size=info.hidden_size,
            read_layer=cfg.read_layers[len(cfg.read_layers) // 2],
            read_layers=list(cfg.read_layers), write_layer=cfg.write_layer,
            injection=cfg.injection, layout=cfg.layout, placeholder=layout.placeholder,
            supervise=cfg.supervise, read_together=cfg.read_together,
            instruction_gain=cfg.instruction_gain,
            read_norm=None if self.norm is None else self.norm.to_dict())
        self.spec.extra = self.provenance()
        self.cache = None
        if cfg.activation_cache != "off":
            self.cache = ActivationCache(
                cfg.activation_cache, dtype=cfg.cache_dtype, max_gb=cfg.cache_max_gb,
                directory=Path(cfg.out_dir) / "activation_cache" / f"rank{self.dist.rank}"
                if cfg.activation_cache == "disk" else None)

    def read_norm(self, checkpoint: Path | None):
        """The decoder's ``ReadNorm`` (``read_norm: standardize`` or ``match``), or None: the
        one the checkpoint resumed or ``init_decoder`` was trained with, else fitted on the
        first ``read_norm_rows`` training rows of a seeded order (so every rank fits the
        same)."""
        cfg = self.cfg
        source = checkpoint or (Path(cfg.init_decoder) if cfg.init_decoder else None)
        earlier = DecoderSpec.read(source).norm if source is not None else None
        if earlier is not None and earlier.kind != cfg.read_norm:
            raise ConfigError(f"{source} transforms what it reads with read_norm: "
                              f"{earlier.kind}; continuing it needs the same read_norm")
        if cfg.read_norm == "none":
            return None
        if earlier is not None:
            return earlier
        order = list(range(len(self.rows)))
        random.Random(cfg.seed).shuffle(order)
        chosen = order[:cfg.read_norm_rows]
        layer = _together(cfg) or cfg.read_layers[0]
        reads, written = [], []
        for start in range(0, len(chosen), cfg.batch_size):
            batch = self.collate.rows([self.rows[i] for i in chosen[start:start + cfg.batch_size]])
            sub = [batch[k].to(self.device) for k in
                   ("target_input_ids", "target_attention_mask", "read_mask")]
            reads += read_activations(self.model, *sub, layer,
                                      baseline=baseline_of(batch, self.device),
                                      instruction_gain=cfg.instruction_gain)
            written += read_activations(self.model, *sub, cfg.write_layer)
        norm = ReadNorm.fit(reads, len(layer) if isinstance(layer, tuple) else 1, written,
                            kind=cfg.read_norm)
        self.log(f"read_norm: {cfg.read_norm}, fitted on {len(chosen)} training rows' reads")
        return norm

    # ---- optimizer, schedule, batches ---------------------------------------------------

    def setup_optimizer(self, state: dict | None = None) -> None:
        """Optimizer, per-step schedule and sampler; from a checkpoint's ``state`` if given."""
        cfg, dist = self.cfg, self.dist
        self.sampler = LengthGroupedBatchSampler(
            self.rows.lengths, cfg.batch_size, num_replicas=dist.world, rank=dist.rank,
            seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"too little data for one step: {len(self.rows)} rows, batch "
                              f"{cfg.batch_size} x {cfg.grad_accum} accumulation x "
                              f"{dist.world} ranks")
        self.total_steps = self.planned_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        if cfg.max_minutes and state is not None and "fitted_steps" in state:
            self.total_steps = min(self.planned_steps, state["fitted_steps"])  # the budget's end
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr,
                                               weight_decay=cfg.weight_decay,
                                               betas=tuple(cfg.betas))
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=cfg.lr,
                                             weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(cfg, self.total_steps))
        if state is not None:
            if self.sharded:
                fsdp.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def end_at(self, total_steps: int) -> None:
        """End the run at ``total_steps`` instead, the schedule fitted to that end."""
        self.total_steps = total_steps
        self.scheduler.lr_lambdas[0] = lr_lambda(self.cfg, total_steps)

    def batches(self, epoch: int, batches_done: int = 0):
        """This rank's micro-batches of row indices for ``epoch``, after the first
        ``batches_done``."""
        self.sampler.set_epoch(epoch)
        if batches_done:
            self.sampler.load_state_dict({"epoch": epoch, "batches_done": batches_done})
        return iter(self.sampler)

    # ---- one step ---------------------------------------------------------------------

    def read(self, batch: dict, layer: int) -> list[torch.Tensor]:
        """The target's activations for each row, from the cache where it has them."""
        keys = [(record, layer) for record in batch["records"]]
        found = [None if self.cache is None else self.cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            sub = [batch[k][missing].to(self.device) for k in
                   ("target_input_ids", "target_attention_mask", "read_mask")]
            with autocast(self.precision, self.device):
                fresh = read_activations(self.model, *sub, layer,
                                         baseline=baseline_of(batch, self.device, missing),
                                         instruction_gain=self.cfg.instruction_gain)
            for i, v in zip(missing, fresh):
                found[i] = v if self.cache is None else self.cache.put(keys[i], v)
        return [v.to(self.device) for v in found]

    def train_step(self, micro: list[list[int]], layer: int) -> dict:
        """One optimizer step over ``micro`` (this rank's micro-batches of row indices)."""
        batches = [self.collate.rows([self.rows[i] for i in ids]) for ids in micro]
        labelled = sum(_labelled(b["probes"]) for b in batches)
        total = self.dist.sum(torch.tensor(float(labelled))).item()
        # DDP averages gradients over ranks; each rank's loss is already a share of the total
        scale = self.dist.world if self.dist.world > 1 and not self.sharded else 1
        pairs = self.dist.sum(torch.tensor(float(sum(len(p) for b in batches
                                                     for p in b["probes"])))).item()
        weight = self.cfg.contrast_weight
        loss_total, contrast_total = torch.zeros(()), torch.zeros(())
        for k, batch in enumerate(batches):
            vectors = self.read(batch, layer)
            shuffled = self.shuffled(micro[k], batch, vectors, layer) if weight else None
            with self.dist.no_sync(self.loss, last=k == len(batches) - 1), \
                    autocast(self.precision, self.device):
                loss_sum, _, contrast_sum = self.loss(batch["probes"], vectors, shuffled)
                objective = loss_sum * (scale / total)
                if weight:
                    objective = objective + contrast_sum * (weight * scale / pairs)
                objective.backward()
            loss_total += loss_sum.detach().float().cpu()
            contrast_total += contrast_sum.detach().float().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip) \
            if self.cfg.grad_clip > 0 else torch.tensor(0.0)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"loss": self.dist.sum(loss_total).item() / total, "lr": lr,
               "grad_norm": fsdp.as_float(grad_norm), "examples": pairs,
               "labelled_tokens": total}
        if weight:
            out["contrast"] = self.dist.sum(contrast_total).item() / pairs
        return out

    def shuffled(self, ids: list[int], batch: dict, vectors: list[torch.Tensor], layer):
        """Rows ``ids`` under other activations, for the contrast: ``(rows, probes, vectors)``
        for the rows that have a donor, or None when none has.

        The batch donor is another row of the batch (the one donor rule, drawn afresh each
        step). With ``contrast_donor: hidden_prompt`` a row whose record hides a system prompt
        is read again with another label's hidden prompt of its family in its place
        (``swap_hidden_prompts``).
        Either read is injected whole into the row's QA pairs rebuilt for its length, as the
        evaluations' shuffled control does (cut or cycled vectors would differ from a real read
        in ways a decoder can learn to spot)."""
        records = self.train_set.data.records
        labels = [records[r].label for r in batch["records"]]
        try:
            donors = [vectors[d] for d in shuffled_donors(labels, seed=self.scheduler.last_epoch)]
        except NoDonorError:
            donors = [None] * len(ids)
        if self.cfg.contrast_donor == "hidden_prompt":
            for k, v in self.swap_hidden_prompts(batch["records"], layer).items():
                donors[k] = v
        rows = [k for k, v in enumerate(donors) if v is not None]
        if not rows:
            return None
        groups = len(layer) if isinstance(layer, tuple) else 1
        probes = [self.rows.probes(ids[k], donors[k].shape[0] // groups) for k in rows]
        return rows, probes, [donors[k] for k in rows]

    def swap_hidden_prompts(self, record_ids: list[int], layer) -> dict[int, torch.Tensor]:
        """The target's read of each record that hides a system prompt, with the prompt of
        another training label of its family in its place (seeded by step and record):
        ``{position in record_ids: activations}``. The read text is unchanged, so only the
        hidden prompt's effect on it tells the two reads apart, as on the evaluations' shared
        user turns."""
        records = self.train_set.data.records
        if self._hidden_prompts is None:  # every training prompt once, by family (goal, ...)
            seen: dict[str, Record] = {}
            for r in records:
                if r.hidden_system_prompt is not None:
                    seen.setdefault(r.hidden_system_prompt, r)
            families: dict[str, list] = {"": []}
            for prompt, r in sorted(seen.items()):
                families.setdefault(r.family, []).append((r.label, prompt))
                families[""].append((r.label, prompt))
            self._hidden_prompts = families
        swapped, at = [], []
        for k, r in enumerate(record_ids):
            record = records[r]
            own = record.hidden_system_prompt
            if own is None:
                continue
            # a prompt of the same family where it has another, as `eval recovery` ranks
            pool = self._hidden_prompts.get(record.family, [])
            if len({label for label, _ in pool}) < 2:
                pool = self._hidden_prompts[""]
            rng = random.Random(f"{self.cfg.seed}/{self.scheduler.last_epoch}/{r}")
            for _ in range(16):
                label, prompt = pool[rng.randrange(len(pool))]
                if label != record.label and prompt != own:
                    break
            else:
                continue
            messages = (dict(record.messages[0], content=prompt),) + record.messages[1:]
            try:
                target = render_target(self.tokenizer, dataclasses.replace(record,
                                       messages=messages), max_tokens=self.cfg.max_tokens)
            except DialogTooLongError:
                continue
            swapped.append(Row(r, target.input_ids, target.read_mask, []))
            at.append(k)
        if not swapped:
            return {}
        batch = self.collate.rows(swapped)
        sub = [batch[k].to(self.device) for k in
               ("target_input_ids", "target_attention_mask", "read_mask")]
        with autocast(self.precision, self.device):
            fresh = read_activations(self.model, *sub, layer)
        return dict(zip(at, fresh))

    # ---- evaluation and saving ----------------------------------------------------------

    def evaluate(self) -> dict:
        """Held-out loss with real activations and with another label's (the shuffled control).

        Under FSDP every rank evaluates every example: a sharded forward is a collective, so
        all ranks must run the same passes. Held-out examples that all share one label have no
        shuffled control (no donor exists): only the real loss is reported then.
        """
        cfg = self.cfg
        rank, world = (0, 1) if self.sharded else (self.dist.rank, self.dist.world)
        n = min(cfg.eval_examples, len(self.eval_set))
        idx = list(range(len(self.eval_set)))
        random.Random(cfg.seed).shuffle(idx)
        data = self.eval_set.data
        labels = {data.records[data.pairs[i].record].label for i in idx[:n]}
        conditions = ("real", "shuffled") if len(labels) > 1 else ("real",)
        totals = heldout_losses(
            self.model, self.eval_set, self.collate, idx[:n],
            layer=_together(cfg) or cfg.read_layers[len(cfg.read_layers) // 2],
            write_layer=cfg.write_layer, instruction_gain=cfg.instruction_gain,
            mode=cfg.injection, norm=self.norm, batch_size=cfg.batch_size,
            conditions=conditions,
            autocast=lambda: autocast(self.precision, self.device), device=self.device,
            rank=rank, world=world, seed=cfg.seed)
        sums = totals if self.sharded else self.dist.sum(totals)
        out = {"eval_loss": float(sums[0, 0] / max(sums[0, 1], 1))}
        if len(conditions) > 1:
            out["eval_loss_shuffled"] = float(sums[1, 0] / max(sums[1, 1], 1))
        return out

    def checkpoint(self, out_dir: Path, *, step: int, epoch: int, batches_done: int) -> None:
        """A resumable checkpoint: adapter, optimizer, schedule, sampler position, every
        rank's RNG. Every rank takes part (FSDP gathers); the main rank writes."""
        state = {"optimizer": fsdp.optimizer_state(self.model, self.optimizer)
                 if self.sharded else self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": step, "epoch": epoch,
                 "batches_done": batches_done, "rng": self._gather_rng(),
                 **({"fitted_steps": self.total_steps}
                    if self.total_steps != self.planned_steps else {}),
                 "sharded": self.sharded}
        saved = self._saveable()
        if self.dist.main:
            ckpt.save_checkpoint(out_dir, step, saved, self.spec, state,
                                 self.cfg.keep_checkpoints)
        self.dist.barrier()

    def provenance(self) -> dict:
        """How the decoder is being made, for its sidecar: checkpoints carry it too, so that a
        checkpoint evaluates like a finished decoder (its held-out split, its data)."""
        cfg = self.cfg
        return {
            "data_files": file_hashes(cfg.data), "held_out": cfg.held_out,
            "split_seed": cfg.split_seed, "system_recovery": cfg.system_recovery,
            "plain_share": cfg.plain_share, "system_swaps": cfg.system_swaps,
            "init_decoder": cfg.init_decoder, "relation_share": cfg.relation_share,
            "trained_relations": sorted({t.name for t in self.triples}),
            "pack_questions": cfg.pack_questions,
            "system_prompt_data": cfg.system_prompt_data,
            "system_prompt_descriptions": cfg.system_prompt_descriptions,
            "classification_share": cfg.classification_share,
            "context_share": cfg.context_share, "train_labels": cfg.train_labels,
            "dropped_overlap": self.dropped_overlap}

    def save_decoder(self, directory: Path, summary: dict) -> None:
        """The trained decoder with its sidecar, which records how it was made."""
        self.spec.extra = {**self.provenance(), "trained_steps": summary["steps"],
                           "final_metrics": summary["final"],
                           "stages": summary.get("stages", [])}
        saved = self._saveable()
        if self.dist.main:
            save_decoder(saved, directory, self.spec)
        self.dist.barrier()

    def extra_data_files(self) -> list[str]:
        """What the run reads beside ``data``: system prompts, relations, classification sets."""
        cfg = self.cfg
        return [*cfg.system_prompt_data, *cfg.relation_data] + (
            [cfg.classification_data] if cfg.classification_share else [])

    def summary_inputs(self) -> dict:
        extra = self.extra_data_files()
        return {"data_files": self.spec.extra["data_files"],
                "extra_data_files": file_hashes(extra) if extra else {},
                "cache": self.cache.stats() if self.cache else None}

    def _gather_rng(self) -> list:
        """Every rank's RNG state, so each resumes its own dropout stream."""
        mine = ckpt.rng_state()
        if self.dist.world == 1:
            return [mine]
        out = [None] * self.dist.world
        torch.distributed.all_gather_object(out, mine)
        return out

    def _saveable(self):
        """What to hand to save_decoder: the model without peft's README, and under FSDP the
        adapter gathered whole (every rank takes part; the main rank keeps it and writes), so
        the files are those of an unsharded run."""
        return ckpt.Saveable(self.model, fsdp.full_weights(self.model, keep=self.dist.main)
                             if self.sharded else None)


def _together(cfg: TrainConfig) -> tuple[int, ...] | None:
    """Multi-layer reads: the layers every step reads at once, or None."""
    return tuple(cfg.read_layers) if cfg.read_together else None


def _labelled(rows: list[list]) -> int:
    """Labelled tokens of a batch of rows, counted per probe (as one pair per row would)."""
    return sum(int((p.labels[1:] != IGNORE_INDEX).sum()) for row in rows for p in row)


def load_adapter_weights(model, directory: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(directory) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"{directory}: adapter weights that fit no module of this model: "
                          f"{result.unexpected_keys[:3]}")


def init_from_decoder(model, directory: Path) -> None:
    """Continued training: the LoRA weights of an earlier decoder, whose adapter must have the
    shape this config asks for."""
    written = json.loads((directory / "adapter_config.json").read_text())
    ours = model.peft_config["default"]
    if written.get("r") != ours.r or set(written.get("target_modules") or ()) != \
            set(ours.target_modules or ()):
        raise ConfigError(f"init_decoder: {directory} has LoRA r={written.get('r')} on "
                          f"{sorted(written.get('target_modules') or ())}; this config makes "
                          f"r={ours.r} on {sorted(ours.target_modules or ())}")
    load_adapter_weights(model, directory)
