"""The decoder's side of the pipeline: read the target, inject, then loss, scores or answers.

    target ids + read mask --read_activations--> vectors (adapter off: the frozen target)
    decoder ids + placeholder mask + vectors --inject--> labelled log-probs | generated answers

Log-probabilities are computed only at labelled positions (the lm_head over a 49k vocabulary
is a large share of a small model's compute), and gradients flow to the injected vectors, so
the same function trains the decoder, scores candidates, and steers the target. ``norm`` is the
decoder's ``ReadNorm`` (None for a decoder that takes raw vectors), applied at the injection.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .activations import capture, gather, inject, position_ids_from_mask
from .arch import model_info
from .batching import pad_id
from .data.probe import IGNORE_INDEX, pad_probes
from .decoder import as_target
from .generation import cut_at_end, end_ids, generate_batch


def read_activations(model, input_ids, attention_mask, read_mask, layer: int | Sequence[int], *,
                     grad: bool = False, baseline=None,
                     instruction_gain: float = 0.0) -> list[torch.Tensor]:
    """The target's residual stream after ``layer`` at the read positions, one [n_b, H] per row.

    ``layer`` may be a sequence of layers read together: one pass of the target (stopping
    after the deepest), and per row the layers' vectors one after another in the order given,
    ``[len(layer) * n_b, H]`` (``split_layers`` splits them), which is the order of a probe's
    placeholder groups.

    The adapter (if any) is disabled, so a decoder built on the target reads the plain target.
    With ``grad=True`` the graph is kept (steering trains the target through it) and adapters
    stay on: then the trainable target is whatever adapter is active.

    With ``instruction_gain`` k > 0 and ``baseline`` (ids, attention mask and read mask of the
    same dialogs without their instruction, ``selection.render_baseline``), each row's vectors
    ``v`` become ``v + k (v - b)``, ``b`` the baseline's at the same read tokens: what the
    unread instruction changed there, amplified (a dialog with no such instruction is read as
    it is).
    """
    if instruction_gain:
        if baseline is None:
            raise ValueError("instruction_gain needs the baseline reads of the same dialogs")
        own = read_activations(model, input_ids, attention_mask, read_mask, layer, grad=grad)
        base = read_activations(model, *baseline, layer, grad=grad)
        if [len(v) for v in own] != [len(v) for v in base]:
            raise ValueError("the baseline reads other tokens than the dialogs it belongs to")
        return [v + instruction_gain * (v - b) for v, b in zip(own, base)]
    ctx = contextlib.nullcontext() if grad else as_target(model)
    if not isinstance(layer, int):
        return _read_together(model, input_ids, attention_mask, read_mask, layer, ctx, grad)
    with ctx, torch.set_grad_enabled(grad):
        hidden = capture(model, input_ids, attention_mask, layers=layer)[layer]
    return gather(hidden, read_mask)


def _read_together(model, input_ids, attention_mask, read_mask, layers, ctx, grad):
    info = model_info(model)
    layers = [info.check_layer(k, "read layer") for k in layers]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers read together must be distinct and at least one, got {layers}")
    with ctx, torch.set_grad_enabled(grad):
        hidden = capture(model, input_ids, attention_mask, layers=layers)
    return join_layers([gather(hidden[k], read_mask) for k in layers])


def join_layers(per_layer: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """``per_layer[l][b]`` ([n_b, H]: layer l's vectors of row b) as one tensor per row, the
    layers one after another (one layer: its tensors as they are)."""
    if len(per_layer) == 1:
        return list(per_layer[0])
    return [torch.cat(rows) for rows in zip(*per_layer)]


def split_layers(vectors: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """A row's vectors of ``groups`` layers read together, split back into one [n, H] per
    layer (``groups=1``: ``[vectors]``)."""
    if groups < 1 or len(vectors) % groups:
        raise ValueError(f"{len(vectors)} vectors do not split into {groups} equal layer groups")
    return [vectors] if groups == 1 else list(vectors.chunk(groups))


def body_and_head(model):
    """The model without its lm_head, and the head (works through peft wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def labelled_logprobs(model, input_ids, attention_mask, labels, *, placeholder_mask=None,
                      vectors=None, write_layer: int = 0, mode: str = "replace", norm=None):
    """Log-probability of each labelled token given everything before it.

    Returns ``(logp, positions)``: ``logp[i]`` is log p(labels[b, t] | ids[b, :t]) for the i-th
    labelled (b, t) in row-major order, listed in ``positions`` ([n, 2]).
    """
    body, head, config = body_and_head(model)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX  # position t-1 predicts token t
    positions = keep.nonzero()
    injecting = vectors is not None
    ctx = (inject(model, write_layer, placeholder_mask, vectors, mode, norm=norm) if injecting
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


def _common_prefix(ids: list[torch.Tensor], width: int | None = None) -> int:
    """How many leading tokens (at most ``width``) every sequence of ``ids`` shares."""
    width = min([len(x) for x in ids] + ([width] if width is not None else []))
    same = torch.stack([x[:width] for x in ids]).eq(ids[0][:width]).all(0)
    return int(same.long().cumprod(0).sum())


def _shared_length(group: Group) -> int:
    """How many leading tokens the group's probes share: the prefix to run once (labelled
    tokens inside it are predicted there, once for all probes). 0 when sharing is impossible
    (placeholders after it)."""
    n = _common_prefix([p.input_ids for p in group.probes])
    if n < 1 or any(p.placeholder_mask[n:].any() for p in group.probes):
        return 0
    return n


def _sources(probe) -> torch.Tensor:
    """The positions whose outputs predict the probe's labelled tokens (token t at t - 1)."""
    return (probe.labels[1:] != IGNORE_INDEX).nonzero()[:, 0]


def grouped_logprobs(model, groups: list[Group], *, pad_id: int, write_layer: int = 0,
                     mode: str = "replace", norm=None, batch_size: int = 16,
                     share_opening: bool = True) -> list[list[torch.Tensor]]:
    """Labelled-token log-probs of every probe of every group: ``out[g][k]`` for probe k of
    group g, the same numbers ``labelled_logprobs`` gives.

    A group's probes share a prefix (the placeholders, the question and often the answers'
    first words) and differ in the rest of their answers. The group runs as one packed row:
    the prefix once, then each answer's tokens, under a block mask that lets each answer see
    the prefix and itself only, with positions restarting after the prefix. An answer's tokens
    after its last predicting position (its last token) are left out: no labelled token
    depends on them. Nothing is padded inside a group and nothing is copied, so the cost is
    the prefix plus the answers; the opening all groups share (the probe's chat header, before
    the placeholders) runs once per call unless ``share_opening`` is off. Groups that cannot be
    packed (no shared prefix, an attention kernel without arbitrary masks, a sliding window
    shorter than a probe) are scored probe by probe in one padded batch.

    Gradients flow when the caller enables them: the trainer packs all QA pairs of a record
    into one group, so its placeholders and the probe's opening run once for all its pairs.
    """
    body, head, config = body_and_head(model)
    device = body.get_input_embeddings().weight.device
    out: list[list[torch.Tensor]] = [[None] * len(g.probes) for g in groups]
    shared = [_shared_length(g) for g in groups]
    packable = _packable(config, groups, shared)
    for g in (g for g, ok in enumerate(packable) if not ok):
        probes = groups[g].probes
        ids, attn, ph, labels = (t.to(device) for t in pad_probes(probes, pad_id, "right"))
        vectors = groups[g].vectors
        vecs = None if vectors is None else [vectors] * len(probes)
        logp, pos = labelled_logprobs(model, ids, attn, labels,
                                      placeholder_mask=ph if vecs else None, vectors=vecs,
                                      write_layer=write_layer, mode=mode, norm=norm)
        out[g] = [logp[pos[:, 0] == k] for k in range(len(probes))]
    # similar packed lengths side by side, so a batch pads little
    order = sorted((g for g, ok in enumerate(packable) if ok),
                   key=lambda g: shared[g] + sum(len(p.input_ids) - shared[g]
                                                 for p in groups[g].probes))
    lead = _lead(body, config, [groups[g] for g in order], [shared[g] for g in order], device) \
        if share_opening else (0, None)
    chunks: list[list[int]] = []
    for g in order:
        if chunks and sum(len(groups[c].probes) for c in chunks[-1]) \
                + len(groups[g].probes) <= batch_size:
            chunks[-1].append(g)
        else:
            chunks.append([g])
    for chunk in chunks:
        _score_packed(body, head, config, model, [groups[c] for c in chunk],
                      [shared[c] for c in chunk], [out[c] for c in chunk], pad_id,
                      write_layer, mode, device, lead, copy_lead=len(chunks) > 1, norm=norm)
    return out


def _lead(body, config, groups: list[Group], shared: list[int], device):
    """The tokens every packed group starts with (the probe's opening, up to the first
    placeholder) run once: ``(length, cache)``, or ``(0, None)`` when not worth it. With a
    sliding window the cache would be a windowed one; those models run without a lead."""
    if len(groups) < 2 or getattr(config, "sliding_window", None):
        return 0, None
    firsts = [g.probes[0] for g in groups]
    # the lead's outputs are not kept: it stops before any placeholder and any position that
    # predicts a labelled token
    ends = [int(p.placeholder_mask.long().argmax()) if p.placeholder_mask.any()
            else len(p.input_ids) for p in firsts]
    sources = [_sources(p) for g in groups for p in g.probes]
    ends += [int(src.min()) for src in sources if len(src)]
    width = min(shared + ends)
    length = _common_prefix([p.input_ids for p in firsts], width)
    if length < 1:
        return 0, None
    cache = body(input_ids=firsts[0].input_ids[None, :length].to(device), use_cache=True)
    cache = cache.cache if getattr(cache, "cache", None) is not None else cache.past_key_values
    return length, cache


def _cache_kwarg(body) -> str:
    # transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40)
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _packable(config, groups: list[Group], shared: list[int]) -> list[bool]:
    """Which groups can run packed: they share a prefix, the attention takes an arbitrary
    mask (sdpa, eager), and any sliding window covers every probe (the mask has no window)."""
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return [False] * len(groups)
    window = getattr(config, "sliding_window", None)
    return [n > 0 and (not window or max(len(p.input_ids) for p in g.probes) <= window)
            for n, g in zip(shared, groups)]


def _pack(group: Group, n: int):
    """A group as one row: ids, positions and segments (0: the shared ``n``-token prefix;
    k + 1: probe k's tail, cut after its last predicting position), and where each tail
    starts in the row."""
    tails = []
    for p in group.probes:
        src = _sources(p)
        end = max(n, int(src.max()) + 1) if len(src) else n
        tails.append(p.input_ids[n:end])
    ids = torch.cat([group.probes[0].input_ids[:n], *tails])
    positions = torch.cat([torch.arange(n)] + [torch.arange(n, n + len(t)) for t in tails])
    segment = torch.cat([torch.zeros(n, dtype=torch.long)]
                        + [torch.full((len(t),), k + 1) for k, t in enumerate(tails)])
    starts = [n + sum(len(t) for t in tails[:k]) for k in range(len(tails))]
    return ids, positions, segment, starts


def _block_mask(segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [batch, 1, L, L] mask: a token sees the prefix and its own tail, causally.
    Padding (segment -1) sees only itself, so no softmax row is empty (that would be NaN)."""
    length = segment.shape[1]
    q, kv = segment[:, :, None], segment[:, None, :]
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & ((kv == 0) | (kv == q))
    allowed &= (q >= 0) & (kv >= 0)
    allowed |= torch.eye(length, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _score_packed(body, head, config, model, groups, shared, out, pad_id, write_layer, mode,
                  device, lead=(0, None), copy_lead: bool = True, norm=None):
    """One forward pass over ``groups``, each packed into one row (``_pack``) after the
    ``lead`` tokens they all start with (their cache is reused), right-padded; fills
    ``out[i][k]`` for probe k of groups[i]."""
    skip, lead_cache = lead
    packed = []
    for group, n in zip(groups, shared):
        ids, pos, seg, starts = _pack(group, n)
        packed.append((ids[skip:], pos[skip:], seg[skip:], [s - skip for s in starts]))
    size = (len(groups), max(len(ids) for ids, *_ in packed))
    if size[1] == 0:  # nothing labelled after the lead
        for i, group in enumerate(groups):
            out[i][:] = [torch.zeros(0, device=device) for _ in group.probes]
        return
    ids = torch.full(size, pad_id, dtype=torch.long)
    positions = torch.zeros(size, dtype=torch.long)
    segment = torch.full(size, -1, dtype=torch.long)
    placeholders = torch.zeros(size, dtype=torch.bool)
    for i, (group, n, (row, pos, seg, _)) in enumerate(zip(groups, shared, packed)):
        ids[i, :len(row)], positions[i, :len(row)], segment[i, :len(row)] = row, pos, seg
        if group.vectors is not None:
            placeholders[i, :n - skip] = group.probes[0].placeholder_mask[skip:n]
    vectors = [group.vectors for group in groups if group.vectors is not None]
    dtype = body.get_input_embeddings().weight.dtype
    mask = _block_mask(segment, dtype)
    kwargs = {}
    if lead_cache is not None:  # every row sees the lead; each row gets its own cache copy
        mask = torch.cat([mask.new_zeros(*mask.shape[:3], skip), mask], dim=-1)
        # the forward appends to the cache it is given: a lead that later chunks reuse is
        # copied; a lead used once is expanded in place (autograd cannot deep-copy its tensors,
        # and the gradient flows through the expansion to the lead's own pass)
        cache = copy.deepcopy(lead_cache) if copy_lead else lead_cache
        cache.reorder_cache(torch.zeros(len(groups), dtype=torch.long, device=device))
        kwargs[_cache_kwarg(body)] = cache
    ctx = (inject(model, write_layer, placeholders, vectors, mode, norm=norm) if vectors
           else contextlib.nullcontext())
    with ctx:
        hidden = body(input_ids=ids.to(device), position_ids=positions.to(device),
                      attention_mask=mask.to(device), use_cache=lead_cache is not None,
                      **kwargs).last_hidden_state
    # token t of probe k is predicted at t - 1: in the prefix (row column t - 1 - skip) or in
    # the probe's tail (row column start_k + t - 1 - n)
    rows, cols, targets, counts = [], [], [], []
    for i, (group, n, (*_, starts)) in enumerate(zip(groups, shared, packed)):
        for probe, start in zip(group.probes, starts):
            src = _sources(probe)
            rows.append(torch.full_like(src, i))
            cols.append(torch.where(src < n, src - skip, start + src - n))
            targets.append(probe.labels[src + 1])
            counts.append(len(src))
    rows, cols = torch.cat(rows).to(device), torch.cat(cols).to(device)
    logp = _target_logprobs(head, config, hidden[rows, cols], torch.cat(targets).to(device))
    pieces = iter(logp.split(counts))
    for i, group in enumerate(groups):
        out[i][:] = [next(pieces) for _ in group.probes]


def decoder_loss_sum(model, batch: dict, vectors, *, write_layer: int, mode: str = "replace",
                     norm=None):
    """Summed negative log-likelihood of the labelled tokens and their count (for exact
    averaging across micro-batches and ranks)."""
    logp, _ = labelled_logprobs(
        model, batch["decoder_input_ids"], batch["decoder_attention_mask"], batch["labels"],
        placeholder_mask=batch["placeholder_mask"], vectors=vectors, write_layer=write_layer,
        mode=mode, norm=norm)
    return -logp.sum(), logp.numel()


def rows_loss_sum(model, probes: list[list], vectors: list[torch.Tensor] | None, *, pad_id: int,
                  write_layer: int = 0, mode: str = "replace", norm=None,
                  share_opening: bool = True):
    """Summed negative log-likelihood and count of the labelled tokens of every probe, with
    ``vectors[i]`` injected into each probe of ``probes[i]``: the same numbers (and gradients)
    as one padded row per probe (``decoder_loss_sum``), but each ``probes[i]`` runs as one
    packed row, its shared prefix once, and the opening every row shares (the chat header
    before the placeholders) once for the batch (``grouped_logprobs``; ``share_opening=False``
    runs it in every row: a sharded model's body must run once per backward)."""
    out = rows_logprobs(model, probes, vectors, pad_id=pad_id, write_layer=write_layer,
                        mode=mode, norm=norm, share_opening=share_opening)
    logp = torch.cat([x for row in out for x in row])
    return -logp.sum(), logp.numel()


def rows_logprobs(model, probes: list[list], vectors: list[torch.Tensor] | None, *, pad_id: int,
                  write_layer: int = 0, mode: str = "replace", norm=None,
                  share_opening: bool = True) -> list[list[torch.Tensor]]:
    """The labelled-token log-probs of each probe of each row (``out[i][k]`` for probe k of
    ``probes[i]``), ``vectors[i]`` injected into row i, packed as ``rows_loss_sum`` packs."""
    vectors = [None] * len(probes) if vectors is None else vectors
    groups = [Group(p, v) for p, v in zip(probes, vectors)]
    return grouped_logprobs(model, groups, pad_id=pad_id, write_layer=write_layer, mode=mode,
                            norm=norm,
                            batch_size=sum(len(p) for p in probes), share_opening=share_opening)


def per_row_logprob(logp: torch.Tensor, positions: torch.Tensor, batch_size: int):
    """Sum and count of labelled log-probs per row."""
    total = torch.zeros(batch_size, dtype=logp.dtype, device=logp.device)
    count = torch.zeros(batch_size, dtype=torch.long, device=logp.device)
    total.index_add_(0, positions[:, 0], logp)
    count.index_add_(0, positions[:, 0], torch.ones_like(positions[:, 0]))
    return total, count


@torch.no_grad()
def generate_answers(model, tokenizer, input_ids, attention_mask, placeholder_mask, vectors, *,
                     write_layer: int, mode: str = "replace", norm=None,
                     max_new_tokens: int = 48,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int | None = None) -> list[str]:
    """Generate from left-padded decoder prompts with ``vectors`` injected on the prompt pass.

    The KV cache is used; the injection acts only on the prompt pass.
    """
    ctx = (inject(model, write_layer, placeholder_mask, vectors, mode, once=True, norm=norm)
           if vectors is not None else contextlib.nullcontext())
    with ctx:
        new = generate_batch(model, input_ids, attention_mask, pad_id=pad_id(tokenizer),
                             max_new_tokens=max_new_tokens,
                             temperature=temperature if do_sample else 0.0, top_p=top_p,
                             seed=seed)
    ends = end_ids(model, tokenizer)
    new = [cut_at_end(row, ends)[0] for row in new.tolist()]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
