"""Held-out decoder loss under controls: do the activations lower the loss?

Conditions, on the same examples and labelled tokens:
  real       the record's own activations
  shuffled   the activations of an example with another label (the one shuffled-donor rule,
             ``latentqa.controls``, over all the examples evaluated), its read whole, the
             example's QA pair rebuilt with as many placeholders (as ``eval persona`` does: cut
             or cycled vectors would differ from any real read); every example is scored under
             every condition
  untrained  the record's activations, read by the model with its adapter off (the base model
             reading patched activations: Patchscope/SelfIE style)
"""

from __future__ import annotations

import contextlib

import torch

from ..controls import shuffled_donors
from ..data import baseline_of
from ..decoder import as_target
from ..decoding import decoder_loss_sum, read_activations

CONDITIONS = ("real", "shuffled", "untrained")


@torch.no_grad()
def heldout_losses(model, dataset, collate, indices, *, layer, write_layer: int,
                   mode: str = "replace", norm=None, instruction_gain: float = 0.0,
                   batch_size: int = 8,
                   conditions=("real", "shuffled"), autocast=contextlib.nullcontext,
                   device="cpu", rank: int = 0, world: int = 1, seed: int = 0) -> torch.Tensor:
    """Summed loss and token count per condition: a float64 tensor [len(conditions), 2].

    Each rank takes every ``world``-th batch; the caller sums across ranks. ``layer``: one
    layer, or a tuple of layers read together (the dataset's probes must have their groups);
    ``norm`` and ``instruction_gain``: the decoder's, if it has them (the dataset must then
    carry baselines).
    """
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(conditions), 2, dtype=torch.float64)
    data = dataset.data
    donors = None
    if "shuffled" in conditions:
        labels = [data.records[data.pairs[i].record].label for i in indices]
        donors = shuffled_donors(labels, seed, names=[f"pair {i} ({lab})"
                                                      for i, lab in zip(indices, labels)])

    def read(examples):
        batch = {k: v.to(device) for k, v in collate(examples).items()}
        return batch, read_activations(model, batch["target_input_ids"],
                                       batch["target_attention_mask"], batch["read_mask"], layer,
                                       baseline=baseline_of(batch),
                                       instruction_gain=instruction_gain)

    for start in range(rank * batch_size, len(indices), batch_size * world):
        chunk = indices[start:start + batch_size]
        with autocast():
            own = read([dataset[i] for i in chunk])
            for c, condition in enumerate(conditions):
                batch, vectors = own
                if condition == "shuffled":  # each pair read from its donor's dialog, whole
                    batch, vectors = read([
                        dataset.example(i, record=data.pairs[indices[d]].record)
                        for i, d in zip(chunk, donors[start:start + len(chunk)])])
                ctx = as_target(model) if condition == "untrained" else contextlib.nullcontext()
                with ctx:
                    loss, count = decoder_loss_sum(model, batch, list(vectors),
                                                   write_layer=write_layer, mode=mode,
                                                   norm=norm)
                totals[c, 0] += float(loss)
                totals[c, 1] += count
    if was_training:
        model.train()
    return totals
