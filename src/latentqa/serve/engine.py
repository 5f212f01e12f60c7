"""What the worker thread runs on the model: reading, scoring, replies, token listings.

Each function takes a list of jobs (one per HTTP request) and returns one result per job, an
exception instance for a job that is bad on its own. Jobs with the same ``key()`` are merged
by the worker: their dialogs go to the Reader in one call (``answer_pairs`` / ``score_pairs``
with per-dialog read selections), and greedy replies are generated as one left-padded batch.
Jobs that must not share a call have no key: the shuffled control (with several dialogs in a
call, each would read another *request's* activations) and sampling (seeded per request).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..selection import Read
from .errors import ApiError


@dataclass
class ReadJob:
    dialog: list[dict]
    questions: list[str]
    read: Read
    layer: int
    control: str | None
    injection: str | None
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def key(self):
        if self.control == "shuffled" or self.temperature > 0:
            return None
        return ("read", self.layer, self.control, self.injection, self.max_new_tokens)


@dataclass
class ScoreJob:
    dialog: list[dict]
    questions: list[str]
    candidates: list[str]
    read: Read
    layer: int
    control: str | None
    injection: str | None

    def key(self):
        return None if self.control == "shuffled" else ("score", self.layer, self.control,
                                                         self.injection)


@dataclass
class ChatJob:
    dialog: list[dict]
    adapter: str | None
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def key(self):
        return None if self.temperature > 0 else ("chat", self.adapter, self.max_tokens)


@dataclass
class TokensJob:
    dialog: list[dict]
    read: Read

    def key(self):
        return ("tokens",)


class Engine:
    def __init__(self, reader, adapters, limits):
        self.reader, self.adapters, self.limits = reader, adapters, limits
        context = reader.info.max_positions
        self.max_dialog_tokens = (min(limits.max_dialog_tokens, context) if context
                                  else limits.max_dialog_tokens)

    # ---- shared -----------------------------------------------------------------------

    def render(self, dialog, generation_prompt: bool | None = None):
        """Render as the Reader does (a generation prompt after a final user turn), within
        the server's token limit (which is within the model's context)."""
        rendered = self.reader.render(dialog, add_generation_prompt=generation_prompt,
                                      check_context=False)
        if len(rendered) > self.max_dialog_tokens:
            raise ApiError(422, f"the dialog renders to {len(rendered)} tokens; this server "
                           f"accepts at most {self.max_dialog_tokens}", param="messages")
        return rendered

    def _checked(self, jobs, prepare):
        """(results with errors filled in, indices of the jobs that passed ``prepare``)."""
        results: list = [None] * len(jobs)
        ok = []
        for i, job in enumerate(jobs):
            try:
                results[i] = prepare(job)
                ok.append(i)
            except Exception as e:  # noqa: BLE001 - this job's own error
                results[i] = e
        return results, ok

    def _read_count(self, job) -> int:
        return int(job.read.mask(self.render(job.dialog)).sum())

    # ---- reading ----------------------------------------------------------------------

    def read(self, jobs: list[ReadJob]) -> list:
        results, ok = self._checked(jobs, self._read_count)
        if not ok:
            return results
        first = jobs[ok[0]]
        pairs = [(k, q) for k, i in enumerate(ok) for q in jobs[i].questions]
        answers = self.reader.answer_pairs(
            [jobs[i].dialog for i in ok], pairs, read=[jobs[i].read for i in ok],
            layer=first.layer, control=first.control, injection=first.injection,
            max_new_tokens=first.max_new_tokens, do_sample=first.temperature > 0,
            temperature=first.temperature or 1.0, top_p=first.top_p, seed=first.seed)
        at = 0
        for i in ok:
            n = len(jobs[i].questions)
            mine = answers[at:at + n]
            at += n
            results[i] = {"answers": [{"question": q, "answer": a}
                                      for q, a in zip(jobs[i].questions, mine)],
                          "read_tokens": results[i]}
        return results

    def score(self, jobs: list[ScoreJob]) -> list:
        results, ok = self._checked(jobs, self._read_count)
        if not ok:
            return results
        first = jobs[ok[0]]
        pairs = [(k, q) for k, i in enumerate(ok) for q in jobs[i].questions]
        candidates = [jobs[i].candidates for i in ok for _ in jobs[i].questions]
        scores = self.reader.score_pairs(
            [jobs[i].dialog for i in ok], pairs, candidates, read=[jobs[i].read for i in ok],
            layer=first.layer, control=first.control, injection=first.injection)
        at = 0
        for i in ok:
            n = len(jobs[i].questions)
            results[i] = {"scores": [s.to_dict() for s in scores[at:at + n]],
                          "read_tokens": results[i]}
            at += n
        return results

    def tokens(self, jobs: list[TokensJob]) -> list:
        return [self._tokens(job) for job in jobs]

    def _tokens(self, job: TokensJob):
        try:
            rendered = self.render(job.dialog)
            mask = job.read.mask(rendered).tolist()
        except Exception as e:  # noqa: BLE001 - this job's own error
            return e
        turns = rendered.turn_index or [-1] * len(rendered)
        texts = self.reader.token_texts(rendered)
        tokens = [{"index": k, "text": texts[k], "message": rendered.message_index[k],
                   "turn": turns[k], "read": mask[k]} for k in range(len(rendered))]
        return {"tokens": tokens, "read_tokens": sum(mask)}

    # ---- the target's replies ---------------------------------------------------------

    @torch.no_grad()
    def chat(self, jobs: list[ChatJob]) -> list:
        results, ok = self._checked(jobs, lambda job: self.render(job.dialog, True).input_ids)
        if not ok:
            return results
        first = jobs[ok[0]]
        self.adapters.check(first.adapter)
        prompts = [results[i] for i in ok]
        with self.adapters.using(first.adapter):  # on the Reader's model: it generates
            # one batch: the jobs were grouped to share their sampling settings
            replies = self.reader.generate(prompts, max_new_tokens=first.max_tokens,
                                           batch_size=len(prompts),
                                           temperature=first.temperature, top_p=first.top_p,
                                           seed=first.seed)
        for i, prompt, (text, kept, ended) in zip(ok, prompts, replies):
            text, stopped = _cut_at_stop(text, jobs[i].stop)
            results[i] = {"content": text.strip(),
                          "finish_reason": "stop" if ended or stopped else "length",
                          "prompt_tokens": len(prompt),
                          "completion_tokens": kept + ended}
        return results


def _cut_at_stop(text: str, stops) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def call_each(thunks: list) -> list:
    """For jobs that are plain callables (loading an adapter, a steering run): call each."""
    results = []
    for thunk in thunks:
        try:
            results.append(thunk())
        except Exception as e:  # noqa: BLE001 - this job's own error
            results.append(e)
    return results
