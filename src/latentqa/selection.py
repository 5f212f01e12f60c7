"""Which of the target's tokens the decoder reads.

The default reads every turn after a leading system prompt, so a hidden instruction is never
read back verbatim (the paper's masking for ``system`` records). Other choices: the whole turns
of some messages, a token range of the rendered dialog, or its last N tokens. Token ranges and
"last N" count every token of the rendering (role headers, BOS, the generation prompt), since
that is what the user sees with ``latentqa info``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .chat import RenderedDialog, render_dialog
from .errors import ReadingError

KINDS = ("after-system", "messages", "tokens", "last")


@dataclass(frozen=True)
class Read:
    kind: str = "after-system"
    messages: tuple[int, ...] = ()
    start: int | None = None
    end: int | None = None
    count: int = 0

    @classmethod
    def of_messages(cls, *indices: int) -> "Read":
        if not indices:
            raise ReadingError("read: name at least one message")
        return cls("messages", messages=tuple(int(i) for i in indices))

    @classmethod
    def tokens(cls, start: int | None, end: int | None) -> "Read":
        return cls("tokens", start=start, end=end)

    @classmethod
    def last(cls, n: int) -> "Read":
        if int(n) < 1:
            raise ReadingError(f"read: the last N tokens needs N >= 1, got {n}")
        return cls("last", count=int(n))

    def mask(self, rendered: RenderedDialog) -> torch.Tensor:
        """Bool mask over the rendered tokens; raises if it selects nothing."""
        n_tok, n_msg = len(rendered), len(rendered.messages)
        if self.kind == "after-system":
            skip = 1 if rendered.messages[0]["role"] == "system" else 0
            mask = rendered.mask(range(skip, n_msg), whole_turns=True)
        elif self.kind == "messages":
            bad = [i for i in self.messages if not -n_msg <= i < n_msg]
            if bad:
                raise ReadingError(f"read: message {bad[0]} does not exist; the dialog has "
                                   f"{n_msg} messages (0..{n_msg - 1})")
            mask = rendered.mask([i % n_msg for i in self.messages], whole_turns=True)
        elif self.kind == "tokens":
            mask = torch.zeros(n_tok, dtype=torch.bool)
            mask[slice(self.start, self.end)] = True
        else:
            mask = torch.zeros(n_tok, dtype=torch.bool)
            mask[-min(self.count, n_tok):] = True
        if not mask.any():
            raise ReadingError(f"nothing to read: {self.describe()} selects no tokens of this "
                               f"dialog ({n_tok} tokens, {n_msg} messages)")
        return mask

    def describe(self) -> str:
        if self.kind == "messages":
            return "messages " + ",".join(map(str, self.messages))
        if self.kind == "tokens":
            return f"tokens {self.start}:{self.end}"
        if self.kind == "last":
            return f"the last {self.count} tokens"
        return "every turn after a leading system prompt"


def as_read(value) -> Read:
    """A ``Read`` from what a caller may pass: None (default), a Read, a message index or list
    of them, a ``slice`` of tokens, or text: ``after-system``, ``messages:1,2``,
    ``tokens:10:50``, ``last:32``."""
    if value is None:
        return Read()
    if isinstance(value, Read):
        return value
    if isinstance(value, bool):
        raise ReadingError(f"read: expected messages, a token slice or text, got {value!r}")
    if isinstance(value, int):
        return Read.of_messages(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return Read.of_messages(*value)
    if isinstance(value, slice):
        if value.step not in (None, 1):
            raise ReadingError("read: a token slice cannot have a step")
        return Read.tokens(value.start, value.stop)
    if isinstance(value, str):
        return parse_read(value)
    raise ReadingError(f"read: expected messages, a token slice or text, got {value!r}")


def parse_read(text: str) -> Read:
    kind, _, rest = text.strip().partition(":")
    try:
        if kind == "after-system" and not rest:
            return Read()
        if kind == "messages":
            return Read.of_messages(*[int(x) for x in rest.split(",") if x.strip()])
        if kind == "tokens":
            a, b = rest.split(":")
            return Read.tokens(int(a) if a.strip() else None, int(b) if b.strip() else None)
        if kind == "last":
            return Read.last(int(rest))
    except ValueError as e:
        if isinstance(e, ReadingError):
            raise
    raise ReadingError(f"read: cannot parse {text!r}; use after-system, messages:1,2, "
                       "tokens:START:END or last:N")


def render_read(tokenizer, messages, read: Read | None = None, *, max_tokens: int | None = None,
                add_generation_prompt: bool | None = None):
    """Render a dialog as the target sees it and select the tokens to read.

    Returns ``(rendered, mask)``. The generation prompt is added when the dialog ends with the
    user, unless ``add_generation_prompt`` says otherwise; a rendering longer than
    ``max_tokens`` raises ``DialogTooLongError``; a selection that reads nothing raises
    ``ReadingError``. Every path that reads the target (reading, training data, evaluation,
    steering, the server) selects its tokens here.
    """
    messages = list(messages)
    if add_generation_prompt is None:
        add_generation_prompt = bool(messages) and messages[-1]["role"] == "user"
    rendered = render_dialog(tokenizer, messages, add_generation_prompt=add_generation_prompt,
                             max_tokens=max_tokens)
    return rendered, (read or Read()).mask(rendered)


def read_messages(messages, read: Read | None = None) -> list[int]:
    """The messages whose whole turns ``read`` selects (only the whole-turn kinds)."""
    read = read or Read()
    n = len(messages)
    if read.kind == "after-system":
        return [i for i in range(n) if i > 0 or messages[0]["role"] != "system"]
    if read.kind == "messages":
        return sorted({i % n for i in read.messages})
    raise ReadingError(f"a decoder with an instruction_gain reads whole "
                       f"turns; {read.describe()} is not")


def render_baseline(tokenizer, messages, read_indices, ids: torch.Tensor, mask, *,
                    max_tokens: int | None = None, add_generation_prompt: bool | None = None):
    """The same dialog without its instruction: every unread message before the first read
    one (a hidden system prompt, a control turn) is dropped, the rest rendered again and read
    at the same turns (``ids`` and ``mask``: the dialog's own rendering and read). Returns
    ``(ids, mask)``, whose read tokens are the dialog's own, so that the activations there
    differ only by what the instruction did to them; a template that renders the read turns
    differently without it raises ``ReadingError``. A dialog with no such instruction is its
    own baseline."""
    first = min(read_indices)
    dropped = [i for i in range(first) if i not in read_indices]
    if not dropped:
        return ids, mask
    kept = [i for i in range(len(messages)) if i not in dropped]
    where = {old: new for new, old in enumerate(kept)}
    base, base_mask = render_read(tokenizer, [messages[i] for i in kept],
                                  Read.of_messages(*[where[i] for i in read_indices]),
                                  max_tokens=max_tokens,
                                  add_generation_prompt=add_generation_prompt)
    base_ids = torch.tensor(base.input_ids, dtype=torch.long)
    if not torch.equal(ids[mask], base_ids[base_mask]):
        raise ReadingError("the chat template renders the read turns differently once the "
                           "instruction before them is dropped, so their activations cannot "
                           "be compared (instruction_gain)")
    return base_ids, base_mask
