"""Normalise what callers pass as dialogs and questions, and remember the shape to return."""

from __future__ import annotations

from ..chat import normalize_dialog
from .errors import ReadingError


def as_dialogs(dialogs) -> tuple[list[list[dict]], bool]:
    """(list of dialogs, whether one dialog was given). A dialog is a string (one user turn) or
    a list of ``{"role", "content"}`` messages; a list of such dialogs is a batch."""
    if isinstance(dialogs, str) or (isinstance(dialogs, (list, tuple)) and dialogs
                                    and all(isinstance(m, dict) for m in dialogs)):
        return [_one(dialogs, None)], True
    if not isinstance(dialogs, (list, tuple)) or not dialogs:
        raise ReadingError("the dialog is empty: give a string, a list of messages, or a list "
                           "of dialogs")
    return [_one(d, i) for i, d in enumerate(dialogs)], False


def _one(dialog, index) -> list[dict]:
    where = "" if index is None else f"dialog {index}: "
    try:
        messages = normalize_dialog(dialog)
    except ValueError as e:
        raise ReadingError(f"{where}{e}") from None
    if not any(m["content"].strip() for m in messages):
        raise ReadingError(f"{where}the dialog is empty (every message has empty content)")
    return messages


def as_questions(questions) -> tuple[list[str], bool]:
    if isinstance(questions, str):
        questions, single = [questions], True
    else:
        single = False
        if not isinstance(questions, (list, tuple)) or not questions:
            raise ReadingError("no questions: give at least one question")
    for q in questions:
        if not isinstance(q, str) or not q.strip():
            raise ReadingError(f"a question must be a non-empty string, got {q!r}")
    return list(questions), single


def as_candidates(candidates) -> list[str]:
    if isinstance(candidates, str):
        candidates = [candidates]
    if not isinstance(candidates, (list, tuple)) or not candidates:
        raise ReadingError("no candidates: give at least one candidate answer to score")
    for c in candidates:
        if not isinstance(c, str) or not c.strip():
            raise ReadingError(f"a candidate must be a non-empty string, got {c!r}")
    return list(candidates)


def shaped(flat: list, n_dialogs: int, n_questions: int, one_dialog: bool, one_question: bool):
    """Results for dialogs x questions (flat, dialog-major) in the shape the input had."""
    rows = [flat[i * n_questions:(i + 1) * n_questions] for i in range(n_dialogs)]
    rows = [r[0] if one_question else r for r in rows]
    return rows[0] if one_dialog else rows
