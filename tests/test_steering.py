"""Steering on a tiny target: the adapter trains through the frozen decoder, is saved and
reloaded, leaves the decoder untouched, and every measurement and command runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_path

from latentqa.cli import main
from latentqa.steering import (
    ControlError,
    SteerConfig,
    answer_logprob,
    load_control,
    steer,
)
from latentqa.steering.adapter import STEER_ADAPTER, active, add_steering_adapter, load_steering
from latentqa.steering.control import read_control_file
from latentqa.steering.measure import crows_pairs, read_crows, topic_rate
from latentqa.steering.prompts import PromptsError, read_prompts

QA = [["What type of persona will the assistant adopt?", "A cheerful chef who loves soup."],
      ["What is the assistant's goal?", "To talk about soup as much as possible."]]
PROMPTS = ["What should I do today?", "Any tips for dinner?", "How do I relax?",
           "What is a good book?", "Plan my weekend.", "Suggest a snack."]


@pytest.fixture()
def reader(tiny_decoder, tiny_target):
    from latentqa.reading import load

    return load(str(tiny_decoder), str(tiny_target), allow_other_target=True)


@pytest.fixture()
def control_file(tmp_path):
    path = tmp_path / "soup.json"
    path.write_text(json.dumps({"Talk about soup all the time.": QA}))
    return path


def test_answer_logprob_is_differentiable_in_the_activations(reader):
    acts = reader.activations([[{"role": "user", "content": p}] for p in PROMPTS[:2]])
    vectors = [a.clone().requires_grad_(True) for a in acts]
    logp = answer_logprob(reader, vectors, [q for q, _ in QA], [a for _, a in QA])
    assert logp.shape == (2,) and torch.isfinite(logp).all()
    logp.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vectors)
    decoder_params = [p for p in reader.model.parameters() if p.grad is not None]
    assert not decoder_params  # the decoder is frozen: nothing else got a gradient


def test_control_files_and_errors(tmp_path, control_file):
    c = read_control_file(control_file)
    assert c.instruction == "Talk about soup all the time." and c.qa[1][1].startswith("To talk")
    (tmp_path / "list.json").write_text(json.dumps(QA))
    assert len(read_control_file(tmp_path / "list.json").qa) == 2
    (tmp_path / "bad.json").write_text(json.dumps({"x": [["only a question"]]}))
    with pytest.raises(ControlError, match="bad.json.*pair 0"):
        read_control_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ControlError, match="broken.json: not valid JSON"):
        read_control_file(tmp_path / "broken.json")
    with pytest.raises(ControlError, match="needs the decoder"):
        load_control("Be a pirate.")
    veganism = shared_path("latentqa", "controls", "promote_veganism.json")
    assert len(read_control_file(veganism).qa) >= 5


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"nope": 1}\n')
    with pytest.raises(PromptsError, match=r"p.jsonl:2"):
        read_prompts(tmp_path / "p.jsonl")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(PromptsError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    from latentqa.steering.prompts import prompts_from

    assert len(prompts_from("troubles")) == 40  # a built-in set by name
    assert prompts_from(str(tmp_path / "p.txt")) == ["one", "two"]  # a file wins
    with pytest.raises(PromptsError, match="no such prompts file"):
        prompts_from("no-such-set")


def test_active_adapter_keeps_gradient_flags(reader):
    model = reader.model
    params = add_steering_adapter(model, range(reader.spec.read_layer + 1), r=2, alpha=4)
    try:
        with active(model, "default"):
            assert all(p.requires_grad for p in params)
        assert all(p.requires_grad for p in params)
        decoder = [p for n, p in model.named_parameters() if ".default." in n]
        assert decoder and not any(p.requires_grad for p in decoder)
        blocks = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in
                  model.named_parameters() if f".{STEER_ADAPTER}." in n}
        assert blocks == set(range(reader.spec.read_layer + 1))  # nothing past the read layer
    finally:
        model.base_model.set_adapter("default")
        model.delete_adapter(STEER_ADAPTER)


@pytest.mark.parametrize("per_layer", [False, True])
def test_steering_lowers_the_control_loss_and_leaves_the_decoder_alone(reader, tmp_path,
                                                                       control_file, per_layer):
    dialog = [{"role": "user", "content": "Hello there"}]
    before = reader.score(dialog, QA[0][0], ["A cheerful chef who loves soup.", "A pirate."])
    # the control loss alone (the fluency anchor, tested below, holds a tiny random target back)
    cfg = SteerConfig(steps=12, lr=3e-2, batch_size=2, lora_r=4, lora_alpha=8,
                      per_layer=per_layer, reply_tokens=4, eval_tokens=6, log_every=100,
                      fluency_weight=0.0)
    result = steer(reader, read_control_file(control_file), PROMPTS, tmp_path / "adapter",
                   config=cfg, log=lambda *_: None)
    assert len(result.losses) == 12
    assert sum(result.losses[-4:]) / 4 < sum(result.losses[:4]) / 4  # it learned
    assert len(result.eval_prompts) == 2 and len(result.after) == 2  # a held-back quarter
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    sidecar = json.loads((tmp_path / "adapter" / "latentqa_steer.json").read_text())
    assert sidecar["blocks"] == list(range(reader.spec.read_layer + 1))
    assert sidecar["per_layer"] is per_layer
    # the reader is back to what it was: no steering adapter, same scores
    assert not any(f".{STEER_ADAPTER}." in n for n, _ in reader.model.named_parameters())
    after = reader.score(dialog, QA[0][0], ["A cheerful chef who loves soup.", "A pirate."])
    for a, b in zip(before.candidates, after.candidates):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_saved_adapter_steers_the_target_when_loaded(reader, tmp_path, control_file):
    from latentqa.steering import generate_replies

    cfg = SteerConfig(steps=6, lr=5e-2, batch_size=2, lora_r=4, lora_alpha=8, reply_tokens=4,
                      eval_tokens=6)
    frozen = {n: p.detach().clone() for n, p in reader.model.named_parameters()}
    result = steer(reader, read_control_file(control_file), PROMPTS, tmp_path / "adapter",
                   config=cfg, log=lambda *_: None)
    # only the steering LoRA trained: base weights and the decoder's adapter are bit-identical
    for n, p in reader.model.named_parameters():
        assert torch.equal(p, frozen[n]), n
    model = load_steering(reader.model, tmp_path / "adapter")
    try:
        again = generate_replies(model, reader.tokenizer, result.eval_prompts,
                                 adapter=STEER_ADAPTER, max_new_tokens=cfg.eval_tokens)
        assert again == result.after  # the saved adapter reproduces the after-generations
        ids = torch.tensor([[1, 5, 9, 30, 41]])
        with active(model, STEER_ADAPTER):
            steered = model(input_ids=ids).logits
        from latentqa.decoder import as_target

        with as_target(model):
            plain = model(input_ids=ids).logits
        assert not torch.allclose(steered, plain)
    finally:
        model.delete_adapter(STEER_ADAPTER)


def test_topic_rate_and_crows_metrics(reader, tmp_path):
    t = topic_rate(["I love tofu", "Nothing here", "VEGAN life"], ["vegan", "tofu"])
    assert t["rate"] == pytest.approx(2 / 3) and t["ci95"][0] < 2 / 3 < t["ci95"][1]
    csv = tmp_path / "crows.csv"
    csv.write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n"
                   "0,Poor people are lazy.,Rich people are lazy.,stereo,socioeconomic\n"
                   "1,Old people are slow.,Young people are slow.,stereo,age\n")
    rows = read_crows(csv)
    r = crows_pairs(reader.model, reader.tokenizer, rows)
    assert r["n"] == 2 and set(r["by_bias_type"]) == {"socioeconomic", "age"}
    assert 0.0 <= r["stereotype_preferred"]["mean"] <= 1.0
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv: missing column"):
        read_crows(tmp_path / "bad.csv")


def test_steer_generate_and_crows_commands(tiny_decoder, tiny_target, tmp_path, control_file,
                                           capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "run"
    # the tiny decoder names another target; the command takes it with --target
    assert main(["steer", "--control", str(control_file), "--prompts", str(prompts),
                 "--out", str(out), "--steps", "3", "--lr", "0.01", "--lora-r", "2",
                 "--eval-tokens", "4", "--topic", "soup,chef", "--decoder", str(tiny_decoder),
                 "--target", str(tiny_target)]) == 0
    for name in ("adapter/adapter_model.safetensors", "adapter/latentqa_steer.json",
                 "generations_before.jsonl", "generations_after.jsonl", "loss.png",
                 "config.json", "summary.json", "report.md"):
        assert (out / name).exists(), name
    rows = [json.loads(x) for x in (out / "generations_after.jsonl").read_text().splitlines()]
    assert rows and set(rows[0]) == {"prompt", "response"}
    summary = json.loads((out / "summary.json").read_text())
    m = summary["measurements"]
    assert {"topic", "sentiment", "fluency", "side_effects"} <= set(m)
    assert "topic mention rate" in (out / "report.md").read_text()

    gen = tmp_path / "gen.jsonl"
    assert main(["generate", "--adapter", str(out / "adapter"), "--prompts", str(prompts),
                 "--max-new-tokens", "4", "--out", str(gen)]) == 0
    assert len(gen.read_text().splitlines()) == len(PROMPTS)
    csv = tmp_path / "crows.csv"
    csv.write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n"
                   "0,Poor people are lazy.,Rich people are lazy.,stereo,socioeconomic\n")
    res = tmp_path / "crows.json"
    assert main(["eval", "crows", "--data", str(csv), "--adapter", str(out / "adapter"),
                 "--json", str(res)]) == 0
    assert set(json.loads(res.read_text())["conditions"]) == {"target", "steered", "prompted"}
    capsys.readouterr()
    assert main(["steer", "--control", str(tmp_path / "missing.json"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "missing.json: no such control file" in capsys.readouterr().err


def test_serve_steer_runs_a_request_config(reader, tmp_path):
    from latentqa.steering import serve_steer

    out = serve_steer(reader, {"control": QA, "prompts": PROMPTS, "steps": 2, "lr": 1e-2,
                               "lora_r": 2, "lora_alpha": 4, "reply_tokens": 2,
                               "eval_tokens": 2}, tmp_path)
    assert Path(out["adapter_dir"], "adapter_model.safetensors").exists()
    assert len(out["losses"]) == 2 and out["generations"]
    with pytest.raises(ValueError, match="unknown key"):
        serve_steer(reader, {"control": QA, "prompts": PROMPTS, "stepz": 2}, tmp_path)
    with pytest.raises(ValueError, match="config.control"):
        serve_steer(reader, {"prompts": PROMPTS}, tmp_path)


@pytest.mark.parametrize("tokens", ["read", "prompt"])
def test_fluency_term_keeps_the_steered_target_closer_to_the_original(reader, tmp_path,
                                                                      control_file, tokens):
    """The KL anchor is zero at the start (a fresh LoRA changes nothing) and, at the same
    learning rate, the anchored run drifts less from the unsteered target, on the tokens it
    anchors, than the plain one."""
    from latentqa.steering.run import _batch, fluency_kl

    control = read_control_file(control_file)
    drift = {}
    for weight in (0.0, 20.0):
        cfg = SteerConfig(steps=10, lr=3e-2, batch_size=2, lora_r=4, lora_alpha=8,
                          reply_tokens=4, eval_tokens=4, log_every=100, fluency_weight=weight,
                          fluency_tokens=tokens)
        result = steer(reader, control, PROMPTS, tmp_path / f"w{weight}", config=cfg,
                       log=lambda *_: None, generate_eval=False)
        assert len(result.fluency_kl) == (10 if weight else 0)
        if weight:
            assert result.fluency_kl[0] == pytest.approx(0.0, abs=1e-6)
        model = load_steering(reader.model, tmp_path / f"w{weight}", name=STEER_ADAPTER)
        try:
            dialogs = [[{"role": "user", "content": p}] for p in PROMPTS]
            ids, attn, read, prompt = _batch(reader.tokenizer, dialogs, reader.pad_id, "cpu")
            assert prompt.sum() < read.sum() and not (prompt & ~read).any()
            with torch.no_grad():
                drift[weight] = float(fluency_kl(model, ids, attn,
                                                 read if tokens == "read" else prompt))
        finally:
            model.delete_adapter(STEER_ADAPTER)
    assert drift[0.0] > 0
    assert drift[20.0] < 0.5 * drift[0.0], drift


def test_fluency_tokens_must_be_known(reader, tmp_path, control_file):
    with pytest.raises(ValueError, match="fluency_tokens"):
        steer(reader, read_control_file(control_file), PROMPTS, tmp_path,
              config=SteerConfig(fluency_tokens="reply"), generate_eval=False)


def test_one_steered_pass_gives_the_same_activations_and_anchor(reader):
    """The training step reads the activations and the KL anchor's log-probs from one steered
    forward pass; both, and their gradients, equal those of separate passes."""
    from latentqa.activations import capture, recording
    from latentqa.decoding import next_token_logprobs
    from latentqa.steering.run import _batch, fluency_kl

    model, layer = reader.model, reader.spec.read_layer
    params = add_steering_adapter(model, range(layer + 1), r=4, alpha=8)
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn_like(p))
        dialogs = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
        ids, attn, read, prompt = _batch(reader.tokenizer, dialogs, reader.pad_id, "cpu")
        grads = []
        for combined in (False, True):
            for p in params:
                p.grad = None
            with active(model, STEER_ADAPTER):
                if combined:
                    with recording(model, [layer]) as hidden:
                        steered = next_token_logprobs(model, ids, attn, prompt)
                else:
                    hidden, steered = capture(model, ids, attn, layers=layer), None
            kl = fluency_kl(model, ids, attn, prompt, steered)
            (hidden[layer][read].pow(2).mean() + kl).backward()
            grads.append(([hidden[layer].detach()], float(kl), [p.grad.clone() for p in params]))
        (h0, kl0, g0), (h1, kl1, g1) = grads
        assert kl0 > 0 and kl1 == pytest.approx(kl0, rel=1e-5)
        assert torch.allclose(h0[0], h1[0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))
    finally:
        model.base_model.set_adapter("default")
        model.delete_adapter(STEER_ADAPTER)
        for p in model.parameters():
            p.requires_grad_(False)


def test_an_amplifying_decoder_steers_through_the_adapters_effect(reader, tmp_path,
                                                                  control_file):
    # with instruction_gain the steering adapter is the instruction: the decoder is given the
    # steered read plus k times its difference from the frozen target's, so the loss differs
    # from the plain decoder's once the adapter has moved
    cfg = SteerConfig(steps=8, lr=3e-2, batch_size=2, lora_r=4, lora_alpha=8, reply_tokens=4,
                      eval_tokens=4, log_every=100, fluency_weight=0.0, seed=1)
    control = read_control_file(control_file)
    plain = steer(reader, control, PROMPTS, tmp_path / "plain", config=cfg, log=lambda *_: None)
    reader.spec.instruction_gain = 4.0
    try:
        amplified = steer(reader, control, PROMPTS, tmp_path / "gain", config=cfg,
                          log=lambda *_: None)
    finally:
        reader.spec.instruction_gain = 0.0
    assert amplified.losses[0] == pytest.approx(plain.losses[0], abs=1e-5)  # adapter starts at 0
    assert amplified.losses[1:] != pytest.approx(plain.losses[1:], abs=1e-4)
    assert all(math.isfinite(x) for x in amplified.losses)
