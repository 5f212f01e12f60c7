"""Yes/No classification sets (Activation Oracles' training mix): loading, a fixed held-out
split, balanced questions, and training records.

A set is a CSV of texts with a label each (the shared ``classification/`` folder:
``geometry_of_truth/*.csv``, true/false statements; ``tense/tense.csv``, sentences labelled
with their tense) plus ``paraphrases/question.json``, the question templates of each group.
Activation Oracles' protocol, which training and ``eval classification`` share:

  target    the text as one user turn; one vector, at its last content token, is read
  question  "Answer with 'Yes' or 'No' only. " + a template naming a label: the text's own
            label for a Yes item, another label for a No item (a true/false set's templates
            name only "true", so its true statements are the Yes items and its false ones the
            No items); Yes and No items are balanced
  answer    "Yes" or "No"

**The held-out split is fixed**, not a setting: a row is held out when a hash of any of its
split keys falls below ``HELD_OUT`` (``splits.is_held_out``, seed ``SPLIT_SEED``). A row's keys
are the entities it is about where the file names them (``city``, ``city1``/``city2``, the pair
``n1``/``n2``), else its normalised text; so "Krasnodar is in Russia" (cities), "Krasnodar is
not in Russia" (neg_cities) and every conjunction naming Krasnodar land on the same side, as do
"51 is larger than 52" and "51 is smaller than 52". Training records come only from the other
rows (``training_rows``), evaluation only from these (``held_out_rows``). Files without entity
columns (translations, companies, common claims, tense) are split by text, so a word or company
can appear on both sides in different statements.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..files import files_in
from .errors import DataError, Problem
from .loading import LatentQAData
from .records import Record
from .splits import is_held_out

YES, NO = "Yes", "No"
PROMPT = "Answer with 'Yes' or 'No' only. "
HELD_OUT = 0.25  # expected share of split keys held out for `eval classification`
SPLIT_SEED = 0
CLASSIFICATION_LABEL = "classification"  # labels "classification-<set>-<n>", family "other"
QUESTIONS_FILE = ("paraphrases", "question.json")


@dataclass(frozen=True)
class Schema:
    """How a CSV's columns map to a set: which question group, text and label columns."""

    group: str  # the key of its templates in question.json
    text: str
    label: str
    names: dict[str, str] | None = None  # raw label -> label name (None: as written)
    askable: tuple[str, ...] | None = None  # labels a question can name (None: every label)


SCHEMAS = (
    Schema("geometry_of_truth", "statement", "label", {"1": "true", "0": "false"}, ("true",)),
    Schema("tense", "sentence", "tense"),
)
# Columns naming what a row is about: rows that share such a value share a side of the split.
KEY_COLUMNS = (("city",), ("city1",), ("city2",), ("n1", "n2"))


@dataclass(frozen=True)
class Row:
    text: str
    label: str
    keys: tuple[str, ...]  # split keys (see the module docstring)
    where: str  # "file:line"

    @property
    def held_out(self) -> bool:
        return any(is_held_out(k, HELD_OUT, SPLIT_SEED) for k in self.keys)


@dataclass(frozen=True)
class ClassificationSet:
    name: str  # the CSV's stem: "cities", "tense"
    group: str
    file: str
    templates: tuple[str, ...]
    labels: tuple[str, ...]  # every label of the rows, sorted
    askable: tuple[str, ...]  # the labels a question can name
    rows: tuple[Row, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # why rows were left out -> count

    @property
    def held_out_rows(self) -> list[Row]:
        return [r for r in self.rows if r.held_out]

    @property
    def training_rows(self) -> list[Row]:
        return [r for r in self.rows if not r.held_out]


@dataclass(frozen=True)
class YesNo:
    """One question about one row: ``named`` is the label the question names."""

    set: str
    row: Row
    named: str
    question: str  # with ``PROMPT``
    answer: str  # YES or NO


def normalize_text(text: str) -> str:
    return " ".join(text.split())


def split_keys(row: dict, text: str) -> tuple[str, ...]:
    keys = []
    for cols in KEY_COLUMNS:
        values = [(row.get(c) or "").strip() for c in cols]
        if all(values):
            keys.append("+".join(cols) + ":" + "|".join(sorted(v.casefold() for v in values)))
    # pairs of numbers are one key whichever column holds which ("n1+n2:51|52")
    return tuple(keys) or ("text:" + text.casefold(),)


def read_set(path, templates: dict) -> ClassificationSet:
    """One CSV. Repeated texts are kept once; a text given two labels is dropped (counted in
    ``skipped``). Unknown column layouts and empty files raise a ``DataError``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError([Problem(str(path), None, None, f"not readable as CSV: {e}")]) from None
    header = set(rows[0]) if rows else set()
    schema = next((s for s in SCHEMAS if {s.text, s.label} <= header), None)
    if schema is None:
        raise DataError([Problem(str(path), "line 1", None,
                                 "no known columns: a set needs statement,label (true/false "
                                 "statements) or sentence,tense")])
    if schema.group not in templates or not templates[schema.group]:
        raise DataError([Problem(str(path), None, None, f"no question templates for group "
                                 f"{schema.group!r} in {'/'.join(QUESTIONS_FILE)}")])
    problems, by_text, skipped = [], {}, {"repeated text": 0, "conflicting labels": 0}
    for line, raw in enumerate(rows, start=2):
        text = normalize_text(raw.get(schema.text) or "")
        label = (raw.get(schema.label) or "").strip()
        if schema.names is not None:
            if label not in schema.names:
                problems.append(Problem(str(path), f"line {line}", schema.label,
                                        f"expected one of {sorted(schema.names)}, got {label!r}"))
                continue
            label = schema.names[label]
        if not text or not label:
            problems.append(Problem(str(path), f"line {line}", None, "empty text or label"))
            continue
        row = Row(text, label, split_keys(raw, text), f"{path}:{line}")
        if text in by_text:
            same = by_text[text] is not None and by_text[text].label == label
            skipped["repeated text" if same else "conflicting labels"] += 1
            if not same and by_text[text] is not None:
                skipped["conflicting labels"] += 1  # the first one goes too
                by_text[text] = None
            continue
        by_text[text] = row
    if problems:
        raise DataError(problems)
    kept = tuple(r for r in by_text.values() if r is not None)
    labels = tuple(sorted({r.label for r in kept}))
    if len(labels) < 2:
        raise DataError([Problem(str(path), None, None, "needs rows of at least two labels")])
    askable = schema.askable if schema.askable is not None else labels
    return ClassificationSet(path.stem, schema.group, str(path), tuple(templates[schema.group]),
                             labels, tuple(a for a in askable if a in labels), kept,
                             {k: v for k, v in skipped.items() if v})


def load_classification(folder, *, only=None) -> list[ClassificationSet]:
    """Every set (``*.csv`` below ``folder``) with its templates from
    ``folder/paraphrases/question.json``; ``only``: these set names (file stems)."""
    folder = Path(folder)
    qfile = folder.joinpath(*QUESTIONS_FILE)
    try:
        templates = json.loads(qfile.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError([Problem(str(qfile), None, None, f"the question templates cannot be "
                                 f"read ({e}); give the classification folder")]) from None
    files = files_in([folder], "**/*.csv")
    names = [f.stem for f in files]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise DataError([Problem(str(folder), None, None, f"no set {n!r} here; there are "
                                     f"{', '.join(names)}") for n in unknown])
        files = [f for f in files if f.stem in set(only)]
    return [read_set(f, templates) for f in files]


def question(cset: ClassificationSet, label: str, template: str) -> str:
    return PROMPT + (template.format(label) if "{}" in template else template)


def yes_no_items(cset: ClassificationSet, rows, n: int | None, rng: random.Random) -> list[YesNo]:
    """Up to ``n`` (None: as many as balance allows) questions, one per row, alternating Yes and
    No (so any even prefix is balanced); rows are drawn in ``rng``'s order, templates and the
    No items' labels with ``rng``."""
    order = list(rows)
    rng.shuffle(order)
    half = len(order) if n is None else n // 2
    yes, no = [], []
    for row in order:
        if len(yes) >= half and len(no) >= half:
            break
        others = [lab for lab in cset.askable if lab != row.label]
        can_yes = row.label in cset.askable and len(yes) < half
        can_no = bool(others) and len(no) < half
        if can_yes and (len(yes) <= len(no) or not can_no):
            yes.append(YesNo(cset.name, row, row.label,
                             question(cset, row.label, rng.choice(cset.templates)), YES))
        elif can_no:
            named = rng.choice(others)
            no.append(YesNo(cset.name, row, named,
                            question(cset, named, rng.choice(cset.templates)), NO))
    k = min(len(yes), len(no))
    return [item for pair in zip(yes[:k], no[:k]) for item in pair]


def text_record(text: str, *, label: str = "", kind: str = CLASSIFICATION_LABEL,
                source: str = "", index: int = -1) -> Record:
    """The text as one user turn, read at its last content token (``read_span``)."""
    return Record(({"role": "user", "content": text},), (0,), label, kind=kind,
                  generation_prompt=True, source=source, index=index, read_span=(0, len(text)))


def add_classification_records(data: LatentQAData, share: float, *,
                               sets: list[ClassificationSet], seed: int = 0) -> LatentQAData:
    """``data`` plus yes/no records from the sets' **training rows** only: about ``share`` of
    the resulting QA pairs (fewer if the rows run out), Yes and No balanced, drawn round-robin
    over the sets (a Yes and a No from each in turn) so no set's size decides the mix."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the classification share must be in [0, 1), got {share}")
    if share == 0.0 or not sets:
        return data
    wanted = math.ceil(share * len(data.pairs) / (1.0 - share))
    wanted += wanted % 2
    rng = random.Random(seed)
    queues = [yes_no_items(s, s.training_rows, None, rng) for s in sets]
    chosen: list[YesNo] = []
    turn = 0
    while len(chosen) < wanted and any(len(q) > 2 * turn for q in queues):
        for q in queues:
            if len(chosen) < wanted:
                chosen += q[2 * turn:2 * turn + 2]
        turn += 1
    records, qa = [], {}
    for k, item in enumerate(chosen):
        label = f"{CLASSIFICATION_LABEL}-{item.set}-{k}"
        records.append(text_record(item.row.text, label=label, source=item.row.where, index=k))
        qa[label] = [(item.question, item.answer)]
    return data.with_records(list(data.records) + records, {**data.qa, **qa})
