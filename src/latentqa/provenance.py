"""Where a run came from: the command that started it and the source it ran, so that a
decoder's sidecar says how to make it again (stage by stage, when a run was resumed)."""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path


def source_revision(path: str | Path | None = None) -> dict:
    """``{"git_revision", "git_dirty"}`` of the git checkout holding ``path`` (this package by
    default); both None outside a checkout (an installed wheel) or where git is missing.
    ``git_dirty`` counts changes to tracked files only: a run's own outputs are untracked."""
    where = str(Path(path).resolve() if path else Path(__file__).resolve().parent)

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                              timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_revision": None, "git_dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"git_revision": None, "git_dirty": None}
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"git_revision": head.stdout.strip(), "git_dirty": dirty}


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again: ``latentqa ...`` whether it was started as
    the console script, ``python -m latentqa.cli`` or under torchrun."""
    argv = list(sys.argv if argv is None else argv)
    first = Path(argv[0]).name if argv else ""
    program = "latentqa" if first in ("latentqa", "cli.py", "__main__.py") else argv[0]
    return shlex.join([program, *argv[1:]]) if argv else ""


def invocation(argv: list[str] | None = None) -> dict:
    """One start of a command: when (UTC), what was typed, where, and from which source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("latentqa")
    except PackageNotFoundError:
        installed = None
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "command": command_line(argv), "cwd": os.getcwd(),
            "latentqa_version": installed, **source_revision()}
