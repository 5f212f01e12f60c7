"""Dialogs and batch rows from files, for the CLI.

A dialog file is a JSON list of messages, a JSON object with ``messages``, or our JSONL (one
dialog per line with ``messages`` and optionally ``read``, docs/data.md; other fields are
ignored here). A batch file is JSONL with one row per line: ``messages`` (or ``dialog``, a
string), ``question`` or ``questions``, for scoring ``candidates``, optionally ``read``; any
other field (``id``, ``label``...) is copied to the output rows.

Every dialog, question and candidate is checked by ``latentqa.validation`` (the rules of the
Python API and the server), and an error names the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..validation import FieldError, check_dialog, check_texts, find_bad_text
from .errors import ReadingError

BATCH_INPUT_FIELDS = ("messages", "dialog", "question", "questions", "candidates", "read")


def _json_lines(path: Path):
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReadingError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ReadingError(f"{path}, line {n}: invalid JSON: {e}") from None


def read_dialog_file(path) -> list[tuple[list, object]]:
    """[(messages, read or None), ...] from a dialog file."""
    path = Path(path)
    if not path.is_file():
        raise ReadingError(f"dialog file {path} does not exist")
    if path.suffix == ".jsonl":
        out = []
        for n, row in _json_lines(path):
            if not isinstance(row, dict) or "messages" not in row:
                raise ReadingError(f"{path}, line {n}: expected an object with 'messages'")
            out.append((check_dialog(row["messages"], where=f"{path}, line {n}: "),
                        row.get("read")))
        if not out:
            raise ReadingError(f"{path} holds no dialogs")
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReadingError(f"{path} is not valid JSON: {e}") from None
    if isinstance(data, dict) and "messages" in data:
        return [(check_dialog(data["messages"], where=f"{path}: "), data.get("read"))]
    if isinstance(data, list):
        return [(check_dialog(data, where=f"{path}: "), None)]
    raise ReadingError(f"{path}: expected a JSON list of messages or an object with 'messages'")


def read_batch_rows(path, *, need_candidates: bool) -> list[dict]:
    """Validated rows: each has ``messages``, ``questions`` (a list), maybe ``candidates``."""
    path = Path(path)
    if not path.is_file():
        raise ReadingError(f"batch file {path} does not exist")
    rows = []
    for n, row in _json_lines(path):
        where = f"{path}, line {n}"
        if not isinstance(row, dict):
            raise ReadingError(f"{where}: expected a JSON object")
        messages = row.get("messages", row.get("dialog"))
        if messages is None:
            raise ReadingError(f"{where}: needs 'messages' (or 'dialog')")
        param = "messages" if "messages" in row else "dialog"
        if isinstance(messages, str):  # one user turn
            messages = [{"role": "user", "content": messages}]
            param = "dialog"
        messages = check_dialog(messages, param, where=f"{where}: ")
        questions = row.get("questions", [row["question"]] if "question" in row else None)
        if not questions or not isinstance(questions, list):
            raise ReadingError(f"{where}: needs 'question' or a non-empty 'questions' list")
        questions = check_texts(questions, "questions" if "questions" in row else "question",
                                where=f"{where}: ")
        candidates = row.get("candidates")
        if need_candidates:
            if not candidates or not isinstance(candidates, list):
                raise ReadingError(f"{where}: needs a non-empty 'candidates' list")
            candidates = check_texts(candidates, "candidates", kind="candidate",
                                     where=f"{where}: ")
        extra = {k: v for k, v in row.items() if k not in BATCH_INPUT_FIELDS}
        bad = find_bad_text(extra, "")
        if bad:  # copied to the output, which must be valid UTF-8
            raise FieldError(f"{where}: field {bad[0].lstrip('.')!r} {bad[1]}",
                             bad[0].lstrip("."))
        rows.append(dict(messages=messages, questions=questions, read=row.get("read"),
                         candidates=candidates, extra=extra, line=n))
    if not rows:
        raise ReadingError(f"{path} holds no rows")
    return rows
