"""Persona recovery as multiple choice, under the controls the critique of decoders asks for.

For each record: the question is its label's first QA question; the candidates are its label's
first answer and ``choices - 1`` first answers of other labels of the same family, drawn with
the seed. Each candidate is scored by its mean log-probability per token; a record is correct
when the true answer ranks first. The same candidates are scored under every condition:

  activations        the record's own read activations
  shuffled           the activations of another record, with another label
  no_activations     the same probe, nothing injected into the placeholders
  text_only          the base model (adapter off), shown the read turns as text, same question
  untrained_decoder  adapter off, the record's activations injected (Patchscope/SelfIE style)

The last two run with the adapter off, and the activations are read with it off, so none of
them depends on the decoder: given a ``ResultCache`` (``evaluation/cache.py``) they are computed
once per base model and inputs and reused by every later decoder version.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch

from ..batching import pad_tokens
from ..chat import render_dialog
from ..controls import shuffled_donors
from ..data.examples import render_target
from ..data.probe import IGNORE_INDEX, Probe
from ..decoder import as_target, folded_adapter
from ..decoding import Group, grouped_logprobs, read_activations
from ..stats import mcnemar_exact, summarize
from .cache import base_fingerprint, digest, environment, tensor_digest

CONDITIONS = ("activations", "shuffled", "no_activations", "text_only", "untrained_decoder")
# run with the adapter off: the same for every decoder on the same target and inputs
ADAPTER_FREE = ("text_only", "untrained_decoder")
SCORING = "mean log-probability per labelled token"  # part of the cache key: change it, bump it
TEXT_ONLY_PROMPT = ("Here is a conversation with an AI assistant.\n\n{conversation}\n\n"
                    "{question}")


@dataclass
class Item:
    record: int
    label: str
    kind: str
    family: str
    question: str
    candidates: list[str]
    correct: int  # index of the true answer in ``candidates``


def build_items(data, *, choices: int = 5, seed: int = 0) -> list[Item]:
    first = {label: pairs[0] for label, pairs in data.qa.items() if pairs}
    by_family = defaultdict(list)
    for label in sorted(first):
        by_family[label.split("-", 1)[0]].append(label)
    items = []
    for r, record in enumerate(data.records):
        if record.label not in first:
            continue
        question, true = first[record.label]
        others = sorted({first[lab][1] for lab in by_family[record.label.split("-", 1)[0]]
                         if lab != record.label and first[lab][1] != true})
        candidates = draw_candidates(true, others, choices, seed, r)
        if candidates is None:
            continue
        items.append(Item(r, record.label, record.kind, record.family, question, candidates,
                          candidates.index(true)))
    return items


def draw_candidates(true: str, others: list[str], choices: int, seed: int,
                    index: int) -> list[str] | None:
    """``true`` and ``choices - 1`` of ``others`` (fewer if there are fewer), in an order
    drawn for (seed, index); None when ``others`` is empty."""
    k = min(choices - 1, len(others))
    if k < 1:
        return None
    rng = random.Random(seed * 1_000_003 + index)
    candidates = [true] + rng.sample(others, k)
    rng.shuffle(candidates)
    return candidates


def item_donors(items: list[Item], data, seed: int = 0) -> list[int]:
    """For each item, the record whose activations the shuffled condition reads: another
    label's, by the one shuffled-donor rule (``latentqa.controls``)."""
    return shuffled_donors([i.label for i in items], seed,
                           pool=[r.label for r in data.records],
                           names=[f"record {i.record} ({i.label})" for i in items])


def visible_text(record) -> str:
    """The read turns as plain text: what a reader without activations could see."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names.get(record.messages[i]['role'], record.messages[i]['role'])}: "
                     f"{record.messages[i]['content']}" for i in record.read)


def text_prompt(record, question: str) -> str:
    """The text-only baseline's user turn: the read turns as text, then the question."""
    return TEXT_ONLY_PROMPT.format(conversation=visible_text(record), question=question)


def text_probe(tokenizer, record, question: str, answer: str) -> Probe:
    """The text-only baseline's prompt: the read turns and the question, answer supervised."""
    prompt = text_prompt(record, question)
    rendered = render_dialog(tokenizer, [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": answer}])
    start = rendered.char_spans[1][0]
    ids = torch.tensor(rendered.input_ids, dtype=torch.long)
    supervised = torch.tensor([t == 1 and a >= start for t, (a, _b) in
                               zip(rendered.turn_index, rendered.offsets)])
    labels = torch.where(supervised, ids, torch.full_like(ids, IGNORE_INDEX))
    return Probe(ids, torch.zeros_like(ids, dtype=torch.bool), labels)


class PersonaEval:
    """Scores items under conditions with one loaded ``Reader`` (model, tokenizer, spec)."""

    def __init__(self, reader, *, batch_size: int = 16, progress=None, plan=None):
        """``progress(n)``: n more rows scored; ``plan(n)``: n rows will be scored (known only
        once the cache has been looked at)."""
        self.reader, self.batch_size, self.progress = reader, batch_size, progress
        self.plan = plan
        self.model, self.tokenizer, self.spec = reader.model, reader.tokenizer, reader.spec

    def targets(self, data, records) -> dict:
        """What the target reads for each record: its token ids and read mask."""
        return {r: render_target(self.tokenizer, data.records[r],
                                 baseline=bool(self.spec.instruction_gain)) for r in records}

    @torch.no_grad()
    def activations(self, data, records: list[int]) -> dict[int, torch.Tensor]:
        """Read activations per record (adapter off), batched, right-padded."""
        targets = self.targets(data, records)
        out = {}
        order = sorted(targets, key=lambda r: len(targets[r].input_ids))
        for i in range(0, len(order), self.batch_size):
            chunk = order[i:i + self.batch_size]
            ids, attn, mask = pad_tokens(
                [(targets[r].input_ids, targets[r].read_mask) for r in chunk], self.reader.pad_id)
            baseline = pad_tokens([(targets[r].baseline_ids, targets[r].baseline_mask)
                                   for r in chunk], self.reader.pad_id) \
                if self.spec.instruction_gain else None
            for r, v in zip(chunk, read_activations(
                    self.model, ids, attn, mask, self.reader.read_at, baseline=baseline,
                    instruction_gain=self.spec.instruction_gain)):
                out[r] = v
        return out

    def group(self, item: Item, condition: str, acts, donor: int, data) -> tuple[Group, bool]:
        """The item's candidates under ``condition`` and whether the adapter is on."""
        if condition == "text_only":
            record = data.records[item.record]
            return Group([text_probe(self.tokenizer, record, item.question, cand)
                          for cand in item.candidates]), False
        source = acts[donor] if condition == "shuffled" else acts[item.record]
        probes = [self.reader.probe(len(source) // self._groups(), item.question, cand)
                  for cand in item.candidates]
        vectors = None if condition == "no_activations" else source
        return Group(probes, vectors), condition != "untrained_decoder"

    @torch.no_grad()
    def score_groups(self, groups: list[tuple[Group, bool]]) -> list[list[float]]:
        """Mean log-probability per labelled token of each candidate of each group."""
        out: list[list[float]] = [[] for _ in groups]
        for adapter in (True, False):
            # longest prompt first, so each batch pads little and a memory peak shows at once
            chosen = sorted((i for i, (_, on) in enumerate(groups) if on == adapter),
                            key=lambda i: -len(groups[i][0].probes[0].input_ids))
            ctx = folded_adapter(self.model) if adapter else as_target(self.model)
            with ctx:
                for s in range(0, len(chosen), self.batch_size):
                    chunk = chosen[s:s + self.batch_size]
                    logps = grouped_logprobs(
                        self.model, [groups[i][0] for i in chunk], pad_id=self.reader.pad_id,
                        write_layer=self.spec.write_layer, mode=self.spec.injection,
                        norm=self.reader.norm,
                        batch_size=self.batch_size)
                    for i, per_cand in zip(chunk, logps):
                        out[i] = [float(lp.mean()) if lp.numel() else 0.0 for lp in per_cand]
                    if self.progress:
                        self.progress(sum(len(groups[i][0].probes) for i in chunk))
        return out

    def run(self, data, items: list[Item], *, conditions=CONDITIONS, seed: int = 0,
            cache=None, cache_fields: dict | None = None) -> dict:
        """Score every item under every condition. With a ``ResultCache``, the adapter-free
        conditions are looked up first (``cache_fields``: the caller's part of the key, such
        as data hashes, split, choices, seed and limit) and stored when computed."""
        unknown = set(conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
        donors = item_donors(items, data, seed)
        key_fields, scores = {}, {}
        if cache is not None:
            for c in (c for c in conditions if c in ADAPTER_FREE):
                key_fields[c] = self.cache_key(c, data, items, cache_fields or {})
                got = cache.load(f"persona-{c}", key_fields[c], check=_score_check(items))
                if got is not None:
                    scores[c] = got
        todo = [c for c in conditions if c not in scores]
        acts, read = {}, "not needed"
        if set(todo) - {"text_only"}:
            needed = {i.record for i in items} | (set(donors) if "shuffled" in todo else set())
            acts, read = self.cached_activations(data, sorted(needed), cache)
        where = [(k, c) for k in range(len(items)) for c in todo]
        groups = [self.group(items[k], c, acts, donors[k], data) for k, c in where]
        if self.plan:
            self.plan(sum(len(g.probes) for g, _ in groups))
        computed = {c: [None] * len(items) for c in todo}
        for (k, c), s in zip(where, self.score_groups(groups)):
            computed[c][k] = s
        saved = [c for c in todo if c in key_fields
                 and cache.save(f"persona-{c}", key_fields[c], computed[c]) is not None]
        scores.update(computed)
        correct = {c: [max(range(len(s)), key=s.__getitem__) == items[k].correct
                       for k, s in enumerate(scores[c])] for c in conditions}
        table = [{"item": k, "condition": c, "scores": scores[c][k]}
                 for k in range(len(items)) for c in conditions]
        out = report(items, correct, conditions, table=table)
        out["cache"] = ({"enabled": False} if cache is None else
                        {"enabled": True, "dir": str(cache.directory),
                         "reused": [c for c in key_fields if c not in computed],
                         "saved": saved, "activations": read,
                         "files": {c: str(cache.path(f"persona-{c}", cache.key(key_fields[c])))
                                   for c in key_fields}})
        return out

    def cached_activations(self, data, records: list[int], cache) -> tuple[dict, str]:
        """``activations``, kept in the cache too: they are read with the adapter off, so
        every decoder version reading the same layer of the same target reuses them (the
        second largest adapter-free cost after the two conditions). Also says whether they
        were ``reused``, ``saved`` or ``computed`` (no cache)."""
        if cache is None:
            return self.activations(data, records), "computed"
        targets = self.targets(data, records)
        counts = {r: int(t.read_mask.sum()) * self._groups() for r, t in targets.items()}
        fields = {"eval": "persona", "what": "activations", "read_layer": self.spec.read_layer,
                  **self._together(), **self._amplified(),
                  "records": records, "base_model": self.base_fingerprint(),
                  "target": self.spec.target, **environment(self.model),
                  "inputs": tensor_digest([t for r in records for t in
                                           (targets[r].input_ids, targets[r].read_mask)])}

        def check(tensors):
            for r in records:
                v = tensors.get(str(r))
                if v is None or v.dim() != 2 or len(v) != counts[r]:
                    raise ValueError(f"no activations of the right shape for record {r}")

        got = cache.load_tensors("persona-activations", fields, check=check)
        if got is not None:
            return {r: got[str(r)] for r in records}, "reused"
        acts = self.activations(data, records)
        saved = cache.save_tensors("persona-activations", fields,
                                   {str(r): v for r, v in acts.items()})
        return acts, "saved" if saved is not None else "computed"

    def _groups(self) -> int:
        """Placeholder groups per probe: the layers the decoder reads together, or 1."""
        together = getattr(self.spec, "read_together", False)
        return len(self.spec.read_layers) if together else 1

    def _together(self) -> dict:
        """Cache-key fields of a decoder that reads layers together (none otherwise, so a
        one-layer decoder's keys stay what they were)."""
        return {"read_layers": list(self.reader.read_at)} if self._groups() > 1 else {}

    def _amplified(self) -> dict:
        """Cache-key fields of a decoder given an instruction's effect amplified (none
        otherwise): its reads differ from the plain target's."""
        gain = getattr(self.spec, "instruction_gain", 0.0)
        return {"instruction_gain": gain} if gain else {}

    def _transformed(self) -> dict:
        """Cache-key fields of a decoder that transforms what it is written (none otherwise):
        the untrained decoder is given the transformed vectors too."""
        norm = getattr(self.spec, "read_norm", None)
        return {"read_norm": digest(norm)} if norm else {}

    def base_fingerprint(self) -> str:
        if getattr(self, "_base", None) is None:
            self._base = base_fingerprint(self.model)
        return self._base

    def cache_key(self, condition: str, data, items: list[Item], extra: dict) -> dict:
        """Everything an adapter-free condition's scores depend on (hashed into the cache
        file's name): the exact token ids it scores, the base model, and for a condition that
        injects activations, what is read (the target's ids and read masks, the read layer)
        and how it is written (write layer, injection mode, probe layout)."""
        records = sorted({i.record for i in items})
        targets = self.targets(data, records)
        # the probes depend on the read count only: build them as ``group`` does
        counts = {r: torch.empty(int(t.read_mask.sum()) * self._groups(), 0)
                  for r, t in targets.items()}
        probes = [p for item in items
                  for p in self.group(item, condition, counts, item.record, data)[0].probes]
        tensors = [t for p in probes for t in (p.input_ids, p.placeholder_mask, p.labels)]
        fields = {"eval": "persona", "condition": condition, "scoring": SCORING, **extra,
                  "records": [(i.label, i.record) for i in items]}
        if condition != "text_only":  # reads and injects activations
            tensors += [t for r in records for t in (targets[r].input_ids,
                                                     targets[r].read_mask)]
            fields.update(read_layer=self.spec.read_layer, write_layer=self.spec.write_layer,
                          injection=self.spec.injection, layout=self.spec.layout,
                          placeholder=self.spec.placeholder, **self._together(),
                          **self._amplified(), **self._transformed())
        fields.update(base_model=self.base_fingerprint(), target=self.spec.target,
                      inputs=tensor_digest(tensors), **environment(self.model))
        return fields


def _score_check(items: list[Item]):
    """Raise ValueError unless ``payload`` holds one float per candidate of every item."""
    def check(payload):
        if not isinstance(payload, list) or len(payload) != len(items):
            raise ValueError(f"expected scores for {len(items)} items")
        for item, s in zip(items, payload):
            if (not isinstance(s, list) or len(s) != len(item.candidates)
                    or not all(isinstance(x, (int, float)) for x in s)):
                raise ValueError("malformed scores")
    return check


def report(items: list[Item], correct: dict[str, list[bool]], conditions, *, table=None) -> dict:
    """Accuracy per condition (overall, by data type, by family) and McNemar p-values."""
    n_choices = [len(i.candidates) for i in items]
    out = {"n": len(items),
           "chance": sum(1 / c for c in n_choices) / len(items) if items else 0.0,
           "conditions": {c: summarize(correct[c]) for c in conditions}}
    if "activations" in conditions:
        out["mcnemar_p_vs_activations"] = {
            c: mcnemar_exact(correct["activations"], correct[c])
            for c in conditions if c != "activations"}
    for key in ("kind", "family"):
        groups = defaultdict(list)
        for k, item in enumerate(items):
            groups[getattr(item, key)].append(k)
        out[f"by_{'data_type' if key == 'kind' else key}"] = {
            g: {"n": len(ks), "conditions": {c: summarize([correct[c][k] for k in ks])
                                             for c in conditions}}
            for g, ks in sorted(groups.items())}
    if table is not None:
        out["items"] = [{"label": i.label, "kind": i.kind, "question": i.question,
                         "candidates": i.candidates, "correct": i.correct} for i in items]
        out["scores"] = table
    return out
