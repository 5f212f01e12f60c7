"""Append-only JSONL work files and atomic JSON outputs.

A run may be killed at any instant (SIGKILL included). Each record is one line, written whole and
flushed, so the only possible damage is a torn last line; reading drops it and cuts it off the
file so the next append starts on a clean line.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .errors import DatagenError


class JsonlLog:
    """One work file. ``records`` holds what is on disk; ``append`` adds to both."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()  # rejects are logged from worker threads
        self.records: list[dict] = self._load()

    def _load(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # Everything after the last newline is a line the writer did not finish.
        complete, tail = lines[:-1], lines[-1]
        records = []
        for i, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DatagenError(f"{self.path}:{i}: corrupt line in a work file; "
                                   "remove that line and run again") from None
        if tail:
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(tail))
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records.append(record)
