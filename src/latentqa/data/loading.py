"""Read LatentQA files and our JSONL dialogs, check every record, pair records with QA.

Three kinds of file, told apart by name, then by content:
  * the paper's record files (a JSON list): ``system``, ``control``, ``stimulus``,
    ``stimulus_completion``; a file whose name ends in one of those (``unlabeled_system.json``)
    is of that kind, any other JSON list is recognised by its keys;
  * a qa file (a JSON object ``{label: [[question, answer], ...]}``), such as ``qa.json``;
  * our dialog format, one JSON object per line, for files ending in ``.jsonl`` (docs/data.md).
Every problem is collected (``Problem``); ``load_data`` raises them together as a ``DataError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import UsageError
from ..validation import ROLES, find_bad_text, unicode_problem
from .errors import DataError, Problem
from .records import (
    DIALOG_KIND,
    KIND_TURNS,
    KINDS,
    SYSTEM_RECOVERY_QUESTION,
    Pair,
    Record,
)

JSONL_FIELDS = ("messages", "read", "label", "qa", "generation_prompt", "provenance")
QA_KIND = "qa"


@dataclass
class LatentQAData:
    records: list[Record]
    qa: dict[str, list[tuple[str, str]]]  # label -> QA pairs, from qa files and JSONL lines
    pairs: list[Pair]  # every QA pair of a label with every record of that label
    system_recovery: bool = True
    files: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records})

    def subset(self, labels: Iterable[str]) -> "LatentQAData":
        """The records (and their pairs) whose label is in ``labels``."""
        keep = set(labels)
        records = [r for r in self.records if r.label in keep]
        return self.with_records(records, {k: v for k, v in self.qa.items() if k in keep})

    def with_records(self, records: list[Record], qa: dict | None = None) -> "LatentQAData":
        """The same files and settings over other records (and QA), paired up again."""
        qa = self.qa if qa is None else qa
        return LatentQAData(records, qa, pair_up(records, qa, self.system_recovery),
                            self.system_recovery, list(self.files))


def pair_up(records: list[Record], qa: dict, system_recovery: bool = True) -> list[Pair]:
    pairs = []
    for i, record in enumerate(records):
        pairs += [Pair(i, q, a) for q, a in qa.get(record.label, ())]
        hidden = record.hidden_system_prompt
        if system_recovery and hidden is not None and record.recovery:
            pairs.append(Pair(i, SYSTEM_RECOVERY_QUESTION, hidden, derived=True))
    return pairs


def expand_paths(paths) -> list[Path]:
    """Files as given; a folder stands for its ``*.json`` and ``*.jsonl`` files."""
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in (".json", ".jsonl") and q.is_file())
        else:
            out.append(p)
    return out


LATENTQA_FILES = ("system.json", "control.json", "stimulus.json", "stimulus_completion.json",
                  "qa.json")


def latentqa_files(paths) -> list[Path]:
    """Files as given; a folder stands for the LatentQA files it holds by their usual names (so
    ``unlabeled_system.json`` and other extras beside them are not read)."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = [p / name for name in LATENTQA_FILES if (p / name).is_file()]
        if not found:
            raise UsageError(f"{p} holds none of {', '.join(LATENTQA_FILES)}")
        out += found
    return out


def read_data(paths, *, system_recovery: bool = True) -> tuple[LatentQAData, list[Problem]]:
    """Everything that is valid, and every problem found (bad records are left out)."""
    problems: list[Problem] = []
    records: list[Record] = []
    qa: dict[str, list[tuple[str, str]]] = {}
    files = expand_paths(paths)
    for path in files:
        _read_file(path, records, qa, problems)
    for r in records:
        if not qa.get(r.label) and not (system_recovery and r.hidden_system_prompt is not None):
            hint = "" if system_recovery or r.hidden_system_prompt is None else \
                " (system-prompt recovery is off)"
            problems.append(Problem(r.source, _where(r), "label",
                                    f"label {r.label!r} has no QA pairs in the files given{hint}",
                                    r.index))
    data = LatentQAData(records, qa, pair_up(records, qa, system_recovery), system_recovery,
                        [str(f) for f in files])
    return data, problems


def validate(paths, *, system_recovery: bool = True) -> list[Problem]:
    return read_data(paths, system_recovery=system_recovery)[1]


def load_data(paths, *, system_recovery: bool = True) -> LatentQAData:
    """Load record, qa and JSONL files; raise ``DataError`` listing the problems, if any."""
    data, problems = read_data(paths, system_recovery=system_recovery)
    if problems:
        raise DataError(problems)
    return data


def _where(r: Record) -> str:
    return f"record {r.index}"


def _read_text(path: Path, problems: list[Problem]) -> str | None:
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.append(Problem(name, None, None, "file does not exist"))
        return None
    except OSError as e:
        problems.append(Problem(name, None, None, f"cannot read the file: {e.strerror or e}"))
        return None
    if not raw.strip():
        problems.append(Problem(name, None, None, "file is empty"))
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        problems.append(Problem(name, f"line {line}", None,
                                f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}; "
                                "save the file as UTF-8"))
        return None


def file_kind(path: Path, content=None) -> str | None:
    """``qa``, ``dialog`` or one of the paper's kinds, from the name, else from the content."""
    if path.suffix == ".jsonl":
        return DIALOG_KIND
    stem = path.stem
    if stem == QA_KIND or stem.endswith("_" + QA_KIND):
        return QA_KIND
    for kind in sorted(KINDS, key=len, reverse=True):  # stimulus_completion before stimulus
        if stem == kind or stem.endswith("_" + kind):
            return kind
    if isinstance(content, dict):
        return QA_KIND
    if isinstance(content, list):
        # Any record showing a kind's distinctive key decides, so that one record missing a key
        # is reported as such instead of turning the whole file into another kind.
        keys = set().union(*(r.keys() for r in content if isinstance(r, dict)))
        for kind, key in (("system", "system"), ("stimulus_completion", "stimulus_model"),
                          ("stimulus", "control_model"), ("control", "control_user")):
            if key in keys:
                return kind
    return None


def _read_file(path: Path, records: list[Record], qa: dict, problems: list[Problem]) -> None:
    text = _read_text(path, problems)
    if text is None:
        return
    if path.suffix == ".jsonl":
        _read_jsonl(path, text, records, qa, problems)
        return
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(Problem(str(path), f"line {e.lineno}, column {e.colno}", None,
                                f"invalid JSON: {e.msg}"))
        return
    kind = file_kind(path, content)
    if kind == QA_KIND:
        _read_qa(path, content, qa, problems)
    elif kind is None or not isinstance(content, list):
        expected = "a JSON object {label: [[question, answer], ...]}" if kind == QA_KIND else \
            "a JSON list of records" if kind else \
            "a qa file (JSON object) or a list of LatentQA records (system, control, stimulus " \
            "or stimulus_completion keys)"
        problems.append(Problem(str(path), None, None,
                                f"cannot tell what this file holds; expected {expected}"))
    else:
        for i, obj in enumerate(content):
            record = _latentqa_record(path, kind, i, obj, problems)
            if record is not None:
                records.append(record)


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def _check_string(value, problems, name, where, fld, index) -> bool:
    if not isinstance(value, str):
        problems.append(Problem(name, where, fld, f"expected a string, got {_type_name(value)}",
                                index))
        return False
    if not value.strip():
        problems.append(Problem(name, where, fld, "is empty", index))
        return False
    bad = unicode_problem(value)  # a JSON "\ud800" escape decodes to a lone surrogate
    if bad:
        problems.append(Problem(name, where, fld, bad, index))
        return False
    return True


def _latentqa_record(path, kind, i, obj, problems) -> Record | None:
    name, where = str(path), f"record {i}"
    if not isinstance(obj, dict):
        problems.append(Problem(name, where, None,
                                f"expected an object with keys "
                                f"{[f for f, _ in KIND_TURNS[kind]] + ['label']}, "
                                f"got {_type_name(obj)}", i))
        return None
    ok = True
    for fld in [f for f, _ in KIND_TURNS[kind]] + ["label"]:
        if fld not in obj:
            problems.append(Problem(name, where, fld, f"missing (a {kind} record needs it)", i))
            ok = False
        else:
            ok &= _check_string(obj[fld], problems, name, where, fld, i)
    return Record.from_latentqa(kind, obj, source=name, index=i) if ok else None


def _check_qa_list(value, problems, name, where, fld, index) -> list[tuple[str, str]] | None:
    if not isinstance(value, list):
        problems.append(Problem(name, where, fld,
                                f"expected a list of [question, answer] pairs, got "
                                f"{_type_name(value)}", index))
        return None
    pairs, ok = [], True
    for j, pair in enumerate(value):
        sub = f"{fld}[{j}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            problems.append(Problem(name, where, sub,
                                    "expected a [question, answer] pair of two strings", index))
            ok = False
            continue
        q_ok = _check_string(pair[0], problems, name, where, sub + "[0] (question)", index)
        a_ok = _check_string(pair[1], problems, name, where, sub + "[1] (answer)", index)
        if q_ok and a_ok:
            pairs.append((pair[0], pair[1]))
        ok &= q_ok and a_ok
    return pairs if ok else None


def _add_qa(qa: dict, label: str, pairs) -> None:
    known = qa.setdefault(label, [])
    known += [p for p in pairs if p not in known]


def _read_qa(path, content, qa, problems) -> None:
    name = str(path)
    if not isinstance(content, dict):
        problems.append(Problem(name, None, None, "a qa file must be a JSON object "
                                                  "{label: [[question, answer], ...]}"))
        return
    for label, value in content.items():
        pairs = _check_qa_list(value, problems, name, f"label {label!r}", None, None)
        if pairs is not None and not pairs:
            problems.append(Problem(name, f"label {label!r}", None, "has no QA pairs"))
        elif pairs:
            _add_qa(qa, label, pairs)


def _read_jsonl(path, text, records, qa, problems) -> None:
    name, index = str(path), 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno} (record {index})"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Problem(name, where, None,
                                    f"invalid JSON at column {e.colno}: {e.msg}", index))
        else:
            record = _dialog_record(name, where, index, obj, qa, problems)
            if record is not None:
                records.append(record)
        index += 1


def _dialog_record(name, where, index, obj, qa, problems) -> Record | None:
    def problem(fld, message):
        problems.append(Problem(name, where, fld, message, index))

    if not isinstance(obj, dict):
        problem(None, f"expected a JSON object, got {_type_name(obj)}")
        return None
    for key in obj:
        if key not in JSONL_FIELDS:
            problem(key, f"unknown field; expected some of {list(JSONL_FIELDS)}")
    ok = True
    messages = obj.get("messages")
    if "messages" not in obj:
        problem("messages", "missing")
        ok = False
    elif not isinstance(messages, list) or not messages:
        problem("messages", f"expected a non-empty list of {{role, content}} messages, "
                            f"got {_type_name(messages)}")
        ok = False
    else:
        for j, m in enumerate(messages):
            if not isinstance(m, dict):
                problem(f"messages[{j}]", f"expected an object, got {_type_name(m)}")
                ok = False
                continue
            if m.get("role") not in ROLES:
                problem(f"messages[{j}].role", f"expected one of {list(ROLES)}, got "
                                               f"{m.get('role')!r}")
                ok = False
            if "content" not in m:
                problem(f"messages[{j}].content", "missing")
                ok = False
            else:
                ok &= _check_string(m["content"], problems, name, where,
                                    f"messages[{j}].content", index)
    if "label" not in obj:
        problem("label", "missing")
        ok = False
    else:
        ok &= _check_string(obj["label"], problems, name, where, "label", index)
    read = obj.get("read")
    if read is not None:
        n = len(messages) if isinstance(messages, list) else 0
        if not isinstance(read, list) or not read or not all(
                type(i) is int for i in read):
            problem("read", "expected a non-empty list of message indices (integers)")
            ok = False
        elif n and any(not -n <= i < n for i in read):
            problem("read", f"index out of range for {n} messages: {read}")
            ok = False
    gen = obj.get("generation_prompt")
    if gen is not None and not isinstance(gen, bool):
        problem("generation_prompt", f"expected true or false, got {_type_name(gen)}")
        ok = False
    provenance = obj.get("provenance")
    if provenance is not None:  # where the record came from; recorded, never read
        nested = None if not isinstance(provenance, dict) else next(
            (k for k, v in provenance.items()
             if not (isinstance(v, (str, int, float, bool)) or v is None)), None)
        if not isinstance(provenance, dict) or nested is not None:
            got = _type_name(provenance) if nested is None else \
                f"{_type_name(provenance[nested])} at {nested!r}"
            problem("provenance", "expected an object of strings, numbers, booleans or nulls, "
                                  f"got {got}")
            ok = False
        else:
            bad = find_bad_text(provenance, "provenance")
            if bad:
                problem(bad[0], bad[1])
                ok = False
    pairs = []
    if "qa" in obj:
        pairs = _check_qa_list(obj["qa"], problems, name, where, "qa", index)
        ok &= pairs is not None
    if not ok:
        return None
    if pairs:
        _add_qa(qa, obj["label"], pairs)
    return Record.from_dialog(messages, read, label=obj["label"], generation_prompt=gen,
                              source=name, index=index)
