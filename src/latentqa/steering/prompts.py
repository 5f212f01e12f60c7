"""Prompt files for steering and generation: one prompt per line (``.txt``) or JSONL lines
with a ``prompt`` field, or a JSON list of strings."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LatentQAError


class PromptsError(LatentQAError, ValueError):
    pass


def read_prompts(path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptsError(f"{path}: no such prompts file") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptsError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise PromptsError(f"{path}: expected a JSON list of prompt strings")
        prompts = raw
    elif path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptsError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise PromptsError(f"{path}:{n}: expected an object with a 'prompt' string")
            prompts.append(row["prompt"])
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise PromptsError(f"{path}: holds no prompts")
    return prompts


BUILTIN = Path(__file__).parent / "prompts"


def builtin_prompts(name: str) -> list[str]:
    """A prompt set shipped with latentqa: ``neutral`` (everyday requests), ``troubles`` (users
    describing small setbacks: replies have room to become more or less upbeat), ``reference``
    (neutral text for side-effect perplexity)."""
    path = BUILTIN / f"{name}.txt"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BUILTIN.glob("*.txt")))
        raise PromptsError(f"no built-in prompt set {name!r} (built-in: {known})")
    return read_prompts(path)


def prompts_from(spec: str) -> list[str]:
    """A prompts file, or failing that a built-in set by name (``--prompts troubles``)."""
    if Path(spec).exists() or not (BUILTIN / f"{spec}.txt").exists():
        return read_prompts(spec)
    return builtin_prompts(spec)
