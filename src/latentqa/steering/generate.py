"""Replies of the target (plain, or with a steering adapter on) to user prompts, batched."""

from __future__ import annotations

import torch

from ..chat import pad_rendered, render_dialog
from ..decoder import as_target
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
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    rendered = []
    for p in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": p}]
        rendered.append(render_dialog(tokenizer, messages, add_generation_prompt=True).input_ids)
    replies = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    with target_context(model, adapter):
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            ids, attn, _ = pad_rendered([rendered[i] for i in rows], pad, side="left")
            width = ids.shape[1]
            out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                 **kwargs)
            for j, i in enumerate(rows):
                replies[i] = tokenizer.decode(out[j, width:], skip_special_tokens=True).strip()
            if progress:
                progress(len(rows))
    return replies
