"""Held-out decoder loss under controls: do the activations lower the loss?

Conditions, on the same examples and labelled tokens:
  real       the record's own activations
  shuffled   the activations of an example with another label (the one shuffled-donor rule,
             ``latentqa.controls``, over all the examples evaluated), cut or cycled to the
             example's placeholder count (layer group by layer group when several layers
             are read together); every example is scored under every condition
  untrained  the record's activations, read by the model with its adapter off (the base model
             reading patched activations: Patchscope/SelfIE style)
"""

from __future__ import annotations

import contextlib

import torch

from ..controls import shuffled_donors
from ..decoder import as_target
from ..decoding import decoder_loss_sum, read_activations, split_layers

CONDITIONS = ("real", "shuffled", "untrained")


def fit_rows(v: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows from ``v``: truncated, or cycled when ``v`` is shorter."""
    reps = -(-n // v.shape[0])
    return v.repeat(reps, 1)[:n]


def fit_groups(v: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """``fit_rows`` for each layer's group of ``groups`` layers read together: ``n`` rows
    per layer, one layer after another."""
    if groups == 1:
        return fit_rows(v, n)
    return torch.cat([fit_rows(g, n) for g in split_layers(v, groups)])


@torch.no_grad()
def heldout_losses(model, dataset, collate, indices, *, layer, write_layer: int,
                   mode: str = "replace", batch_size: int = 8,
                   conditions=("real", "shuffled"), autocast=contextlib.nullcontext,
                   device="cpu", rank: int = 0, world: int = 1, seed: int = 0) -> torch.Tensor:
    """Summed loss and token count per condition: a float64 tensor [len(conditions), 2].

    Each rank takes every ``world``-th batch; the caller sums across ranks. ``layer``: one
    layer, or a tuple of layers read together (the dataset's probes must have their groups).
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

    def read(rows):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in rows]).items()}
        return batch, read_activations(model, batch["target_input_ids"],
                                       batch["target_attention_mask"], batch["read_mask"], layer)

    for start in range(rank * batch_size, len(indices), batch_size * world):
        chunk = indices[start:start + batch_size]
        with autocast():
            batch, vectors = read(chunk)
            for c, condition in enumerate(conditions):
                if condition == "shuffled":
                    _, given = read([indices[d] for d in donors[start:start + len(chunk)]])
                    groups = 1 if isinstance(layer, int) else len(layer)
                    injected = [fit_groups(v, int(m.sum()) // groups, groups)
                                for v, m in zip(given, batch["placeholder_mask"])]
                else:
                    injected = vectors
                ctx = as_target(model) if condition == "untrained" else contextlib.nullcontext()
                with ctx:
                    loss, count = decoder_loss_sum(model, batch, torch.cat(injected),
                                                   write_layer=write_layer, mode=mode)
                totals[c, 0] += float(loss)
                totals[c, 1] += count
    if was_training:
        model.train()
    return totals
