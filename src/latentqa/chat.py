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

Message = dict  # {"role": str, "content": str}

SCAFFOLD = -1  # message index of tokens that belong to no message


class ChatTemplateError(ValueError):
    """The tokenizer has no chat template, or the template cannot render this dialog."""


class DialogTooLongError(ValueError):
    """A rendered dialog is longer than the model's context."""


@dataclass
class RenderedDialog:
    text: str
    input_ids: list[int]
    message_index: list[int]  # per token: index into ``messages``, or SCAFFOLD
    messages: list[Message]
    char_spans: list[tuple[int, int]]  # per message: its content's [start, end) in ``text``
    notes: list[str] = field(default_factory=list)  # how the template was accommodated

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def is_scaffold(self) -> list[bool]:
        return [m == SCAFFOLD for m in self.message_index]

    def token_span(self, message: int) -> tuple[int, int]:
        """[start, end) token range of one message's content (empty range if it has none)."""
        idx = [i for i, m in enumerate(self.message_index) if m == message]
        return (idx[0], idx[-1] + 1) if idx else (0, 0)

    def mask(self, messages: Sequence[int]) -> torch.Tensor:
        """Bool mask over tokens: True on the content tokens of the given messages."""
        keep = set(messages)
        return torch.tensor([m in keep for m in self.message_index], dtype=torch.bool)


def normalize_dialog(dialog) -> list[Message]:
    """Accept a string (one user turn) or a list of {"role", "content"} messages."""
    if isinstance(dialog, str):
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
    def try_render(msgs):
        sentinel_msgs = [{"role": m["role"], "content": _sentinel(k)} for k, m in enumerate(msgs)]
        return _apply(tokenizer, sentinel_msgs, add_generation_prompt, template)

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
    return _tokenize(tokenizer, text, messages, char_spans, notes, max_tokens)


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
    return RenderedDialog(text, list(ids), message_index, messages, char_spans, notes)


def _tokenize_slow(tokenizer, text, char_spans):
    """Without offsets, tokenize scaffolding and contents piecewise (boundaries are exact)."""
    cuts = sorted({0, len(text), *[p for s in char_spans for p in s]})
    ids, offsets = [], []
    for a, b in zip(cuts, cuts[1:]):
        piece_ids = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece_ids
        offsets += [(a, b)] * len(piece_ids)
    return ids, offsets
