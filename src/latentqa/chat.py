"""Render a dialog with the tokenizer's own chat template and label every token.

For each token we want to know which message it belongs to (or that it is template
scaffolding: role headers, separators, a default system prompt the template injects). No table
of token ids: we render the dialog a second time with every message's content replaced by a
unique sentinel, which shows exactly which characters the template contributes, then map
characters to tokens through the tokenizer's offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import LatentQAError

Message = dict  # {"role": str, "content": str}

SCAFFOLD = -1  # message index of tokens that belong to no message


class ChatTemplateError(LatentQAError, ValueError):
    """The tokenizer has no chat template, or the template cannot render this dialog."""


class DialogTooLongError(LatentQAError, ValueError):
    """A rendered dialog is longer than the model's context."""


@dataclass
class RenderedDialog:
    text: str
    input_ids: list[int]
    message_index: list[int]  # per token: index into ``messages``, or SCAFFOLD
    messages: list[Message]
    char_spans: list[tuple[int, int]]  # per message: its content's [start, end) in ``text``
    notes: list[str] = field(default_factory=list)  # how the template was accommodated
    offsets: list[tuple[int, int]] = field(default_factory=list)  # per token: chars in text
    # per token: the message whose turn it is in (content, role header, end-of-turn marker,
    # and for the last turn any generation prompt), or SCAFFOLD before the first turn (BOS,
    # a default system prompt the template injects)
    turn_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def token_span(self, message: int) -> tuple[int, int]:
        """[start, end) token range of one message's content (empty range if it has none)."""
        idx = [i for i, m in enumerate(self.message_index) if m == message]
        return (idx[0], idx[-1] + 1) if idx else (0, 0)

    def char_tokens(self, message: int, start: int, end: int) -> tuple[int, int] | None:
        """[first, last + 1) of the tokens overlapping characters [start, end) of one message's
        content, or None when no token does (the span was cut off, or is empty)."""
        base = self.char_spans[message][0]
        a, b = base + start, base + end
        hit = [i for i, (s, e) in enumerate(self.offsets)
               if self.message_index[i] == message and s < b and e > a]
        return (hit[0], hit[-1] + 1) if hit else None

    def mask(self, messages: Sequence[int], *, whole_turns: bool = False) -> torch.Tensor:
        """Bool mask over tokens of the given messages: their contents, or whole turns."""
        keep = set(messages)
        owners = self.turn_index if whole_turns else self.message_index
        return torch.tensor([m in keep for m in owners], dtype=torch.bool)


def normalize_dialog(dialog) -> list[Message]:
    """Accept a string (one user turn) or a list of {"role", "content"} messages."""
    if isinstance(dialog, str):
        if not dialog.strip():
            raise ValueError("the dialog is empty")
        dialog = [{"role": "user", "content": dialog}]
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise ValueError("a dialog must be a non-empty string or a non-empty list of messages")
    out = []
    for i, m in enumerate(dialog):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
            m.get("content"), str
        ):
            raise ValueError(
                f"message {i} of the dialog must be a dict with string 'role' and 'content', "
                f"got {m!r}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _sentinel(i: int) -> str:
    # Private-use characters never occur in templates and survive `trim`.
    return f"\ue000{i}\ue001"


def _apply(tokenizer, messages, add_generation_prompt, template):
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        chat_template=template,
    )


def _fold_system(messages: list[Message]) -> tuple[list[Message], list[list[tuple]]]:
    """Merge a leading system message into the first user turn, as such templates' authors do.

    Returns the new messages and, per new message, the (original index, offset, length) pieces
    of its content, so character spans can be mapped back to the original messages.
    """
    system = messages[0]
    sys_len = len(system["content"])
    if len(messages) > 1 and messages[1]["role"] == "user":
        merged = system["content"] + "\n\n" + messages[1]["content"]
        first = [(0, 0, sys_len), (1, sys_len + 2, len(messages[1]["content"]))]
        tail = range(2, len(messages))
    else:
        merged, first, tail = system["content"], [(0, 0, sys_len)], range(1, len(messages))
    new = [{"role": "user", "content": merged}] + [dict(messages[j]) for j in tail]
    return new, [first] + [[(j, 0, len(messages[j]["content"]))] for j in tail]


def render_dialog(
    tokenizer,
    dialog,
    *,
    add_generation_prompt: bool = False,
    chat_template: str | None = None,
    max_tokens: int | None = None,
) -> RenderedDialog:
    """Render ``dialog`` with the tokenizer's chat template; label each token with its message.

    Templates that refuse a system message get it merged into the first user turn (the
    system tokens are still labelled as the system message); templates that refuse a custom
    role (the decoder's ``reflect``) render it as ``assistant``. Both are recorded in ``notes``.
    """
    messages = normalize_dialog(dialog)
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ChatTemplateError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no "
            "chat template; latentqa needs a chat model (pass chat_template= to supply one)"
        )
    notes: list[str] = []

    def try_render(msgs, generation_prompt=add_generation_prompt, first=0):
        sentinel_msgs = [{"role": m["role"], "content": _sentinel(first + k)}
                         for k, m in enumerate(msgs)]
        return _apply(tokenizer, sentinel_msgs, generation_prompt, template)

    # Accommodations, mildest first: as is; custom roles as 'assistant'; system folded into
    # the first user turn; both.
    custom = {m["role"] for m in messages} - {"system", "user", "assistant"}
    has_system = messages[0]["role"] == "system"
    options = [(False, False)] + [(r, f) for r, f in [(True, False), (False, True), (True, True)]
                                  if (not r or custom) and (not f or has_system)]
    errors = []
    for rename, fold in options:
        msgs = [dict(m, role="assistant" if rename and m["role"] in custom else m["role"])
                for m in messages]
        pieces = [[(i, 0, len(m["content"]))] for i, m in enumerate(msgs)]
        if fold:
            msgs, pieces = _fold_system(msgs)
        try:
            skeleton = try_render(msgs)
        except Exception as e:  # jinja2 TemplateError from raise_exception, and friends
            errors.append(str(e))
            continue
        rendered_msgs = msgs
        if rename:
            notes.append(f"template refuses role(s) {sorted(custom)}: rendered as 'assistant'")
        if fold:
            notes.append("template refuses a system message: merged into the first user turn")
        break
    else:
        raise ChatTemplateError(f"the chat template cannot render this dialog: {errors[0]}")

    # Split the skeleton at the sentinels: scaffolding pieces between message contents.
    scaffold, cursor, order = [], 0, []
    while True:
        hits = [(skeleton.find(_sentinel(k), cursor), k) for k in range(len(rendered_msgs))]
        hits = [(pos, k) for pos, k in hits if pos >= 0]
        if not hits:
            break
        pos, k = min(hits)
        scaffold.append(skeleton[cursor:pos])
        order.append(k)
        cursor = pos + len(_sentinel(k))
    scaffold.append(skeleton[cursor:])
    if sorted(order) != list(range(len(rendered_msgs))):
        raise ChatTemplateError(
            "the chat template drops or repeats message contents; cannot label its tokens"
        )

    # Rebuild the real text from scaffolding + contents, noting each content's char span.
    text_parts, spans_by_rendered, pos = [], {}, 0
    for piece, k in zip(scaffold, order):
        text_parts.append(piece)
        pos += len(piece)
        content = rendered_msgs[k]["content"]
        text_parts.append(content)
        spans_by_rendered[k] = pos
        pos += len(content)
    text_parts.append(scaffold[-1])
    text = "".join(text_parts)

    real = _apply(tokenizer, rendered_msgs, add_generation_prompt, template)
    if real != text:
        # Templates that trim contents: compare against trimmed contents instead.
        trimmed = [dict(m, content=m["content"].strip()) for m in rendered_msgs]
        if _apply(tokenizer, trimmed, add_generation_prompt, template) == real and any(
            t["content"] != m["content"] for t, m in zip(trimmed, rendered_msgs)
        ):
            notes.append("template trims message contents")
            return _finish(tokenizer, messages, _retrim(messages), add_generation_prompt,
                           chat_template, max_tokens, notes)
        raise ChatTemplateError(
            "the chat template transforms message contents in a way latentqa cannot track "
            "(rendering with placeholders does not match the real rendering)"
        )

    char_spans = [(0, 0)] * len(messages)
    for k, start in spans_by_rendered.items():
        for orig, offset, length in pieces[k]:
            char_spans[orig] = (start + offset, start + offset + length)
    # Where each turn begins (its role header), in text coordinates, owned by the turn's first
    # original message.
    turn_starts = []
    for j, k in enumerate(order):
        header = _header_length(try_render, rendered_msgs, skeleton, order, scaffold, j)
        turn_starts.append((spans_by_rendered[k] - header, pieces[k][0][0]))
    out = _tokenize(tokenizer, text, messages, char_spans, notes, max_tokens)
    out.turn_index = _turn_index(out, turn_starts)
    return out


def _header_length(try_render, msgs, skeleton, order, scaffold, j) -> int:
    """How many scaffold characters before the j-th content open that content's turn.

    Found by rendering the dialog up to that turn and comparing (the template's own output),
    never from a table: for later turns the rendering of the preceding messages is a prefix
    of the whole; for the first turn we render a dummy turn of the same role (or a user and
    assistant pair) in front of it and read off the header between them. Falls back to 0
    (the turn starts at its content) where the template does not allow the comparison.
    """
    k = order[j]
    piece = scaffold[j]
    if j > 0 and order[: j + 1] == list(range(j + 1)):
        try:
            prefix = try_render(msgs[:k], generation_prompt=False)
        except Exception:
            prefix = None
        content_start = sum(len(p) for p in scaffold[: j + 1]) + sum(
            len(_sentinel(o)) for o in order[:j])
        if prefix is not None and skeleton.startswith(prefix) and (
                content_start - len(piece) <= len(prefix) <= content_start):
            return content_start - len(prefix)
        return 0
    if j == 0 and k == 0:
        role = msgs[0]["role"]
        dummies = [[{"role": role, "content": "x"}]]
        if role == "user":
            dummies.append([{"role": "user", "content": "x"},
                            {"role": "assistant", "content": "y"}])
        for dummy in dummies:
            try:
                before = try_render(dummy, generation_prompt=False, first=len(msgs))
                both = try_render(dummy + msgs[:1], generation_prompt=False, first=len(msgs))
            except Exception:
                continue
            mark = _sentinel(len(msgs) + len(dummy))
            if both.startswith(before) and mark in both:
                header = both[len(before): both.index(mark)]
                if header and piece.endswith(header):
                    return len(header)
    return 0


def _turn_index(rendered: "RenderedDialog", turn_starts) -> list[int]:
    starts = sorted(turn_starts)
    out = []
    for m, (a, _b) in zip(rendered.message_index, rendered.offsets):
        if m != SCAFFOLD:
            out.append(m)
            continue
        owner = SCAFFOLD
        for start, msg in starts:
            if a >= start:
                owner = msg
        out.append(owner)
    return out


def _retrim(messages):
    return [dict(m, content=m["content"].strip()) for m in messages]


def _finish(tokenizer, original, trimmed, add_generation_prompt, chat_template, max_tokens,
            notes):
    out = render_dialog(tokenizer, trimmed, add_generation_prompt=add_generation_prompt,
                        chat_template=chat_template, max_tokens=max_tokens)
    out.messages = original
    out.notes = notes + out.notes
    return out


def _tokenize(tokenizer, text, messages, char_spans, notes, max_tokens) -> RenderedDialog:
    # The template already holds any BOS token, as with apply_chat_template(tokenize=True).
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
    else:
        ids, offsets = _tokenize_slow(tokenizer, text, char_spans)
    message_index = []
    for start, end in offsets:
        owner = SCAFFOLD
        for i, (s, e) in enumerate(char_spans):
            if e > s and start < e and end > s:
                owner = i
                break
        message_index.append(owner)
    if max_tokens is not None and len(ids) > max_tokens:
        raise DialogTooLongError(
            f"the dialog renders to {len(ids)} tokens, more than the model's context of "
            f"{max_tokens} tokens; shorten it"
        )
    return RenderedDialog(text, list(ids), message_index, messages, char_spans, notes,
                          offsets=[tuple(o) for o in offsets])


def _tokenize_slow(tokenizer, text, char_spans):
    """Without offsets, tokenize scaffolding and contents piecewise (boundaries are exact)."""
    cuts = sorted({0, len(text), *[p for s in char_spans for p in s]})
    ids, offsets = [], []
    for a, b in zip(cuts, cuts[1:]):
        piece_ids = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece_ids
        offsets += [(a, b)] * len(piece_ids)
    return ids, offsets
