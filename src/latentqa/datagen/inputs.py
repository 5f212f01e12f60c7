"""Read the user's input files: seed behaviours and system-prompt records for ``--qa-for``."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DatagenError
from .prompts import CATEGORIES, KINDS


def read_json_records(path: str | Path) -> list:
    """A JSON list, or JSON Lines (one object a line)."""
    path = Path(path)
    if not path.is_file():
        raise DatagenError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise DatagenError(f"{path}: neither a JSON list nor JSON Lines ({e})") from None
    if not isinstance(data, list) or not data:
        raise DatagenError(f"{path}: expected a non-empty list of records")
    return data


def read_seeds(path: str | Path) -> list[dict]:
    """Seed behaviours: ``{"kind": goal|persona|sqa, "description": str, "category"?: str}``.

    For goals and personas the description is the instruction given to the assistant (it
    becomes ``control_user`` and the system prompt); for sqa it is the scenario text.
    """
    seeds = []
    for i, r in enumerate(read_json_records(path)):
        where = f"{path}: record {i}"
        if not isinstance(r, dict):
            raise DatagenError(f"{where}: expected an object, got {type(r).__name__}")
        kind, desc = r.get("kind"), r.get("description")
        if kind not in KINDS:
            raise DatagenError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(desc, str) or not desc.strip():
            raise DatagenError(f"{where}: 'description' must be a non-empty string")
        category = r.get("category") or next(iter(CATEGORIES[kind]))
        if not isinstance(category, str):
            raise DatagenError(f"{where}: 'category' must be a string")
        seeds.append({"kind": kind, "category": category, "description": " ".join(desc.split())})
    return seeds


def read_system_records(path: str | Path) -> list[dict]:
    """Records with ``system`` and ``stimulus_user`` (and ``label``, else one is made)."""
    records = read_json_records(path)
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) and r[k].strip()
                                              for k in ("system", "stimulus_user")):
            raise DatagenError(f"{path}: record {i} needs non-empty 'system' and "
                               "'stimulus_user' strings")
        if "label" in r and not isinstance(r["label"], str):
            raise DatagenError(f"{path}: record {i}: 'label' must be a string")
    return records


def kind_of(label: str, text: str) -> str:
    prefix = label.split("-", 1)[0] if label else ""
    if prefix in KINDS:
        return prefix
    return "persona" if "persona" in text.lower() or "act as" in text.lower() else "goal"
