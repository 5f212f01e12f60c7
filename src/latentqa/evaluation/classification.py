"""Yes/No classification of held-out texts, Activation Oracles' protocol, with three controls.

Each item is a held-out row of a classification set (``data/classification.py``: the split is
fixed, and training records never use these rows): the text is one user turn, the target reads
it and **one vector**, at the text's last content token from the decoder's read layer, goes to
the decoder (the same token a training record reads). The question is "Answer with 'Yes' or
'No' only. " plus a template naming a label: the text's own for a Yes item, another for a No
item; Yes and No items are balanced within each set, so chance is 0.5. The decoder answers
greedily, up to 10 tokens; an answer is correct when the expected word appears in it, ignoring
case (the published scoring: a substring, so "No" also matches "not" or "know"). ``strict``
beside it counts an answer correct only when the expected word is one of its words and the
other answer word is not. Conditions, on the same items and questions:

  activations     the text's own vector
  shuffled        the vector of another held-out text of the same set with another label (the
                  one donor rule, ``latentqa.controls``): a decoder that reads answers about
                  the donor's text, so it falls below 0.5 here (towards 0 on true/false
                  sets); one that ignores what it reads stays where it was
  no_activations  the same probe, nothing injected: the decoder's prior
  text_only       the target itself (adapter off), shown the text and asked the same question;
                  every set can be answered from the text, so this is the bar to clear
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from ..controls import shuffled_donors
from ..stats import mcnemar_exact, summarize

CONDITIONS = ("activations", "shuffled", "no_activations", "text_only")
MAX_NEW_TOKENS = 10
DEFAULT_LIMIT = 250  # items per set, as Activation Oracles' evaluation
TEXT_ONLY_PROMPT = 'Here is a text:\n\n"{text}"\n\n{question}'


@dataclass
class Item:
    set: str
    text: str
    label: str  # the text's own label
    named: str  # the label the question names
    question: str
    expected: str  # "Yes" or "No"
    donor: str  # the text whose vector the shuffled condition reads
    where: str


def build_items(sets, *, limit: int = DEFAULT_LIMIT, seed: int = 0) -> list[Item]:
    """Up to ``limit`` balanced items per set (0: as many as balance allows) from its held-out
    rows, drawn with ``seed``; each with its shuffled donor from the same held-out rows."""
    from ..data.classification import yes_no_items

    items = []
    for k, cset in enumerate(sets):
        rows = cset.held_out_rows
        chosen = yes_no_items(cset, rows, limit or None, random.Random(seed * 1_000_003 + k))
        donors = shuffled_donors([q.row.label for q in chosen], seed,
                                 pool=[r.label for r in rows],
                                 names=[f"{q.row.where} ({q.row.label})" for q in chosen])
        items += [Item(cset.name, q.row.text, q.row.label, q.named, q.question, q.answer,
                       rows[d].text, q.row.where) for q, d in zip(chosen, donors)]
    return items


def answer_words(answer: str) -> set[str]:
    return set(re.findall(r"[a-z]+", answer.lower()))


def is_correct(answer: str, expected: str) -> bool:
    """The published scoring: the expected word anywhere in the answer, ignoring case."""
    return expected.lower() in answer.lower()


def is_strictly_correct(answer: str, expected: str) -> bool:
    found = answer_words(answer)
    other = "no" if expected.lower() == "yes" else "yes"
    return expected.lower() in found and other not in found


def parsed(answer: str) -> str:
    """``yes``, ``no``, ``both`` or ``neither``: which answer words an answer holds."""
    found = answer_words(answer) & {"yes", "no"}
    return found.pop() if len(found) == 1 else ("both" if found else "neither")


def last_token_read(tokenizer, text: str, max_tokens: int | None = None):
    """The ``read=`` selection of the text's last content token, found as a training record's
    read is found (``data.classification.text_record``), so evaluation reads the same token."""
    from ..data.classification import text_record
    from ..data.examples import render_target
    from ..selection import Read

    mask = render_target(tokenizer, text_record(text), max_tokens=max_tokens).read_mask
    at = int(mask.nonzero()[0])
    return Read.tokens(at, at + 1)


class ClassificationEval:
    """Runs every condition over items with one loaded ``Reader``, through its public API."""

    def __init__(self, reader, *, batch_size: int = 16, progress=None):
        self.reader, self.batch_size, self.progress = reader, batch_size, progress

    def rows(self, items: list[Item], conditions=CONDITIONS) -> int:
        """How many answers ``run`` generates (for a progress bar)."""
        return len(items) * len(conditions)

    def _reads(self, texts: list[str]):
        limit = self.reader.info.max_positions
        return [last_token_read(self.reader.tokenizer, t, limit) for t in texts]

    def _decoder(self, texts: list[str], items: list[Item], control=None) -> list[str]:
        dialogs = [[{"role": "user", "content": t}] for t in texts]
        return self.reader.answer_pairs(
            dialogs, [(k, it.question) for k, it in enumerate(items)], read=self._reads(texts),
            control=control, max_new_tokens=MAX_NEW_TOKENS, batch_size=self.batch_size,
            progress=self.progress)

    def answers(self, items: list[Item], conditions=CONDITIONS) -> dict[str, list[str]]:
        unknown = set(conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
        own = [it.text for it in items]
        out = {}
        for c in conditions:
            if c == "text_only":
                prompts = [[{"role": "user", "content": TEXT_ONLY_PROMPT.format(
                    text=it.text, question=it.question)}] for it in items]
                out[c] = self.reader.target_replies(
                    prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=self.batch_size,
                    progress=self.progress)
            elif c == "shuffled":
                out[c] = self._decoder([it.donor for it in items], items)
            else:
                out[c] = self._decoder(own, items, "none" if c == "no_activations" else None)
        return out

    def run(self, items: list[Item], conditions=CONDITIONS) -> dict:
        started = time.time()
        result = report(items, self.answers(items, conditions))
        result["seconds"] = round(time.time() - started, 1)
        return result


def report(items: list[Item], answers: dict[str, list[str]]) -> dict:
    """Accuracy with Wilson intervals per condition (overall, by set, by expected answer),
    strict accuracy, how answers parse, McNemar p-values, and every item's answers."""
    conditions = list(answers)
    correct = {c: [is_correct(a, it.expected) for a, it in zip(answers[c], items)]
               for c in conditions}
    strict = {c: [is_strictly_correct(a, it.expected) for a, it in zip(answers[c], items)]
              for c in conditions}
    out = {"n": len(items), "chance": 0.5,
           "conditions": {c: summarize(correct[c]) for c in conditions},
           "strict": {c: summarize(strict[c]) for c in conditions},
           "answers": {c: dict(Counter(parsed(a) for a in answers[c])) for c in conditions}}
    if "activations" in conditions:
        out["mcnemar_p_vs_activations"] = {
            c: mcnemar_exact(correct["activations"], correct[c])
            for c in conditions if c != "activations"}
    for key, name in (("set", "by_set"), ("expected", "by_answer")):
        groups = defaultdict(list)
        for k, it in enumerate(items):
            groups[getattr(it, key)].append(k)
        out[name] = {g: {"n": len(ks), "conditions": {c: summarize([correct[c][k] for k in ks])
                                                      for c in conditions}}
                     for g, ks in sorted(groups.items())}
    out["items"] = [{"set": it.set, "text": it.text, "label": it.label, "named": it.named,
                     "question": it.question, "expected": it.expected, "donor": it.donor,
                     "source": it.where,
                     "answers": {c: answers[c][k] for c in conditions},
                     "correct": {c: correct[c][k] for c in conditions}}
                    for k, it in enumerate(items)]
    return out
