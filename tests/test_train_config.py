"""Training config files: ``base:`` chains, the shipped configs, and one-line errors for files
that are not UTF-8 or not valid YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentqa.cli import main
from latentqa.train import ConfigError, TrainConfig, build_config
from latentqa.train.config import read_config_file

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
FIXTURE = str(Path(__file__).parent / "fixtures" / "data" / "good")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_base_keys_are_overridden_by_the_child_and_lists_replaced(tmp_path):
    _write(tmp_path / "base.yaml", f"data: [{FIXTURE}]\nlr: 0.001\nread_layers: [10, 14]\n"
                                   "seed: 5\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\nlr: 0.0003\nread_layers: [7]\n")
    values = read_config_file(child)
    assert "base" not in values
    cfg = build_config(values)
    assert cfg.lr == 3e-4 and cfg.seed == 5 and cfg.read_layers == [7]  # replaced, not merged
    assert cfg.data == [FIXTURE]


def test_base_chains_resolve_relative_to_the_file_that_names_them(tmp_path):
    _write(tmp_path / "root.yaml", f"data: [{FIXTURE}]\nlr: 0.001\nseed: 1\nmax_steps: 9\n")
    _write(tmp_path / "mid" / "mid.yaml", "base: ../root.yaml\nseed: 2\n")
    _write(tmp_path / "leaf" / "leaf.toml", 'base = "../mid/mid.yaml"\nmax_steps = 4\n')
    cfg = build_config(read_config_file(tmp_path / "leaf" / "leaf.toml"))
    assert (cfg.lr, cfg.seed, cfg.max_steps) == (0.001, 2, 4)


def test_a_base_cycle_is_refused_naming_the_files(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\nlr: 0.1\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as e:
        read_config_file(tmp_path / "a.yaml")
    assert "a.yaml" in str(e.value) and "b.yaml" in str(e.value)
    _write(tmp_path / "self.yaml", "base: ./self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_config_file(tmp_path / "self.yaml")


def test_a_missing_base_is_refused_naming_both_files(tmp_path, capsys):
    child = _write(tmp_path / "child.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist") as e:
        read_config_file(child)
    assert "child.yaml" in str(e.value)
    _write(tmp_path / "bad.yaml", "base: [a, b]\n")
    with pytest.raises(ConfigError, match="base must be the path"):
        read_config_file(tmp_path / "bad.yaml")
    assert main(["train", "--config", str(child)]) == 2
    err = capsys.readouterr().err
    assert "nowhere.yaml" in err and "Traceback" not in err


def test_a_non_utf8_config_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"# caf\xe9\nlr: 0.001\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "not UTF-8" in err
    assert "line 1" in err and "Traceback" not in err


def test_a_malformed_yaml_is_one_line_with_line_and_column(tmp_path, capsys):
    path = _write(tmp_path / "broken.yaml", f"data: [{FIXTURE}]\nread_layers: [1, 2\nlr: 3\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert str(path) in err and "line 3, column 3" in err and "Traceback" not in err
    toml = _write(tmp_path / "broken.toml", "lr = = 3\n")
    assert main(["train", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(toml) in err and "line 1" in err


def test_sample_answers_is_gone_and_refused_with_a_reason():
    assert not hasattr(TrainConfig(), "sample_answers")
    with pytest.raises(ConfigError, match="sample_answers is no longer a config key"):
        build_config({"data": [FIXTURE], "sample_answers": 3})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = build_config(read_config_file(path), check_paths=False)  # data may be absent here
    assert cfg.model == "smollm2-135m"
    # one read block, or several read together, increasing, within the 30 blocks
    assert (len(cfg.read_layers) == 1 or cfg.read_together) and cfg.read_layers == sorted(
        set(cfg.read_layers)) and 0 <= cfg.read_layers[0] and cfg.read_layers[-1] < 30
    # no stage starts from the shipped decoder directory, which is replaced at every release
    assert "src/latentqa/decoders" not in cfg.init_decoder


# what each lineage is (the model card's "Reproducing v0.2-v0.4" and "Attempts after v0.2")
KEY_FACTS = {
    "smollm2-135m.yaml": dict(init_decoder="", lr=2e-4, warmup_steps=30, max_steps=400, seed=0,
                              plain_share=0.1, relation_share=0.0, system_swaps=0,
                              eval_every=100, out_dir="runs/smollm2-135m-v2"),
    "smollm2-135m-v6.yaml": dict(init_decoder="runs/v0.2-decoder", lr=1e-4, warmup_steps=10,
                                 max_steps=150, seed=1, plain_share=0.1, relation_share=0.3,
                                 relation_data=["../shared/data/relations"], eval_every=75,
                                 out_dir="runs/smollm2-135m-v6"),
    "smollm2-135m-v7.yaml": dict(init_decoder="runs/v0.3-decoder", lr=1e-4, max_steps=150,
                                 seed=3, plain_share=0.25, relation_share=0.3, eval_every=75,
                                 out_dir="runs/smollm2-135m-v7"),
    "smollm2-135m-v3.yaml": dict(init_decoder="runs/smollm2-135m-v2/decoder", lr=1e-4,
                                 max_steps=150, seed=1, plain_share=0.1, relation_share=0.3,
                                 out_dir="runs/smollm2-135m-v3b"),
    "smollm2-135m-v4.yaml": dict(init_decoder="runs/v0.2-decoder", lr=1e-4, max_steps=150,
                                 seed=1, system_swaps=1, relation_share=0.0, eval_every=75,
                                 out_dir="runs/smollm2-135m-v4"),
    "smollm2-135m-v5.yaml": dict(init_decoder="runs/v0.2-decoder", lr=1e-4, max_steps=300,
                                 seed=2, system_swaps=3, relation_share=0.0, eval_every=100,
                                 out_dir="runs/smollm2-135m-v5"),
    "smollm2-135m-v8.yaml": dict(init_decoder="runs/v0.4-decoder", pack_questions=True,
                                 held_out_hygiene=True, system_prompt_descriptions=True,
                                 system_prompt_data=["../shared/data/latentqa/"
                                                     "unlabeled_system.json"],
                                 out_dir="runs/smollm2-135m-v8"),
}


@pytest.mark.parametrize("name", sorted(KEY_FACTS))
def test_each_lineage_resolves_to_its_recipe(name):
    cfg = build_config(read_config_file(REPO / "configs" / name), check_paths=False)
    for key, value in KEY_FACTS[name].items():
        assert getattr(cfg, key) == value, key
    # what every stage shares with v0.2
    assert (cfg.lora_r, cfg.lora_alpha, cfg.schedule, cfg.save_every,
            cfg.activation_cache, cfg.cache_dtype, cfg.held_out, cfg.split_seed) == \
        (16, 32, "cosine", 25, "memory", "fp32", 0.1, 0)
    # about eight pairs a step: a packed row holds a record's two or three
    assert cfg.batch_size == (4 if cfg.pack_questions else 8)


def test_every_continued_stage_says_only_what_it_changes():
    import yaml

    for path in CONFIGS:
        if path.name == "smollm2-135m.yaml":
            continue
        own = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert "base" in own, path.name
        base = read_config_file(path.parent / own["base"])
        repeated = [k for k, v in own.items() if k != "base" and base.get(k) == v]
        assert not repeated, f"{path.name} repeats {repeated}"
