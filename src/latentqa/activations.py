"""Read and write the residual stream after any transformer block.

``capture`` runs the model only as far as the deepest block asked for (a hook stops the
forward pass there) and returns the residual stream after each requested block, the same
numbers transformers reports as ``hidden_states[k + 1]``. ``recording`` is the same hooks
around any forward pass, for callers that need the rest of the model's output too.

``inject`` puts given vectors into the residual stream after block j at given positions,
either replacing the hidden state (LatentQA) or adding the vector rescaled to the hidden
state's norm (Activation Oracles). It acts on the prompt pass only, so it composes with
generation and the KV cache. A decoder that standardises what it is given (``read_norm``)
passes its ``ReadNorm``, applied to each row's vectors before they are written.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch

from .arch import find_blocks, model_info

INJECTION_MODES = ("replace", "norm_add")


class _StopForward(Exception):
    pass


def _hidden(output):
    # Blocks return a tensor (transformers >= 5) or a tuple whose first item is the hidden state.
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, so a left-padded row sees the positions it would alone."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


@contextlib.contextmanager
def recording(model: torch.nn.Module, layers: Sequence[int], *, stop: bool = False):
    """Record the residual stream after each block in ``layers`` during the forward passes run
    inside: yields ``{k: [batch, seq, hidden]}``, filled as the blocks run, gradients kept.

    With ``stop`` the pass ends after the deepest of them (``capture``); without, the model
    runs on, so one pass gives both the activations and whatever the full model computes.
    """
    info = model_info(model)
    wanted = sorted({info.check_layer(k) for k in layers})
    if not wanted:
        raise ValueError("capture needs at least one layer")
    _, blocks = find_blocks(model)
    stop_at = wanted[-1] if stop else None
    found: dict[int, torch.Tensor] = {}

    def make_hook(k):
        def hook(_module, _args, output):
            found[k] = _hidden(output)
            if k == stop_at:
                raise _StopForward

        return hook

    handles = [blocks[k].register_forward_hook(make_hook(k)) for k in wanted]
    try:
        yield found
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def capture(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layers: int | Sequence[int] = 0,
    *,
    position_ids: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Residual stream after each block in ``layers``: ``{k: [batch, seq, hidden]}``.

    No compute is spent after the deepest requested block. Gradients flow if enabled, so a
    trainable target (steering) can be optimised through its captured activations.
    """
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    with recording(model, wanted, stop=True) as found:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
              use_cache=False)
    return dict(sorted(found.items()))


def gather(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Split ``hidden[b, t]`` where ``mask[b, t]`` into one ``[n_b, hidden]`` tensor per row."""
    return [hidden[b][mask[b].to(hidden.device)] for b in range(hidden.shape[0])]


def _norm_add(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return h + h.norm(dim=-1, keepdim=True) * v


class Injection:
    """A forward hook that writes ``vectors`` into the rows/positions where ``mask`` is True.

    ``vectors`` is ``[mask.sum(), hidden]`` in row-major order of the mask, or a list with one
    ``[n_b, hidden]`` tensor per row. Only forward calls whose sequence length equals the mask's
    (the prompt pass) are touched; with ``once=True`` only the first such call is, which keeps
    one-token prompts from being re-injected during decoding.
    """

    def __init__(self, mask: torch.Tensor, vectors, mode: str = "replace", once: bool = False,
                 norm=None):
        if mode not in INJECTION_MODES:
            raise ValueError(f"unknown injection mode {mode!r}; choose one of {INJECTION_MODES}")
        if norm is not None:  # per row: a row's vectors may be several layers' in turn
            if not isinstance(vectors, (list, tuple)):
                if norm.layers > 1:
                    raise ValueError("a read norm over several layers needs one tensor per row")
                vectors = [vectors]
            vectors = [norm(v) for v in vectors]
        if isinstance(vectors, (list, tuple)):
            vectors = torch.cat(list(vectors), dim=0) if vectors else None
        n = int(mask.sum())
        if vectors is None or vectors.shape[0] != n:
            got = 0 if vectors is None else vectors.shape[0]
            raise ValueError(f"injection mask selects {n} positions but {got} vectors were given")
        self.mask, self.vectors, self.mode, self.once = mask.bool(), vectors, mode, once
        self.calls = 0

    def __call__(self, _module, _args, output):
        h = _hidden(output)
        if h.shape[:2] != self.mask.shape or (self.once and self.calls > 0):
            return output
        self.calls += 1
        mask = self.mask.to(h.device)
        v = self.vectors.to(device=h.device, dtype=h.dtype)
        new_rows = v if self.mode == "replace" else _norm_add(h[mask], v)
        # index_put on a copy keeps the graph to ``vectors`` (steering trains through it).
        out = h.clone()
        out[mask] = new_rows
        return _with_hidden(output, out)


@contextlib.contextmanager
def inject(
    model: torch.nn.Module,
    layer: int,
    mask: torch.Tensor,
    vectors,
    mode: str = "replace",
    once: bool = False,
    norm=None,
) -> Iterable[Injection]:
    """Within the block, forward passes of ``model`` get ``vectors`` written after ``layer``
    (each row's standardised by ``norm``, a ``read_norm.ReadNorm``, when one is given)."""
    info = model_info(model)
    layer = info.check_layer(layer, "write layer")
    _, blocks = find_blocks(model)
    injection = Injection(mask, vectors, mode, once, norm)
    if injection.vectors.shape[-1] != info.hidden_size:
        raise ValueError(
            f"injected vectors have size {injection.vectors.shape[-1]} but the model's hidden "
            f"size is {info.hidden_size}"
        )
    handle = blocks[layer].register_forward_hook(injection)
    try:
        yield injection
    finally:
        handle.remove()
