"""Relational knowledge read from a subject's activations (the paper's Patchscopes relations).

Each fact is (subject, object, source context): the context is a sentence fragment in which the
subject appears. The target reads the context as one user message; we take its residual stream
at the subject's **last token** (as Patchscopes does: the data's ``position_source`` marks that
token) or, with ``read="subject"``, at every token of the subject. The decoder is asked the
relation's question (``QUESTIONS``: "What currency is used in this country?") and is correct
when the gold object appears, case-insensitively, in its first 20 generated tokens (the scoring
of the follow-up work). Conditions, on the same facts:

  decoder            the trained adapter reading the subject's activations
  untrained_decoder  adapter off, the same injection (Patchscope/SelfIE style)
  text_only          adapter off, no activations: the model is shown the context up to the end
                     of the subject (all a causal read of the subject can depend on), told which
                     words are the subject, and asked the same question (the critique's baseline)
  shuffled           the decoder reading another subject's activations (another object): what
                     the decoder says regardless of what it reads
  linear_probe       logistic regression over the relation's objects on the same activations,
                     trained on some subjects and tested on others (``probe.py``)

Subjects, not facts, are split into train and test (a subject appears in several contexts), so
the probe is scored on subjects it never saw; the generated conditions are reported on the test
subjects too (comparable with the probe) and on all subjects.
"""

from __future__ import annotations

import contextlib
import csv
import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import render_dialog
from ..controls import shuffled_donors
from ..data.errors import DataError, Problem
from ..decoder import as_target
from ..decoding import split_layers
from ..files import files_in
from ..selection import Read
from ..stats import mcnemar_exact, summarize
from .probe import LinearProbe

# The relation (the TSV's file stem) -> the question the decoder and the text-only baseline are
# asked. Worded about "this" subject: the decoder sees only the subject's activations.
QUESTIONS = {
    "country_currency": "What currency is used in this country?",
    "food_from_country": "Which country does this food come from?",
    "person_plays_position_in_sport": "What position does this athlete play in their sport?",
    "person_plays_pro_sport": "Which professional sport does this athlete play?",
    "product_by_company": "Which company developed this product?",
    "star_constellation": "Which constellation is this star in?",
}
CONDITIONS = ("decoder", "untrained_decoder", "text_only", "shuffled", "linear_probe")
GENERATED = ("decoder", "untrained_decoder", "shuffled")
SCORED_TOKENS = 20  # the answer is scored on its first 20 generated tokens
READS = ("last", "subject")
REQUIRED_COLUMNS = ("subject", "object", "prompt_source")
TEXT_ONLY_PROMPT = ('Here is a text:\n\n"{context}"\n\nIn this text, consider "{subject}". '
                    "{question}")

csv.field_size_limit(1 << 24)


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    object: str
    context: str  # the source context, stripped
    start: int  # the subject's [start, end) characters in ``context``
    end: int
    where: str  # "file:line", for messages


@dataclass
class Relation:
    name: str
    file: str
    facts: list[Fact]
    skipped: dict[str, int]  # why rows were not used -> how many


# ---- data -------------------------------------------------------------------------------

def relation_files(paths) -> list[Path]:
    """TSV files as given; a folder stands for the ``*.tsv`` files in it, sorted."""
    return files_in(paths, "*.tsv")


def find_subject(context: str, subject: str) -> tuple[int, int] | None:
    """The first occurrence of ``subject`` in ``context`` (exact, else ignoring case)."""
    at = context.find(subject)
    if at < 0:
        low = context.lower()
        at = low.find(subject.lower())
        if at < 0 or len(low) != len(context):  # lower() changed lengths: spans would be off
            return None
    return at, at + len(subject)


def read_relation(path) -> Relation:
    """Facts of one Patchscopes TSV (a header row, then one fact per row; quoted fields may
    span lines). Rows without a context, or whose context lacks the subject, are skipped and
    counted; repeated (subject, object, context) rows are kept once. Malformed rows raise a
    ``DataError`` naming the file and line of every one."""
    path = Path(path)
    problems, facts, seen = [], [], set()
    skipped = Counter()
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh, delimiter="\t")
        try:
            header = next(rows)
        except StopIteration:
            raise DataError([Problem(str(path), None, None, "the file is empty")]) from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError([Problem(str(path), "line 1", None,
                                     f"the header lacks column(s) {', '.join(missing)} "
                                     f"(has: {', '.join(h for h in header if h)})")])
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        line = rows.line_num + 1
        for row in rows:
            where, line = f"line {line}", rows.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                problems.append(Problem(str(path), where, None, f"{len(row)} fields, the header "
                                        f"has {len(header)}"))
                continue
            subject, obj = row[col["subject"]].strip(), row[col["object"]].strip()
            context = row[col["prompt_source"]].strip()
            for name, value in (("subject", subject), ("object", obj)):
                if not value:
                    problems.append(Problem(str(path), where, name, "is empty"))
            if not subject or not obj:
                continue
            if not context:
                skipped["no context"] += 1
                continue
            span = find_subject(context, subject)
            if span is None:
                skipped["subject not in context"] += 1
                continue
            if (subject, obj, context) in seen:
                skipped["duplicate"] += 1
                continue
            seen.add((subject, obj, context))
            facts.append(Fact(path.stem, subject, obj, context, *span, f"{path}:{where[5:]}"))
    if problems:
        raise DataError(problems)
    if not facts:
        raise DataError([Problem(str(path), None, None, "no usable rows (every row lacks a "
                                 "context or its subject)")])
    return Relation(path.stem, str(path), facts, dict(skipped))


def load_relations(paths, *, only=None) -> list[Relation]:
    """Every relation in ``paths``; ``only``: keep just these relation names."""
    relations = [read_relation(p) for p in relation_files(paths)]
    if only:
        unknown = sorted(set(only) - {r.name for r in relations})
        if unknown:
            raise DataError([Problem(", ".join(map(str, paths)), None, None,
                                     f"no relation {name!r} here; there are "
                                     f"{', '.join(r.name for r in relations)}")
                             for name in unknown])
        relations = [r for r in relations if r.name in only]
    unasked = [Problem(r.file, None, None, f"no question for the relation {r.name!r}; relations "
                       f"with a question: {', '.join(QUESTIONS)} (evaluation/relations.py)")
               for r in relations if r.name not in QUESTIONS]
    if unasked:
        raise DataError(unasked)
    return relations


def limit_facts(facts: list[Fact], limit: int, seed: int) -> list[Fact]:
    """At most ``limit`` facts (0: all), drawn with the seed, in file order."""
    if not limit or len(facts) <= limit:
        return list(facts)
    keep = set(random.Random(seed).sample(range(len(facts)), limit))
    return [f for i, f in enumerate(facts) if i in keep]


# ---- the pieces of the eval -------------------------------------------------------------

def normalize(text: str) -> str:
    """Lower case, accents dropped, every run of non-alphanumerics one space."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    return re.sub(r"[^0-9a-z]+", " ", text).strip()


def is_correct(answer: str, obj: str) -> bool:
    """Case-insensitive substring match of the gold object in the answer (whose length the
    generation already capped at ``SCORED_TOKENS``). Short objects can match inside longer
    words ("Leo" in "Leonardo"); that is the published scoring, so we keep it."""
    gold = normalize(obj)
    return bool(gold) and gold in normalize(answer)


def dialog(fact: Fact) -> list[dict]:
    return [{"role": "user", "content": fact.context}]


def subject_tokens(tokenizer, fact: Fact, max_tokens=None) -> tuple[int, int]:
    """[start, end) of the subject's tokens in the rendered dialog (the tokens overlapping its
    characters), rendered as the Reader renders it."""
    rendered = render_dialog(tokenizer, dialog(fact), add_generation_prompt=True,
                             max_tokens=max_tokens)
    span = rendered.char_tokens(0, fact.start, fact.end)
    if span is None:
        raise ValueError(f"{fact.where}: no token covers the subject {fact.subject!r}")
    return span


def selection(tokenizer, fact: Fact, read: str = "last", max_tokens=None) -> Read:
    start, end = subject_tokens(tokenizer, fact, max_tokens)
    if read == "last":
        return Read.tokens(end - 1, end)
    if read == "subject":
        return Read.tokens(start, end)
    raise ValueError(f"read must be one of {READS}, got {read!r}")


def text_only_prompt(fact: Fact, question: str) -> str:
    return TEXT_ONLY_PROMPT.format(context=fact.context[:fact.end], subject=fact.subject,
                                   question=question)


def split_subjects(facts: list[Fact], test_fraction: float, seed: int) -> list[bool]:
    """Per fact: is its subject a test subject? Subjects are split per object (stratified), so
    each object keeps at least one training subject; an object with one subject is train."""
    by_object = defaultdict(set)
    objects = defaultdict(Counter)
    for f in facts:
        objects[f.subject][f.object] += 1
    for subject, counts in objects.items():
        by_object[counts.most_common(1)[0][0]].add(subject)
    rng = random.Random(seed)
    test = set()
    for obj in sorted(by_object):
        subjects = sorted(by_object[obj])
        rng.shuffle(subjects)
        n_test = min(len(subjects) - 1, round(test_fraction * len(subjects)))
        test.update(subjects[:max(n_test, 0)])
    return [f.subject in test for f in facts]


def fact_donors(facts: list[Fact], seed: int) -> list[int]:
    """For each fact, the fact whose activations the ``shuffled`` condition reads: one with
    another subject and another object, by the one shuffled-donor rule (``latentqa.controls``)."""
    return shuffled_donors([(f.subject, normalize(f.object)) for f in facts], seed,
                           names=[f"{f.where} ({f.subject} -> {f.object})" for f in facts])


def layer_key(layer) -> str:
    """A result's name for what was read: ``"15"``, or ``"7+15+22"`` for layers read
    together."""
    return str(layer) if isinstance(layer, int) else "+".join(map(str, layer))


def features(vectors: list[torch.Tensor]) -> torch.Tensor:
    """One vector per fact for the probe: the read token, or the mean over the subject."""
    return torch.stack([v.float().mean(0) for v in vectors]).cpu()


def compare(outcomes: dict[str, list[bool]], keep: list[bool]) -> dict:
    """Accuracy with Wilson intervals per condition on the kept facts, and the exact McNemar
    p-value of ``decoder`` against each other condition on the same facts."""
    sub = {c: [x for x, k in zip(o, keep) if k] for c, o in outcomes.items()}
    return {"conditions": {c: summarize(o) for c, o in sub.items()},
            "mcnemar_p_vs_decoder": {c: mcnemar_exact(sub["decoder"], o)
                                     for c, o in sub.items() if c != "decoder"}
            if any(keep) else {}}  # no facts (no test subjects): nothing to test


# ---- the eval ---------------------------------------------------------------------------

class RelationsEval:
    """Runs every condition for relations x layers with one loaded ``Reader``."""

    def __init__(self, reader, *, read: str = "last", batch_size: int = 16, seed: int = 0,
                 test_fraction: float = 0.3, progress=None):
        if read not in READS:
            raise ValueError(f"read must be one of {READS}, got {read!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        self.reader, self.read, self.batch_size = reader, read, batch_size
        self.seed, self.test_fraction, self.progress = seed, test_fraction, progress

    def rows(self, relations: list[Relation], layers: list[int]) -> int:
        """How many generated answers ``run`` will produce (for a progress bar)."""
        n = sum(len(r.facts) for r in relations)
        return n * (1 + len(GENERATED) * len(layers))

    def _answers(self, dialogs, reads, question, layer, *, adapter: bool = True) -> list[str]:
        pairs = [(i, question) for i in range(len(dialogs))]
        ctx = contextlib.nullcontext() if adapter else as_target(self.reader.model)
        with ctx:
            return self.reader.answer_pairs(dialogs, pairs, read=reads, layer=layer,
                                            max_new_tokens=SCORED_TOKENS,
                                            batch_size=self.batch_size, progress=self.progress)

    def run_relation(self, rel: Relation, layers: list[int]) -> dict:
        facts, question = rel.facts, QUESTIONS[rel.name]
        limit = self.reader.info.max_positions
        reads = [selection(self.reader.tokenizer, f, self.read, limit) for f in facts]
        dialogs = [dialog(f) for f in facts]
        is_test = split_subjects(facts, self.test_fraction, self.seed)
        donors = fact_donors(facts, self.seed)
        text = self.reader.target_replies(
            [[{"role": "user", "content": text_only_prompt(f, question)}] for f in facts],
            max_new_tokens=SCORED_TOKENS, batch_size=self.batch_size, progress=self.progress)
        items = [{"subject": f.subject, "object": f.object, "context": f.context,
                  "source": f.where, "test": t, "donor": d,
                  "answers": {"text_only": a}, "correct": {"text_only": is_correct(a, f.object)}}
                 for f, t, d, a in zip(facts, is_test, donors, text)]
        train_objects = Counter(f.object for f, t in zip(facts, is_test) if not t)
        majority = train_objects.most_common(1)[0][0] if train_objects else None
        per_layer = {}
        for layer in layers:
            answers = {
                "decoder": self._answers(dialogs, reads, question, layer),
                "untrained_decoder": self._answers(dialogs, reads, question, layer,
                                                   adapter=False),
                "shuffled": self._answers([dialogs[d] for d in donors],
                                          [reads[d] for d in donors], question, layer)}
            outcomes = {c: [is_correct(a, f.object) for a, f in zip(answers[c], facts)]
                        for c in GENERATED}
            outcomes["text_only"] = [it["correct"]["text_only"] for it in items]
            probe_pred = self._probe(facts, reads, dialogs, is_test, layer)
            for k, item in enumerate(items):
                key = layer_key(layer)
                item["answers"][key] = {c: answers[c][k] for c in GENERATED}
                item["correct"][key] = {c: outcomes[c][k] for c in GENERATED}
                if probe_pred[k] is not None:
                    item["answers"][key]["linear_probe"] = probe_pred[k]
                    item["correct"][key]["linear_probe"] = probe_pred[k] == facts[k].object
            ordered = {c: outcomes[c] for c in CONDITIONS if c in outcomes}
            test_outcomes = dict(ordered, linear_probe=[p == f.object for p, f in
                                                        zip(probe_pred, facts)])
            per_layer[layer_key(layer)] = {"all": compare(ordered, [True] * len(facts)),
                                     "test": compare(test_outcomes, is_test)}
        test_subjects = {f.subject for f, t in zip(facts, is_test) if t}
        return {
            "file": rel.file, "question": question, "n": len(facts),
            "subjects": len({f.subject for f in facts}), "objects": len({f.object for f in facts}),
            "n_test": sum(is_test), "test_subjects": len(test_subjects), "skipped": rel.skipped,
            "chance": (sum(f.object == majority for f, t in zip(facts, is_test) if t)
                       / max(sum(is_test), 1)),
            "majority_object": majority, "layers": per_layer, "items": items}

    def _probe(self, facts, reads, dialogs, is_test, layer) -> list[str | None]:
        """The probe's prediction for each test fact (None for training facts)."""
        vectors = self.reader.activations(dialogs, read=reads, layer=layer)
        x = features(vectors) if isinstance(layer, int) else torch.stack(
            [torch.cat([g.float().mean(0) for g in split_layers(v, len(layer))])
             for v in vectors]).cpu()  # layers read together: each layer's mean, side by side
        train = [i for i, t in enumerate(is_test) if not t]
        test = [i for i, t in enumerate(is_test) if t]
        out: list[str | None] = [None] * len(facts)
        if not train or not test:
            return out
        probe = LinearProbe(seed=self.seed).fit(x[train], [facts[i].object for i in train])
        for i, p in zip(test, probe.predict(x[test])):
            out[i] = p
        return out

    def run(self, relations: list[Relation], layers: list[int]) -> dict:
        started = time.time()
        results = {r.name: self.run_relation(r, layers) for r in relations}
        return {"kind": "relations", "read": self.read,
                "layers": [k if isinstance(k, int) else layer_key(k) for k in layers],
                "seed": self.seed, "test_fraction": self.test_fraction,
                "scored_tokens": SCORED_TOKENS, "conditions": list(CONDITIONS),
                "relations": results, "mean": macro_means(results, layers),
                "seconds": round(time.time() - started, 1)}


def macro_means(results: dict, layers) -> dict:
    """Per layer and subset, the mean over relations of each condition's accuracy (the paper
    reports this mean), plus ``"over_layers"``: that mean averaged over the read layers."""
    out = {}
    for layer in map(layer_key, layers):
        out[layer] = {}
        for subset in ("all", "test"):
            accs = defaultdict(list)
            for rel in results.values():
                for c, s in rel["layers"][layer][subset]["conditions"].items():
                    if s["n"]:
                        accs[c].append(s["accuracy"])
            out[layer][subset] = {c: sum(v) / len(v) for c, v in accs.items()}
    over = {}
    for subset in ("all", "test"):
        conds = {c for layer in out.values() for c in layer[subset]}
        over[subset] = {c: sum(out[layer][subset][c] for layer in out if c in out[layer][subset])
                        / sum(1 for layer in out if c in out[layer][subset]) for c in conds}
    out["over_layers"] = over
    return out
