"""Steering as the inspector server runs it: ``serve_steer(reader, config, out_dir)``."""

from __future__ import annotations

from pathlib import Path

from .control import Control, load_control, qa_pairs
from .prompts import builtin_prompts, read_prompts
from .run import SteerConfig, steer

_KNOWN = {f for f in SteerConfig.__dataclass_fields__}


def serve_steer(reader, config: dict, out_dir) -> dict:
    """``config``: ``control`` (an instruction, a control file path, or a list of
    [question, answer] pairs), ``prompts`` (a list, a file, or omitted for the built-in neutral
    set), optional ``eval_prompts`` and any ``SteerConfig`` field (``steps``, ``lr``, ...)."""
    config = dict(config)
    prompts = config.pop("prompts", None)
    if isinstance(prompts, str):
        prompts = read_prompts(prompts)
    prompts = prompts or builtin_prompts("neutral")
    eval_prompts = config.pop("eval_prompts", None)
    control = config.pop("control", None)
    if isinstance(control, list):
        control = Control("request", None, qa_pairs(control, "config.control"))
    elif isinstance(control, str):
        control = load_control(control, reader, prompts)
    else:
        raise ValueError("config.control: give an instruction, a control file or QA pairs")
    unknown = set(config) - _KNOWN
    if unknown:
        raise ValueError(f"config: unknown key(s) {sorted(unknown)}; known: control, prompts, "
                         f"eval_prompts, {', '.join(sorted(_KNOWN))}")
    result = steer(reader, control, prompts, Path(out_dir) / "adapter",
                   eval_prompts=eval_prompts, config=SteerConfig(**config), log=lambda *_: None)
    return {"adapter_dir": result.adapter_dir, "losses": result.losses,
            "seconds": result.seconds,
            "generations": [{"prompt": p, "before": b, "after": a} for p, b, a in
                            zip(result.eval_prompts, result.before, result.after)]}
