"""Plain-assistant examples: the same user turns with no hidden instruction, answered honestly.

LatentQA data only ever shows the decoder targets that *have* a persona or goal, so a decoder
trained on it alone learns that there always is one, and invents one for a plain assistant
(Activation Oracle users report the same). These examples take user turns the training records
already contain, drop the instruction (no system prompt, no control turn), and pair them with
generic persona and goal questions whose answer is that there is nothing special. The text the
decoder reads is then identical with and without a hidden instruction; only the activations
differ, which is what a decoder should learn to look at.

Build them from training labels only (after the held-out split), so held-out records' user
turns are never seen.
"""

from __future__ import annotations

import math
import random

from .loading import LatentQAData
from .records import SYSTEM_RECOVERY_QUESTION, Record

PLAIN_LABEL = "plain-assistant"

# Paraphrases of the questions the LatentQA QA files ask most; the null-hallucination
# evaluation (evaluation/null.py) asks differently worded ones.
PLAIN_QA: tuple[tuple[str, str], ...] = (
    ("What type of persona will the assistant adopt?",
     "The assistant will not adopt any particular persona; it is a plain, helpful AI "
     "assistant."),
    ("Please describe the persona of the assistant.",
     "The assistant has no special persona. It is an ordinary helpful assistant that answers "
     "the user's question directly."),
    ("What characteristics define the assistant's persona?",
     "Nothing beyond being a standard AI assistant: it is neutral, clear and helpful, with no "
     "assigned character."),
    ("How will the assistant express itself?",
     "In a neutral, helpful way, as a standard AI assistant with no special style or tone."),
    ("What is the assistant's goal?",
     "The assistant has no hidden goal; it simply aims to answer the user's question "
     "helpfully."),
    ("What is the assistant trying to achieve in this conversation?",
     "Nothing beyond helping the user with their request; it was given no special aim."),
    (SYSTEM_RECOVERY_QUESTION,
     "None: the assistant was given no special instructions."),
)


def user_turns(data: LatentQAData) -> list[str]:
    """Distinct read user turns of records whose instruction is hidden from the decoder (the
    system prompt or the control turn is not read), in first-seen order."""
    seen: dict[str, None] = {}
    for record in data.records:
        if 0 in record.read:  # the instruction itself is read (control records)
            continue
        for i in record.read:
            message = record.messages[i]
            if message["role"] == "user":
                seen.setdefault(message["content"], None)
    return list(seen)


def add_plain_dialogs(data: LatentQAData, share: float, *, seed: int = 0) -> LatentQAData:
    """``data`` plus plain-assistant records: about ``share`` of the resulting QA pairs.

    Every plain record gets every question of ``PLAIN_QA``; the user turns are drawn from
    ``data`` with ``seed``.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the plain-dialog share must be in [0, 1), got {share}")
    if share == 0.0:
        return data
    turns = user_turns(data)
    wanted_pairs = share * len(data.pairs) / (1.0 - share)
    n = min(len(turns), math.ceil(wanted_pairs / len(PLAIN_QA)))
    chosen = random.Random(seed).sample(turns, n) if n else []
    plain = [Record.from_dialog([{"role": "user", "content": text}], read=[0],
                                label=PLAIN_LABEL, generation_prompt=True, source="plain",
                                index=i)
             for i, text in enumerate(chosen)]
    records = list(data.records) + plain
    return data.with_records(records, {**data.qa, PLAIN_LABEL: list(PLAIN_QA)})
