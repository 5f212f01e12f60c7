"""The decoder's side of the pipeline: read the target, inject, then loss, scores or answers.

    target ids + read mask --read_activations--> vectors (adapter off: the frozen target)
    decoder ids + placeholder mask + vectors --inject--> labelled log-probs | generated answers

Log-probabilities are computed only at labelled positions (the lm_head over a 49k vocabulary
is a large share of a small model's compute), and gradients flow to the injected vectors, so
the same function trains the decoder, scores candidates, and steers the target.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .activations import capture, gather, inject, position_ids_from_mask
from .decoder import as_target

IGNORE_INDEX = -100


def read_activations(model, input_ids, attention_mask, read_mask, layer: int, *,
                     grad: bool = False) -> list[torch.Tensor]:
    """The target's residual stream after ``layer`` at the read positions, one [n_b, H] per row.

    The adapter (if any) is disabled, so a decoder built on the target reads the plain target.
    With ``grad=True`` the graph is kept (steering trains the target through it) and adapters
    stay on: then the trainable target is whatever adapter is active.
    """
    ctx = contextlib.nullcontext() if grad else as_target(model)
    with ctx, torch.set_grad_enabled(grad):
        hidden = capture(model, input_ids, attention_mask, layers=layer)[layer]
    return gather(hidden, read_mask)


def _body_and_head(model):
    """The model without its lm_head, and the head (works through peft wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def labelled_logprobs(model, input_ids, attention_mask, labels, *, placeholder_mask=None,
                      vectors=None, write_layer: int = 0, mode: str = "replace"):
    """Log-probability of each labelled token given everything before it.

    Returns ``(logp, positions)``: ``logp[i]`` is log p(labels[b, t] | ids[b, :t]) for the i-th
    labelled (b, t) in row-major order, listed in ``positions`` ([n, 2]).
    """
    body, head, config = _body_and_head(model)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX  # position t-1 predicts token t
    positions = keep.nonzero()
    injecting = vectors is not None
    ctx = (inject(model, write_layer, placeholder_mask, vectors, mode) if injecting
           else contextlib.nullcontext())
    with ctx:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask),
                      use_cache=False).last_hidden_state
    logits = head(hidden[:, :-1][keep]).float()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp = -F.cross_entropy(logits, targets[keep], reduction="none")
    return logp, positions


def decoder_loss_sum(model, batch: dict, vectors, *, write_layer: int, mode: str = "replace"):
    """Summed negative log-likelihood of the labelled tokens and their count (for exact
    averaging across micro-batches and ranks)."""
    logp, _ = labelled_logprobs(
        model, batch["decoder_input_ids"], batch["decoder_attention_mask"], batch["labels"],
        placeholder_mask=batch["placeholder_mask"], vectors=vectors, write_layer=write_layer,
        mode=mode)
    return -logp.sum(), logp.numel()


def per_row_logprob(logp: torch.Tensor, positions: torch.Tensor, batch_size: int):
    """Sum and count of labelled log-probs per row."""
    total = torch.zeros(batch_size, dtype=logp.dtype, device=logp.device)
    count = torch.zeros(batch_size, dtype=torch.long, device=logp.device)
    total.index_add_(0, positions[:, 0], logp)
    count.index_add_(0, positions[:, 0], torch.ones_like(positions[:, 0]))
    return total, count


@torch.no_grad()
def generate_answers(model, tokenizer, input_ids, attention_mask, placeholder_mask, vectors, *,
                     write_layer: int, mode: str = "replace", max_new_tokens: int = 48,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int | None = None) -> list[str]:
    """Generate from left-padded decoder prompts with ``vectors`` injected on the prompt pass.

    The KV cache is used; the injection acts only on the prompt pass.
    """
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                  else tokenizer.eos_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    ctx = (inject(model, write_layer, placeholder_mask, vectors, mode, once=True)
           if vectors is not None else contextlib.nullcontext())
    with ctx:
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    new = out[:, input_ids.shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
