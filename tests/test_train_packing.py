"""Several QA pairs of a record in one decoder row: the loss and gradients of one pair per row.

A record's probes share everything up to their question (the chat header, the placeholders
carrying the record's activations, the decoder's fixed reply, which is supervised); the packed
row runs that prefix once, then each QA block under a block mask with positions restarting
after the prefix. The loss must be the one-pair-per-row loss, the fixed reply counted once per
pair, so that training with packing is training on the same objective. The same holds for the
multi-layer layout (``read_together``): one labelled group of placeholders per layer.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, tiny_model

from latentqa.activations import INJECTION_MODES
from latentqa.data.probe import IGNORE_INDEX, Probe, pad_probes
from latentqa.decoder import add_decoder_adapter
from latentqa.decoding import decoder_loss_sum, rows_loss_sum


def _probe(g, header, n, reply, question_len, answer_len, layers=None):
    """header, n placeholders, a fixed reply (supervised), a question, an answer (supervised),
    an end token (not supervised): the paper's probe, with random ids. With ``layers``, one
    group of n placeholders per layer, each after its label ("Layer l:", a few ids), the
    groups separated by a newline id: the multi-layer layout."""
    mid = [5, 6]
    question = torch.randint(3, 120, (question_len,), generator=g).tolist()
    answer = torch.randint(3, 120, (answer_len,), generator=g).tolist()
    runs = [([1] * n, True, False)] if layers is None else [
        part for k, layer in enumerate(layers)
        for part in ([([10], False, False)] if k else []) + [([11, 12 + layer, 13], False, False),
                                                             ([1] * n, True, False)]]
    parts = [(header, False, False), *runs, (mid, False, False),
             (reply, False, True), (question, False, False), (answer, False, True),
             ([2], False, False)]
    ids, ph, sup = [], [], []
    for tokens, placeholder, supervised in parts:
        ids += tokens
        ph += [placeholder] * len(tokens)
        sup += [supervised] * len(tokens)
    ids = torch.tensor(ids)
    labels = torch.where(torch.tensor(sup), ids, torch.full_like(ids, IGNORE_INDEX))
    return Probe(ids, torch.tensor(ph), labels)


def _rows(hidden: int, seed: int = 0, layers=None):
    g = torch.Generator().manual_seed(seed)
    header = torch.randint(3, 120, (4,), generator=g).tolist()
    reply = torch.randint(3, 120, (3,), generator=g).tolist()
    groups = 1 if layers is None else len(layers)
    rows, vectors = [], []
    for n, shape in [(5, [(4, 3), (6, 5), (3, 2)]), (2, [(5, 4), (4, 1)]), (7, [(3, 6)])]:
        rows.append([_probe(g, header, n, reply, q, a, layers) for q, a in shape])
        vectors.append(torch.randn(groups * n, hidden, generator=g) * 3)
    return rows, vectors


def _model(arch: str):
    model = add_decoder_adapter(tiny_model(arch), r=4, dropout=0.0)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, where A's gradient vanishes
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _grads(model, loss):
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads))


@pytest.mark.parametrize("layers", [None, (1, 2, 3)], ids=["one_layer", "multi_layer"])
@pytest.mark.parametrize("mode", INJECTION_MODES)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_packed_rows_give_the_one_pair_per_row_loss_and_gradients(arch, mode, layers):
    model = _model(arch)
    rows, vectors = _rows(model.config.hidden_size, layers=layers)

    packed, n_packed = rows_loss_sum(model, rows, vectors, pad_id=0, write_layer=1, mode=mode)
    probes = [p for row in rows for p in row]
    ids, attn, ph, labels = pad_probes(probes, 0, "right")
    batch = {"decoder_input_ids": ids, "decoder_attention_mask": attn, "placeholder_mask": ph,
             "labels": labels}
    per_pair = torch.cat([v for v, row in zip(vectors, rows) for _ in row])
    single, n_single = decoder_loss_sum(model, batch, per_pair, write_layer=1, mode=mode)

    assert n_packed == n_single == sum(int((p.labels[1:] != IGNORE_INDEX).sum())
                                       for p in probes)
    torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-4)
    got, want = _grads(model, packed), _grads(model, single)
    assert max(w.abs().max().item() for w in want.values()) > 0
    for name in want:  # fp32: differences of summation order, relative to the gradient's size
        scale = want[name].abs().max().item()
        assert (got[name] - want[name]).abs().max().item() <= 3e-5 * scale + 1e-7, name


def test_a_row_runs_its_prefix_once(monkeypatch):
    """The packed forward sees a row's shared prefix once, not once per pair, and the opening
    every row shares (the chat header) once for the whole batch."""
    from latentqa import decoding

    model = _model("llama")
    rows, vectors = _rows(model.config.hidden_size)
    seen = []
    body = decoding.body_and_head(model)[0]
    handle = body.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        rows_loss_sum(model, rows, vectors, pad_id=0, write_layer=1)
    finally:
        handle.remove()
    assert len(seen) == 2  # the shared opening, then one packed pass for the whole batch
    (one, lead), (batch, width) = seen
    assert one == 1 and lead == 4  # the header, before the first placeholder
    per_pair = sum(len(p.input_ids) for row in rows for p in row)
    assert batch == len(rows) and lead + batch * width < per_pair - lead * (batch - 1)
