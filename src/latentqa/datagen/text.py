"""Word-level helpers shared by labels, near-duplicate removal and the leak check."""

from __future__ import annotations

import difflib
import re

# Words that say nothing about which behaviour it is: instruction boilerplate and function words.
STOPWORDS = frozenset("""
a an the and or but if then so of to in on at by for with from as into about over than that this
these those it its is are was were be been being am do does did have has had will would shall
should can could may might must not no nor i me my you your yours we our they them their he she
his her him who whom whose which what when where why how all any each every some such very just
please make sure always try effort like want need take adopt act assume role persona character
assistant model ai user users response responses reply replies future message messages conversation
one ones also more most own someone something way ways time while using use being
""".split())

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 2]


def stem(word: str) -> str:
    # Crude, but enough to match "homonym"/"homonyms" and "analogy"/"analogies".
    return word[:5]


def jaccard(a: str, b: str) -> float:
    """Overlap of content-word stems: what the behaviours are about, template words aside."""
    sa, sb = {stem(w) for w in content_words(a)}, {stem(w) for w in content_words(b)}
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def char_ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, " ".join(words(a)), " ".join(words(b))).ratio()


class NearDuplicates:
    """Keeps accepted texts; ``find`` returns the one a new text nearly repeats, if any.

    Two tests, because each alone misjudges: instructions share a template ("Please explain
    every idea with analogies from X"), so character similarity is high even when X differs;
    that is why its bar is near-verbatim. Word overlap catches rewordings of one behaviour.
    """

    def __init__(self, threshold: float = 0.75, verbatim: float = 0.92):
        self.threshold = threshold
        self.verbatim = verbatim
        self.texts: list[str] = []

    def find(self, text: str) -> str | None:
        for seen in self.texts:
            if jaccard(text, seen) >= self.threshold or char_ratio(text, seen) >= self.verbatim:
                return seen
        return None

    def add(self, text: str) -> None:
        self.texts.append(text)


def slugify(text: str, max_words: int = 5) -> str:
    picked = content_words(text)[:max_words] or words(text)[:max_words] or ["item"]
    return "-".join(picked)


class Labels:
    """Hands out unique labels ``<kind>-<category>-<slug>`` (a counter suffix on clashes)."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def make(self, *parts: str) -> str:
        base = "-".join(p for p in parts if p)
        label, n = base, 2
        while label in self.taken:
            label, n = f"{base}-{n}", n + 1
        self.taken.add(label)
        return label
