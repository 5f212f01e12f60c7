"""Find a decoder-only model's transformer blocks and sizes without per-architecture tables.

Every causal LM in transformers keeps its blocks in one ``nn.ModuleList`` whose length is the
config's number of hidden layers (``model.layers``, ``transformer.h``, ``gpt_neox.layers``...);
we look for that list instead of naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import LatentQAError


class LayerError(LatentQAError, ValueError):
    """A layer index outside the model's blocks."""


def _text_config(config):
    # Multimodal configs (gemma3, llava...) keep the language model's numbers in a sub-config.
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _first_int(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    model_type: str
    num_blocks: int
    hidden_size: int
    max_positions: int | None
    blocks_path: str

    def check_layer(self, layer: int, name: str = "layer") -> int:
        """Return ``layer`` if it names a block (negative counts from the end), else raise."""
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise LayerError(f"{name} must be an integer, got {layer!r}")
        if not -self.num_blocks <= layer < self.num_blocks:
            raise LayerError(
                f"{name} {layer} is out of range: this {self.model_type} model has "
                f"{self.num_blocks} blocks, so valid values are 0..{self.num_blocks - 1} "
                f"(the output of block k; negative values count from the end)"
            )
        return layer % self.num_blocks


def find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList holding the model's transformer blocks, and its dotted path."""
    n = _first_int(_text_config(model.config), "num_hidden_layers", "n_layer", "num_layers")
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n)
    ]
    if not candidates:
        raise ValueError(
            f"could not find the transformer blocks of {type(model).__name__}: no ModuleList of "
            f"length {n} (the config's number of layers)"
        )
    # Nested lists (e.g. per-block expert lists) can share the length: the outermost one wins.
    name, mod = min(candidates, key=lambda c: c[0].count("."))
    return name, mod


def config_info(config) -> ModelInfo:
    """The sizes ``model_info`` reports, from a config alone (no weights loaded)."""
    text = _text_config(config)
    return ModelInfo(
        architecture=type(config).__name__,
        model_type=getattr(text, "model_type", "unknown"),
        num_blocks=_first_int(text, "num_hidden_layers", "n_layer", "num_layers") or 0,
        hidden_size=_first_int(text, "hidden_size", "n_embd", "d_model") or 0,
        max_positions=_first_int(text, "max_position_embeddings", "n_positions", "n_ctx",
                                 "seq_length"),
        blocks_path="",
    )


def model_info(model: torch.nn.Module) -> ModelInfo:
    config = _text_config(model.config)
    path, blocks = find_blocks(model)
    hidden = _first_int(config, "hidden_size", "n_embd", "d_model")
    if hidden is None:
        hidden = model.get_input_embeddings().weight.shape[1]
    return ModelInfo(
        architecture=type(model).__name__,
        model_type=getattr(config, "model_type", "unknown"),
        num_blocks=len(blocks),
        hidden_size=hidden,
        max_positions=_first_int(config, "max_position_embeddings", "n_positions", "n_ctx",
                                 "seq_length"),
        blocks_path=path,
    )
