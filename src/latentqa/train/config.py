"""Training configuration: a flat dataclass, read from YAML or TOML (a file may name a ``base:``
config it changes), overridden by key=value.

Everything is checked before any model weights load: unknown keys, types, ranges, data paths,
and read/write layers against the model's config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from ..data.triples import EVALUATED_RELATIONS
from ..errors import LatentQAError

PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16")
SCHEDULES = ("cosine", "linear", "constant")
CACHE_MODES = ("off", "memory", "disk")
DISTRIBUTED = ("ddp", "fsdp")
CONTRAST_DONORS = ("batch", "hidden_prompt")


class ConfigError(LatentQAError, ValueError):
    """A training config that cannot run; the message names the key."""


@dataclass
class TrainConfig:
    # what to train on
    model: str = "smollm2-135m"
    data: list[str] = field(default_factory=list)
    eval_data: list[str] = field(default_factory=list)  # default: held-out labels of `data`
    held_out: float = 0.1  # fraction of labels held out for validation when eval_data is empty
    split_seed: int = 0
    # keep this share of the training labels (seeded by label, so a smaller share is a subset
    # of a larger one; held-out labels are untouched): the scaling study's data axis
    train_labels: float = 1.0
    system_recovery: bool = True
    plain_share: float = 0.0  # share of pairs on plain-assistant dialogs (data/plain.py)
    system_swaps: int = 0  # per system record: its user turn under another prompt (data/swaps.py)
    # relational-knowledge records (data/triples.py): relation files or folders, their share of
    # the training pairs, and relations left out (default: the ones `eval relations` scores)
    relation_data: list[str] = field(default_factory=list)
    relation_share: float = 0.0
    relation_exclude: list[str] = field(default_factory=lambda: list(EVALUATED_RELATIONS))
    # hidden system prompts without QA (unlabeled_system.json; data/system_prompts.py): system
    # records asked to recover their prompt, swapped under other records' user turns, and,
    # with system_prompt_descriptions, asked to describe the assistant (a rule-based rewrite)
    system_prompt_data: list[str] = field(default_factory=list)
    system_prompt_questions: int = 1  # recovery phrasings per prompt (0..6)
    system_prompt_swaps: int = 1  # rounds of swaps: each prompt under another record's user turn
    system_prompt_descriptions: bool = False
    system_prompt_answer_chars: int = 200  # longer prompts are answered by their first sentence
    system_prompt_limit: int = 0  # 0: every prompt; else a seeded subset (the scaling study)
    # Activation Oracles' mix (data/classification.py, data/context.py): yes/no questions read at
    # a text's last token, and predicting the words around a read token; shares of the pairs
    classification_data: str = ""
    classification_sets: list[str] = field(default_factory=list)  # empty: every set
    classification_share: float = 0.0
    context_share: float = 0.0
    # the activation-contrast loss (train/recipe.py, DecoderLoss): its weight beside the plain
    # loss; each QA pair is also scored under another label's activations and rewarded for
    # being likelier under its own (each step then runs the decoder twice)
    contrast_weight: float = 0.0
    # whose activations the contrast compares with: "batch", another row's read (another
    # dialog, so the read text alone can tell them apart); "hidden_prompt", the same dialog
    # with another record's hidden system prompt in force (a minimal pair: the read text is
    # the same, only the prompt's effect on it differs), rows without a hidden prompt using
    # the batch donor
    contrast_donor: str = "batch"
    # held-out hygiene: drop training records that share a system prompt, user turn or reply
    # with a held-out record, and with held_out_near > 0 instructions that nearly match one
    held_out_hygiene: bool = True
    held_out_near: float = 0.0
    max_tokens: int = 1024  # longest target dialog or decoder prompt; longer records are skipped
    # where to read and write
    read_layers: list[int] = field(default_factory=lambda: [14])  # one sampled per step
    # multi-layer reads: every step reads all of read_layers at once (one pass of the target),
    # each layer's vectors in its own placeholder group after the text "Layer {l}:"; the
    # decoder's sidecar records it, and reading, evaluation and steering read those layers
    read_together: bool = False
    write_layer: int = 0
    injection: str = "replace"  # or "norm_add"
    # "standardize": the decoder subtracts the mean read vector and divides each dimension by
    # its spread, scaled to the write layer's hidden-state norm; "match": then gives each
    # dimension the write layer's own mean and spread (read_norm.py); with
    # statistics fitted on read_norm_rows training rows when training starts (or taken from
    # init_decoder or the checkpoint resumed); "none": raw vectors
    read_norm: str = "none"
    read_norm_rows: int = 256
    # instruction_gain k > 0: the decoder reads an unread instruction's effect amplified: each
    # read vector v becomes v + k (v - b), b the same token's in the dialog rendered without
    # the instruction (a hidden system prompt, an earlier control turn;
    # selection.render_baseline); a dialog without one is read as it is. The instruction's
    # effect is a small part of each vector, which the text's own activations dwarf. Costs one
    # more pass of the target per row.
    instruction_gain: float = 0.0
    layout: str = "paper"
    supervise: str = "reply_and_answer"
    # what to train
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str = "all-linear"
    # full_finetune: instead of LoRA, train a copy of every block and the final norm; the
    # originals stay, frozen, as the target. Memory: the blocks' weights about 5 times over
    # (original, copy, its gradients, two AdamW moments) against about once for LoRA; the saved
    # decoder holds the copy. Embeddings and lm_head (tied or not) stay frozen. lora_* ignored.
    full_finetune: bool = False
    # start the LoRA from a decoder directory written by `latentqa train` (same r and target
    # modules) instead of from scratch: continued training
    init_decoder: str = ""
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    epochs: int = 1
    max_steps: int = 0  # 0: run `epochs` epochs
    # a wall-clock budget for the steps (0: none): the run times its pace and fits its last
    # step (never past max_steps or epochs), and the schedule with it, to end within the budget
    # (a lease on a borrowed GPU); evaluation and saving come after it
    max_minutes: float = 0.0
    batch_size: int = 8  # rows per process and micro-batch (see pack_questions)
    grad_accum: int = 1
    # a row is one record with all its QA pairs (the target read once, the decoder's
    # placeholders and opening run once, each QA block seeing that prefix and itself only);
    # false: one QA pair per row. batch_size counts rows either way
    pack_questions: bool = True
    precision: str = "auto"  # auto: bf16 autocast on CPUs with bf16 and on GPUs, else fp32
    seed: int = 0
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto: cuda:<local rank> when available, else cpu
    # under torchrun: ddp (every rank holds the whole model) or fsdp (blocks sharded across
    # ranks, for targets too big for one device); one process runs unsharded either way
    distributed: str = "ddp"
    # speed
    activation_cache: str = "off"
    cache_dtype: str = "bf16"
    cache_max_gb: float = 2.0
    # bookkeeping
    out_dir: str = "runs/decoder"
    log_every: int = 10
    eval_every: int = 100
    eval_examples: int = 64
    save_every: int = 100
    keep_checkpoints: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, value, hint):
    """Convert a YAML/TOML value or a command-line string to the field's type."""
    text = str(hint)
    if isinstance(value, str) and hint is not str:
        try:  # command-line values arrive as text: 3e-4, true, [14, 20], "q_proj"
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if text.startswith("list[int]"):
        value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise ConfigError(f"{key}: expected a list of integers, got {value!r}")
        return value
    if text.startswith("list[float]"):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if text.startswith("list[str] | str"):
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str)
                                                                      for v in value)):
            return value
        raise ConfigError(f"{key}: expected a string or a list of strings, got {value!r}")
    if text.startswith("list[str]"):
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return value
    return value


def read_config_file(path: str | os.PathLike) -> dict:
    """The values of a YAML or TOML config, its ``base:`` chain resolved.

    ``base: OTHER.yaml`` (a path relative to the file that names it) reads that config first
    and lets this file's keys replace its keys, lists included (a list is replaced whole, never
    merged). A base may name a base of its own; a file reached twice in one chain is refused.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    values = _read_one(path)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: base must be the path of another config file, "
                          f"got {base!r}")
    base_path = path.parent / base
    here = chain + (path.resolve(),)
    if base_path.resolve() in here:
        loop = " -> ".join(str(p) for p in here[here.index(base_path.resolve()):])
        raise ConfigError(f"config file {path}: base {base} makes a cycle ({loop} -> "
                          f"{base_path.resolve()})")
    if not base_path.is_file():
        raise ConfigError(f"config file {path}: its base {base_path} does not exist (a base "
                          "is relative to the file that names it)")
    merged = _read_with_bases(base_path, here)
    merged.update(values)
    return merged


def _read_one(path: Path) -> dict:
    """One config file's mapping, every problem one line naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} "
                          f"on line {line}); save it as UTF-8") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: "
                              f"{_one_line(str(e))}") from None
    else:
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") \
                from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    bad = [k for k in loaded if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {path}: key {bad[0]!r} is not a name")
    return loaded


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _yaml_problem(e) -> str:
    """PyYAML's several-line message as one line: where, what, and what it was inside."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return _one_line(str(e))
    out = f"line {mark.line + 1}, column {mark.column + 1}: {_one_line(problem)}"
    context, where = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        out += f" ({_one_line(context)}"
        if where is not None and (where.line, where.column) != (mark.line, mark.column):
            out += f" started at line {where.line + 1}, column {where.column + 1}"
        out += ")"
    return out


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


# keys that configs once held and the trainer no longer has: refused with the reason
REMOVED_KEYS = {
    "sample_answers": "it was never read (no step sampled answers); delete it from the config",
}


def build_config(values: dict, *, check_paths: bool = True) -> TrainConfig:
    """A checked TrainConfig from a mapping (file values updated by overrides).
    ``check_paths=False`` skips only the checks that the data and ``init_decoder`` exist."""
    hints = get_type_hints(TrainConfig)
    for key in sorted(set(values) & set(REMOVED_KEYS)):
        raise ConfigError(f"{key} is no longer a config key: {REMOVED_KEYS[key]}")
    unknown = sorted(set(values) - set(hints))
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], hints, n=1)
        raise ConfigError(f"unknown config key {unknown[0]!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; known keys: {', '.join(sorted(hints))}")
    cfg = TrainConfig(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    check_config(cfg, check_paths=check_paths)
    return cfg


def check_config(cfg: TrainConfig, *, check_paths: bool = True) -> None:
    def need(cond, message):
        if not cond:
            raise ConfigError(message)

    def exists(path) -> bool:
        return not check_paths or Path(path).exists()

    need(cfg.data, "data: give at least one data file or folder")
    for key in ("data", "eval_data"):
        for p in getattr(cfg, key):
            need(exists(p), f"{key}: {p} does not exist")
    need(cfg.batch_size >= 1, f"batch_size must be at least 1, got {cfg.batch_size}")
    need(cfg.grad_accum >= 1, f"grad_accum must be at least 1, got {cfg.grad_accum}")
    need(cfg.epochs >= 1 or cfg.max_steps >= 1, "set epochs or max_steps to at least 1")
    need(cfg.max_steps >= 0, f"max_steps must be >= 0, got {cfg.max_steps}")
    need(cfg.max_minutes >= 0, f"max_minutes must be >= 0, got {cfg.max_minutes}")
    need(cfg.lr > 0, f"lr must be positive, got {cfg.lr}")
    need(0 <= cfg.held_out < 1, f"held_out must be in [0, 1), got {cfg.held_out}")
    need(0 < cfg.train_labels <= 1, f"train_labels must be in (0, 1], got {cfg.train_labels}")
    need(0 <= cfg.plain_share < 1, f"plain_share must be in [0, 1), got {cfg.plain_share}")
    need(cfg.system_swaps >= 0, f"system_swaps must be >= 0, got {cfg.system_swaps}")
    need(0 <= cfg.relation_share < 1,
         f"relation_share must be in [0, 1), got {cfg.relation_share}")
    need(cfg.relation_share == 0 or cfg.relation_data,
         "relation_share > 0 needs relation_data (relation files or folders)")
    for p in cfg.relation_data:
        need(exists(p), f"relation_data: {p} does not exist")
    for p in cfg.system_prompt_data:
        need(exists(p), f"system_prompt_data: {p} does not exist")
    need(0 <= cfg.system_prompt_questions <= 6,
         f"system_prompt_questions must be in 0..6, got {cfg.system_prompt_questions}")
    need(cfg.system_prompt_swaps >= 0,
         f"system_prompt_swaps must be >= 0, got {cfg.system_prompt_swaps}")
    need(cfg.system_prompt_limit >= 0,
         f"system_prompt_limit must be >= 0, got {cfg.system_prompt_limit}")
    need(cfg.system_prompt_answer_chars >= 1, "system_prompt_answer_chars must be at least 1")
    for key in ("classification_share", "context_share"):
        need(0 <= getattr(cfg, key) < 1, f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    need(cfg.contrast_weight >= 0, f"contrast_weight must be >= 0, got {cfg.contrast_weight}")
    need(cfg.contrast_donor in CONTRAST_DONORS,
         f"contrast_donor must be one of {CONTRAST_DONORS}, got {cfg.contrast_donor!r}")
    need(not cfg.contrast_weight or cfg.distributed != "fsdp",
         "contrast_weight runs the decoder twice before one backward, which distributed: fsdp "
         "does not support here; use distributed: ddp")
    need(cfg.classification_share == 0 or cfg.classification_data,
         "classification_share > 0 needs classification_data (the classification folder)")
    need(not cfg.classification_data or exists(cfg.classification_data),
         f"classification_data: {cfg.classification_data} does not exist")
    need(0 <= cfg.held_out_near <= 1, f"held_out_near must be in [0, 1], got "
                                      f"{cfg.held_out_near}")
    if cfg.init_decoder:
        need(not check_paths or (Path(cfg.init_decoder) / "adapter_model.safetensors").is_file(),
             f"init_decoder: {cfg.init_decoder} holds no adapter_model.safetensors (give a "
             "decoder directory written by latentqa train)")
        need(not cfg.full_finetune, "init_decoder works with LoRA, not full_finetune")
    need(cfg.read_layers, "read_layers: give at least one layer")
    # read_together (multi-layer reads)
    need(not cfg.read_together or (len(cfg.read_layers) >= 2 and min(cfg.read_layers) >= 0
                                   and cfg.read_layers == sorted(set(cfg.read_layers))),
         "read_together: read_layers must be two or more distinct block indices in increasing "
         f"order, e.g. [7, 15, 22] (their probe groups are labelled and ordered by them); got "
         f"{cfg.read_layers}")
    need(cfg.injection in ("replace", "norm_add"),
         f"injection must be 'replace' or 'norm_add', got {cfg.injection!r}")
    from ..read_norm import READ_NORMS

    need(cfg.read_norm in READ_NORMS,
         f"read_norm must be one of {READ_NORMS}, got {cfg.read_norm!r}")
    need(cfg.read_norm == "none" or len(cfg.read_layers) == 1 or cfg.read_together,
         "read_norm fits statistics per read layer, so several read_layers must "
         "be read together (read_together: true), not sampled one per step")
    need(cfg.read_norm_rows >= 2, "read_norm_rows must be at least 2")
    need(cfg.instruction_gain >= 0, f"instruction_gain must be >= 0, got {cfg.instruction_gain}")
    need(not (cfg.instruction_gain and cfg.contrast_weight
              and cfg.contrast_donor == "hidden_prompt"),
         "instruction_gain with contrast_donor: hidden_prompt is not supported (the swapped read "
         "would need its own baseline); use contrast_donor: batch")
    need(cfg.supervise in ("reply_and_answer", "answer"),
         f"supervise must be 'reply_and_answer' or 'answer', got {cfg.supervise!r}")
    need(cfg.precision in PRECISIONS, f"precision must be one of {PRECISIONS}")
    need(cfg.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}")
    need(cfg.optimizer in ("adamw", "sgd"), "optimizer must be 'adamw' or 'sgd'")
    need(cfg.activation_cache in CACHE_MODES, f"activation_cache must be one of {CACHE_MODES}")
    need(cfg.distributed in DISTRIBUTED,
         f"distributed must be one of {DISTRIBUTED}, got {cfg.distributed!r}")
    # sharded passes are collectives: every rank must run the same ones, and a cache hit on one
    # rank and a miss on another would not
    need(cfg.distributed != "fsdp" or cfg.activation_cache == "off",
         "activation_cache must be 'off' with distributed 'fsdp'")
    need(cfg.cache_dtype in ("bf16", "fp16", "fp32"), "cache_dtype must be bf16, fp16 or fp32")
    need(cfg.lora_r >= 1 or cfg.full_finetune, "lora_r must be at least 1")
    need(0 <= cfg.lora_dropout < 1, "lora_dropout must be in [0, 1)")
    need(len(cfg.betas) == 2, "betas must be two numbers")
    for key in ("log_every", "eval_every", "save_every", "max_tokens"):
        need(getattr(cfg, key) >= 1, f"{key} must be at least 1")
    from ..data import LAYOUTS

    need(cfg.layout in LAYOUTS, f"layout must be one of {sorted(LAYOUTS)}")


def check_layers(cfg: TrainConfig, num_blocks: int) -> None:
    """Layers against the model's block count (read from its config, before weights load)."""
    for layer in cfg.read_layers:
        if not -num_blocks <= layer < num_blocks:
            raise ConfigError(f"read_layers: layer {layer} is out of range for a model with "
                              f"{num_blocks} blocks (valid: 0..{num_blocks - 1})")
    if not -num_blocks <= cfg.write_layer < num_blocks:
        raise ConfigError(f"write_layer: layer {cfg.write_layer} is out of range for a model "
                          f"with {num_blocks} blocks (valid: 0..{num_blocks - 1})")
