"""Normalise what callers pass as dialogs and questions, and remember the shape to return.

The rules themselves (roles, valid Unicode, nothing empty) are ``latentqa.validation``'s, the
same the command line and the server apply.
"""

from __future__ import annotations

from ..validation import FieldError, check_dialog, check_texts
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
    if isinstance(dialog, str):
        if not dialog.strip():
            raise FieldError(f"{where}the dialog is empty", "messages")
        dialog = [{"role": "user", "content": dialog}]
    return check_dialog(dialog, where=where)


def as_questions(questions) -> tuple[list[str], bool]:
    if isinstance(questions, str):
        questions, single = [questions], True
    else:
        single = False
        if not isinstance(questions, (list, tuple)) or not questions:
            raise ReadingError("no questions: give at least one question")
    return check_texts(questions, "questions"), single


def as_candidates(candidates) -> list[str]:
    if isinstance(candidates, str):
        candidates = [candidates]
    return check_texts(candidates, "candidates", kind="candidate")


def shaped(flat: list, n_dialogs: int, n_questions: int, one_dialog: bool, one_question: bool):
    """Results for dialogs x questions (flat, dialog-major) in the shape the input had."""
    rows = [flat[i * n_questions:(i + 1) * n_questions] for i in range(n_dialogs)]
    rows = [r[0] if one_question else r for r in rows]
    return rows[0] if one_dialog else rows
