"""Standardised reads (``read_norm: standardize``): the transform, where it is applied, how it is
fitted, saved and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentqa.activations import inject
from latentqa.read_norm import ReadNorm
from latentqa.train import ConfigError, build_config

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")


def test_fit_centres_and_scales_each_dimension_to_the_write_norm():
    torch.manual_seed(0)
    offset = torch.zeros(8)
    offset[3] = 100.0  # a large dimension every vector shares, as a residual stream has
    rows = [offset + torch.randn(5, 8) * torch.arange(1, 9) for _ in range(40)]
    written = [torch.randn(5, 8) * 0.1 + torch.arange(8.0) for _ in range(40)]
    norm = ReadNorm.fit(rows, 1, written)
    out = torch.cat([norm(r) for r in rows])
    assert out.mean(0).abs().max() < 1e-4
    assert torch.allclose(out.std(0), norm.out_std, rtol=1e-3)
    here = torch.cat(written).norm(dim=-1).mean()
    assert abs(out.norm(dim=-1).mean() - here) < 0.1 * here  # about the write layer's norm
    # without it the shared dimension is nearly all of each vector
    raw = torch.cat(rows)
    assert (raw[:, 3] ** 2).sum() / (raw ** 2).sum() > 0.9


def test_match_gives_each_dimension_the_write_layers_mean_and_spread():
    torch.manual_seed(2)
    rows = [50 + torch.randn(6, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) for _ in range(50)]
    written = [torch.tensor([9.0, 0.0, -3.0, 1.0]) + torch.randn(6, 4) * 0.5 for _ in range(50)]
    norm = ReadNorm.fit(rows, 1, written, kind="match")
    out = torch.cat([norm(r) for r in rows])
    assert torch.allclose(out.mean(0), torch.tensor([9.0, 0.0, -3.0, 1.0]), atol=0.1)
    assert torch.allclose(out.std(0), torch.cat(written).std(0), rtol=1e-3)
    with pytest.raises(ValueError, match="kind must be one of"):
        ReadNorm.fit(rows, 1, written, kind="whiten")


def test_layers_read_together_get_their_own_statistics():
    torch.manual_seed(1)
    rows = [torch.cat([torch.randn(3, 4), 50 + 10 * torch.randn(3, 4)]) for _ in range(30)]
    norm = ReadNorm.fit(rows, 2, [torch.randn(3, 4) for _ in range(30)])
    assert norm.layers == 2 and norm.mean[1].mean() > 40 and norm.mean[0].abs().max() < 1
    out = norm(rows[0])
    assert out.shape == (6, 4) and out[3:].abs().max() < 10  # the second layer centred on its own
    with pytest.raises(ValueError, match="equal layer groups"):
        norm(torch.randn(5, 4))


def test_round_trip_and_malformed_statistics_are_refused():
    norm = ReadNorm(torch.zeros(1, 4), torch.ones(1, 4), torch.zeros(4), torch.full((4,), 0.5))
    again = ReadNorm.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert torch.equal(again.mean, norm.mean) and torch.equal(again.out_std, norm.out_std)
    assert again.kind == "standardize" and ReadNorm.from_dict(None) is None
    with pytest.raises(ValueError, match="kind is one of"):
        ReadNorm.from_dict({"kind": "whiten"})
    with pytest.raises(ValueError, match="positive std"):
        ReadNorm.from_dict(dict(norm.to_dict(), std=[[0.0, 1.0, 1.0, 1.0]]))


def test_inject_writes_the_standardised_vectors(tiny_target):
    from latentqa import load_model

    model = load_model(str(tiny_target)).model
    hidden = model.config.hidden_size
    norm = ReadNorm(torch.full((1, hidden), 3.0), torch.full((1, hidden), 2.0),
                    torch.zeros(hidden), torch.full((hidden,), 0.5))
    ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, True, True, False]])
    vectors = [torch.randn(2, hidden)]
    seen = {}
    from latentqa.arch import find_blocks

    _, blocks = find_blocks(model)
    handle = blocks[1].register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
    with torch.no_grad(), inject(model, 0, mask, vectors, norm=norm):
        model(input_ids=ids)
    handle.remove()
    assert torch.allclose(seen["h"][0, 1:3], (vectors[0] - 3.0) / 2.0 * 0.5, atol=1e-6)


def test_config_checks():
    with pytest.raises(ConfigError, match="read_norm must be one of"):
        build_config({"data": [FIXTURE], "read_norm": "whiten"})
    with pytest.raises(ConfigError, match="read_together"):
        build_config({"data": [FIXTURE], "read_norm": "standardize", "read_layers": [1, 2]})


def _train(tiny_target, out, *extra):
    from latentqa.cli import main

    return main(["train", f"data={json.dumps([FIXTURE])}", f"model={tiny_target}",
                 f"out_dir={out}", "read_layers=[2]", "batch_size=4", "held_out=0",
                 f"eval_data={json.dumps([FIXTURE])}", "held_out_hygiene=false",
                 "precision=fp32", "lora_r=4", "eval_every=2", "save_every=2",
                 "read_norm=standardize", "read_norm_rows=8", *extra])


def test_a_standardised_decoder_trains_saves_resumes_and_reads(tiny_target, tmp_path, capsys):
    import latentqa
    from latentqa.decoder import DecoderSpec

    out = tmp_path / "run"
    assert _train(tiny_target, out, "max_steps=2", "schedule=constant") == 0
    spec = DecoderSpec.read(out / "decoder")
    assert spec.format_version == 3 and spec.norm is not None
    # resuming takes the checkpoint's statistics, exactly
    assert _train(tiny_target, out, "max_steps=4", "schedule=constant", "--resume") == 0
    resumed = DecoderSpec.read(out / "decoder").norm
    assert torch.equal(resumed.mean, spec.norm.mean)
    assert torch.equal(resumed.out_std, spec.norm.out_std)
    # continuing it needs the flag; with it, the statistics carry over
    capsys.readouterr()
    assert _train(tiny_target, tmp_path / "plain", "max_steps=2", "read_norm=none",
                  f"init_decoder={out / 'decoder'}") != 0
    assert "continuing it needs the same read_norm" in capsys.readouterr().err
    reader = latentqa.load(out / "decoder", target=str(tiny_target))
    assert reader.norm is not None
    dialog = [{"role": "user", "content": "Hello there, how are you today?"}]
    real = reader.score(dialog, "Who?", ["a pirate", "a poet"])
    # the same decoder without its statistics scores differently: the transform is applied
    reader.norm = None
    raw = reader.score(dialog, "Who?", ["a pirate", "a poet"])
    assert [c.logprob for c in real.candidates] != [c.logprob for c in raw.candidates]
    reader.norm = spec.norm
    with pytest.raises(latentqa.reading.ReadingError, match="cannot read 1"):
        reader.ask(dialog, "Who?", layer=1, max_new_tokens=2)


def test_an_older_latentqa_format_is_refused_and_a_bad_norm_named(tiny_decoder, tmp_path):
    import shutil

    from latentqa.decoder import DecoderError, DecoderSpec

    bad = tmp_path / "bad"
    shutil.copytree(tiny_decoder, bad)
    sidecar = bad / "latentqa_decoder.json"
    raw = json.loads(sidecar.read_text())
    raw["read_norm"] = {"kind": "match", "mean": [[0.0] * 3], "std": [[1.0] * 3],
                        "out_mean": [0.0] * 3, "out_std": [1.0] * 3}
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(DecoderError, match="read_norm is fitted for 1 layer"):
        DecoderSpec.read(bad)


# ---- instruction_gain: the decoder reads an unread instruction's effect amplified -----------

def test_the_baseline_drops_the_instruction_and_reads_the_same_tokens(smol_tokenizer):
    from latentqa.selection import Read, read_messages, render_baseline, render_read

    dialog = [{"role": "system", "content": "You are a pirate."},
              {"role": "user", "content": "What should I cook tonight?"},
              {"role": "assistant", "content": "Arr, fish stew!"}]
    rendered, mask = render_read(smol_tokenizer, dialog, Read())
    own = torch.tensor(rendered.input_ids)
    ids, base_mask = render_baseline(smol_tokenizer, dialog, read_messages(dialog, Read()),
                                     own, mask)
    assert torch.equal(own[mask], ids[base_mask])
    assert "pirate" not in smol_tokenizer.decode(ids)
    # a dialog with no instruction is its own baseline
    plain = dialog[1:]
    rendered, mask = render_read(smol_tokenizer, plain, Read())
    ids, base_mask = render_baseline(smol_tokenizer, plain, read_messages(plain, Read()),
                                     torch.tensor(rendered.input_ids), mask)
    assert ids.tolist() == rendered.input_ids and torch.equal(base_mask, mask)


def test_an_amplifying_decoder_reads_the_instructions_effect(tiny_target, tmp_path):
    import latentqa
    from latentqa.decoder import DecoderSpec

    out = tmp_path / "gain"
    assert _train(tiny_target, out, "max_steps=2", "instruction_gain=3",
                  "read_norm=match") == 0
    spec = DecoderSpec.read(out / "decoder")
    assert spec.instruction_gain == 3 and spec.format_version == 3 and spec.norm.kind == "match"
    reader = latentqa.load(out / "decoder", target=str(tiny_target))
    user = {"role": "user", "content": "What should I cook tonight?"}
    pirate = [{"role": "system", "content": "Be a pirate."}, user]
    plain, hidden = reader.activations([[user], pirate])
    # read as it is without an instruction; with one, its effect four times over
    reader.spec.instruction_gain = 0
    raw_plain, raw_hidden = reader.activations([[user], pirate])
    reader.spec.instruction_gain = 3
    assert torch.equal(plain, raw_plain)
    assert torch.allclose(hidden - plain, 4 * (raw_hidden - raw_plain), atol=1e-4)
    # the controls still run, and the scores differ with the instruction
    scores = reader.score([[user], [{"role": "system", "content": "Be a pirate."}, user]],
                          "Who?", ["a pirate", "a cook"])
    assert scores[0].candidates[0].logprob != scores[1].candidates[0].logprob
    with pytest.raises(latentqa.reading.ReadingError, match="whole turns"):
        reader.ask([user], "Who?", read="last:3", max_new_tokens=2)
