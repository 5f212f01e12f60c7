"""The decoder's log-probability of an answer, differentiable through the activations it reads.

    logp = answer_logprob(reader, vectors, questions, answers)   # [batch], with grad

``vectors`` may come from anything (the target with a steering adapter, an optimised input,
an adversarial perturbation); gradients flow back into them. The decoder's own weights are not
trained here: callers choose what requires grad.
"""

from __future__ import annotations

import torch

from ..data.probe import pad_probes
from ..decoding import labelled_logprobs, per_row_logprob


def answer_logprob(reader, vectors: list[torch.Tensor], questions: list[str],
                   answers: list[str], *, reduce: str = "mean",
                   write_layer: int | None = None, mode: str | None = None) -> torch.Tensor:
    """log p(answer_i | vectors_i, question_i) under the decoder, per example: the mean over the
    answer's tokens (``reduce="mean"``) or their sum (``"sum"``)."""
    if not (len(vectors) == len(questions) == len(answers)):
        raise ValueError(f"got {len(vectors)} activation sets, {len(questions)} questions and "
                         f"{len(answers)} answers; give one of each per example")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    # a decoder that reads layers together takes each example's layers one after another
    probes = [reader.probe(reader.count(v), q, a) for v, q, a in zip(vectors, questions, answers)]
    device = vectors[0].device
    ids, attn, ph, labels = (t.to(device) for t in pad_probes(probes, reader.pad_id, "right"))
    logp, pos = labelled_logprobs(
        reader.model, ids, attn, labels, placeholder_mask=ph, vectors=list(vectors),
        write_layer=reader.spec.write_layer if write_layer is None else write_layer,
        mode=mode or reader.spec.injection, norm=reader.norm)
    total, count = per_row_logprob(logp, pos, len(probes))
    return total / count.clamp(min=1) if reduce == "mean" else total
