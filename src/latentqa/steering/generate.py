"""Replies of the target (plain, or with a steering adapter on) to user prompts, batched."""

from __future__ import annotations

import torch

from ..batching import pad_id
from ..chat import render_dialog
from ..decoder import as_target
from ..generation import generate_text
from .adapter import active


def target_context(model, adapter: str | None):
    """The target as a forward pass should see it: every adapter off, or only ``adapter``."""
    if adapter is None:
        return as_target(model)
    return active(model, adapter)


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: list[str], *, adapter: str | None = None,
                     system: str | None = None, max_new_tokens: int = 48,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int | None = 0, batch_size: int = 8, progress=None) -> list[str]:
    """One reply per prompt: greedy by default, sampled (seeded) with ``do_sample``."""
    rendered = []
    for p in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": p}]
        rendered.append(render_dialog(tokenizer, messages, add_generation_prompt=True).input_ids)
    with target_context(model, adapter):
        return generate_text(model, tokenizer, rendered, pad_id=pad_id(tokenizer),
                             max_new_tokens=max_new_tokens, batch_size=batch_size,
                             temperature=temperature if do_sample else 0.0, top_p=top_p,
                             seed=seed, progress=progress)
