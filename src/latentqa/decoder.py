"""The decoder is the target plus a LoRA adapter: one copy of the base weights serves both.

With the adapter disabled the model *is* the frozen target (its activations are read that way);
with it enabled it is the decoder. peft does the bookkeeping.

Full fine-tuning is a peft adapter too (``add_full_finetune_adapter``): a trainable copy of
every block and the final norm beside the frozen originals, so the same switch gives the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .errors import MissingFileError, ReadingError
from .files import atomic_dir
from .read_norm import ReadNorm

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class DecoderError(ReadingError):
    """A decoder directory that cannot be used: missing, incomplete, corrupt, or unknown
    options. (``latentqa.reading.errors`` exports it with the other reading errors.)"""


def check_adapter_weights(adapter_dir: str | Path) -> Path:
    """The adapter's safetensors file, if its header reads whole (a truncated or overwritten
    file fails here, in a millisecond, instead of deep inside peft); else ``DecoderError``
    naming the file. Reads the header only, never the tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DecoderError(f"{path} is not a readable safetensors file ({reason}); it may be "
                           "truncated or corrupt: save or copy the adapter again") from None
    return path


def add_decoder_adapter(
    model: torch.nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    adapter_name: str = "default",
    init_lora_weights: bool = True,
):
    """Wrap ``model`` in a peft model with a fresh LoRA adapter; the base weights are shared."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        task_type="CAUSAL_LM", init_lora_weights=init_lora_weights,
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


def full_finetune_targets(model: torch.nn.Module) -> str:
    """A regex (peft ``target_modules``) naming every transformer block and the final norm."""
    from .arch import find_blocks

    blocks_path, _ = find_blocks(model)
    body = model.get_decoder()
    body_path = next(name for name, module in model.named_modules() if module is body)
    norms = [name for name, child in body.named_children()
             if "norm" in type(child).__name__.lower()]
    if len(norms) != 1:
        raise ValueError(f"could not find the final norm of {type(model).__name__}: norm-like "
                         f"children of its body: {norms or 'none'}")
    final_norm = f"{body_path}.{norms[0]}" if body_path else norms[0]
    return rf"{re.escape(blocks_path)}\.\d+|{re.escape(final_norm)}"


@contextlib.contextmanager
def _quiet_whole_block_warning():
    # peft warns that it cannot tell a block's in/out features; LN tuning never uses them
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        yield


def add_full_finetune_adapter(model: torch.nn.Module, *, adapter_name: str = "default"):
    """Wrap ``model`` in a peft model whose adapter is a trainable copy of every transformer
    block and of the final norm; the originals stay, frozen, as the target.

    peft's LN-tuning tuner does exactly this for whatever modules it targets (it was written
    for norms; here it targets whole blocks): adapter on runs the copy, ``disable_adapter``
    the original, and ``save_pretrained`` writes the copies. So ``as_target``, saving and
    ``load_decoder_adapter`` work unchanged. The price: the blocks are held twice. Embeddings
    and the lm_head (tied or not) are not copied: they stay frozen, shared by both.
    """
    from peft import LNTuningConfig, get_peft_model

    config = LNTuningConfig(target_modules=full_finetune_targets(model), task_type="CAUSAL_LM")
    with _quiet_whole_block_warning():
        return get_peft_model(model, config, adapter_name=adapter_name)


def load_decoder_adapter(model: torch.nn.Module, adapter_dir: str | Path, *,
                         adapter_name: str = "default", trainable: bool = False):
    """Attach a saved peft adapter (safetensors only) to ``model``."""
    from peft import PeftModel
    from safetensors import SafetensorError

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS).exists():
        raise MissingFileError(
            f"{adapter_dir} holds no {ADAPTER_WEIGHTS}; latentqa loads adapters only "
            "from safetensors"
        )
    weights = check_adapter_weights(adapter_dir)
    try:
        with _quiet_whole_block_warning():  # full fine-tuning adapters wrap whole blocks
            return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name,
                                             is_trainable=trainable)
    except SafetensorError as e:  # a header that reads but tensors that do not
        raise DecoderError(f"cannot read {weights}: {str(e).strip() or 'corrupt file'}") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DecoderError(f"{adapter_dir / 'adapter_config.json'} is not valid JSON: {e}") \
            from None


@contextlib.contextmanager
def as_target(model: torch.nn.Module):
    """Run ``model`` as the plain target: adapters off if it has any, unchanged otherwise."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield model
        return
    # peft re-enables adapters through set_adapter, which makes them trainable; keep the flags
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with disable():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _foldable_lora_layers(model) -> list | None:
    """The LoRA layers of the active adapter whose update is a plain ``scale * B @ A`` on a
    weight (what folding needs), or None if anything else is active (DoRA, other tuners) or
    the adapters are switched off (the caller wants the target: nothing to fold)."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    layers = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            active = [a for a in module.active_adapters if a in module.lora_A]
            weight = getattr(module.get_base_layer(), "weight", None)
            # a plain floating tensor: not a quantized one (bitsandbytes' are subclasses)
            plain = (type(weight) in (torch.Tensor, torch.nn.Parameter)
                     and weight.dtype.is_floating_point and weight.device.type != "meta")
            if (module.merged or module.disable_adapters or len(active) != 1
                    or module.use_dora.get(active[0]) or not plain):
                return None
            layers.append((module, active[0]))
        elif isinstance(module, BaseTunerLayer):
            return None
    return layers or None


def _spare_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@contextlib.contextmanager
def folded_adapter(model: torch.nn.Module, *, max_share: float = 0.25):
    """Run the decoder (adapter on) with its LoRA update folded into the weights it modifies.

    An unfolded LoRA layer runs three matrix products and two element-wise passes where a
    plain layer runs one product: 10-30% more time in a forward pass on a 2-core CPU, and
    three times the kernel launches per decoding step. Folding computes ``W + scale * B @ A``
    once per layer into new tensors and runs the base path; the original weight tensors are
    put back untouched on exit (no in-place add and subtract, so the target stays bit-exact).
    The price is a second copy of the adapted weights while the block runs, so it folds only
    when that copy fits in ``max_share`` of the memory free on the model's device; otherwise,
    and for anything but a plain LoRA adapter, the block runs the adapter as it is. Inference
    only: the folded weights carry no gradient to the adapter.
    """
    layers = _foldable_lora_layers(model)
    if layers is None or torch.is_grad_enabled():
        yield model
        return
    weights = [m.get_base_layer().weight for m, _ in layers]
    if len({w.device for w in weights}) != 1:  # spread over devices: not worth the bookkeeping
        yield model
        return
    spare = _spare_bytes(weights[0].device)
    need = sum(w.numel() * w.element_size() for w in weights)
    if spare is None or need > max_share * spare:
        yield model
        return
    originals = []
    try:
        for (module, name), weight in zip(layers, weights):
            base = module.get_base_layer()
            a, b = module.lora_A[name].weight, module.lora_B[name].weight
            if module.fan_in_fan_out or a.dtype != weight.dtype:
                folded = weight + module.get_delta_weight(name).to(weight.dtype)
            else:  # one pass: W + scale * B @ A
                folded = torch.addmm(weight, b, a, alpha=module.scaling[name])
            originals.append((base, weight))
            base.weight = torch.nn.Parameter(folded, requires_grad=False)
        with as_target(model):  # adapter layers off: the base path, now with folded weights
            yield model
    finally:
        for base, weight in originals:
            base.weight = weight


SIDECAR = "latentqa_decoder.json"
SIDECAR_VERSION = 1
# a decoder that reads several layers together says so with a newer format, so that a reader
# which knows the field can refuse a format it does not know instead of reading one layer
READ_TOGETHER_VERSION = 2
# and one that standardises what it reads (``read_norm``) or reads an instruction's effect
# amplified (``instruction_gain``) likewise: an older reader would write raw vectors into it
READ_NORM_VERSION = 3


@dataclass
class DecoderSpec:
    """Everything needed to use a saved decoder adapter, stored beside it as JSON."""

    target: str  # the target model spec it was trained on
    model_type: str
    num_blocks: int
    hidden_size: int
    read_layer: int  # the default layer to read at
    write_layer: int
    injection: str = "replace"
    layout: str = "paper"
    placeholder: str = "?"
    read_layers: list[int] = field(default_factory=list)  # all layers seen in training
    supervise: str = "reply_and_answer"
    extra: dict = field(default_factory=dict)  # training summary, data hashes, ...
    format_version: int = SIDECAR_VERSION
    # true: the decoder reads every layer of ``read_layers`` at once, in that order, each
    # layer's vectors in its own labelled group of placeholders (``data/layouts.py``);
    # ``read_layer`` is then only what is shown as "the" read layer (the middle one)
    read_together: bool = False
    # the statistics the decoder standardises its vectors with (``read_norm.ReadNorm``'s
    # ``to_dict``), fitted when its training started; None: it takes raw vectors
    read_norm: dict | None = None
    # k > 0: the decoder reads an unread instruction's effect amplified, each read vector v as
    # v + k (v - b), b the same token's without the instruction (``selection.render_baseline``)
    instruction_gain: float = 0.0

    def __post_init__(self):
        if self.read_together and self.format_version < READ_TOGETHER_VERSION:
            self.format_version = READ_TOGETHER_VERSION
        if (self.read_norm is not None or self.instruction_gain) and \
                self.format_version < READ_NORM_VERSION:
            self.format_version = READ_NORM_VERSION

    @property
    def norm(self):
        """The ``ReadNorm`` this decoder applies to what it is given, or None."""
        return ReadNorm.from_dict(self.read_norm)

    @property
    def read_at(self) -> int | tuple[int, ...]:
        """What the decoder reads by default: its read layer, or the tuple of layers it reads
        together."""
        return tuple(self.read_layers) if self.read_together else self.read_layer

    @classmethod
    def read(cls, directory: str | Path) -> "DecoderSpec":
        path = Path(directory) / SIDECAR
        if not path.exists():
            raise MissingFileError(
                f"{directory} is not a latentqa decoder: it has no {SIDECAR} (the sidecar "
                "written by `latentqa train` that says which target, layers and probe to use)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
            known = {f.name for f in fields(cls)}
            spec = cls(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise DecoderError(f"{path} is not a valid decoder sidecar: {e}") from None
        if not isinstance(spec.format_version, int) or spec.format_version > \
                READ_NORM_VERSION:
            raise DecoderError(f"{path} has format_version {spec.format_version!r}; this "
                               f"latentqa reads versions up to {READ_NORM_VERSION}: "
                               "upgrade latentqa")
        try:
            norm = spec.norm
        except ValueError as e:
            raise DecoderError(f"{path}: {e}") from None
        if norm is not None and (norm.mean.shape[-1] != spec.hidden_size or norm.layers != (
                len(spec.read_layers) if spec.read_together else 1)):
            raise DecoderError(f"{path}: read_norm is fitted for {norm.layers} layer(s) of size "
                               f"{norm.mean.shape[-1]}, but the decoder reads "
                               f"{len(spec.read_layers) if spec.read_together else 1} of size "
                               f"{spec.hidden_size}")
        if spec.read_together and (
                not isinstance(spec.read_layers, list) or not spec.read_layers
                or not all(isinstance(k, int) and not isinstance(k, bool)
                           for k in spec.read_layers)):
            raise DecoderError(f"{path}: read_together needs read_layers, the layers read "
                               f"together (a list of integers), got {spec.read_layers!r}")
        if (Path(directory) / ADAPTER_WEIGHTS).exists():  # the directory's weights read too
            check_adapter_weights(directory)
        return spec


def save_decoder(model, directory: str | Path, spec: DecoderSpec, *,
                 dtype: torch.dtype | None = None) -> Path:
    """Save the adapter (peft format, safetensors) and its sidecar atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if dtype is not None:  # e.g. ship bf16: half the size, no loss that matters for LoRA
            from safetensors.torch import load_file, save_file

            f = tmp / "adapter_model.safetensors"
            save_file({k: v.to(dtype).contiguous() for k, v in load_file(str(f)).items()},
                      str(f), metadata={"format": "pt"})
        (tmp / SIDECAR).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    return directory
