"""Decoders for the reading tests: the development decoder, or an untrained one.

``LATENTQA_DEV_DECODER`` (default: the shipped decoder) is used when it exists; otherwise an
untrained LoRA adapter is saved with a sidecar, which exercises every code path but answers like
the plain model. Tests that need a *good* decoder use the shipped one and skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SHIPPED = Path(__file__).resolve().parent.parent / "src" / "latentqa" / "decoders" / "smollm2-135m"
DEV_DECODER = Path(os.environ.get("LATENTQA_DEV_DECODER", str(_SHIPPED)))


def dev_decoder_dir(tmp_path_factory) -> Path:
    if (DEV_DECODER / "latentqa_decoder.json").is_file():
        return DEV_DECODER
    from latentqa.arch import model_info
    from latentqa.decoder import DecoderSpec, add_decoder_adapter, save_decoder
    from latentqa.models import load_model

    model = load_model("smollm2-135m").model
    info = model_info(model)
    spec = DecoderSpec(target="smollm2-135m", model_type=info.model_type,
                       num_blocks=info.num_blocks, hidden_size=info.hidden_size,
                       read_layer=14, write_layer=0, read_layers=[14])
    out = tmp_path_factory.mktemp("dev") / "decoder"
    return save_decoder(add_decoder_adapter(model), out, spec)


def shipped_decoder() -> Path:
    """The decoder shipped in the package (committed): its absence is a broken checkout."""
    from latentqa.reading import SHIPPED_DECODER

    assert (SHIPPED_DECODER / "adapter_model.safetensors").is_file(), \
        f"the shipped decoder is missing from {SHIPPED_DECODER}"
    return SHIPPED_DECODER


def reading_main(argv):
    """The ``latentqa`` command's entry point (reading commands included)."""
    from latentqa import cli

    return cli.main(argv)
