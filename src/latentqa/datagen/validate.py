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
