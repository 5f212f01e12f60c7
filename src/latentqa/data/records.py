"""What one piece of LatentQA data is: a dialog for the target, which turns of it are read, a label.

The paper's four record shapes are all dialogs that differ only in which turns the decoder may
read; turning them into chat messages plus a list of read messages here means the rest of the
package (rendering, masking, probing) never needs to know which file a record came from.
"""

from __future__ import annotations

from dataclasses import dataclass

# The paper's record kinds: their fields in dialog order, with the role each field plays.
# ``control_thought`` (stimulus.json) is deliberately absent: it is the generator model's
# reasoning trace, never shown to the target; the reference loads it and never uses it.
KIND_TURNS: dict[str, tuple[tuple[str, str], ...]] = {
    "system": (("system", "system"), ("stimulus_user", "user")),
    "control": (("control_user", "user"),),
    "stimulus": (("control_user", "user"), ("control_model", "assistant"),
                 ("stimulus_user", "user")),
    "stimulus_completion": (("control_user", "user"), ("control_model", "assistant"),
                            ("stimulus_user", "user"), ("stimulus_model", "assistant")),
}
# Which messages the decoder reads (the paper's masking table): everything after the turns that
# carry the instruction, so the decoder cannot just read the instruction's own tokens back.
KIND_READ: dict[str, tuple[int, ...]] = {
    "system": (1,),
    "control": (0,),
    "stimulus": (2,),
    "stimulus_completion": (2, 3),
}
KINDS = tuple(KIND_TURNS)
DIALOG_KIND = "dialog"  # our JSONL format

FAMILIES = ("goal", "persona", "sqa")

# Item 4 of the paper's data: a hidden system prompt is its own answer (system-prompt recovery).
SYSTEM_RECOVERY_QUESTION = "What instructions was the assistant given?"


def text_key(text: str) -> str:
    """A text compared as its words: white space folded, case ignored (``"Hi  There"`` and
    ``"hi there"`` are the same turn)."""
    return " ".join(text.split()).casefold()


def label_family(label: str) -> str:
    """``goal``, ``persona``, ``sqa`` from the label's prefix, or ``other``."""
    head = label.split("-", 1)[0]
    return head if head in FAMILIES else "other"


@dataclass(frozen=True)
class Record:
    messages: tuple[dict, ...]  # chat messages {"role", "content"}
    read: tuple[int, ...]  # indices of the messages whose whole turns the decoder reads
    label: str
    kind: str = DIALOG_KIND
    generation_prompt: bool = False  # render the target with the assistant's generation prompt
    source: str = ""  # file it came from
    index: int = -1  # record index in that file
    # Characters [start, end) of the one read message: only the last token overlapping them is
    # read (a subject's last token, as Patchscopes reads it). None: whole turns are read.
    read_span: tuple[int, int] | None = None
    # Derive the one fixed system-prompt-recovery pair from the hidden system prompt. Off where
    # the label's own QA already asks for the prompt (data/system_prompts.py), so that the
    # number of recovery pairs, their phrasing and their answers stay under its control.
    recovery: bool = True

    @classmethod
    def from_dialog(cls, messages, read=None, *, label: str = "", generation_prompt=None,
                    source: str = "", index: int = -1) -> "Record":
        """A record for any dialog. ``read`` defaults to every non-system message; the generation
        prompt defaults to on when the dialog ends in a user turn (see docs/data.md)."""
        messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        if read is None:
            read = [i for i, m in enumerate(messages) if m["role"] != "system"]
        n = len(messages)
        if not read or any(not -n <= i < n for i in read):
            raise ValueError(f"read must name messages of the dialog (0..{n - 1}), got {read}")
        read = tuple(sorted({i % n for i in read}))
        if generation_prompt is None:
            generation_prompt = messages[-1]["role"] == "user"
        return cls(messages, read, label, DIALOG_KIND, bool(generation_prompt), source, index)

    @classmethod
    def from_latentqa(cls, kind: str, fields: dict, *, source: str = "",
                      index: int = -1) -> "Record":
        """A record from one entry of the paper's files (``fields`` already validated)."""
        messages = tuple({"role": role, "content": fields[name]} for name, role in KIND_TURNS[kind])
        # Records that end in a user turn are read through the generation prompt: the target's
        # state there is "about to answer under this behaviour", and the reference does the same.
        generation_prompt = messages[-1]["role"] == "user"
        return cls(messages, KIND_READ[kind], fields["label"], kind, generation_prompt, source,
                   index)

    @property
    def hidden_system_prompt(self) -> str | None:
        """The system prompt when it is masked from the decoder (so it can be asked about)."""
        first = self.messages[0]
        if first["role"] == "system" and 0 not in self.read:
            return first["content"]
        return None

    @property
    def family(self) -> str:
        return label_family(self.label)


@dataclass(frozen=True)
class Pair:
    """One training example before tokenization: a record and one QA pair about it."""

    record: int  # index into ``LatentQAData.records``
    question: str
    answer: str
    derived: bool = False  # system-prompt recovery, not from a qa file
