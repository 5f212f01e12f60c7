"""The output directory of a run: checked before anything loads, so that two runs never mix.

A directory that already holds a run (any of ``RUN_ENTRIES``) is trained into again only with
``--resume`` (continue its newest checkpoint, with the config it was started with) or
``--overwrite`` (remove the old run's entries first). A resume may change only the keys that
cannot change what is trained (``RESUME_FREE``), and the length of the run under a constant
schedule (``RESUME_IF_CONSTANT``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UsageError
from .checkpoint import list_checkpoints
from .config import ConfigError, TrainConfig

# what `latentqa train` writes in out_dir (report.py, checkpoint.py, loop.py, cache.py)
RUN_ENTRIES = ("config.json", "metrics.jsonl", "stages.jsonl", "summary.json", "loss.png",
               "decoder", "checkpoints", "activation_cache")
# written at the end of a run: a directory holding one holds a finished run
FINISHED = ("decoder", "summary.json")

# keys a resume may change: when to log, evaluate and save, and how much memory the cache may
# take; none of them touches the weights, the batches, the dropout masks or the schedule
# (evaluation runs the model in eval mode and draws no random numbers from the training
# stream; activations pass through the cache dtype whether or not they were cached)
RESUME_FREE = ("log_every", "eval_every", "eval_examples", "save_every", "keep_checkpoints",
               "cache_max_gb")
# keys a resume may change when the schedule is constant: the learning rate then does not
# depend on the number of steps, so a longer (or shorter) run continues exactly
RESUME_IF_CONSTANT = ("max_steps", "epochs")


def run_entries(out_dir: Path) -> list[str]:
    """The entries of an earlier run in ``out_dir`` (none when it does not exist)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return [name for name in RUN_ENTRIES if (out_dir / name).exists()]


def check_out_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool, log=print) -> None:
    """Refuse an output directory this run cannot write, before any data or weights load: a
    file; a run there without ``resume`` or ``overwrite``; with ``resume``, a finished run
    without checkpoints, or a config that differs from the run's where it matters."""
    out_dir = Path(cfg.out_dir)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: --resume continues "
                         "the run in the output directory, --overwrite replaces it")
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                where = f"out_dir {out_dir}" + ("" if p == out_dir else f": {p}")
                raise UsageError(f"{where} is a file, not a directory; give another --out")
            break
    found = run_entries(out_dir)
    if not found or overwrite:
        return
    if resume:
        if list_checkpoints(out_dir):
            check_resume(cfg, out_dir, log)
        elif any(name in found for name in FINISHED):
            raise UsageError(f"--resume: out_dir {out_dir} holds a finished run but no "
                             "checkpoint to resume from; pass --overwrite to delete it and "
                             "start again, or give another --out")
        # else a run stopped before its first checkpoint: it starts again from scratch
        return
    raise UsageError(f"out_dir {out_dir} already holds a training run ({', '.join(found)}); "
                     "pass --resume to continue it, --overwrite to delete it and start again, "
                     "or give another --out")


def clear_run(out_dir: Path) -> list[str]:
    """Remove an earlier run's entries from ``out_dir`` (nothing else in it); the names gone."""
    out_dir = Path(out_dir)
    gone = run_entries(out_dir)
    for name in gone:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return gone


def saved_config(out_dir: Path) -> dict | None:
    """The config a run in ``out_dir`` was started with (its config.json), if it has one."""
    path = Path(out_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--resume: {path} is not readable JSON ({e}); it says which config "
                          "the run was started with") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} does not hold a config")
    return saved


def resume_conflicts(cfg: TrainConfig, saved: dict) -> list[str]:
    """The keys whose change would break an exact resume, each as ``key (old -> new)``."""
    ours = json.loads(json.dumps(cfg.to_dict()))  # lists and numbers as config.json holds them
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    constant = cfg.schedule == "constant" and saved.get("schedule", "cosine") == "constant"
    out = []
    for key, new in ours.items():
        if key == "out_dir" or key in RESUME_FREE:
            continue
        old = saved.get(key, defaults[key])  # a key added since the run started: its default
        if isinstance(old, (int, float)) and isinstance(new, (int, float)) \
                and not isinstance(old, bool) and not isinstance(new, bool):
            same = float(old) == float(new)
        else:
            same = old == new
        if same or (constant and key in RESUME_IF_CONSTANT):
            continue
        note = "; allowed only with schedule: constant" if key in RESUME_IF_CONSTANT else ""
        out.append(f"{key} ({json.dumps(old)} -> {json.dumps(new)}{note})")
    return out


def check_resume(cfg: TrainConfig, out_dir: Path, log=print) -> None:
    """Refuse a resume whose config differs from the run's in a key that matters."""
    saved = saved_config(out_dir)
    if saved is None:
        log(f"warning: {Path(out_dir) / 'config.json'} is missing, so the resumed config "
            "cannot be checked against the run's")
        return
    conflicts = resume_conflicts(cfg, saved)
    if conflicts:
        raise ConfigError(
            f"--resume: the run in {out_dir} was started with other values, and changing them "
            f"breaks an exact resume: {', '.join(conflicts)}. Resume with the run's values "
            f"(only {', '.join(RESUME_FREE)} may change, and {' and '.join(RESUME_IF_CONSTANT)} "
            "with schedule: constant), or start a new run (--overwrite or another --out)")
