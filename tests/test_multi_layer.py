"""Multi-layer reads (``read_together``): several layers of the target given to the decoder at
once, each layer's vectors in its own labelled group of placeholders.

The probe, one pass of the target, the trainer and its sidecar, and every consumer that reads
through the Reader (ask, score, the controls, eval heldout/persona/recovery/classification,
steering, the server) on a decoder trained this way for the tiny target.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from latentqa.cli import main
from latentqa.data import LAYOUTS, ProbeBuilder
from latentqa.decoding import read_activations, split_layers

FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")
LAYERS = (1, 2, 3)
DIALOG = [{"role": "system", "content": "You are a pirate."},
          {"role": "user", "content": "What should I cook tonight?"},
          {"role": "assistant", "content": "Arr, fish stew!"}]
OTHER = [{"role": "user", "content": "Tell me about the moon."},
         {"role": "assistant", "content": "It orbits the earth."}]
QUESTION = "What is the assistant's persona?"


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a bool vector."""
    runs, start = [], None
    for k, on in enumerate(mask.tolist() + [False]):
        if on and start is None:
            start = k
        elif not on and start is not None:
            runs.append((start, k - start))
            start = None
    return runs


# ---- the probe ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["paper", "activation_oracles"])
def test_probe_has_one_labelled_group_per_layer_in_order(smol_tokenizer, layout):
    builder = ProbeBuilder(smol_tokenizer, LAYOUTS[layout])
    probe = builder.build(3, QUESTION, "A pirate.", layers=(7, 15, 22))
    runs = _runs(probe.placeholder_mask)
    assert [n for _, n in runs] == [3, 3, 3]  # one placeholder per read token, per layer
    ids = probe.input_ids.tolist()
    before = [smol_tokenizer.decode(ids[(runs[k - 1][0] + 3) if k else 0:start])
              for k, (start, _) in enumerate(runs)]
    assert [b.strip().splitlines()[-1] for b in before] == ["Layer 7:", "Layer 15:", "Layer 22:"]
    assert all(b.startswith("\n") for b in before[1:])  # groups one per line
    assert "Layer: " not in smol_tokenizer.decode(ids)  # the AO prefix gives way to the labels
    assert all(ids[k] == builder.placeholder_id for s, n in runs for k in range(s, s + n))
    # the generation prompt is an exact prefix of the scoring sequence, as for one layer
    prompt = builder.build(3, QUESTION, None, layers=(7, 15, 22), supervise="answer")
    assert ids[:len(prompt.input_ids)] == prompt.input_ids.tolist()
    assert torch.equal(probe.placeholder_mask[:len(prompt.input_ids)], prompt.placeholder_mask)
    # one layer keeps its probe: no label, one run
    single = builder.build(3, QUESTION, "A pirate.", layer=7)
    assert [n for _, n in _runs(single.placeholder_mask)] == [3]
    assert "Layer 7:" not in smol_tokenizer.decode(single.input_ids)


def test_read_activations_reads_every_layer_in_one_pass():
    model = tiny_model("llama")
    ids = torch.randint(3, 120, (2, 9))
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 2:6], mask[1, 1:4] = True, True
    passes, last_block = [], []
    embed = model.get_input_embeddings().register_forward_hook(lambda *a: passes.append(1))
    block = model.model.layers[3].register_forward_hook(lambda *a: last_block.append(1))
    try:
        together = read_activations(model, ids, attn, mask, (0, 2))
    finally:
        embed.remove()
        block.remove()
    assert len(passes) == 1 and not last_block  # one pass, stopped after the deepest layer
    for layer_vectors, row in zip(together, range(2)):
        groups = split_layers(layer_vectors, 2)
        for layer, got in zip((0, 2), groups):
            want = read_activations(model, ids, attn, mask, layer)[row]
            torch.testing.assert_close(got, want)
    assert [len(v) for v in together] == [8, 6]


def test_config_read_together_needs_increasing_layers():
    from latentqa.train.config import ConfigError, build_config

    base = {"data": ["x"], "read_together": True}
    assert build_config({**base, "read_layers": [1, 2, 3]}, check_paths=False).read_together
    for bad in ([2], [3, 1], [1, 1, 2], [-1, 2]):
        with pytest.raises(ConfigError, match="read_together"):
            build_config({**base, "read_layers": bad}, check_paths=False)
    assert not build_config({"data": ["x"]}, check_paths=False).read_together  # default off


# ---- a decoder trained with read_together --------------------------------------------------

@pytest.fixture(scope="module")
def multi_run(tiny_target, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi-layer-run")
    assert main(["train", f"data={json.dumps([FIXTURE])}", f"model={tiny_target}",
                 f"out_dir={out}", f"read_layers={json.dumps(list(LAYERS))}",
                 "read_together=true", "max_steps=2", "batch_size=4", "held_out=0",
                 f"eval_data={json.dumps([FIXTURE])}", "held_out_hygiene=false",
                 "precision=fp32", "lora_r=4", "eval_every=2", "save_every=2",
                 "activation_cache=memory"]) == 0
    return out


@pytest.fixture(scope="module")
def multi_reader(multi_run, tiny_target):
    from latentqa.reading import load

    return load(str(multi_run / "decoder"), str(tiny_target), batch_size=4)


def test_training_logs_and_sidecar_name_the_layers(multi_run):
    from latentqa.decoder import DecoderSpec

    spec = DecoderSpec.read(multi_run / "decoder")
    assert spec.read_together and spec.read_layers == list(LAYERS)
    assert spec.read_at == LAYERS and spec.format_version == 2
    raw = json.loads((multi_run / "decoder" / "latentqa_decoder.json").read_text())
    assert raw["read_together"] is True and raw["read_layers"] == list(LAYERS)
    rows = [json.loads(line) for line in (multi_run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("layer") == list(LAYERS) for r in rows)
    assert any("eval_loss_shuffled" in r for r in rows)  # held-out loss with its control


def test_sidecar_refuses_a_newer_format_and_missing_layers(multi_run, tmp_path):
    import shutil

    from latentqa.decoder import SIDECAR, DecoderError, DecoderSpec

    copy = tmp_path / "decoder"
    shutil.copytree(multi_run / "decoder", copy)
    raw = json.loads((copy / SIDECAR).read_text())
    (copy / SIDECAR).write_text(json.dumps({**raw, "format_version": 4}))
    with pytest.raises(DecoderError, match="format_version"):
        DecoderSpec.read(copy)
    (copy / SIDECAR).write_text(json.dumps({**raw, "read_layers": []}))
    with pytest.raises(DecoderError, match="read_layers"):
        DecoderSpec.read(copy)


def test_reader_builds_the_training_probes_and_reads_the_training_layers(multi_reader):
    from latentqa.data import LatentQADataset, load_data
    from latentqa.data.examples import render_target
    from latentqa.selection import Read

    reader = multi_reader
    assert reader.read_at == LAYERS and reader.groups == 3 and "together" in repr(reader)
    data = load_data([FIXTURE])
    dataset = LatentQADataset(data, reader.tokenizer, supervise="answer", layers=LAYERS)
    for i in range(0, len(dataset), max(1, len(dataset) // 5)):
        example, pair = dataset[i], data.pairs[i]
        record = data.records[pair.record]
        probe = reader.probe(example.num_read, pair.question, pair.answer)
        assert torch.equal(probe.input_ids, example.decoder_input_ids)
        assert torch.equal(probe.placeholder_mask, example.placeholder_mask)
        assert int(probe.placeholder_mask.sum()) == 3 * example.num_read
        got = reader.activations(list(record.messages), read=Read.of_messages(*record.read))[0]
        target = render_target(reader.tokenizer, record)
        want = read_activations(reader.model, target.input_ids[None],
                                torch.ones_like(target.input_ids)[None],
                                target.read_mask[None], LAYERS)[0]
        torch.testing.assert_close(got, want)
        assert len(got) == 3 * example.num_read


def test_ask_score_and_controls_work_per_group(multi_reader):
    from latentqa.reading.errors import ReadingError

    reader = multi_reader
    answers = reader.ask([DIALOG, OTHER], [QUESTION], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a[0], str) for a in answers)
    count = int(reader._render(DIALOG, reader._reads(None, 1)[0])[1].sum())
    real = reader.score(DIALOG, QUESTION, ["A pirate.", "A chef."])
    none = reader.score(DIALOG, QUESTION, ["A pirate.", "A chef."], control="none")
    assert [c.logprob for c in real.candidates] != [c.logprob for c in none.candidates]
    for control in (None, "shuffled", "none"):
        counts, vectors, _ = reader._sources([DIALOG, OTHER], None, None, control, None)
        if vectors is None:
            assert counts[0] == count
            continue
        assert all(len(v) == 3 * n for v, n in zip(vectors, counts))
        if control == "shuffled":  # each dialog gets the other's vectors, every layer
            own = reader.activations([DIALOG, OTHER])
            assert torch.equal(vectors[0], own[1]) and torch.equal(vectors[1], own[0])
    one, vectors, _ = reader._sources([DIALOG], None, None, "shuffled", None)  # neutral donor
    assert len(vectors[0]) == 3 * one[0]
    assert isinstance(reader.score(DIALOG, QUESTION, ["a", "b"], control="shuffled").best, str)
    # another set of layers of the same size reads those; one layer cannot stand in
    other = reader.score(DIALOG, QUESTION, ["A pirate.", "A chef."], layer=[0, 1, 2])
    assert [c.logprob for c in other.candidates] != [c.logprob for c in real.candidates]
    for bad in (2, [1, 2]):
        with pytest.raises(ReadingError, match="together"):
            reader.ask(DIALOG, QUESTION, layer=bad)


def test_a_single_read_layer_cannot_override_the_sidecar(multi_run):
    from latentqa.reading.decoders import resolve_decoder
    from latentqa.reading.errors import DecoderError

    with pytest.raises(DecoderError, match="together"):
        resolve_decoder(multi_run / "decoder", read_layer=2)
    assert main(["read", "--decoder", str(multi_run / "decoder"), "--layer", "2",
                 "--question", QUESTION, "--user", "hello"]) != 0


# ---- evaluations -------------------------------------------------------------------------

def test_eval_heldout_and_persona_on_a_multi_layer_decoder(multi_run, tmp_path, capsys):
    decoder = str(multi_run / "decoder")
    heldout = tmp_path / "heldout.json"
    assert main(["eval", "heldout", "--decoder", decoder, "--data", FIXTURE, "--split", "all",
                 "--json", str(heldout)]) == 0
    result = json.loads(heldout.read_text())
    assert len({round(v, 6) for v in result["loss"].values()}) == 3
    cache = tmp_path / "cache"
    outs = [tmp_path / f"persona{k}.json" for k in range(2)]
    for out in outs:  # the second run reuses the cached adapter-free results
        assert main(["eval", "persona", "--data", FIXTURE, "--decoder", decoder, "--split",
                     "all", "--choices", "2", "--cache-dir", str(cache), "--json",
                     str(out)]) == 0
    first, second = (json.loads(o.read_text()) for o in outs)
    assert first["n"] > 0 and second["cache"]["activations"] == "reused"
    assert set(second["cache"]["reused"]) == {"text_only", "untrained_decoder"}
    assert first["conditions"] == second["conditions"]


def test_eval_recovery_on_a_multi_layer_decoder(multi_run, tmp_path):
    from test_recovery import PROMPTS, write_data

    folder = write_data(tmp_path / "data")
    out = tmp_path / "recovery.json"
    assert main(["eval", "recovery", "--data", str(folder), "--decoder",
                 str(multi_run / "decoder"), "--split", "all", "--choices", "3",
                 "--max-new-tokens", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == len(PROMPTS) and "shuffled" in result["top1"]["conditions"]


def test_eval_classification_on_a_multi_layer_decoder(multi_run, shared, tmp_path, capsys):
    out = tmp_path / "classification.json"
    assert main(["eval", "classification", "--data", str(shared("classification")),
                 "--decoder", str(multi_run / "decoder"), "--sets", "tense", "--limit", "2",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["read_layers"] == list(LAYERS) and result["n"] == 2
    assert "layers 1, 2, 3 together" in capsys.readouterr().out


# ---- steering and the server ---------------------------------------------------------------

def test_steering_reads_every_layer_through_the_decoder(multi_reader, tmp_path):
    from latentqa.steering import SteerConfig, steer
    from latentqa.steering.adapter import SteerSpec
    from latentqa.steering.control import Control

    control = Control("test", None, [("What is the assistant's goal?", "To talk about soup.")])
    prompts = ["What should I do today?", "Any tips for dinner?", "How do I relax?"]
    cfg = SteerConfig(steps=2, batch_size=2, lora_r=2, lr=1e-2, eval_tokens=3, reply_tokens=3)
    result = steer(multi_reader, control, prompts, tmp_path / "adapter", config=cfg,
                   log=lambda *a: None, generate_eval=False)
    spec = SteerSpec.read(tmp_path / "adapter")
    assert spec.read_layers == list(LAYERS) and spec.read_layer == 3
    assert spec.blocks == [0, 1, 2, 3] and len(result.losses) == 2
    with pytest.raises(ValueError, match="per_layer"):
        steer(multi_reader, control, prompts, tmp_path / "per-layer",
              config=SteerConfig(steps=1, per_layer=True), log=lambda *a: None)
    assert "steer" not in multi_reader.model.peft_config  # the reader is left as it was


def test_server_reads_every_layer_and_refuses_one(multi_reader):
    from fastapi.testclient import TestClient

    from latentqa.serve import Limits, create_app

    with TestClient(create_app(multi_reader, limits=Limits(max_new_tokens=8))) as c:
        h = c.get("/health").json()
        assert h["read_together"] is True and h["read_layers"] == list(LAYERS)
        r = c.post("/v1/read", json={"messages": DIALOG, "questions": [QUESTION],
                                     "max_new_tokens": 3})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["layer"] is None and out["layers"] == list(LAYERS)
        assert out["answers"][0]["answer"] == multi_reader.ask(DIALOG, QUESTION,
                                                               max_new_tokens=3)
        s = c.post("/v1/score", json={"messages": DIALOG, "questions": [QUESTION],
                                      "candidates": ["a", "b"], "control": "shuffled"})
        assert s.status_code == 200, s.text
        bad = c.post("/v1/read", json={"messages": DIALOG, "questions": [QUESTION],
                                       "layer": 2})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "layer"
        page = c.get("/").text
        assert "read_together" in page


# ---- packed rows with real multi-layer probes ----------------------------------------------

@pytest.mark.parametrize("layers", [None, LAYERS], ids=["one_layer", "multi_layer"])
@pytest.mark.parametrize("mode", ["replace", "norm_add"])
def test_packed_rows_of_real_probes_give_the_one_pair_per_row_loss(tiny_target, mode, layers):
    """The fixture's records as the trainer builds them (several QA pairs per row; with
    ``read_together``, three placeholder groups per probe): the packed loss and gradients equal
    one pair per row. The probes are real (~100 tokens, SmolLM2's 49k vocabulary), so fp32
    summation order moves gradients a little more than in test_train_packing's short ones;
    the bound is the same for one layer and for several."""
    from latentqa.data import Collator, LatentQADataset, LatentQARows, load_data
    from latentqa.data.probe import pad_probes
    from latentqa.decoder import add_decoder_adapter
    from latentqa.decoding import decoder_loss_sum, rows_loss_sum
    from latentqa.models import load_model

    loaded = load_model(str(tiny_target))
    torch.manual_seed(0)
    model = add_decoder_adapter(loaded.model, r=4, dropout=0.0)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.eval()
    data = load_data([FIXTURE])
    rows = LatentQARows(LatentQADataset(data, loaded.tokenizer, layers=layers))
    chosen = [rows[i] for i in range(len(rows)) if len(rows.pairs(i)) > 1][:3]
    assert chosen
    batch = Collator(loaded.tokenizer).rows(chosen)
    vectors = read_activations(model, batch["target_input_ids"], batch["target_attention_mask"],
                               batch["read_mask"], layers or 2)
    groups = 1 if layers is None else len(layers)
    assert all(int(p.placeholder_mask.sum()) == len(v) and len(v) % groups == 0
               for v, row in zip(vectors, batch["probes"]) for p in row)
    packed, n_packed = rows_loss_sum(model, batch["probes"], vectors, pad_id=0, mode=mode)
    probes = [p for row in batch["probes"] for p in row]
    ids, attn, ph, labels = pad_probes(probes, 0, "right")
    single, n_single = decoder_loss_sum(
        model, {"decoder_input_ids": ids, "decoder_attention_mask": attn,
                "placeholder_mask": ph, "labels": labels},
        torch.cat([v for v, row in zip(vectors, batch["probes"]) for _ in row]), write_layer=0,
        mode=mode)
    assert n_packed == n_single
    torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(packed, params)
    want = torch.autograd.grad(single, params)
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-4 * w.abs().max().item() + 1e-7


def test_activation_cache_keys_layers_read_together(tmp_path):
    from latentqa.train.cache import ActivationCache

    cache = ActivationCache("disk", dtype="fp32", directory=tmp_path)
    v = torch.randn(6, 4)
    cache.put((3, LAYERS), v)
    assert (tmp_path / "r3-l1+2+3.safetensors").is_file()
    assert torch.equal(cache.get((3, LAYERS)), v) and cache.get((3, 2)) is None
