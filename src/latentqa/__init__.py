"""latentqa: ask a language model's activations questions in plain English.

LatentQA / Latent Interpretation Tuning (Pan, Chen, Steinhardt 2024): a decoder (the target
plus a LoRA adapter) reads the target's residual-stream activations, injected into its own
forward pass, and answers questions about them.
"""

__version__ = "0.1.0"

from .activations import INJECTION_MODES, capture, gather, inject, position_ids_from_mask
from .arch import LayerError, ModelInfo, find_blocks, model_info
from .chat import (
    SCAFFOLD,
    ChatTemplateError,
    DialogTooLongError,
    RenderedDialog,
    render_dialog,
)
from .decoder import add_decoder_adapter, as_target, folded_adapter, load_decoder_adapter
from .models import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model
from .reading import Reader, load

__all__ = [
    "__version__",
    "INJECTION_MODES", "capture", "gather", "inject", "position_ids_from_mask",
    "LayerError", "ModelInfo", "find_blocks", "model_info",
    "SCAFFOLD", "ChatTemplateError", "DialogTooLongError", "RenderedDialog", "render_dialog",
    "add_decoder_adapter", "as_target", "folded_adapter", "load_decoder_adapter",
    "DEFAULT_MODEL", "LoadedModel", "ModelLoadError", "load_model",
    "Reader", "load",
]
