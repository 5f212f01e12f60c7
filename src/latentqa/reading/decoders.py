"""Find a decoder and check it fits the target, before any weights are loaded.

Three kinds of decoder directory:
  * the shipped default, ``latentqa/decoders/smollm2-135m`` (used when none is given);
  * any directory written by ``latentqa train``: a peft adapter plus ``latentqa_decoder.json``
    (the sidecar says which target, layers, injection and probe layout it was trained with);
  * a bare peft adapter (no sidecar), such as the LatentQA paper's released decoder: its probe
    layout and layers come from options or a preset (``latentqa-paper``: paper layout, read
    after block 15, write after block 0, replace injection, Llama-3-8B-Instruct).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.layouts import LAYOUTS
from ..decoder import SIDECAR, DecoderSpec
from .errors import DecoderError, DecoderMismatchError

SHIPPED_DECODER = Path(__file__).resolve().parent.parent / "decoders" / "smollm2-135m"

PRESETS = {
    "latentqa-paper": dict(target="meta-llama/Meta-Llama-3-8B-Instruct", layout="paper",
                           read_layer=15, write_layer=0, injection="replace"),
}


@dataclass
class ResolvedDecoder:
    path: Path
    spec: DecoderSpec  # with every option applied; sizes are 0 where unknown (no sidecar)
    has_sidecar: bool


def resolve_decoder(decoder=None, *, preset: str | None = None, layout: str | None = None,
                    read_layer: int | None = None, write_layer: int | None = None,
                    injection: str | None = None) -> ResolvedDecoder:
    """The decoder directory and its spec, with explicit options overriding sidecar or preset."""
    path = Path(decoder).expanduser() if decoder is not None else SHIPPED_DECODER
    if not path.is_dir():
        if decoder is None:
            raise DecoderError(f"the shipped decoder is not installed (expected {path}); pass "
                               "a decoder directory written by `latentqa train` (--decoder DIR)")
        raise DecoderError(f"decoder directory {path} does not exist")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (path / name).is_file():
            raise DecoderError(f"{path} is not a decoder: it has no {name} (a peft adapter "
                               "saved with safetensors)")
    if preset is not None and preset not in PRESETS:
        raise DecoderError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    options = dict(PRESETS.get(preset, {}))
    options.update({k: v for k, v in dict(layout=layout, read_layer=read_layer,
                                          write_layer=write_layer, injection=injection).items()
                    if v is not None})
    has_sidecar = (path / SIDECAR).is_file()
    if has_sidecar:
        try:
            spec = DecoderSpec.read(path)
        except ValueError as e:
            raise DecoderError(str(e)) from None
        options.pop("target", None)  # a preset never overrides what the decoder says it is
        if spec.read_together and read_layer is not None:
            raise DecoderError(
                f"the decoder at {path} reads layers {spec.read_layers} together (one "
                "placeholder group each); a single read layer cannot stand in for them: leave "
                "--layer / read_layer unset")
    else:
        missing = [k for k in ("layout", "read_layer", "write_layer") if k not in options]
        if missing:
            raise DecoderError(
                f"{path} has no {SIDECAR}, so say how it was trained: --layout, --read-layer "
                f"and --write-layer (missing: {', '.join(missing)}), or --preset "
                f"({', '.join(PRESETS)})")
        target = options.pop("target", None) or _adapter_base(path)
        spec = DecoderSpec(target=target or "", model_type="", num_blocks=0, hidden_size=0,
                           read_layer=options["read_layer"], write_layer=options["write_layer"])
    spec = replace(spec, **options)
    if spec.layout not in LAYOUTS:
        raise DecoderError(f"unknown probe layout {spec.layout!r}; known: {', '.join(LAYOUTS)}")
    spec = replace(spec, placeholder=LAYOUTS[spec.layout].placeholder)
    return ResolvedDecoder(path, spec, has_sidecar)


def _adapter_base(path: Path) -> str | None:
    try:
        return json.loads((path / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
    except (OSError, json.JSONDecodeError):
        return None


def adapter_shape(path: Path) -> tuple[int | None, int | None]:
    """(blocks the adapter touches, hidden size its attention LoRA reads), from tensor shapes
    in the safetensors header alone; None where the adapter does not tell."""
    from safetensors import safe_open

    blocks, hidden = None, None
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            m = re.search(r"\.layers\.(\d+)\.", key)
            if m:
                blocks = max(blocks or 0, int(m.group(1)) + 1)
            if hidden is None and re.search(r"\.q_proj\.lora_A\.", key):
                hidden = f.get_slice(key).get_shape()[1]
    return blocks, hidden


def model_name(spec: str) -> str:
    """A comparable model name: a built-in spec, a folder's name, a hub id's name part."""
    return Path(str(spec).rstrip("/")).name.lower()


def check_compatible(resolved: ResolvedDecoder, target: str, info, *,
                     check_name: bool = True) -> None:
    """Refuse a decoder trained for another target; ``info`` has the target's sizes."""
    spec, problems = resolved.spec, []
    if resolved.has_sidecar:
        if spec.hidden_size != info.hidden_size:
            problems.append(f"hidden size {spec.hidden_size} vs {info.hidden_size}")
        if spec.num_blocks != info.num_blocks:
            problems.append(f"{spec.num_blocks} blocks vs {info.num_blocks}")
        if spec.model_type and spec.model_type != info.model_type:
            problems.append(f"model type {spec.model_type} vs {info.model_type}")
        if check_name and spec.target and model_name(spec.target) != model_name(target):
            problems.append(f"model {spec.target!r} vs {target!r}")
    blocks, hidden = adapter_shape(resolved.path)
    if hidden is not None and hidden != info.hidden_size and not problems:
        problems.append(f"adapter weights for hidden size {hidden} vs {info.hidden_size}")
    if blocks is not None and blocks > info.num_blocks and not problems:
        problems.append(f"adapter weights for {blocks}+ blocks vs {info.num_blocks}")
    if problems:
        raise DecoderMismatchError(
            f"the decoder at {resolved.path} was made for another target ({'; '.join(problems)}"
            f" — decoder vs target); use the target it was trained on"
            + (" (or --allow-other-target if only the name differs)"
               if len(problems) == 1 and problems[0].startswith("model ") else ""))
