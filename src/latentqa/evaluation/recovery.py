"""System-prompt recovery as a measured skill (``latentqa eval recovery``).

On records whose system prompt is hidden from the decoder (``system`` records: it reads the user
turn only), the decoder is asked the recovery question it was trained on, "What instructions
was the assistant given?", and measured two ways:

  ranking  the true prompt among ``choices`` prompts of the same family (``goal-``, ``persona-``,
           ``sqa-``: the label's prefix): the others are the hidden prompts of other records of
           that family in the evaluated data, drawn with the seed, as ``eval persona`` draws its
           distractors (``persona.draw_candidates``). Each prompt is scored by the decoder's
           mean log-probability per token as the answer (the prompt's tokens and the
           end-of-turn marker; the mean, because prompts differ in length and a sum favours
           short ones; ``eval persona`` and ``Reader.score`` rank the same way). Correct when
           the true prompt ranks first.
  ROUGE-L  the F1 of the longest common word subsequence between the greedily generated answer
           and the true prompt (``rouge_l``).

under four conditions, the same items and candidates throughout:

  activations     the record's own read activations
  shuffled        the activations of another such record, with another label (the one
                  shuffled-donor rule, ``latentqa.controls``, over every record with a hidden
                  prompt in the evaluated data)
  no_activations  the same probe with nothing injected: the decoder's prior over prompts
  text_only       the base model (adapter off) shown the read turns as text with the same
                  question, ``eval persona``'s text-only prompt (``persona.text_probe``): what
                  reading the visible turns alone recovers, without activations or decoder

The decoder's conditions go through the ``Reader``'s public ``score_pairs`` and
``answer_pairs`` (packed scoring, the folded LoRA, batched generation); text_only is scored by
``PersonaEval.score_groups`` with the adapter off, as ``eval persona`` scores it, and answered by
``Reader.target_replies``: no scoring or generation loop of its own.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass

from ..controls import shuffled_donors
from ..data.records import SYSTEM_RECOVERY_QUESTION
from ..decoding import Group
from ..selection import Read
from ..stats import mcnemar_exact, summarize
from .persona import PersonaEval, draw_candidates, text_probe, text_prompt

CONDITIONS = ("activations", "shuffled", "no_activations", "text_only")
QUESTION = SYSTEM_RECOVERY_QUESTION
RANKING = "mean log-probability per token (the prompt and its end-of-turn marker)"


@dataclass
class RecoveryItem:
    record: int  # index into the data's records
    label: str
    family: str
    prompt: str  # the true, hidden system prompt
    candidates: list[str]
    correct: int  # index of ``prompt`` in ``candidates``


def build_items(data, *, choices: int = 5, seed: int = 0) -> list[RecoveryItem]:
    """One item per record with a hidden system prompt: its prompt and ``choices - 1`` hidden
    prompts of other labels of its family, drawn for the seed (fewer when the family has
    fewer; a record with none is left out)."""
    hidden = [(r, rec) for r, rec in enumerate(data.records)
              if rec.hidden_system_prompt is not None]
    by_family = defaultdict(list)
    for r, rec in hidden:
        by_family[rec.family].append(rec)
    items = []
    for r, rec in hidden:
        true = rec.hidden_system_prompt
        others = sorted({o.hidden_system_prompt for o in by_family[rec.family]
                         if o.label != rec.label and o.hidden_system_prompt != true})
        candidates = draw_candidates(true, others, choices, seed, r)
        if candidates is None:
            continue
        items.append(RecoveryItem(r, rec.label, rec.family, true, candidates,
                                  candidates.index(true)))
    return items


def donors(items: list[RecoveryItem], data, seed: int = 0) -> list[int]:
    """For each item, the record whose activations the shuffled condition reads: by the one
    rule, from the records with a hidden prompt (the same kind of read, another behaviour)."""
    pool = [r for r, rec in enumerate(data.records) if rec.hidden_system_prompt is not None]
    drawn = shuffled_donors([i.label for i in items], seed,
                            pool=[data.records[r].label for r in pool],
                            names=[f"record {i.record} ({i.label})" for i in items])
    return [pool[d] for d in drawn]


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: the units ROUGE-L matches (no stemming)."""
    return re.findall(r"\w+", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: precision and recall of the longest common subsequence of words."""
    c, r = words(candidate), words(reference)
    if not c or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in c:  # the LCS table, one row at a time
        row = [0]
        for j, y in enumerate(r):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_interval(values: list[float]) -> dict:
    """Mean with a 95% normal-approximation interval (clipped to [0, 1])."""
    n = len(values)
    if not n:
        return {"n": 0, "mean": 0.0, "ci95": [0.0, 1.0]}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.959963984540054 * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


def sign_test(a: list[float], b: list[float]) -> float:
    """Two-sided exact sign test of paired values (ties dropped): McNemar's exact test on
    "a higher" against "b higher", which is the same binomial test."""
    return mcnemar_exact([x > y for x, y in zip(a, b)], [y > x for x, y in zip(a, b)])


class RecoveryEval:
    """Ranks and generates with one loaded ``Reader``."""

    def __init__(self, reader, *, batch_size: int = 16, max_new_tokens: int = 80,
                 progress=None):
        self.reader, self.batch_size = reader, batch_size
        self.max_new_tokens, self.progress = max_new_tokens, progress

    @staticmethod
    def rows(items: list[RecoveryItem], conditions=CONDITIONS, *, rouge: bool = True) -> int:
        """Model rows: every candidate scored, and one answer per item, per condition
        (text_only's rows are the base model's, counted the same)."""
        return (sum(len(i.candidates) for i in items) + (len(items) if rouge else 0)) * \
            len(conditions)

    def text_groups(self, data, items: list[RecoveryItem]) -> list[tuple[Group, bool]]:
        """text_only's candidates for ``PersonaEval.score_groups``: each item's read turns as
        text, the recovery question, each candidate as the answer, adapter off."""
        return [(Group([text_probe(self.reader.tokenizer, data.records[i.record], QUESTION, c)
                        for c in i.candidates]), False) for i in items]

    @staticmethod
    def text_dialog(record) -> list[dict]:
        """text_only's prompt to answer: the one ``text_probe`` scores, up to the answer."""
        return [{"role": "user", "content": text_prompt(record, QUESTION)}]

    def sources(self, condition: str, items, donor, data):
        """The dialogs, read selections and Reader control for ``condition``."""
        records = [data.records[donor[k] if condition == "shuffled" else i.record]
                   for k, i in enumerate(items)]
        dialogs = [list(rec.messages) for rec in records]
        reads = [Read.of_messages(*rec.read) for rec in records]
        return dialogs, reads, ("none" if condition == "no_activations" else None)

    def run(self, data, items: list[RecoveryItem], *, conditions=CONDITIONS, seed: int = 0,
            rouge: bool = True) -> dict:
        unknown = set(conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
        donor = donors(items, data, seed)
        pairs = [(k, QUESTION) for k in range(len(items))]
        per = {c: [{} for _ in items] for c in conditions}
        seconds = {}
        for c in conditions:
            start = time.perf_counter()
            if c == "text_only":
                scored = PersonaEval(self.reader, batch_size=self.batch_size,
                                     progress=self.progress).score_groups(
                                         self.text_groups(data, items))
            else:
                dialogs, reads, control = self.sources(c, items, donor, data)
                scored = [[s.mean_logprob for s in score.candidates] for score in
                          self.reader.score_pairs(dialogs, pairs, [i.candidates for i in items],
                                                  read=reads, control=control,
                                                  batch_size=self.batch_size,
                                                  progress=self.progress)]
            seconds[f"{c}_ranking"] = time.perf_counter() - start
            for k, (item, means) in enumerate(zip(items, scored)):
                per[c][k].update(scores=means, top1=max(range(len(means)),
                                                       key=means.__getitem__) == item.correct)
            if rouge:
                start = time.perf_counter()
                # target_replies turns the adapter off itself (Reader.generate keeps whatever
                # its caller made active), so the answer is the base model's
                if c == "text_only":
                    answers = self.reader.target_replies(
                        [self.text_dialog(data.records[i.record]) for i in items],
                        max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                        progress=self.progress)
                else:
                    answers = self.reader.answer_pairs(
                        dialogs, pairs, read=reads, control=control,
                        max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                        progress=self.progress)
                seconds[f"{c}_generation"] = time.perf_counter() - start
                for k, (item, answer) in enumerate(zip(items, answers)):
                    per[c][k].update(answer=answer, rouge_l=rouge_l(answer, item.prompt))
        out = report(items, per, conditions, rouge=rouge)
        out["items"] = [{"label": i.label, "family": i.family, "prompt": i.prompt,
                         "candidates": i.candidates, "correct": i.correct,
                         "shuffled_donor": data.records[d].label,
                         "conditions": {c: per[c][k] for c in conditions}}
                        for k, (i, d) in enumerate(zip(items, donor))]
        out["seconds"] = seconds
        return out


def report(items: list[RecoveryItem], per: dict, conditions, *, rouge: bool = True) -> dict:
    """Top-1 accuracy (Wilson intervals, McNemar against activations) overall and by family;
    mean ROUGE-L (normal intervals, sign test against activations) and, as its reference, the
    ROUGE-L another prompt of the family would get."""
    top1 = {c: [r["top1"] for r in per[c]] for c in conditions}
    out = {"n": len(items), "question": QUESTION, "ranked_by": RANKING,
           "chance": sum(1 / len(i.candidates) for i in items) / len(items) if items else 0.0,
           "top1": {"conditions": {c: summarize(top1[c]) for c in conditions}}}
    families = defaultdict(list)
    for k, item in enumerate(items):
        families[item.family].append(k)
    by_family = {f: {"n": len(ks), "top1": {c: summarize([top1[c][k] for k in ks])
                                            for c in conditions}} for f, ks in
                 sorted(families.items())}
    if "activations" in conditions:
        out["top1"]["mcnemar_p_vs_activations"] = {
            c: mcnemar_exact(top1["activations"], top1[c]) for c in conditions
            if c != "activations"}
    if rouge:
        values = {c: [r["rouge_l"] for r in per[c]] for c in conditions}
        other = [sum(rouge_l(x, i.prompt) for j, x in enumerate(i.candidates) if j != i.correct)
                 / (len(i.candidates) - 1) for i in items]
        out["rouge_l"] = {"conditions": {c: mean_interval(values[c]) for c in conditions},
                          "another_prompt_of_the_family": mean_interval(other)}
        if "activations" in conditions:
            out["rouge_l"]["sign_test_p_vs_activations"] = {
                c: sign_test(values["activations"], values[c]) for c in conditions
                if c != "activations"}
        for f, ks in families.items():
            by_family[f]["rouge_l"] = {c: mean_interval([values[c][k] for k in ks])
                                       for c in conditions}
    out["by_family"] = by_family
    return out
