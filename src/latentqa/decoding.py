"""The decoder's side of the pipeline: read the target, inject, then loss, scores or answers.

    target ids + read mask --read_activations--> vectors (adapter off: the frozen target)
    decoder ids + placeholder mask + vectors --inject--> labelled log-probs | generated answers

Log-probabilities are computed only at labelled positions (the lm_head over a 49k vocabulary
is a large share of a small model's compute), and gradients flow to the injected vectors, so
the same function trains the decoder, scores candidates, and steers the target.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .activations import capture, gather, inject, position_ids_from_mask
from .data.probe import Probe, pad_probes
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


def body_and_head(model):
    """The model without its lm_head, and the head (works through peft wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def labelled_logprobs(model, input_ids, attention_mask, labels, *, placeholder_mask=None,
                      vectors=None, write_layer: int = 0, mode: str = "replace"):
    """Log-probability of each labelled token given everything before it.

    Returns ``(logp, positions)``: ``logp[i]`` is log p(labels[b, t] | ids[b, :t]) for the i-th
    labelled (b, t) in row-major order, listed in ``positions`` ([n, 2]).
    """
    body, head, config = body_and_head(model)
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
    return _target_logprobs(head, config, hidden[:, :-1][keep], targets[keep]), positions


def _logits(head, config, hidden):
    logits = head(hidden).float()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _target_logprobs(head, config, hidden, targets):
    return -F.cross_entropy(_logits(head, config, hidden), targets, reduction="none")


def next_token_logprobs(model, input_ids, attention_mask, positions) -> torch.Tensor:
    """Log-softmax of the next-token distribution at the ``positions`` (a bool [batch, seq]
    mask), ``[n, vocab]`` in row-major order; the lm_head runs only there."""
    body, head, config = body_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask),
                  use_cache=False).last_hidden_state
    return _logits(head, config, hidden[positions]).log_softmax(-1)


@dataclass
class Group:
    """Probes that share everything before their answers (one question, several candidate
    answers) and the vectors injected into their placeholders (None: nothing injected)."""

    probes: list  # of data.probe.Probe
    vectors: torch.Tensor | None = None


def _shared_length(group: Group) -> int:
    """How many leading tokens the group's probes share and no labelled token needs: the
    prefix to run once. 0 when sharing is impossible (placeholders after it)."""
    ids = [p.input_ids for p in group.probes]
    width = min(len(x) for x in ids)
    same = torch.stack([x[:width] for x in ids]).eq(ids[0][:width]).all(0)
    common = int(same.long().cumprod(0).sum())
    first_label = min(int((p.labels != IGNORE_INDEX).nonzero()[0, 0]) if
                      (p.labels != IGNORE_INDEX).any() else len(p.labels) for p in group.probes)
    n = min(common, first_label - 1)  # token first_label is predicted at first_label - 1
    if n < 1 or any(p.placeholder_mask[n:].any() for p in group.probes):
        return 0
    return n


def grouped_logprobs(model, groups: list[Group], *, pad_id: int, write_layer: int = 0,
                     mode: str = "replace", batch_size: int = 16) -> list[list[torch.Tensor]]:
    """Labelled-token log-probs of every probe of every group: ``out[g][k]`` for probe k of
    group g, the same numbers ``labelled_logprobs`` gives.

    The shared prefix of a group (the placeholders and the question) runs once with the
    injection; its KV cache is copied to each candidate, and only the candidates' own tokens
    run again. Scoring 5 candidates this way costs about a third of scoring them one by one.
    """
    body, head, config = body_and_head(model)
    out: list[list[torch.Tensor]] = [[None] * len(g.probes) for g in groups]
    shared = [_shared_length(g) for g in groups]
    window = getattr(config, "sliding_window", None)
    if window:  # a sliding-window cache drops what the candidates still attend to
        shared = [n if max(len(p.input_ids) for p in g.probes) <= window else 0
                  for n, g in zip(shared, groups)]
    alone = [g for g, n in enumerate(shared) if n == 0]
    for g in alone:
        probes = groups[g].probes
        ids, attn, ph, labels = pad_probes(probes, pad_id, "right")
        vectors = groups[g].vectors
        vecs = None if vectors is None else [vectors] * len(probes)
        logp, pos = labelled_logprobs(model, ids, attn, labels,
                                      placeholder_mask=ph if vecs else None, vectors=vecs,
                                      write_layer=write_layer, mode=mode)
        out[g] = [logp[pos[:, 0] == k] for k in range(len(probes))]
    order = sorted((g for g, n in enumerate(shared) if n), key=lambda g: shared[g])
    chunk: list[int] = []
    for g in order + [None]:
        if g is not None and (not chunk or sum(len(groups[c].probes) for c in chunk)
                              + len(groups[g].probes) <= batch_size):
            chunk.append(g)
            continue
        if chunk:
            _score_chunk(body, head, config, model, groups, shared, chunk, out, pad_id,
                         write_layer, mode)
        chunk = [g] if g is not None else []
    return out


def _cache_kwarg(body) -> str:
    # transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40)
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _score_chunk(body, head, config, model, groups, shared, chunk, out, pad_id, write_layer,
                 mode):
    """One prefix pass over ``chunk``'s groups (left-padded), then one pass over all their
    candidates' suffixes (right-padded) on copies of the prefix cache."""
    # the prefixes, left-padded so every candidate continues right after its own prefix
    prefixes = [Probe(*(t[:shared[g]] for t in (groups[g].probes[0].input_ids,
                                                groups[g].probes[0].placeholder_mask,
                                                groups[g].probes[0].labels))) for g in chunk]
    ids, attn, ph, _ = pad_probes(prefixes, pad_id, "left")
    vectors = [groups[g].vectors for g in chunk if groups[g].vectors is not None]
    for i, g in enumerate(chunk):
        if groups[g].vectors is None:
            ph[i] = False
    ctx = (inject(model, write_layer, ph, vectors, mode) if vectors
           else contextlib.nullcontext())
    with ctx:
        first = body(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                     use_cache=True)
    past = first.cache if getattr(first, "cache", None) is not None else first.past_key_values
    rows = [(i, g, k) for i, g in enumerate(chunk) for k in range(len(groups[g].probes))]
    past.reorder_cache(torch.tensor([i for i, _, _ in rows]))
    tails = [Probe(*(t[shared[g]:] for t in (groups[g].probes[k].input_ids,
                                             groups[g].probes[k].placeholder_mask,
                                             groups[g].probes[k].labels))) for _, g, k in rows]
    s_ids, s_attn, _, s_labels = pad_probes(tails, pad_id, "right")
    length = s_ids.shape[1]
    prefix_attn = attn[[i for i, _, _ in rows]]
    full_attn = torch.cat([prefix_attn, s_attn], dim=1)
    positions = prefix_attn.sum(1, keepdim=True) + torch.arange(length)
    hidden = body(input_ids=s_ids, attention_mask=full_attn, position_ids=positions,
                  use_cache=True, **{_cache_kwarg(body): past}).last_hidden_state
    targets = s_labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logp = _target_logprobs(head, config, hidden[:, :-1][keep], targets[keep])
    which = keep.nonzero()[:, 0]
    for r, (_i, g, k) in enumerate(rows):
        out[g][k] = logp[which == r]


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
