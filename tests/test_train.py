"""The trainer: configs refused early, exact resume after SIGKILL, DDP and FSDP ==
accumulation, full fine-tuning."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, shared_path
from safetensors.torch import load_file

from latentqa.cli import main
from latentqa.train import ConfigError, build_config
from latentqa.train.checkpoint import STATE, list_checkpoints

DATA = [str(SHARED_DATA / "latentqa" / "control.json"), str(SHARED_DATA / "latentqa" / "qa.json")]


@pytest.fixture(autouse=True)
def _shared_data():
    shared_path("latentqa", "qa.json")  # every test here trains or configures on it


def _args(target, out, **extra):
    values = dict(model=str(target), out_dir=str(out), read_layers="[2]", write_layer=0,
                  batch_size=2, max_steps=6, log_every=1, eval_every=3, eval_examples=4,
                  save_every=2, lr=1e-3, warmup_steps=2, precision="fp32", seed=3,
                  lora_r=4, lora_alpha=8, max_tokens=256)
    values.update(extra)
    return [f"data={json.dumps(DATA)}"] + [f"{k}={v}" for k, v in values.items()]


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "decoder" / "adapter_model.safetensors"))


def _cli(args, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "latentqa.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.parametrize("override,message", [
    ("lerning_rate=1", "unknown config key 'lerning_rate'"),
    ("batch_size=0", "batch_size must be at least 1"),
    ("data=/no/such/file.json", "data: /no/such/file.json does not exist"),
    ("read_layers=[99]", "layer 99 is out of range for a model with 30 blocks"),
    ("write_layer=x", "write_layer: expected an integer"),
    ("distributed=fdsp", "distributed must be one of ('ddp', 'fsdp'), got 'fdsp'"),
    ("relation_share=0.2", "relation_share > 0 needs relation_data"),
    ("system_swaps=-1", "system_swaps must be >= 0, got -1"),
    ("init_decoder=/no/such/dir", "init_decoder: /no/such/dir holds no adapter_model"),
])
def test_bad_config_refused_before_any_model_loads(monkeypatch, capsys, override, message):
    import latentqa.models

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the config was checked")

    monkeypatch.setattr(latentqa.models, "load_model", no_weights)
    assert main(["train", f"data={DATA[0]}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_file_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.001\nread_layers: [10, 14]\ndata: [%s]\n" % DATA[0])
    from latentqa.train.config import parse_overrides, read_config_file

    values = read_config_file(tmp_path / "c.yaml")
    values.update(parse_overrides(["lr=3e-4", "gradient_checkpointing=true"]))
    cfg = build_config(values)
    assert cfg.lr == 3e-4 and cfg.read_layers == [10, 14] and cfg.gradient_checkpointing
    (tmp_path / "c.toml").write_text('batch_size = 4\ndata = ["%s"]\n' % DATA[0])
    assert build_config(read_config_file(tmp_path / "c.toml")).batch_size == 4
    with pytest.raises(ConfigError, match="expected true or false"):
        build_config({"data": [DATA[0]], "full_finetune": "maybe"})
    with pytest.raises(ConfigError, match="activation_cache must be 'off' with distributed"):
        build_config({"data": [DATA[0]], "distributed": "fsdp", "activation_cache": "memory"})


def test_run_writes_decoder_metrics_plot_and_steps_the_schedule_per_step(tiny_target, tmp_path):
    out = tmp_path / "run"
    proc = _cli(_args(tiny_target, out, schedule="cosine", max_steps=5, save_every=5))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    for name in ("config.json", "metrics.jsonl", "loss.png", "summary.json",
                 "decoder/adapter_model.safetensors", "decoder/latentqa_decoder.json"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    # the rate used at each optimizer step: warmup over 2 steps, then cosine decay to 0
    assert lrs[0] < lrs[1] == max(lrs) and lrs[1:] == sorted(lrs[1:], reverse=True)
    assert lrs[1] > lrs[-2] > lrs[-1] and len(set(lrs[1:])) >= len(lrs) - 2
    assert any("eval_loss_shuffled" in r for r in rows)
    spec = json.loads((out / "decoder" / "latentqa_decoder.json").read_text())
    assert spec["read_layer"] == 2 and spec["write_layer"] == 0 and spec["layout"] == "paper"
    assert spec["num_blocks"] == 4 and spec["target"] == str(tiny_target)
    assert spec["extra"]["trained_steps"] == 5 and spec["extra"]["held_out"] == 0.1
    # a checkpoint evaluates like a decoder: its sidecar says which labels were held out
    saved = json.loads((out / "checkpoints" / "step-0000005" / "latentqa_decoder.json")
                       .read_text())
    assert saved["extra"]["held_out"] == 0.1 and saved["extra"]["split_seed"] == 0
    assert saved["extra"]["data_files"] == spec["extra"]["data_files"]
    # how it was made: the command, the source's revision and the data, in the run and sidecar
    from latentqa.provenance import source_revision

    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert len(stages) == 1 and stages[0]["from_step"] == 0
    args = _args(tiny_target, out, schedule="cosine", max_steps=5, save_every=5)
    assert shlex.split(stages[0]["command"]) == ["latentqa", "train", *args]  # typed again
    assert stages[0]["git_revision"] == source_revision()["git_revision"]
    assert set(stages[0]["data_files"]) == set(DATA)
    assert spec["extra"]["stages"] == stages
    assert json.loads((out / "summary.json").read_text())["stages"] == stages


@pytest.mark.heavy
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_target, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _cli(_args(tiny_target, straight, lora_dropout=0.1))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log

    proc = _cli(_args(tiny_target, killed, lora_dropout=0.1))
    deadline = time.time() + 300
    while not list_checkpoints(killed) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = list_checkpoints(killed)
    assert done and not (killed / "decoder").exists(), "killed too late to test a resume"
    for c in done:  # every checkpoint that exists is whole
        assert {"adapter_model.safetensors", "latentqa_decoder.json",
                "trainer_state.pt"} <= {p.name for p in c.iterdir()}

    proc = _cli(_args(tiny_target, killed, lora_dropout=0.1) + ["--resume"])
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "resumed from" in log
    a, b = _adapter(straight), _adapter(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    steps = [json.loads(x).get("step") for x in (killed / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == sorted(set(steps)), "metrics logged twice after the resume"
    # both starts are on record, the second from the checkpoint it resumed
    stages = json.loads((killed / "decoder" / "latentqa_decoder.json").read_text())[
        "extra"]["stages"]
    assert [s["from_step"] for s in stages] == [0, int(done[-1].name.split("-")[-1])]
    assert stages[1]["command"].endswith("--resume")


@pytest.mark.heavy
def test_two_process_ddp_equals_one_process_with_accumulation(tiny_target, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(lora_dropout=0.0, max_steps=3, save_every=3, eval_every=3)
    proc = _cli(_args(tiny_target, one, grad_accum=2, **common))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "latentqa.cli", "train", *_args(tiny_target, two, grad_accum=1, **common)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 process(es)" in run.stdout + run.stderr
    a, b = _adapter(one), _adapter(two)
    moved = max((v - 0).abs().max().item() for k, v in a.items() if "lora_B" in k)
    assert moved > 0  # training changed the adapter
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


@pytest.mark.heavy
def test_activation_cache_gives_the_same_run(tiny_target, tmp_path):
    fixture = str(Path(__file__).parent / "fixtures" / "data" / "good")
    runs = {}
    for mode in ("off", "memory", "disk"):
        out = tmp_path / mode
        args = _args(tiny_target, out, activation_cache=mode, cache_dtype="fp32",
                     lora_dropout=0.0, max_steps=12, save_every=12, eval_every=12,
                     held_out=0, eval_data=json.dumps([fixture]), held_out_hygiene="false")
        args[0] = f"data={json.dumps([fixture])}"  # 17 pairs: two epochs revisit records
        proc = _cli(args)
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log
        runs[mode] = _adapter(out)
        cache = json.loads((out / "summary.json").read_text())["cache"]
        if mode != "off":
            assert cache["hits"] > 0 and cache["misses"] > 0
    for mode in ("memory", "disk"):
        for k in runs["off"]:
            torch.testing.assert_close(runs[mode][k], runs["off"][k], rtol=0, atol=1e-6)


def _torchrun(args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "latentqa.cli", "train", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.mark.heavy
def test_two_process_fsdp_equals_one_process_and_resumes(tiny_target, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    fixture = json.dumps([str(Path(__file__).parent / "fixtures" / "data" / "good")])

    def args(out, **extra):  # the 17 hand-written pairs: little to load in each process
        # constant schedule: a run stopped at step 2 and resumed to 4 sees the same rates
        out = _args(tiny_target, out, lora_dropout=0.0, schedule="constant", save_every=2,
                    eval_every=2, held_out=0, eval_data=fixture, held_out_hygiene="false",
                    **extra)
        return [f"data={fixture}"] + out[1:]

    assert main(["train", *args(one, grad_accum=2, max_steps=4)]) == 0
    log = _torchrun(args(two, distributed="fsdp", max_steps=2))
    assert "2 process(es)" in log
    log = _torchrun(args(two, distributed="fsdp", max_steps=4) + ["--resume"])
    assert "resumed from" in log
    state = torch.load(list_checkpoints(two)[-1] / "trainer_state.pt", weights_only=True)
    assert state["sharded"]  # the optimizer state was gathered whole, keyed by parameter name
    assert all(isinstance(k, str) for k in state["optimizer"]["state"])

    # before the restart and after it, the same weights as one process with accumulation
    for a, b in ((one / "checkpoints" / "step-0000002", two / "checkpoints" / "step-0000002"),
                 (one / "decoder", two / "decoder")):
        assert {p.name for p in a.iterdir()} - {STATE} == {p.name for p in b.iterdir()} - {STATE}
        wa, wb = load_file(str(a / "adapter_model.safetensors")), \
            load_file(str(b / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys()
        assert max(v.abs().max().item() for k, v in wa.items() if "lora_B" in k) > 0
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    # and a decoder the reader loads like any other
    from latentqa.reading import load

    assert load(str(two / "decoder"), str(tiny_target)).spec.read_layer == 2


def test_full_finetune_trains_copies_of_the_blocks_and_resumes(tiny_target, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = dict(full_finetune="true", schedule="constant", save_every=2, eval_every=2)
    assert main(["train", *_args(tiny_target, straight, max_steps=4, **common)]) == 0
    assert main(["train", *_args(tiny_target, split, max_steps=2, **common)]) == 0
    assert main(["train", *_args(tiny_target, split, max_steps=4, **common), "--resume"]) == 0
    a, b = _adapter(straight), _adapter(split)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    # the decoder is a trained copy of every block and the final norm; the target is untouched
    original = load_file(str(tiny_target / "model.safetensors"))
    # peft's names: ...layers.0.ln_tuning_layers.default.mlp..., ...norm.ln_tuning_layers.weight
    copies = {k.removeprefix("base_model.model.").replace("ln_tuning_layers.", "")
              .replace("default.", ""): v for k, v in a.items()}
    assert {k for k in original if k.startswith("model.layers.") or k == "model.norm.weight"} \
        == set(copies)
    assert all(not torch.equal(v, original[k]) for k, v in copies.items() if "proj" in k)


def test_continued_training_starts_from_the_given_decoder_with_relation_records_and_swaps(
        tiny_target, tiny_decoder, tmp_path):
    relations = str(Path(__file__).parent / "fixtures" / "triples")
    start = load_file(str(tiny_decoder / "adapter_model.safetensors"))
    runs = {}
    for name, extra in (("scratch", {}), ("continued", {"init_decoder": str(tiny_decoder)})):
        out = tmp_path / name
        # a vanishing learning rate: the saved adapter is where training started
        assert main(["train", *_args(tiny_target, out, max_steps=1, lr=1e-12, warmup_steps=0,
                                     relation_share=0.2, relation_data=json.dumps([relations]),
                                     system_swaps=1, **extra)]) == 0
        runs[name] = _adapter(out)
    for key, value in start.items():
        assert torch.allclose(runs["continued"][key], value, atol=1e-6), key
    assert any(not torch.allclose(runs["scratch"][k], v, atol=1e-6) for k, v in start.items())
    spec = json.loads((tmp_path / "continued" / "decoder" / "latentqa_decoder.json").read_text())
    assert spec["extra"]["trained_relations"] == ["animal_sound", "country_capital"]
    assert spec["extra"]["init_decoder"] == str(tiny_decoder)
    assert spec["extra"]["system_swaps"] == 1


def test_init_decoder_of_another_shape_is_refused(tiny_target, tiny_decoder, tmp_path, capsys):
    args = _args(tiny_target, tmp_path / "run", lora_r=8, init_decoder=str(tiny_decoder))
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "init_decoder" in err and "r=4" in err and "Traceback" not in err


def test_fit_to_budget_fits_the_end_to_the_pace_and_the_plan():
    from latentqa.train.loop import fit_to_budget

    # 60 s budget, 10 s gone at step 20, 0.5 s a step: 100 more steps fit
    assert fit_to_budget(60, 10.0, 20, 1000, 0.5) == 120
    # a faster pace later gives steps back, up to the plan, never past it
    assert fit_to_budget(60, 20.0, 100, 1000, 0.2) == 300
    assert fit_to_budget(60, 20.0, 100, 200, 0.2) == 200
    assert fit_to_budget(60, 61.0, 37, 1000, 0.5) == 37  # over budget: stop now


def test_time_budget_ends_the_run_early_with_a_saved_decoder(tiny_target, tmp_path):
    out = tmp_path / "run"
    proc = _cli(_args(tiny_target, out, max_steps=400, max_minutes=0.0001, eval_every=1000,
                      save_every=1000))
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["planned_steps"] == 400, summary
    assert "the run ends at step 1" in log
    assert (out / "decoder" / "adapter_model.safetensors").exists()
    assert [c.name for c in list_checkpoints(out)] == ["step-0000001"]
    # resumed, it keeps the end its budget fitted instead of running on to max_steps
    proc = _cli(_args(tiny_target, out, max_steps=400, max_minutes=0.0001, eval_every=1000,
                      save_every=1000) + ["--resume"])
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
