"""Turn raw model output into one clean field, or raise ``InvalidOutput`` saying why.

Small models wrap answers in labels, quotes and chatter, and stop mid-sentence at the token
limit: we peel the wrapping and keep whole sentences where there are any, then check bounds.
"""

from __future__ import annotations

import re

from .errors import InvalidOutput
from .text import content_words, stem, words

_PREFIX = re.compile(r"^\s*(?:(?:question|answer|q|a|instruction|reply|response|user|"
                     r"message|assistant|story)\s*\d*\s*[:\-]\s*|\d+[.)]\s+|[-*•]\s+)",
                     re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)")
_QUOTES = "\"'“”‘’`"


def clean(raw: str, *, one_line: bool = True) -> str:
    text = raw.replace("\r", "").strip()
    if one_line:
        text = next((ln for ln in text.split("\n") if ln.strip()), "")
    text = " ".join(text.split())
    for _ in range(3):  # "Question 1: "Why ...?"" has several layers
        stripped = _PREFIX.sub("", text).strip().strip(_QUOTES).strip()
        if stripped == text:
            break
        text = stripped
    return text


def whole_sentences(text: str) -> str:
    """Drop a trailing fragment cut off by the token limit, when a full sentence precedes it."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else text


def bounded(text: str, min_words: int, max_words: int) -> str:
    n = len(words(text))
    if n < min_words:
        raise InvalidOutput(f"too short ({n} words, need {min_words})")
    if n > max_words:
        raise InvalidOutput(f"too long ({n} words, max {max_words})")
    return text


def prose(raw: str, *, min_words: int = 2, max_words: int = 120, one_line=False) -> str:
    text = whole_sentences(clean(raw, one_line=one_line))
    if not any(c.isalpha() for c in text):
        raise InvalidOutput("no words")
    return bounded(text, min_words, max_words)


_CHATTER = re.compile(r"^(sure|here|certainly|okay|ok|of course|absolutely|as an ai|great|"
                      r"what a)\b", re.IGNORECASE)
_FIRST_PERSON = re.compile(r"^(i|i'm|i am|i can|i will|i'll|my)\b", re.IGNORECASE)
_INTERROGATIVE = re.compile(r"^(what|how|why|which|who|whom|whose|when|where|if|does|do|did|is|"
                            r"are|was|were|would|can|could|will|should|has|have)\b",
                            re.IGNORECASE)


def no_chatter(text: str) -> str:
    """Reject the reply-to-the-prompt that small models give instead of the text asked for."""
    if _CHATTER.match(text):
        raise InvalidOutput("talks to the prompt instead of answering it")
    return text


def instruction(text: str) -> str:
    """An instruction to the assistant, not the assistant speaking about itself."""
    if _FIRST_PERSON.match(no_chatter(text)):
        raise InvalidOutput("speaks as the assistant instead of instructing it")
    return text


def question(raw: str, *, behaviour: str | None = None) -> str:
    """One question; with ``behaviour``, it must not name that behaviour."""
    text = no_chatter(clean(raw))
    if "?" in text:
        text = text[:text.index("?") + 1]
    elif _INTERROGATIVE.match(text):
        # A question cut off by the token limit: keep its first clause and close it.
        text = re.split(r"[.!:;]", text)[0].rstrip(" ,") + "?"
    else:
        raise InvalidOutput("not a question")
    bounded(text, 3, 40)
    if behaviour is not None:
        leaked = names_behaviour(text, behaviour)
        if leaked:
            raise InvalidOutput(f"names the behaviour ({', '.join(leaked)})")
    return text


def names_behaviour(text: str, behaviour: str) -> list[str]:
    """The behaviour's distinctive words that ``text`` repeats, if it repeats too many."""
    key = {stem(w) for w in content_words(behaviour)[:6]}
    hits = sorted({w for w in content_words(text) if stem(w) in key})
    # One shared word is often innocent ("story", "work"); two name the behaviour.
    return hits if len(hits) >= min(2, len(key)) else []


def answer(raw: str, *, question_text: str, min_words: int = 1) -> str:
    text = prose(raw, min_words=min_words, max_words=80)
    if text.rstrip().endswith("?"):
        raise InvalidOutput("answer is a question")
    if text.strip().lower() == question_text.strip().lower():
        raise InvalidOutput("answer repeats the question")
    return text


# Replies of the target (``latentqa data replies``): kept as the target wrote them, only cut back
# to whole sentences when the token limit stopped them, and dropped when degenerate.
# A sentence end not after a digit, so "1. Eat" in a list cut off by the limit is no end.
_REPLY_SENTENCE_END = re.compile(r"(?<![\d\s])[.!?…][\"')\]*]*(?=\s|$)")


def trim_fragment(text: str) -> str:
    """Cut a reply stopped by the token limit back to its last whole sentence, if it has one."""
    ends = [m.end() for m in _REPLY_SENTENCE_END.finditer(text)]
    return text[:ends[-1]].rstrip() if ends else text


def repetition(text: str, n: int = 4) -> float:
    """The share of the words that only repeat earlier text: words covered by a word n-gram
    seen before (0 for fresh text, near 1 for a loop such as "ha ha ha ha ...")."""
    ws = words(text)
    if len(ws) < n:
        return 0.0
    seen, repeated = set(), [False] * len(ws)
    for i in range(len(ws) - n + 1):
        gram = tuple(ws[i:i + n])
        if gram in seen:
            repeated[i:i + n] = [True] * n
        seen.add(gram)
    return sum(repeated) / len(ws)


REPLY_EMPTY = "empty"
REPLY_REPETITIVE = "repetitive"
REPLY_ECHO = "echoes the prompt"


def reply(text: str, *, prompt=(), max_repetition: float = 0.5) -> str:
    """A target's reply, or ``InvalidOutput`` with one of the fixed reasons above: no letter or
    digit, mostly repetition (``repetition`` at least ``max_repetition``, or under a third of
    the words distinct), or a copy of one of the ``prompt`` texts (the user turn, say)."""
    if not any(c.isalnum() for c in text):
        raise InvalidOutput(REPLY_EMPTY)
    ws = words(text)
    if repetition(text) >= max_repetition or (len(ws) >= 6 and len(set(ws)) < len(ws) / 3):
        raise InvalidOutput(REPLY_REPETITIVE)
    if ws and any(ws == words(p) for p in prompt):
        raise InvalidOutput(REPLY_ECHO)
    return text
