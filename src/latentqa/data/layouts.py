"""The decoder's probe: where the placeholders, the question and the answer go.

A layout turns (question, answer) into chat messages for the decoder, with ``PLACEHOLDERS``
standing where the read activations will be written, and says which messages are supervised.
Everything else (tokenizing, splicing placeholder ids, labels) is layout-independent
(``probe.py``), so another layout is one more instance here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Stands for the run of placeholder tokens; replaced by ids, never tokenized. Private-use
# characters cannot occur in real text or templates.
PLACEHOLDERS = "\ue00a" + "latentqa-placeholders" + "\ue00b"


@dataclass(frozen=True)
class ProbeLayout:
    name: str
    placeholder: str  # text of the one token repeated once per read activation
    reply_role: str  # the decoder's own role
    fixed_reply: str | None = None  # the decoder's first turn, before the question
    layer_prefix: bool = False  # "Layer: {l}" before the placeholders (needs the read layer)

    def dialog(self, question: str, answer: str | None, layer: int | None = None):
        """(messages, index of the fixed reply or None, index of the answer or None)."""
        if self.fixed_reply is not None:  # the paper: placeholders get a turn of their own
            messages = [{"role": "user", "content": PLACEHOLDERS},
                        {"role": self.reply_role, "content": self.fixed_reply},
                        {"role": "user", "content": question}]
            reply = 1
        else:
            messages = [{"role": "user", "content": self._prefix(layer) + PLACEHOLDERS + " \n"
                         + question}]
            reply = None
        if answer is None:
            return messages, reply, None
        messages.append({"role": self.reply_role, "content": answer})
        return messages, reply, len(messages) - 1

    def _prefix(self, layer) -> str:
        if not self.layer_prefix:
            return ""
        if layer is None:
            raise ValueError(f"the {self.name!r} probe layout names the read layer; pass layer=")
        return f"Layer: {layer}\n"


# LatentQA (Pan et al.): a user turn of "?" placeholders, a fixed reply, the question, the answer,
# with the decoder's role renamed so it does not take itself for the target.
PAPER_LAYOUT = ProbeLayout("paper", placeholder="?", reply_role="reflect",
                           fixed_reply="Sure, I've analyzed the assistant.")
# Activation Oracles (Karvonen et al.): " ?" placeholders after "Layer: {l}" and the question in
# one ordinary user turn, the answer in an ordinary assistant turn.
AO_LAYOUT = ProbeLayout("activation_oracles", placeholder=" ?", reply_role="assistant",
                        layer_prefix=True)

LAYOUTS = {layout.name: layout for layout in (PAPER_LAYOUT, AO_LAYOUT)}
