"""A steering control: the QA pairs the decoder should give about the steered target.

Either a JSON file (the paper's ``controls/*.json``: ``{instruction: [[question, answer], ...]}``;
or a plain list of pairs; or ``{"qa": [...]}``), or an instruction text. From an instruction the
pairs are made as the paper makes them: the target is prompted with the instruction as a hidden
system prompt and the decoder answers persona questions about its activations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LatentQAError

PERSONA_QUESTIONS = (
    "What type of persona will the assistant adopt?",
    "How will the assistant express themselves?",
    "Please describe the persona of the assistant.",
    "What characteristics define the assistant's persona?",
    "What is the assistant's goal?",
    "How does the assistant approach conversations with the user?",
    "What topics will the assistant focus on?",
    "What tone does the assistant use in its responses?",
)


class ControlError(LatentQAError, ValueError):
    """A control that cannot be used; the message names the file or the problem."""


@dataclass
class Control:
    source: str  # the file or "instruction"
    instruction: str | None
    qa: list[tuple[str, str]]


def qa_pairs(raw, where: str) -> list[tuple[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ControlError(f"{where}: expected a non-empty list of [question, answer] pairs")
    out = []
    for i, pair in enumerate(raw):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) and x.strip() for x in pair)):
            raise ControlError(f"{where}: pair {i} is not [question, answer] (two non-empty "
                               f"strings): {pair!r:.80}")
        out.append((pair[0].strip(), pair[1].strip()))
    return out


def read_control_file(path) -> Control:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ControlError(f"{path}: no such control file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ControlError(f"{path}: not valid JSON ({e})") from None
    if isinstance(raw, list):
        return Control(str(path), None, qa_pairs(raw, str(path)))
    if isinstance(raw, dict) and "qa" in raw:
        return Control(str(path), raw.get("instruction"), qa_pairs(raw["qa"], f"{path}: qa"))
    if isinstance(raw, dict) and raw:
        qa, instructions = [], list(raw)
        for key in instructions:
            qa += qa_pairs(raw[key], f"{path}: {key[:40]!r}")
        return Control(str(path), instructions[0] if len(instructions) == 1 else None, qa)
    raise ControlError(f"{path}: expected {{instruction: [[q, a], ...]}}, a list of pairs, or "
                       "{\"qa\": [...]}")


def control_from_instruction(reader, instruction: str, prompts: list[str], *,
                             questions=PERSONA_QUESTIONS, max_new_tokens: int = 48) -> Control:
    """The decoder's answers about the target prompted with ``instruction`` (hidden from it)."""
    if not instruction.strip():
        raise ControlError("the control instruction is empty")
    if not prompts:
        raise ControlError("making a control from an instruction needs at least one prompt")
    dialogs = [[{"role": "system", "content": instruction}, {"role": "user", "content": p}]
               for p in prompts[:len(questions)]]
    pairs = [(i % len(dialogs), q) for i, q in enumerate(questions)]
    answers = reader.answer_pairs(dialogs, pairs, max_new_tokens=max_new_tokens)
    qa = [(q, a) for (_, q), a in zip(pairs, answers) if a.strip()]
    if not qa:
        raise ControlError("the decoder gave no answers about the instruction")
    return Control("instruction", instruction, qa)


def load_control(spec: str, reader=None, prompts=None) -> Control:
    """A control from a JSON file path, or from an instruction text (needs a reader)."""
    if spec.endswith(".json") or Path(spec).is_file():
        return read_control_file(spec)
    if reader is None:
        raise ControlError("an instruction control needs the decoder to read the target")
    return control_from_instruction(reader, spec, prompts or [])
