"""Steering: train a LoRA on the target so that the frozen decoder, reading the target's
activations, gives the control's answers (the paper's control, section 5).

    target (+ steering LoRA on blocks 0..read layer) --activations--> decoder (frozen)
        --> loss of the control answer --> gradients into the steering LoRA only

Each step takes a batch of steering prompts, alone or followed by the unsteered target's own
reply (made once, before training), and a control QA pair per example. With ``per_layer`` the
output of every block up to the read layer is decoded, and each block's input is detached, so
block l learns only from its own output's loss (the paper's per-layer variant).

A decoder that reads several layers together (``read_together``) gets them all from the one
steered pass, one after another as it was trained; the adapter covers the blocks up to the
deepest of them. The per-layer variant decodes one block at a time, which such a decoder
cannot read, so it is refused for it.

The control loss alone lets the target drift wherever the decoder's reading improves, and at
learning rates strong enough to move behaviour that drift costs fluency. ``fluency_weight``
adds KL(unsteered || steered) of the next-token distributions on the same dialogs, the
usual anchor of RL fine-tuning: the target may change what it says, but must keep predicting
text the way it did. ``fluency_tokens`` says where: on every read token ("read"), which also
holds the assistant's replies to the unsteered ones and so pulls against the steering itself,
or on the user's prompt only ("prompt"), which keeps the language model without constraining
what the assistant answers.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..activations import capture, gather, recording
from ..arch import find_blocks
from ..batching import pad_tokens
from ..decoder import as_target
from ..decoding import join_layers, next_token_logprobs
from ..selection import render_read
from .adapter import STEER_ADAPTER, SteerSpec, active, add_steering_adapter, save_steering
from .control import Control
from .generate import generate_replies
from .loss import answer_logprob


@dataclass
class SteerConfig:
    steps: int = 100
    lr: float = 1.5e-4  # with 100 steps: +40 points or more on veganism in 4 of 4 seeds (README)
    batch_size: int = 2
    lora_r: int = 16
    lora_alpha: int = 32
    per_layer: bool = False
    fluency_weight: float = 1.0  # weight of KL(unsteered || steered); 0: control loss alone
    fluency_tokens: str = "prompt"  # where the KL applies: the user "prompt" or all "read" tokens
    with_replies: bool = True  # also read the prompt followed by the target's own reply
    reply_tokens: int = 32
    eval_share: float = 0.25  # held-back prompts when no eval prompts are given
    eval_tokens: int = 48
    seed: int = 0
    log_every: int = 5


@dataclass
class SteerResult:
    adapter_dir: str
    losses: list[float]
    seconds: float
    eval_prompts: list[str]
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    fluency_kl: list[float] = field(default_factory=list)  # per step, when fluency_weight > 0


def split_prompts(prompts: list[str], eval_prompts: list[str] | None, share: float,
                  seed: int) -> tuple[list[str], list[str]]:
    """(steering prompts, evaluation prompts): a seeded held-back share unless given."""
    if eval_prompts:
        return list(prompts), list(eval_prompts)
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(share * len(prompts))) if len(prompts) > 1 else 0
    held = set(order[:n_eval])
    return ([p for i, p in enumerate(prompts) if i not in held],
            [p for i, p in enumerate(prompts) if i in held])


def _dialogs(prompts, replies):
    out = [[{"role": "user", "content": p}] for p in prompts]
    if replies is not None:
        out += [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                for p, r in zip(prompts, replies) if r]
    return out


def _render(tokenizer, dialog, max_tokens):
    """Ids, read mask and prompt mask. Read: the reader's default selection (every turn: the
    user turn and the reply, not the template's default system prompt, through the generation
    prompt when the dialog ends with the user). Prompt: the user message's content tokens."""
    rendered, read = render_read(tokenizer, dialog, max_tokens=max_tokens)
    users = [i for i, m in enumerate(dialog) if m["role"] == "user"]
    return rendered.input_ids, read, rendered.mask(users)


def _batch(tokenizer, dialogs, pad_id, device, max_tokens=None):
    rows = [_render(tokenizer, d, max_tokens) for d in dialogs]
    ids, attn, read = pad_tokens([(r[0], r[1]) for r in rows], pad_id)
    _, _, prompt = pad_tokens([(r[0], r[2]) for r in rows], pad_id)
    return ids.to(device), attn.to(device), read.to(device), prompt.to(device)


def fluency_kl(model, ids, attn, positions, steered: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(unsteered || steered) of the next-token distribution at ``positions``; only the
    steered side carries gradients. ``steered``: its log-probs at ``positions`` if already
    computed (the training step gets them from the same pass that reads the activations)."""
    with torch.no_grad(), as_target(model):
        reference = next_token_logprobs(model, ids, attn, positions)
    if steered is None:
        with active(model, STEER_ADAPTER):
            steered = next_token_logprobs(model, ids, attn, positions)
    return torch.nn.functional.kl_div(steered, reference, log_target=True,
                                      reduction="batchmean")


def _detach_inputs(blocks):
    """Hooks that cut the gradient between consecutive blocks (per-layer steering)."""
    def pre(_module, args, kwargs):
        if args:
            return (args[0].detach(),) + tuple(args[1:]), kwargs
        key = "hidden_states"
        if key in kwargs:
            kwargs = dict(kwargs, **{key: kwargs[key].detach()})
        return args, kwargs
    return [b.register_forward_pre_hook(pre, with_kwargs=True) for b in blocks]


def steer(reader, control: Control, prompts: list[str], out_dir, *,
          eval_prompts: list[str] | None = None, config: SteerConfig | None = None,
          log=print, generate_eval: bool = True) -> SteerResult:
    """Train a steering adapter on ``reader``'s target and save it to ``out_dir``.

    The reader's model gains the adapter for the duration and loses it afterwards, so the
    reader reads and answers exactly as before.
    """
    cfg = config or SteerConfig()
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be at least 1")
    if cfg.fluency_tokens not in ("read", "prompt"):
        raise ValueError(f"fluency_tokens must be 'read' or 'prompt', got {cfg.fluency_tokens!r}")
    model, tok, spec = reader.model, reader.tokenizer, reader.spec
    device = next(model.parameters()).device
    together = spec.read_together  # multi-layer reads: every layer in one probe
    if together and cfg.per_layer:
        raise ValueError(f"per_layer decodes one block at a time, but this decoder reads layers "
                         f"{list(spec.read_layers)} together; steer without per_layer")
    read_layer = max(reader.read_at) if together else spec.read_layer
    train_prompts, eval_prompts = split_prompts(prompts, eval_prompts, cfg.eval_share, cfg.seed)
    if not train_prompts:
        raise ValueError("no steering prompts left after holding back the evaluation prompts")

    before = generate_replies(model, tok, eval_prompts, max_new_tokens=cfg.eval_tokens) \
        if generate_eval and eval_prompts else []
    replies = generate_replies(model, tok, train_prompts, max_new_tokens=cfg.reply_tokens) \
        if cfg.with_replies else None
    dialogs = _dialogs(train_prompts, replies)

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    params = add_steering_adapter(model, range(read_layer + 1), r=cfg.lora_r,
                                  alpha=cfg.lora_alpha)
    layers = list(range(read_layer + 1)) if cfg.per_layer else [read_layer]
    # what each loss term reads: one block, or all the layers read together
    reads = [list(reader.read_at)] if together else [[layer] for layer in layers]
    layers = reads[0] if together else layers
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    losses, kls, start = [], [], time.perf_counter()
    try:
        for step in range(1, cfg.steps + 1):
            chosen = [dialogs[rng.randrange(len(dialogs))] for _ in range(cfg.batch_size)]
            qa = [control.qa[rng.randrange(len(control.qa))] for _ in chosen]
            ids, attn, read, prompt = _batch(tok, chosen, reader.pad_id, device,
                                             reader.info.max_positions)
            anchored = read if cfg.fluency_tokens == "read" else prompt
            steered = None
            with active(model, STEER_ADAPTER):
                hooks = _detach_inputs(find_blocks(model)[1]) if cfg.per_layer else []
                try:
                    # one steered pass gives the activations and the anchor's log-probs, unless
                    # per-layer hooks cut the gradient the anchor must send through the blocks
                    if cfg.fluency_weight > 0 and not cfg.per_layer:
                        with recording(model, layers) as hidden:
                            steered = next_token_logprobs(model, ids, attn, anchored)
                    else:
                        hidden = capture(model, ids, attn, layers=layers)
                finally:
                    for h in hooks:
                        h.remove()
            if spec.instruction_gain:  # the steering adapter is the instruction: amplify its
                with torch.no_grad(), as_target(model):  # effect over the frozen target's
                    frozen = capture(model, ids, attn, layers=layers)
                hidden = {k: hidden[k] + spec.instruction_gain * (hidden[k] - frozen[k])
                          for k in layers}
            loss = 0.0
            with active(model, "default"):
                for group in reads:
                    vectors = join_layers([gather(hidden[layer], read) for layer in group])
                    logp = answer_logprob(reader, vectors, [q for q, _ in qa],
                                          [a for _, a in qa])
                    loss = loss + (-logp.mean())
            loss = loss / len(reads)
            control_loss = float(loss.detach())
            kl = (fluency_kl(model, ids, attn, anchored, steered) if cfg.fluency_weight > 0
                  else None)
            if kl is not None:
                loss = loss + cfg.fluency_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(control_loss)
            if kl is not None:
                kls.append(float(kl.detach()))
            if step % cfg.log_every == 0 or step == cfg.steps:
                extra = f"  fluency KL {kls[-1]:.4f}" if kls else ""
                log(f"step {step}/{cfg.steps}  control loss {losses[-1]:.4f}{extra}  "
                    f"({time.perf_counter() - start:.0f} s)")
        seconds = time.perf_counter() - start
        after = generate_replies(model, tok, eval_prompts, adapter=STEER_ADAPTER,
                                 max_new_tokens=cfg.eval_tokens) \
            if generate_eval and eval_prompts else []
        steer_spec = SteerSpec(
            target=str(spec.target), decoder=str(reader.decoder_path), read_layer=read_layer,
            read_layers=reads[0] if together else [],
            blocks=list(range(read_layer + 1)), control=control.instruction or control.source,
            qa=[list(p) for p in control.qa], steps=cfg.steps, per_layer=cfg.per_layer,
            extra={"config": asdict(cfg), "final_loss": losses[-1], "seconds": seconds,
                   "fluency_kl": kls})
        save_steering(model, out_dir, steer_spec)
    finally:
        model.base_model.set_adapter("default")
        model.delete_adapter(STEER_ADAPTER)
        for p in model.parameters():
            p.requires_grad_(False)
    return SteerResult(str(Path(out_dir)), losses, seconds, eval_prompts, before, after, kls)
