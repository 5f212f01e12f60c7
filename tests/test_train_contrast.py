"""The activation-contrast loss: what it computes, and that a run trains with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import SHARED_DATA, shared_path

from latentqa.train import ConfigError, build_config

DATA = [str(SHARED_DATA / "latentqa" / "control.json"), str(SHARED_DATA / "latentqa" / "qa.json")]


def test_contrast_weight_is_checked():
    with pytest.raises(ConfigError, match="contrast_weight must be >= 0"):
        build_config({"data": [DATA[0]], "contrast_weight": -1})
    with pytest.raises(ConfigError, match="distributed: fsdp"):
        build_config({"data": [DATA[0]], "contrast_weight": 0.5, "distributed": "fsdp",
                      "activation_cache": "off"})
    with pytest.raises(ConfigError, match="contrast_donor must be one of"):
        build_config({"data": [DATA[0]], "contrast_donor": "other"})


def _run(target, out, **extra):
    values = dict(model=str(target), out_dir=str(out), read_layers="[2]", write_layer=0,
                  batch_size=4, max_steps=30, log_every=1, eval_every=30, eval_examples=8,
                  save_every=30, lr=1e-2, warmup_steps=1, precision="fp32", seed=3,
                  lora_r=4, lora_alpha=8, lora_dropout=0.0, max_tokens=256, schedule="constant")
    values.update(extra)
    args = [f"data={json.dumps(DATA)}"] + [f"{k}={v}" for k, v in values.items()]
    run = subprocess.run([sys.executable, "-m", "latentqa.cli", "train", *args],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_decoder_loss_adds_softplus_of_the_per_pair_gap(tiny_target):
    from latentqa.train.recipe import DecoderLoss

    shared_path("latentqa", "qa.json")
    from latentqa import load_model
    from latentqa.data import LatentQADataset, load_data
    from latentqa.decoder import add_decoder_adapter
    from latentqa.decoding import rows_logprobs
    from latentqa.data import LatentQARows

    loaded = load_model(str(tiny_target))
    model = add_decoder_adapter(loaded.model, r=4, alpha=8, dropout=0.0)
    data = load_data(DATA)
    rows = LatentQARows(LatentQADataset(data, loaded.tokenizer, max_tokens=256))
    probes = [rows[i].probes for i in range(3)]
    hidden = model.config.hidden_size
    torch.manual_seed(0)
    real = [torch.randn(int(p[0].placeholder_mask.sum()), hidden) for p in probes]
    other = [torch.randn_like(v) for v in real]
    pad = loaded.tokenizer.pad_token_id or 0
    loss = DecoderLoss(model, pad_id=pad, write_layer=0, mode="replace")
    loss_sum, count, contrast = loss(probes, real, ([0, 1, 2], probes, other))
    plain_sum, plain_count, zero = loss(probes, real)
    assert zero.item() == 0 and plain_count == count
    torch.testing.assert_close(plain_sum, loss_sum)
    a = rows_logprobs(model, probes, real, pad_id=pad)
    b = rows_logprobs(model, probes, other, pad_id=pad)  # same lengths: the same probes
    want = sum(torch.nn.functional.softplus(-(x.mean() - y.mean()))
               for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    torch.testing.assert_close(contrast, want)
    assert contrast.requires_grad
    # rows without a donor are left out of the term, not compared with themselves
    _, _, part = loss(probes, real, ([1], [probes[1]], [other[1]]))
    torch.testing.assert_close(part, sum(torch.nn.functional.softplus(-(x.mean() - y.mean()))
                                         for x, y in zip(a[1], b[1])))


def test_a_step_on_the_contrast_widens_the_gap(tiny_target):
    """Descending the term makes the answers likelier under their own activations than under
    the donors' (the sign and the gradient path, on one batch)."""
    from latentqa import load_model
    from latentqa.data import LatentQADataset, LatentQARows, load_data
    from latentqa.decoder import add_decoder_adapter
    from latentqa.train.recipe import DecoderLoss

    shared_path("latentqa", "qa.json")
    loaded = load_model(str(tiny_target))
    torch.manual_seed(0)
    model = add_decoder_adapter(loaded.model, r=4, alpha=8, dropout=0.0)
    rows = LatentQARows(LatentQADataset(load_data(DATA), loaded.tokenizer, max_tokens=256))
    probes = [rows[i].probes for i in range(4)]
    hidden = model.config.hidden_size
    real = [torch.randn(int(p[0].placeholder_mask.sum()), hidden) * 4 for p in probes]
    other = [torch.randn_like(v) * 4 for v in real]
    loss = DecoderLoss(model, pad_id=loaded.tokenizer.pad_token_id or 0, write_layer=0,
                       mode="replace")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    donors = ([0, 1, 2, 3], probes, other)
    before = loss(probes, real, donors)[2].item()
    for _ in range(5):
        optimizer.zero_grad()
        loss(probes, real, donors)[2].backward()
        optimizer.step()
    after = loss(probes, real, donors)[2].item()
    assert after < before - 0.01 * len([q for p in probes for q in p])


def test_a_run_logs_the_contrast(tiny_target, tmp_path):
    shared_path("latentqa", "qa.json")
    rows = _run(tiny_target, tmp_path / "run", contrast_weight=1.0, max_steps=2, eval_every=2,
                save_every=2)
    logged = [r["contrast"] for r in rows if "loss" in r]
    assert len(logged) == 2 and all(0 < c < 5 for c in logged)


def test_a_rows_probes_can_be_sized_for_another_read(smol_tokenizer):
    """The contrast injects a donor's read whole: the row's QA pairs rebuilt for its length,
    the answers' labelled tokens unchanged."""
    from latentqa.data import LatentQADataset, LatentQARows, load_data

    shared_path("latentqa", "qa.json")
    rows = LatentQARows(LatentQADataset(load_data(DATA), smol_tokenizer, max_tokens=256))
    own = rows[0].probes
    n = int(own[0].placeholder_mask.sum())
    other = rows.probes(0, n + 7)
    assert [int(p.placeholder_mask.sum()) for p in other] == [n + 7] * len(own)
    for a, b in zip(own, other):
        assert a.labels[a.labels != -100].tolist() == b.labels[b.labels != -100].tolist()


def test_hidden_prompt_donors_read_the_same_dialog_under_another_labels_prompt(tiny_target):
    """``contrast_donor: hidden_prompt``: a row that hides a system prompt is read again with
    another label's prompt in force; the read span (the dialog after the prompt) keeps its
    length, its vectors change, and rows without a hidden prompt get no such donor."""
    from latentqa.train.distributed import Distributed
    from latentqa.train.recipe import Recipe

    system = shared_path("latentqa", "system.json")
    cfg = build_config({"data": [str(system), *DATA], "model": str(tiny_target),
                        "read_layers": [2], "contrast_weight": 1.0, "lora_r": 4,
                        "contrast_donor": "hidden_prompt", "precision": "fp32",
                        "max_tokens": 512})
    recipe = Recipe(cfg, Distributed("cpu"), log=lambda *a, **k: None)
    recipe.setup_data()
    recipe.setup_model()
    recipe.setup_optimizer()
    records = recipe.train_set.data.records
    rows = [i for i in range(len(recipe.rows))
            if records[recipe.rows.record(i)].hidden_system_prompt is not None][:3]
    batch = recipe.collate.rows([recipe.rows[i] for i in rows])
    own = recipe.read(batch, 2)
    swapped = recipe.swap_hidden_prompts(batch["records"], 2)
    assert sorted(swapped) == [0, 1, 2]
    for k, v in swapped.items():
        assert v.shape == own[k].shape
        assert not torch.allclose(v, own[k])
    no_prompt = next(i for i in range(len(recipe.rows))
                     if records[recipe.rows.record(i)].hidden_system_prompt is None)
    assert recipe.swap_hidden_prompts([recipe.rows.record(no_prompt)], 2) == {}
    donors = recipe.shuffled(rows, batch, own, 2)
    assert donors is not None and donors[0] == [0, 1, 2]


def test_a_run_trains_with_hidden_prompt_donors(tiny_target, tmp_path):
    system = shared_path("latentqa", "system.json")
    out = tmp_path / "run"
    values = dict(model=str(tiny_target), out_dir=str(out), read_layers="[2]", batch_size=4,
                  max_steps=2, log_every=1, eval_every=2, eval_examples=8, save_every=2,
                  lr=1e-2, warmup_steps=1, precision="fp32", seed=3, lora_r=4, lora_alpha=8,
                  max_tokens=512, contrast_weight=1.0, contrast_donor="hidden_prompt")
    args = [f"data={json.dumps([str(system)])}"] + [f"{k}={v}" for k, v in values.items()]
    run = subprocess.run([sys.executable, "-m", "latentqa.cli", "train", *args],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["contrast"] for r in rows if "loss" in r]
    assert len(logged) == 2 and all(0 < c < 5 for c in logged)
