"""Writing files and folders whole or not at all: a temporary name beside the target, then an
atomic rename, so a crash never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import MissingFileError


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """Yield ``path`` opened for writing under a temporary name beside it; on success the file
    is flushed to disk and renamed to ``path``, on any error removed. ``mode``: "w" or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def write_json(path, obj, *, indent: int = 2, ensure_ascii: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii,
                                       default=str) + "\n")


def write_jsonl(path, rows) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def save_figure(fig, path, **savefig) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", **savefig)
    finally:
        plt.close(fig)
    return Path(path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` directory to ``final``, replacing it, never half-written."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(directory):
    """Yield a temporary folder beside ``directory``; on success it becomes ``directory``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_hashes(paths) -> dict[str, str]:
    """``{path: sha256 prefix}`` of each file, and of each JSON/JSONL file in each folder: what
    a run records so that a later evaluation can check it sees the same data."""
    import hashlib

    out = {}
    for p in map(Path, paths):
        for f in sorted(p.glob("*.json*")) if p.is_dir() else [p]:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


def files_in(paths, pattern: str) -> list[Path]:
    """Files as given; a folder stands for the files below it matching ``pattern`` (a
    ``Path.glob`` pattern such as ``*.tsv`` or ``**/*.json``), sorted. A folder with none, or a
    path that does not exist, raises ``MissingFileError`` naming it."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.glob(pattern) if q.is_file())
            if not found:
                raise MissingFileError(f"{p} holds no {pattern.rsplit('/', 1)[-1]} files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MissingFileError(f"no such file or folder: {p}")
    return out
