"""The rules for what a user sends, written once: dialogs, questions, candidates, settings.

The command line (``latentqa read`` / ``score``), the server (``latentqa serve``), the files
they read and the Python API (``Reader.ask``) all call these functions, so a value one of them
accepts the others accept too. Each error is a ``FieldError`` that names the field at fault:
``param`` is its dotted path (``messages.0.content``, ``temperature``), which the server
returns as the error's ``param``; the message shows it and says what to fix.

Text must be valid Unicode: a lone surrogate (a JSON ``"\\ud800"`` escape without its pair, or
command-line bytes that are not UTF-8) cannot be tokenized, so it is refused here, by name,
instead of failing deep inside a tokenizer.
"""

from __future__ import annotations

import math

from .errors import ReadingError, UsageError

ROLES = ("system", "user", "assistant")  # the roles a dialog may use
TEMPERATURE_MAX = 2.0  # 0: greedy
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed takes


class FieldError(UsageError, ReadingError):
    """A value that breaks one of the rules above; ``param`` is the field's dotted path."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def shown(param: str) -> str:
    """A dotted path as the messages show it: ``messages.0.content`` -> ``messages[0].content``."""
    parts = param.split(".")
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def type_name(value) -> str:
    return {dict: "an object", list: "a list", tuple: "a list", str: "a string",
            bool: "a boolean", type(None): "null", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, and where), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        return (f"is not valid Unicode text: it holds a lone surrogate U+{code:04X} at "
                f"character {e.start} (a \\u{code:04x} escape without its pair, or bytes that "
                "are not UTF-8)")
    return None


def find_bad_text(value, param: str) -> tuple[str, str] | None:
    """(path, problem) of the first string anywhere in a JSON-like value (keys included) that
    is not valid Unicode, or None."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        return (param, problem) if problem else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and unicode_problem(k):
                return param, f"has a key that {unicode_problem(k)}"
            found = find_bad_text(v, f"{param}.{k}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for k, v in enumerate(value):
            found = find_bad_text(v, f"{param}.{k}")
            if found:
                return found
    return None


def check_text(value, param: str, *, where: str = "", allow_empty: bool = False) -> str:
    """``value`` if it is a string of valid Unicode (and, unless ``allow_empty``, not blank)."""
    if not isinstance(value, str):
        raise FieldError(f"{where}{shown(param)}: expected a string, got {type_name(value)}",
                         param)
    problem = unicode_problem(value)
    if problem:
        raise FieldError(f"{where}{shown(param)} {problem}", param)
    if not allow_empty and not value.strip():
        raise FieldError(f"{where}{shown(param)} is empty", param)
    return value


def check_texts(values, param: str, *, kind: str = "question", where: str = "") -> list[str]:
    """A non-empty list of non-blank strings of valid Unicode (questions, candidates)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise FieldError(f"{where}no {kind}s: give at least one {kind}", param)
    return [check_text(v, f"{param}.{k}", where=where) for k, v in enumerate(values)]


def check_dialog(messages, param: str = "messages", *, where: str = "") -> list[dict]:
    """A dialog as plain ``{"role", "content"}`` messages: a non-empty list, each role one of
    ``ROLES``, each content a string of valid Unicode, not every content blank."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise FieldError(f"{where}{shown(param)}: the dialog is empty: give a non-empty list "
                         "of {role, content} messages", param)
    out = []
    for k, m in enumerate(messages):
        at = f"{param}.{k}"
        if not isinstance(m, dict):
            raise FieldError(f"{where}{shown(at)}: expected a {{role, content}} object, got "
                             f"{type_name(m)}", at)
        for key in ("role", "content"):
            if key not in m:
                raise FieldError(f"{where}{shown(at)}: missing {key!r}", f"{at}.{key}")
        role = check_text(m["role"], f"{at}.role", where=where)
        if role not in ROLES:
            raise FieldError(f"{where}{shown(at + '.role')}: unknown role {role!r}; expected "
                             f"one of {', '.join(ROLES)}", f"{at}.role")
        out.append({"role": role,
                    "content": check_text(m["content"], f"{at}.content", where=where,
                                          allow_empty=True)})
    if not any(m["content"].strip() for m in out):
        raise FieldError(f"{where}{shown(param)}: the dialog is empty: every message has empty "
                         "content", param)
    return out


def _number(value, param, name, *, integer: bool):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        raise FieldError(f"{name} must be {'an integer' if integer else 'a number'}, got "
                         f"{value!r}", param)
    return value


def check_sampling(*, max_new_tokens=None, temperature=None, top_p=None, seed=None,
                   names: dict | None = None) -> None:
    """Generation settings: ``max_new_tokens`` >= 1, ``temperature`` in [0, 2] (0: greedy),
    ``top_p`` in (0, 1], ``seed`` what torch takes. None: not given. ``names`` shows a setting
    under another name (a command-line flag, an OpenAI field)."""
    names = names or {}

    def name(param):
        return names.get(param, param)

    if max_new_tokens is not None:
        _number(max_new_tokens, "max_new_tokens", name("max_new_tokens"), integer=True)
        if max_new_tokens < 1:
            raise FieldError(f"{name('max_new_tokens')} must be at least 1, got "
                             f"{max_new_tokens}", "max_new_tokens")
    if temperature is not None:
        _number(temperature, "temperature", name("temperature"), integer=False)
        if not 0 <= temperature <= TEMPERATURE_MAX:
            raise FieldError(f"{name('temperature')} must be between 0 (greedy) and "
                             f"{TEMPERATURE_MAX:g}, got {temperature:g}", "temperature")
    if top_p is not None:
        _number(top_p, "top_p", name("top_p"), integer=False)
        if not 0 < top_p <= 1:
            raise FieldError(f"{name('top_p')} must be more than 0 and at most 1, got "
                             f"{top_p:g}", "top_p")
    if seed is not None:
        _number(seed, "seed", name("seed"), integer=True)
        if not SEED_MIN <= seed <= SEED_MAX:
            raise FieldError(f"{name('seed')} must be between {SEED_MIN} and {SEED_MAX}, got "
                             f"{seed}", "seed")
