"""The decoder's probe: where the placeholders, the question and the answer go.

A layout turns (question, answer) into chat messages for the decoder, with ``PLACEHOLDERS``
standing where the read activations will be written, and says which messages are supervised.
Everything else (tokenizing, splicing placeholder ids, labels) is layout-independent
(``probe.py``), so another layout is one more instance here.

Layers read together (``read_together``): the one run of placeholders becomes one group per
layer, in the order given (increasing depth), each group after the plain text
``Layer {l}:`` and the groups separated by a newline (``layer_groups``), e.g. for the paper's
layout ``Layer 7:???\nLayer 15:???\nLayer 22:???``. The labels are ordinary text, tokenized as
such, so the decoder can tell the groups apart; each group has one placeholder per read token.
A layout that names its read layer (``layer_prefix``) drops that prefix then: the groups name
their layers.
"""

from __future__ import annotations

from dataclasses import dataclass

# Stands for the run of placeholder tokens; replaced by ids, never tokenized. Private-use
# characters cannot occur in real text or templates.
PLACEHOLDERS = "\ue00a" + "latentqa-placeholders" + "\ue00b"


def group_label(layer: int) -> str:
    """The text before a layer's placeholder group when several layers are read together."""
    return f"Layer {layer}:"


def layer_groups(layers) -> str:
    """One labelled placeholder group per layer, in the order given, one per line."""
    return "\n".join(group_label(layer) + PLACEHOLDERS for layer in layers)


@dataclass(frozen=True)
class ProbeLayout:
    name: str
    placeholder: str  # text of the one token repeated once per read activation
    reply_role: str  # the decoder's own role
    fixed_reply: str | None = None  # the decoder's first turn, before the question
    layer_prefix: bool = False  # "Layer: {l}" before the placeholders (needs the read layer)

    def dialog(self, question: str, answer: str | None, layer: int | None = None,
               layers=None):
        """(messages, index of the fixed reply or None, index of the answer or None).
        ``layers``: the layers read together, one labelled placeholder group each."""
        run = PLACEHOLDERS if layers is None else layer_groups(layers)
        if self.fixed_reply is not None:  # the paper: placeholders get a turn of their own
            messages = [{"role": "user", "content": run},
                        {"role": self.reply_role, "content": self.fixed_reply},
                        {"role": "user", "content": question}]
            reply = 1
        else:
            prefix = self._prefix(layer) if layers is None else ""  # the groups name theirs
            messages = [{"role": "user", "content": prefix + run + " \n" + question}]
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
