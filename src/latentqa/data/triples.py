"""Relational-knowledge training records: read a subject's last token, answer a fact about it.

LatentQA data teaches the decoder to describe a whole dialog's behaviour; it never asks what the
target knows about one entity, so the decoder does not learn to answer from a single token's
activations (the paper's relational-knowledge reading, which our ``eval relations`` measures).
Activation Oracles widen the training mix for the same reason. These records come from relation
triples (subject, object) with prompt templates, in the format of Hernandez et al. 2024 (the
shared ``relations/`` data):

  target   one user message that mentions the subject after a neutral lead-in; only the
           subject's last token is read (causal attention: it depends on nothing after it)
  question the relation's template about "this <domain>", asked as a question
           ("What is the capital city of this country?")
  answer   the statement completed with the object ("The capital city of this country is
           Paris.")

The relations that ``eval relations`` scores are excluded by name (``EVALUATED_RELATIONS``) so
that evaluation stays zero-shot, as in the paper.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..files import files_in
from .errors import DataError, Problem
from .loading import LatentQAData
from .records import Record

RELATION_LABEL = "relation"  # labels are "relation-<name>-<n>"; their family is "other"

# The Patchscopes relations of the paper's reading experiment (``eval relations``): never
# trained on by default, whatever folder they come from.
EVALUATED_RELATIONS = ("country_currency", "food_from_country", "person_plays_position_in_sport",
                       "person_plays_pro_sport", "product_by_company", "star_constellation")

# Lead-ins that put the subject in a user turn; drawn per fact.
LEAD_INS = ("{}", "Tell me about {}.", "I have a question about {}.",
            "We were talking about {} yesterday.", "What do you know about {}?",
            "My friend keeps mentioning {}.")


@dataclass(frozen=True)
class Triples:
    name: str  # the file's stem
    file: str
    domain: str  # what the subjects are ("country")
    templates: tuple[str, ...]  # with one "{}" for the subject
    pairs: tuple[tuple[str, str], ...]  # (subject, object)


def triple_files(paths) -> list[Path]:
    """JSON files as given; a folder stands for every ``*.json`` below it, sorted."""
    return files_in(paths, "**/*.json")


def read_triples(path) -> Triples:
    """One relation file; malformed content raises a ``DataError`` naming the file and field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError([Problem(str(path), None, None, f"not readable as JSON: {e}")]) from None
    problems = []

    def bad(where, message):
        problems.append(Problem(str(path), where, None, message))

    if not isinstance(raw, dict):
        raise DataError([Problem(str(path), None, None, "expected a JSON object")])
    templates = [t for t in raw.get("prompt_templates", []) + raw.get("prompt_templates_zs", [])
                 if isinstance(t, str)]
    if not templates or any(t.count("{}") != 1 for t in templates):
        bad("prompt_templates", "needs templates with exactly one {} for the subject")
    domain = (raw.get("properties") or {}).get("domain_name")
    if not isinstance(domain, str) or not domain.strip():
        bad("properties.domain_name", "missing (what the subjects are, e.g. 'country')")
    pairs, seen = [], set()
    samples = raw.get("samples")
    if not isinstance(samples, list) or not samples:
        bad("samples", "needs a non-empty list of {subject, object}")
        samples = []
    for i, s in enumerate(samples):
        subject = s.get("subject") if isinstance(s, dict) else None
        obj = s.get("object") if isinstance(s, dict) else None
        if not isinstance(subject, str) or not subject.strip() or not isinstance(obj, str) \
                or not obj.strip():
            bad(f"samples[{i}]", "needs non-empty string fields subject and object")
            continue
        key = (subject.strip(), obj.strip())
        if key not in seen:
            seen.add(key)
            pairs.append(key)
    if problems:
        raise DataError(problems)
    return Triples(path.stem, str(path), domain.strip(), tuple(dict.fromkeys(templates)),
                   tuple(pairs))


def load_triples(paths, *, exclude=EVALUATED_RELATIONS) -> list[Triples]:
    return [t for t in map(read_triples, triple_files(paths)) if t.name not in set(exclude)]


def _about_this(template: str, domain: str) -> str:
    text = template.format(f"this {domain}").strip()
    text = re.sub(r"\b(a|an|the) this\b", "this", text, flags=re.IGNORECASE)
    return text[0].upper() + text[1:]


def question_for(template: str, domain: str) -> str:
    """The template about "this <domain>", as the kind of question a user would ask.

    A template that already holds one keeps it ("What tool is used for {}? Usually, you need
    a" -> "What tool is used for this task?"); a statement about a noun phrase becomes a
    what-question ("The capital of {} is" -> "What is the capital of this country?"); any
    other statement gets "what?" appended ("People in {} speak" -> "People in this country
    speak what?"). Natural questions matter: ``eval relations`` asks natural questions, and a
    decoder trained only on "... is what?" repeated unfamiliar questions back instead of
    answering them.
    """
    text = _about_this(template, domain)
    if "? " in text:
        return text.split("? ", 1)[0] + "?"
    noun = re.fullmatch(r"((?:The|This \w+'s) .+?) (?:is|are)(?: called)?(?: the| a| an)?",
                        text)
    if noun:
        phrase = noun.group(1)
        return f"What is {phrase[0].lower()}{phrase[1:]}?"
    return text + " what?"


def answer_for(template: str, domain: str, obj: str) -> str:
    """The completed statement: "People in this country speak French." A sentence rather than
    the bare object: trained on bare objects, the decoder answered in its own shorthand ("USD"
    for the dollar), which names the right thing in a form nobody asked for."""
    # "What tool is used for this task? Usually, you need a" -> "Usually, you need a"
    statement = _about_this(template, domain).rsplit("? ", 1)[-1]
    return f"{statement} {obj}."


def relation_records(triples: list[Triples], n: int, *, seed: int = 0,
                     start: int = 0) -> tuple[list[Record], dict]:
    """``n`` records drawn round-robin over the relations (so that no relation's size decides
    the mix), with their one-QA labels. Record indices start at ``start``."""
    rng = random.Random(seed)
    queues = []
    for t in triples:
        order = list(t.pairs)
        rng.shuffle(order)
        queues.append((t, order))
    records, qa = [], {}
    while len(records) < n and any(order for _, order in queues):
        for t, order in queues:
            if not order or len(records) == n:
                continue
            subject, obj = order.pop()
            lead = rng.choice(LEAD_INS)
            text = lead.format(subject)
            at = lead.index("{}")
            label = f"{RELATION_LABEL}-{t.name}-{len(records)}"
            records.append(Record(({"role": "user", "content": text},), (0,), label,
                                  kind=RELATION_LABEL, generation_prompt=True, source=t.file,
                                  index=start + len(records),
                                  read_span=(at, at + len(subject))))
            template = rng.choice(t.templates)
            qa[label] = [(question_for(template, t.domain),
                          answer_for(template, t.domain, obj))]
    return records, qa


def add_relation_records(data: LatentQAData, triples: list[Triples], share: float, *,
                         seed: int = 0) -> LatentQAData:
    """``data`` plus relational records: about ``share`` of the resulting QA pairs (fewer if
    the triples run out)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the relation share must be in [0, 1), got {share}")
    if share == 0.0 or not triples:
        return data
    wanted = math.ceil(share * len(data.pairs) / (1.0 - share))
    extra, qa = relation_records(triples, wanted, seed=seed)
    return data.with_records(list(data.records) + extra, {**data.qa, **qa})
