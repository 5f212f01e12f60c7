"""Self-supervised context prediction (Activation Oracles' "PastLens"): read one token of a
text, say which words came just before it or come just after it.

It needs no labels, so any text in the training data serves: every distinct message of the
records given (user turns, replies, system prompts). A record is the text up to a chosen word,
as one user turn, read at its last token (``read_span``: one token, as relation and
classification records are read); the question asks for the words just before that word or
just after it, and the answer is those words as written. The read token depends only on what
precedes it (causal attention), so the text is cut right after it: predicting what follows is
predicting what the target has not seen, only anticipated; saying what came before is reading
back what it has seen. At most ``window`` words before the read word are kept, which bounds
the target's input.

Build these from the training data only (after the held-out split): the texts are taken from
the ``LatentQAData`` given, nothing else.
"""

from __future__ import annotations

import math
import random
import re

from .classification import text_record
from .loading import LatentQAData

CONTEXT_LABEL = "context"  # labels "context-<n>", family "other"

BEFORE_QUESTIONS = (
    "What words came just before this point in the text?",
    "Which words came right before this?",
    "What text preceded this token?",
)
AFTER_QUESTIONS = (
    "What words come right after this point in the text?",
    "Which words come next?",
    "What text follows this token?",
)
DIRECTIONS = ("before", "after")


def words(text: str) -> list[tuple[int, int]]:
    """[start, end) characters of each whitespace-separated word."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def context_texts(data: LatentQAData, min_words: int = 2) -> list[str]:
    """Distinct message texts of ``data``'s records with at least ``min_words + 1`` words, in
    first-seen order."""
    seen: dict[str, None] = {}
    for record in data.records:
        for message in record.messages:
            text = message["content"].strip()
            if len(words(text)) > min_words:
                seen.setdefault(text, None)
    return list(seen)


def context_example(text: str, direction: str, n_words: int, rng: random.Random, *,
                    min_words: int = 1, window: int = 64) -> tuple[str, str, str] | None:
    """(the target's text, question, answer) for one text, or None if it has ``min_words``
    words or fewer: a read word drawn at random among those with at least ``min_words`` words
    on the asked side, and up to ``n_words`` of them as the answer."""
    spans = words(text)
    if len(spans) <= min_words:
        return None
    if direction == "before":
        i = rng.randrange(min_words, len(spans))
        answer = text[spans[max(0, i - n_words)][0]:spans[i - 1][1]]
        question = rng.choice(BEFORE_QUESTIONS)
    elif direction == "after":
        i = rng.randrange(0, len(spans) - min_words)
        answer = text[spans[i + 1][0]:spans[min(len(spans) - 1, i + n_words)][1]]
        question = rng.choice(AFTER_QUESTIONS)
    else:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    shown = text[spans[max(0, i - window)][0]:spans[i][1]]
    return shown, question, " ".join(answer.split())


def add_context_prediction(data: LatentQAData, share: float, *, seed: int = 0,
                           min_words: int = 2, max_words: int = 8,
                           window: int = 64) -> LatentQAData:
    """``data`` plus context-prediction records: about ``share`` of the resulting QA pairs,
    half asking for the words before the read token and half for the words after it, each
    answer ``min_words``..``max_words`` words long (drawn with ``seed``; fewer only where the
    text has fewer). Texts are used in a seeded order, round and round, each time at a word
    drawn anew; at most ``window`` words before the read word are shown to the target."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the context-prediction share must be in [0, 1), got {share}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    if window < max_words:
        raise ValueError(f"window must be >= max_words (the words asked about before the read "
                         f"word are shown), got {window} < {max_words}")
    texts = context_texts(data, min_words)
    if share == 0.0 or not texts:
        return data
    wanted = math.ceil(share * len(data.pairs) / (1.0 - share))
    rng = random.Random(seed)
    rng.shuffle(texts)
    records, qa = [], {}
    for k in range(wanted):
        n_words = rng.randint(min_words, max_words)
        shown, question, answer = context_example(texts[k % len(texts)], DIRECTIONS[k % 2],
                                                  n_words, rng, min_words=min_words,
                                                  window=window)
        label = f"{CONTEXT_LABEL}-{k}"
        records.append(text_record(shown, label=label, kind=CONTEXT_LABEL, source=CONTEXT_LABEL,
                                   index=k))
        qa[label] = [(question, answer)]
    return data.with_records(list(data.records) + records, {**data.qa, **qa})
