"""Shared fixtures: the real embedded SmolLM2 (loaded once) and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data (the third-party data, never committed here). Missing, the
    test is skipped, or fails when ``CI`` is set: CI always has ../shared beside the clone."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = (f"needs {path}: the third-party data in ../shared/data beside the checkout "
                   "(see ../shared/data/SOURCES.md)")
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run with ../shared beside the clone", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    """``shared("latentqa", "qa.json")``: a path under ../shared/data (see ``shared_path``)."""
    return shared_path


@pytest.fixture(scope="session")
def smollm2():
    from latentqa.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2):
    return smollm2.tokenizer


def tiny_config(arch: str):
    """A 4-block, 32-wide random model config for each architecture family we promise."""
    import transformers as T

    common = dict(num_hidden_layers=4, num_attention_heads=4, vocab_size=128)
    llama_like = dict(common, hidden_size=32, intermediate_size=64, num_key_value_heads=2)
    return {
        "llama": lambda: T.LlamaConfig(**llama_like),
        "qwen2": lambda: T.Qwen2Config(**llama_like),
        "mistral": lambda: T.MistralConfig(**llama_like),
        "gemma2": lambda: T.Gemma2Config(**llama_like, head_dim=8),
        "gemma3": lambda: T.Gemma3TextConfig(**llama_like, head_dim=8),
        "phi3": lambda: T.Phi3Config(**llama_like, pad_token_id=0),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=4, n_head=4, vocab_size=128,
                                     bos_token_id=0, eos_token_id=0),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common, hidden_size=32, intermediate_size=64,
                                            bos_token_id=0, eos_token_id=0),
    }[arch]()


TINY_ARCHS = ["llama", "qwen2", "mistral", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox"]


def tiny_model(arch: str, seed: int = 0):
    from latentqa.models import build_from_config

    torch.manual_seed(seed)
    return build_from_config(tiny_config(arch)).eval()


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory, smol_tokenizer):
    """A 4-block random llama with SmolLM2's tokenizer and chat template, as a local folder."""
    from latentqa.models import build_from_config

    folder = tmp_path_factory.mktemp("tiny-target")
    config = tiny_config("llama")
    config.vocab_size = len(smol_tokenizer)
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    build_from_config(config).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_decoder(tiny_target, tmp_path_factory):
    """A decoder for the tiny target, trained for 2 steps on the hand-written fixture data."""
    import json

    from latentqa.cli import main

    fixture = str(Path(__file__).parent / "fixtures" / "data" / "good")
    out = tmp_path_factory.mktemp("tiny-decoder-run")
    assert main(["train", f"data={json.dumps([fixture])}", f"model={tiny_target}",
                 f"out_dir={out}", "read_layers=[2]", "max_steps=2", "batch_size=4",
                 "held_out=0", f"eval_data={json.dumps([fixture])}", "held_out_hygiene=false", "precision=fp32",
                 "lora_r=4", "eval_every=2", "save_every=2"]) == 0
    return out / "decoder"
