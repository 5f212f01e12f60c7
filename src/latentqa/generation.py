"""Generating from the model: the target's replies and the decoder's answers.

``generate_batch`` runs one left-padded batch through ``model.generate`` (greedy, or sampled
and seeded); ``generate`` renders nothing itself: it takes token rows, batches them by length
and returns each row's new tokens, cut at the end of its turn. Reading, evaluation, steering,
the server and data generation all generate through these two.
"""

from __future__ import annotations

import torch

from .batching import attention_mask, length_batches, pad


def end_ids(model, tokenizer) -> set[int]:
    """Token ids that end a turn: the model's generation config's and the tokenizer's eos."""
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(found if isinstance(found, (list, tuple)) else [found])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


@torch.no_grad()
def generate_batch(model, input_ids, attention, *, pad_id: int, max_new_tokens: int,
                   temperature: float = 0.0, top_p: float = 1.0,
                   seed: int | None = None) -> torch.Tensor:
    """New tokens for a left-padded batch ``[rows, new]``; greedy when ``temperature`` is 0."""
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, do_sample=False)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)
    out = model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
    return out[:, input_ids.shape[1]:]


def cut_at_end(tokens, ends: set[int]) -> tuple[list[int], bool]:
    """A row's tokens before the first end-of-turn id, and whether one was found."""
    tokens = list(map(int, tokens))
    stop = next((k for k, t in enumerate(tokens) if t in ends), None)
    return (tokens, False) if stop is None else (tokens[:stop], True)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, pad_id: int, max_new_tokens: int,
             batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, progress=None) -> list[tuple[list[int], bool]]:
    """Each prompt's new tokens, cut at the end of its turn, and whether the turn ended.

    Prompts are batched by length (longest first) and left-padded. Sampling (``temperature``
    above 0) is seeded once, before the first batch.
    """
    device = next(model.parameters()).device
    ends = end_ids(model, tokenizer)
    out: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    first = True
    for rows in length_batches([len(p) for p in prompts], batch_size):
        chunk = [prompts[r] for r in rows]
        ids = pad([torch.as_tensor(p, dtype=torch.long) for p in chunk], pad_id, side="left")
        new = generate_batch(model, ids.to(device), attention_mask(chunk, side="left").to(device),
                             pad_id=pad_id, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p,
                             seed=seed if first else None)
        first = False
        for r, row in zip(rows, new.tolist()):
            out[r] = cut_at_end(row, ends)
        if progress:
            progress(len(rows))
    return out


def generate_text(model, tokenizer, prompts: list[list[int]], **kwargs) -> list[str]:
    """``generate``, decoded: each prompt's reply as text, special tokens dropped."""
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip()
            for tokens, _ended in generate(model, tokenizer, prompts, **kwargs)]
