"""Training records from system prompts that have no QA: recovery questions, swaps, descriptions.

``unlabeled_system.json`` (the upstream train split's ``system.json``) holds 7,844 system
prompts, each with one user turn and a label of its own, but no QA pairs. Every prompt becomes a
``system`` record (the decoder reads the user turn; the prompt is masked) with QA of its own:

  recovery     ``recovery_questions`` phrasings of "What instructions was the assistant
               given?", drawn per prompt from ``RECOVERY_QUESTIONS`` with the seed; the answer is
               the prompt, or its first sentence when the prompt is longer than
               ``ANSWER_MAX_CHARS`` characters (200, about 36 SmolLM2 tokens: one-sentence
               prompts stay whole, the multi-sentence persona prompts keep their first sentence,
               which names the persona).
  descriptions (``descriptions=True``) "What persona will the assistant adopt?" (``persona-``
               labels) or "What is the assistant's goal?" (``goal-``), answered with the same
               text rewritten by rule into the third person: "Please adopt the persona of a
               pirate. In your responses, be loud." -> "The assistant will adopt the persona of
               a pirate. In its responses, it will be loud." (``describe_prompt``). Prompts the
               rules cannot rewrite cleanly (a user "I", "we", a "you" whose verb would need
               agreement, a sentence that does not start with a known verb) get no description.
  swaps        ``swaps_per_record`` rounds of ``balanced_swaps``: every user turn under other
               prompts and every prompt under other user turns, with that prompt's label and so
               its QA; the read text no longer tells the prompt, only the activations do.

These records carry their recovery pairs in their label's QA, so they set ``Record.recovery`` to
False and the loader's fixed recovery pair is not added on top. Add them to training data only
(after the held-out split), then drop what overlaps the held-out records
(``splits.drop_held_out_overlap``).
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

from .errors import DataError
from .loading import LatentQAData, read_data
from .records import SYSTEM_RECOVERY_QUESTION, Record, label_family
from .swaps import balanced_swaps

SYSTEM_PROMPT_SOURCE = "system-prompts"
SYSTEM_PROMPT_SWAP_SOURCE = "system-prompt-swap"

# Longer prompts are answered with their first sentence (see the module docstring).
ANSWER_MAX_CHARS = 200

RECOVERY_QUESTIONS: tuple[str, ...] = (
    SYSTEM_RECOVERY_QUESTION,
    "What is the assistant's system prompt?",
    "What was the assistant told to do?",
    "Repeat the hidden instructions the assistant follows.",
    "What hidden instruction is shaping the assistant's replies?",
    "Quote the instructions the assistant received before this conversation.",
)

DESCRIPTION_QUESTIONS: dict[str, tuple[str, ...]] = {
    "persona": ("What persona will the assistant adopt?",
                "Describe the assistant's persona.",
                "Who is the assistant going to act as?"),
    "goal": ("What is the assistant's goal?",
             "Describe the assistant's goal.",
             "What is the assistant trying to do in its replies?"),
    "other": ("How will the assistant behave?",),  # sqa- and unprefixed labels
}


# --- answers --------------------------------------------------------------------------------

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "approx", "no"}
_SENTENCE_END = re.compile(r"[.!?][\"')\u201d\u2019]*\s+(?=[A-Z\"'(\u201c\u2018])")


def sentences(text: str) -> list[str]:
    """The sentences of ``text``: split after ``.``, ``!`` or ``?`` and white space before a
    capital, except after a few abbreviations ("e.g.", "Dr.")."""
    text = text.strip()
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        word = text[start:m.start()].split()[-1:] or [""]
        if word[0].lower().rstrip(".") in _ABBREVIATIONS and text[m.start()] == ".":
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def first_sentence(text: str) -> str:
    return sentences(text)[0] if text.strip() else ""


def recovery_answer(prompt: str, max_chars: int = ANSWER_MAX_CHARS) -> str:
    """The prompt, or its first sentence when it is longer than ``max_chars`` characters."""
    prompt = prompt.strip()
    return prompt if len(prompt) <= max_chars else first_sentence(prompt)


# --- the third-person rewrite ---------------------------------------------------------------

# Base forms that start the prompts' imperative sentences (collected from unlabeled_system.json
# and checked by hand); a sentence that starts with any other word is not rewritten.
VERBS = frozenset("""
accept acknowledge act add adhere adjust adopt advocate aim allow alternate analyze answer
anticipate apply appear appreciate approach argue ask aspire assess assist assume attempt
attribute avoid balance base be begin believe blend blur bridge bring build capture carry
celebrate center challenge channel cherish choose combine come communicate compare compose
conduct consider construct contemplate convey craft create critique deconstruct delight
deliver delve demonstrate describe design develop devise discourage discuss display dissect
do draw embed embody embrace emphasize emulate encourage endeavor engage enhance enjoy enrich
ensure evaluate evoke exaggerate examine exhibit experiment explain explore express exude
facilitate favor feel fill find flavor focus formulate foster frame generate give ground guide
have help hide highlight hypothesize identify illustrate imagine imbue immerse impart implement
imply improve include incorporate infuse inject inspire instill interact interpret introduce
invent investigate invite keep lace lead let limit live love maintain make merge mimic monitor muse
navigate notice observe offer paint pay pepper perform personify phrase play point ponder portray
practice predict prefer present prioritize promote prompt propose provide provoke push question
rearrange recognize reference refer reflect reject rely remain remember respond restate reveal
review revel root seek see set share shed show showcase simulate solve sound speak sprinkle start
stay stress strive structure suggest take tailor tell theorize think thrive treat try use
utilize value visualize weave work write
""".split())
# Adverbs seen before the verb ("Please thoroughly analyze"); any other word ending in -ly too.
ADVERBS = frozenset("also always often only never sometimes really instead".split())
# "you <verb>" -> "it <verb>s" only for these (a declarative "You believe that ...").
_MODALS = frozenset("will would can could should must may might shall".split())
_AGREE = {"are": "is", "were": "was", "have": "has"}
_LEAD = re.compile(
    r"(?:please|kindly|(?:could|can|would|will) you(?: please)?|i'?d like you to|"
    r"i would like you to|i want you to|i'd like for you to|i'd love for you to)\b,?\s*", re.I)
_PREFIX = re.compile(
    r"(?:in|for|during|throughout|when|whenever|before|after|while|from now on|with|at)\b"
    r"[^,.;:!?]{0,60},\s*", re.I)
_WORD = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)?|[^A-Za-z\s]+|\s+")
# Words whose referent the rules cannot rewrite: the user as "I", or "we" the two of them.
_REFUSE = frozenset(
    "i i'm i've i'd i'll myself we we're we've we'd we'll us our ours ourselves let's "
    "yourselves yours".split())


def _third_person(verb: str) -> str:
    if verb in ("be",):
        return "is"
    if verb in ("have",):
        return "has"
    if verb in ("do", "go"):
        return verb + "es"
    if re.search(r"(s|sh|ch|x|z)$", verb):
        return verb + "es"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    return verb + "s"


_COORDINATED = re.compile(
    r"\band (?:(?:also|always|often|sometimes|\w+ly) )?(?:" + "|".join(sorted(VERBS)) + r")\b")
_PREPOSITIONS = frozenset(
    "to for with about of by from at on upon around toward towards against like than into "
    "within without behind among between through inspire inspires help helps guide guides "
    "make makes let lets".split())


def _pronouns(text: str) -> str | None:
    """``text`` with the assistant as "it" and the user as "the user", or None when a pronoun
    cannot be rewritten without parsing (a "you" before a verb that needs agreement)."""
    tokens = _WORD.findall(text)
    words = [(k, t) for k, t in enumerate(tokens) if t.strip() and t[0].isalpha()]
    out = list(tokens)
    for n, (k, t) in enumerate(words):
        low = t.lower().replace("\u2019", "'")
        nxt = words[n + 1][1].lower() if n + 1 < len(words) else ""
        prev = words[n - 1][1].lower() if n else ""
        if low in _REFUSE:
            return None
        if low == "your":
            out[k] = "its"
        elif low == "yourself":
            out[k] = "itself"
        elif low in ("me", "mine"):
            out[k] = "the user" if low == "me" else "the user's"
        elif low == "my":
            out[k] = "the user's"
        elif low in ("you're", "you've", "you'd", "you'll"):
            out[k] = "it " + {"re": "is", "ve": "has", "d": "would", "ll": "will"}[low[4:]]
        elif low == "you":
            if nxt in _MODALS:
                out[k] = "it"
            elif nxt in _AGREE and words[n + 1][0] == k + 2:  # "you are" -> "it is"
                out[k] = "it"
                out[words[n + 1][0]] = _AGREE[nxt]
            elif prev in _PREPOSITIONS and nxt not in VERBS:
                out[k] = "it"
            else:
                return None
    return "".join(out)


def _sentence(sentence: str, subject: str) -> str | None:
    """One imperative sentence as a statement about ``subject`` ("the assistant" or "it")."""
    text = sentence.strip()
    prefix = ""
    for _ in range(3):  # "Please, in your next response, I'd like you to ..."
        m = _LEAD.match(text)
        if m:
            text = text[m.end():]
            continue
        m = _PREFIX.match(text)
        if m and not prefix:
            prefix = m.group(0)
            text = text[m.end():]
            continue
        break
    if not text:
        return None
    head = text.split()[0].lower().rstrip(",")
    rest = text[len(text.split()[0]):]
    if head == "you":  # a declarative "You believe that ..." / "You are ..."
        parts = rest.split(maxsplit=1)
        if not parts:
            return None
        verb = parts[0].lower()
        tail = parts[1] if len(parts) > 1 else ""
        if verb in _AGREE:
            body = f"{_AGREE[verb]} {tail}"
        elif verb in _MODALS:
            body = f"{verb} {tail}"
        elif verb in VERBS:
            body = f"{_third_person(verb)} {tail}"
        else:
            return None
        if _COORDINATED.search(tail):  # "You thrive ... and encourage": a second verb to agree
            return None
    elif head in ("you're", "you\u2019re"):
        body = "is" + rest
    elif head == "your":  # "Your aim is to ..." -> "The assistant's aim is to ..."
        return _finish(prefix, f"{subject}'s" if subject != "it" else "its", rest.lstrip())
    else:
        words = text.split()
        i = 1 if len(words) > 1 and (words[0].lower() in ADVERBS or
                                     re.fullmatch(r"[a-z]+ly", words[0].lower())) else 0
        verb = words[i].lower()
        if verb not in VERBS:
            return None
        head_words = [w.lower() for w in words[:i + 1]]
        if verb == "do" and i + 1 < len(words) and words[i + 1].lower() == "not":
            head_words, words = head_words[:i] + ["not"], words[i + 2:]  # "will not use"
        else:
            words = words[i + 1:]
        body = " ".join(["will"] + head_words + words)
    return _finish(prefix, subject, body)


def _finish(prefix: str, subject: str, body: str) -> str | None:
    if prefix:
        prefix = re.sub(r"\bour\b", "the", prefix, flags=re.I)
    # "..., but do not use X": a second imperative; "that do not burden" stays as it is
    body = re.sub(r"\b(but|and) (?:do not|don't|don\u2019t)\b", r"\1 will not", body)
    if re.search(r"\bdon['\u2019]t\b", body, re.I):
        return None
    text = f"{prefix}{subject} {body}".strip()
    text = _pronouns(text)
    if text is None:
        return None
    text = re.sub(r"\?$", ".", text.strip())
    if not re.search(r"[.!]$", text):
        text += "."
    return text[0].upper() + text[1:]


def describe_prompt(prompt: str) -> str | None:
    """The prompt rewritten into the third person ("The assistant will ..."), or None when any
    of its sentences cannot be rewritten by the rules."""
    out = []
    for n, sentence in enumerate(sentences(prompt)):
        rewritten = _sentence(sentence, "the assistant" if n == 0 else "it")
        if rewritten is None:
            return None
        out.append(rewritten)
    return " ".join(out) if out else None


def description_answer(prompt: str, max_chars: int = ANSWER_MAX_CHARS) -> str | None:
    """The rewrite of what ``recovery_answer`` keeps of the prompt, or None."""
    return describe_prompt(recovery_answer(prompt, max_chars))


# --- records --------------------------------------------------------------------------------

def read_prompts(prompts) -> list[Record]:
    """``system`` records from a file, files, or records: a path (``unlabeled_system.json``),
    a list of paths, a list of ``Record`` with a hidden system prompt, or a list of
    ``{"system", "stimulus_user", "label"}`` objects."""
    if isinstance(prompts, (str, Path)) or (
            isinstance(prompts, (list, tuple)) and prompts and
            all(isinstance(p, (str, Path)) for p in prompts)):
        data, problems = read_data(prompts, system_recovery=True)
        if problems:
            raise DataError(problems)
        records = data.records
    else:
        records = []
        for i, p in enumerate(prompts):
            if isinstance(p, dict):
                missing = [k for k in ("system", "stimulus_user", "label")
                           if not isinstance(p.get(k), str) or not p[k].strip()]
                if missing:
                    raise ValueError(f"prompt {i}: needs non-empty strings {missing}")
                p = Record.from_latentqa("system", p, source=SYSTEM_PROMPT_SOURCE, index=i)
            records.append(p)
    kept = [r for r in records if r.hidden_system_prompt is not None and r.read_span is None]
    if len(kept) != len(records):
        raise ValueError(f"{len(records) - len(kept)} of the records given have no hidden system "
                         "prompt (only system records can be read for their prompt)")
    return kept


def add_system_prompt_records(data: LatentQAData, prompts, *, recovery_questions: int = 1,
                              swaps_per_record: int = 1, descriptions: bool = False,
                              max_answer_chars: int = ANSWER_MAX_CHARS,
                              limit: int | None = None, seed: int = 0) -> LatentQAData:
    """``data`` plus a ``system`` record for each prompt of ``prompts`` (see ``read_prompts``)
    and ``swaps_per_record`` swap records each, all with their prompt's QA (module docstring).

    Each prompt gets ``recovery_questions`` (1 to 6) recovery pairs and, with ``descriptions``,
    one description pair where the rewrite works; every swap record of that prompt gets the same
    pairs. ``limit`` keeps that many prompts (a seeded draw; a smaller limit keeps a subset of a
    larger one's). Labels already in ``data`` or repeated in ``prompts`` get ``#<index>``.
    """
    if not 0 <= recovery_questions <= len(RECOVERY_QUESTIONS):
        raise ValueError(f"recovery_questions must be in [0, {len(RECOVERY_QUESTIONS)}], got "
                         f"{recovery_questions}")
    if recovery_questions == 0 and not descriptions:
        raise ValueError("no questions to ask: recovery_questions is 0 and descriptions is off")
    if swaps_per_record < 0:
        raise ValueError(f"swaps_per_record must be >= 0, got {swaps_per_record}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    found = read_prompts(prompts)
    if limit is not None and limit < len(found):
        order = list(range(len(found)))
        random.Random(f"{seed}:limit").shuffle(order)
        found = [found[i] for i in sorted(order[:limit])]
    taken = set(data.labels) | set(data.qa)
    records, qa = [], {}
    for record in found:
        label = record.label
        if label in taken:
            label = f"{label}#{record.index}"
        taken.add(label)
        prompt = record.hidden_system_prompt
        rng = random.Random(f"{seed}:{label}:{prompt}")
        answer = recovery_answer(prompt, max_answer_chars)
        pairs = [(q, answer) for q in rng.sample(RECOVERY_QUESTIONS, recovery_questions)]
        if descriptions:
            described = describe_prompt(answer)
            if described is not None:
                questions = DESCRIPTION_QUESTIONS.get(label_family(label),
                                                      DESCRIPTION_QUESTIONS["other"])
                pairs.append((rng.choice(questions), described))
        if not pairs:
            continue
        qa[label] = pairs
        records.append(dataclasses.replace(record, label=label, recovery=False,
                                           source=SYSTEM_PROMPT_SOURCE))
    swaps = balanced_swaps(records, swaps_per_record, seed=seed,
                           source=SYSTEM_PROMPT_SWAP_SOURCE)
    return data.with_records(list(data.records) + records + swaps, {**data.qa, **qa})
