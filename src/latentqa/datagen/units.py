"""The units of work: one behaviour, one dialog, one label's QA pairs.

Every field is asked for separately and validated; an invalid answer is logged to the rejects
file and asked again with another seed, up to ``max_retries`` times.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from . import prompts, validate
from .backends import ChatBackend
from .errors import FieldFailed, InvalidOutput


@dataclass
class Asker:
    backend: ChatBackend
    reject: Callable[[dict], None]  # where invalid outputs are logged
    temperature: float = 0.8
    max_tokens: int = 96
    max_retries: int = 3
    seed: int = 0

    def _seed(self, key: str, attempt: int) -> int:
        # Derived from the field, not drawn in order: a resumed run asks the same question with
        # the same seed whatever ran before it.
        digest = hashlib.sha256(f"{self.seed}/{key}/{attempt}".encode()).digest()
        return int.from_bytes(digest[:4], "big")

    def ask(self, key: str, messages: list[dict], check: Callable[[str], str]) -> str:
        for attempt in range(self.max_retries + 1):
            raw = self.backend.complete(messages, temperature=self.temperature,
                                        max_tokens=self.max_tokens,
                                        seed=self._seed(key, attempt))
            try:
                return check(raw)
            except InvalidOutput as e:
                self.reject({"key": key, "attempt": attempt, "reason": str(e), "output": raw})
        raise FieldFailed(f"{key}: no valid output in {self.max_retries + 1} tries")


def behaviour_text(asker: Asker, slot: int, kind: str, category: str) -> str:
    one_line, least = (False, 6) if kind == "sqa" else (True, 4)

    def check(raw: str) -> str:
        text = validate.prose(raw, min_words=least, max_words=100, one_line=one_line)
        return validate.no_chatter(text) if kind == "sqa" else validate.instruction(text)

    return asker.ask(f"behaviour/{slot}", prompts.behaviour(kind, category), check)


def dialog(asker: Asker, b: dict) -> dict:
    """The 4-turn dialog of a goal or persona behaviour (its instruction is the first turn)."""
    label, instruction = b["label"], b["description"]
    ack = asker.ask(f"{label}/control_model", prompts.control_model(instruction),
                    lambda raw: validate.prose(raw, min_words=2, max_words=80))
    user = asker.ask(f"{label}/stimulus_user", prompts.stimulus_user(instruction),
                     lambda raw: validate.no_chatter(
                         validate.prose(raw, min_words=3, max_words=60, one_line=True)))
    reply = asker.ask(f"{label}/stimulus_model", prompts.stimulus_model(instruction, user),
                      lambda raw: validate.prose(raw, min_words=2, max_words=150))
    return {"label": label, "control_user": instruction, "control_model": ack,
            "stimulus_user": user, "stimulus_model": reply}


def qa_pairs(asker: Asker, label: str, kind: str, text: str, n: int) -> dict:
    """``n`` QA pairs about one behaviour; goal/persona questions must not name it."""
    pairs = []
    for i in range(n):
        hidden = None if kind == "sqa" else text
        q = asker.ask(f"{label}/q{i}", prompts.question(kind, text, i),
                      lambda raw: _new_question(raw, hidden, pairs))
        a = asker.ask(f"{label}/a{i}", prompts.answer(kind, text, q),
                      lambda raw: validate.answer(raw, question_text=q))
        pairs.append([q, a])
    return {"label": label, "qa": pairs}


def _new_question(raw: str, behaviour: str | None, pairs: list) -> str:
    q = validate.question(raw, behaviour=behaviour)
    if any(q.lower() == p[0].lower() for p in pairs):
        raise InvalidOutput("repeats an earlier question")
    return q
