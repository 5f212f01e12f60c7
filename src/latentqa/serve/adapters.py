"""Steering adapters for the target, loaded beside the decoder on the same weights.

A steering adapter is a peft adapter directory for the *target* model (adapter_config.json +
adapter_model.safetensors). It is loaded as a second named adapter of the Reader's peft model
(``model.load_adapter(path, adapter_name="steer_<n>")``), so the base weights stay one copy:

- plain target:   every adapter off (``as_target``), as the Reader reads activations;
- steered target: ``set_adapter("steer_<n>")`` for the generation, then the decoder's adapter
  is made active again, so reading is unchanged by what was loaded.

All methods touch the model, so they run on the worker thread.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from safetensors import SafetensorError

from ..decoder import DecoderError, as_target, check_adapter_weights
from .errors import ApiError


class Adapters:
    def __init__(self, model, *, max_adapters: int = 8):
        self.model = model
        self.max_adapters = max_adapters
        self.loaded: dict[str, str] = {}  # name -> directory
        self._count = 0

    def names(self) -> list[str]:
        return list(self.loaded)

    def check(self, name: str | None, param: str = "model") -> str | None:
        if name is not None and name not in self.loaded:
            known = ", ".join(self.loaded) or "none loaded"
            raise ApiError(404, f"no steering adapter named {name!r} ({known}); load one with "
                           "POST /v1/adapters", type="not_found", param=param)
        return name

    def load(self, path: str, name: str | None = None) -> dict:
        directory = Path(path).expanduser()
        try:
            complete = all((directory / f).is_file() for f in ("adapter_config.json",
                                                               "adapter_model.safetensors"))
        except (OSError, ValueError):  # a name too long, a NUL byte, no permission
            complete = False
        if not complete:
            raise ApiError(400, f"{path[:200]} is not a peft adapter directory: it needs "
                           "adapter_config.json and adapter_model.safetensors", param="path")
        if not hasattr(self.model, "load_adapter") or not hasattr(self.model, "peft_config"):
            raise ApiError(400, "this model has no peft adapters to add a steering adapter to")
        if len(self.loaded) >= self.max_adapters:
            raise ApiError(409, f"{len(self.loaded)} steering adapters are loaded already (the "
                           "most this server keeps); restart it to load others",
                           type="conflict")
        try:
            json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ApiError(400, f"{directory}/adapter_config.json is not readable JSON: {e}",
                           param="path") from None
        try:  # a truncated or corrupt weights file: refused here, not a 500 from peft
            check_adapter_weights(directory)
        except DecoderError as e:
            raise ApiError(400, str(e), param="path") from None
        if name is None:
            for known, where in self.loaded.items():  # the same directory: already loaded
                if where == str(directory):
                    return {"name": known, "path": where}
            self._count += 1
            name = f"steer_{self._count}"
            while name in self.model.peft_config:
                self._count += 1
                name = f"steer_{self._count}"
        elif name in self.model.peft_config:
            raise ApiError(409, f"an adapter named {name!r} is loaded already", type="conflict",
                           param="name")
        active = self.model.active_adapter
        try:
            self.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as e:
            # shapes, an unknown config, tensors that do not read
            self._forget(name)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ApiError(400, f"cannot load {directory} as an adapter of the target: "
                           f"{first}", param="path") from None
        finally:
            _activate(self.model, active)
        self.model.eval()
        self.loaded[name] = str(directory)
        return {"name": name, "path": str(directory)}

    def _forget(self, name: str) -> None:
        if name in getattr(self.model, "peft_config", {}):
            with contextlib.suppress(Exception):
                self.model.delete_adapter(name)

    @contextlib.contextmanager
    def using(self, name: str | None):
        """The plain target (``None``) or the target with one steering adapter."""
        if name is None:
            with as_target(self.model):
                yield self.model
            return
        self.check(name)
        active = self.model.active_adapter
        _activate(self.model, name)
        try:
            yield self.model
        finally:
            _activate(self.model, active)


def _activate(model, name: str) -> None:
    """Make ``name`` the active adapter without making it trainable (peft's default)."""
    try:
        model.set_adapter(name, inference_mode=True)
    except TypeError:  # older peft: no inference_mode
        model.set_adapter(name)
