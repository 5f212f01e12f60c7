"""Ask a target's activations questions, or score candidate answers: the reading API.

    lqa = load()                                   # SmolLM2 + the shipped decoder
    lqa.ask(dialog, "What is the assistant's persona?")
    lqa.score(dialog, question, ["a pirate", "a chef"]).best

One copy of the weights: the target is the model with the adapter disabled. Work is batched:
the target reads a batch of dialogs in one pass; every dialog x question (x candidate) pair is
one decoder row; rows are sorted by length so padding stays small, left-padded for generation
(the KV cache is reused and the activations are injected on the prompt pass only) and
right-padded for scoring.

A decoder trained with ``read_together`` (its sidecar says so) reads all of its ``read_layers``
in one pass of the target; each dialog's vectors are then those layers' vectors one after
another (``[layers x n, H]``), and each probe has one labelled group of n placeholders per
layer. Everything below goes through ``probe``, ``_layer`` and ``count``, so asking, scoring and
the controls (shuffled: another dialog's vectors, every layer; none: the same groups, nothing
written) work the same for both kinds.
"""

from __future__ import annotations

import torch

from ..activations import INJECTION_MODES
from ..arch import config_info, model_info
from ..batching import length_batches, pad_id, pad_tokens
from ..chat import DialogTooLongError, render_dialog
from ..controls import shuffled_donors
from ..data.layouts import LAYOUTS
from ..data.probe import IGNORE_INDEX, ProbeBuilder, pad_probes
from ..decoder import DecoderSpec, as_target, folded_adapter, load_decoder_adapter
from ..decoding import Group, generate_answers, grouped_logprobs, read_activations
from ..generation import generate, generate_text
from ..models import DEFAULT_MODEL, load_config, load_model
from ..selection import Read, as_read, read_messages, render_baseline, render_read
from ..validation import check_sampling
from .controls import NEUTRAL_DIALOGS, check_control
from .decoders import check_compatible, resolve_decoder
from .errors import DecoderMismatchError, ReadingError
from .inputs import as_candidates, as_dialogs, as_questions, shaped
from .results import CandidateScore, Score

DEFAULT_BATCH_SIZE = 16


def load(decoder=None, target: str | None = None, *, preset: str | None = None,
         layout: str | None = None, read_layer: int | None = None,
         write_layer: int | None = None, injection: str | None = None, device: str = "cpu",
         dtype: str = "fp32", allow_other_target: bool = False,
         trust_remote_code: bool = False, batch_size: int = DEFAULT_BATCH_SIZE) -> "Reader":
    """A ``Reader`` for a decoder directory (default: the shipped SmolLM2 decoder) and its
    target (default: the one the decoder names). Sizes are checked against the target's config
    before any weights load; see ``decoders.py`` for bare adapters and presets."""
    resolved = resolve_decoder(decoder, preset=preset, layout=layout, read_layer=read_layer,
                               write_layer=write_layer, injection=injection)
    target = str(target or resolved.spec.target or DEFAULT_MODEL)
    info = config_info(load_config(target, trust_remote_code=trust_remote_code))
    check_compatible(resolved, target, info, check_name=not allow_other_target)
    info.check_layer(resolved.spec.read_layer, "read layer")
    for layer in resolved.spec.read_layers if resolved.spec.read_together else ():
        info.check_layer(layer, "read layer")
    info.check_layer(resolved.spec.write_layer, "write layer")
    loaded = load_model(target, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    try:
        model = load_decoder_adapter(loaded.model, resolved.path)
    except RuntimeError as e:  # peft: size mismatch between adapter and model weights
        raise DecoderMismatchError(f"the decoder at {resolved.path} does not fit {target}: "
                                   f"{str(e).splitlines()[0]}") from None
    spec = resolved.spec
    if not resolved.has_sidecar:
        spec.target, spec.model_type = target, info.model_type
        spec.num_blocks, spec.hidden_size = info.num_blocks, info.hidden_size
    model.requires_grad_(False)  # reading never trains; steering turns on only its own adapter
    return Reader(model.eval(), loaded.tokenizer, spec, decoder_path=str(resolved.path),
                  batch_size=batch_size)


class Reader:
    """A target with a decoder adapter; see the module docstring."""

    def __init__(self, model, tokenizer, spec: DecoderSpec, *, decoder_path: str = "",
                 batch_size: int = DEFAULT_BATCH_SIZE):
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.decoder_path, self.batch_size = decoder_path, batch_size
        self.info = model_info(model)
        self.layout = LAYOUTS[spec.layout]
        self.builder = ProbeBuilder(tokenizer, self.layout)
        self.pad_id = pad_id(tokenizer)
        self.norm = spec.norm  # what the decoder does to vectors before they are written

    def __repr__(self) -> str:
        read = (f"read_layers={list(self.spec.read_layers)} (together)"
                if self.spec.read_together else f"read_layer={self.spec.read_layer}")
        return (f"Reader(target={self.spec.target!r}, decoder={self.decoder_path!r}, "
                f"{read}, write_layer={self.spec.write_layer})")

    # ---- public API -------------------------------------------------------------------

    def ask(self, dialogs, questions, *, read=None, layer: int | None = None, control=None,
            injection: str | None = None, max_new_tokens: int = 48, do_sample: bool = False,
            temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
            batch_size: int | None = None):
        """The decoder's answer to each question about each dialog.

        One dialog and one question string give a string; a list of questions gives a list;
        a list of dialogs gives one such result per dialog.
        """
        check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       seed=seed)
        dialogs, one_dialog = as_dialogs(dialogs)
        questions, one_question = as_questions(questions)
        pairs = [(d, q) for d in range(len(dialogs)) for q in questions]
        answers = self.answer_pairs(
            dialogs, pairs, read=read, layer=layer, control=control, injection=injection,
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_p=top_p, seed=seed, batch_size=batch_size)
        return shaped(answers, len(dialogs), len(questions), one_dialog, one_question)

    def score(self, dialogs, questions, candidates, *, read=None, layer: int | None = None,
              control=None, injection: str | None = None, batch_size: int | None = None):
        """A ``Score`` (each candidate's log-probability as the answer) per dialog x question,
        shaped like ``ask``'s result."""
        dialogs, one_dialog = as_dialogs(dialogs)
        questions, one_question = as_questions(questions)
        candidates = as_candidates(candidates)
        pairs = [(d, q) for d in range(len(dialogs)) for q in questions]
        scores = self.score_pairs(dialogs, pairs, [candidates] * len(pairs), read=read,
                                  layer=layer, control=control, injection=injection,
                                  batch_size=batch_size)
        return shaped(scores, len(dialogs), len(questions), one_dialog, one_question)

    @torch.no_grad()
    def answer_pairs(self, dialogs: list, pairs: list[tuple[int, str]], *, read=None,
                     layer=None, control=None, injection=None, max_new_tokens: int = 48,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int | None = None, batch_size: int | None = None,
                     progress=None) -> list[str]:
        """Answers for arbitrary (dialog index, question) pairs, in order. ``read`` may be one
        selection or one per dialog; ``progress(n)`` is called as rows finish."""
        if max_new_tokens < 1:
            raise ReadingError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        counts, vectors, mode = self._sources(dialogs, read, layer, control, injection)
        probes = [self.probe(counts[d], q, None, layer) for d, q in pairs]
        answers: list[str] = [""] * len(pairs)
        with folded_adapter(self.model):  # the target was read above; now only the decoder runs
            for rows in self._batches(probes, batch_size):
                ids, attn, ph, _ = pad_probes([probes[r] for r in rows], self.pad_id, "left")
                vecs = None if vectors is None else [vectors[pairs[r][0]] for r in rows]
                out = generate_answers(
                    self.model, self.tokenizer, ids, attn, ph, vecs,
                    write_layer=self.spec.write_layer, mode=mode, norm=self.norm,
                    max_new_tokens=max_new_tokens, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, seed=seed)
                for r, a in zip(rows, out):
                    answers[r] = a
                if progress:
                    progress(len(rows))
        return answers

    @torch.no_grad()
    def score_pairs(self, dialogs: list, pairs: list[tuple[int, str]],
                    candidates: list[list[str]], *, read=None, layer=None, control=None,
                    injection=None, batch_size: int | None = None, progress=None) -> list[Score]:
        """A ``Score`` per (dialog index, question) pair, with that pair's candidates."""
        counts, vectors, mode = self._sources(dialogs, read, layer, control, injection)
        candidates = [as_candidates(cands) for cands in candidates]
        groups = [Group([self.probe(counts[d], q, c, layer) for c in candidates[p]],
                        None if vectors is None else vectors[d])
                  for p, (d, q) in enumerate(pairs)]
        results: list[list[CandidateScore]] = []
        # a pair's candidates share its probe up to the answer: that part runs once
        size = batch_size or self.batch_size
        if size < 1:
            raise ReadingError(f"batch_size must be at least 1, got {size}")
        with folded_adapter(self.model):
            for start in range(0, len(groups), max(1, size)):
                chunk = groups[start:start + max(1, size)]
                logps = grouped_logprobs(self.model, chunk, pad_id=self.pad_id,
                                         write_layer=self.spec.write_layer, mode=mode,
                                         norm=self.norm,
                                         batch_size=size)
                for group, cands, per_cand in zip(chunk, candidates[start:], logps):
                    row = []
                    for probe, cand, logp in zip(group.probes, cands, per_cand):
                        token_ids = probe.labels[probe.labels != IGNORE_INDEX].tolist()
                        row.append(CandidateScore(cand, float(logp.sum()), len(token_ids),
                                                  [self.tokenizer.decode([t]) for t in token_ids],
                                                  logp.tolist()))
                    results.append(row)
                if progress:
                    progress(sum(len(g.probes) for g in chunk))
        return [Score(q, row) for (_, q), row in zip(pairs, results)]

    @torch.no_grad()
    def activations(self, dialogs, *, read=None, layer: int | None = None) -> list[torch.Tensor]:
        """The target's residual stream after the read layer at the read tokens, per dialog
        (a decoder that reads layers together: those layers' vectors one after another,
        ``[layers x n, H]``; ``decoding.split_layers`` splits them). For a decoder with an
        ``instruction_gain``, what it is given: the unread instruction's effect on them
        amplified (``decoding.read_activations``)."""
        dialogs, _ = as_dialogs(dialogs)
        return self._read(dialogs, self._reads(read, len(dialogs)), self._layer(layer))

    def target_reply(self, dialog, *, max_new_tokens: int = 40) -> str:
        """The target's own greedy reply (adapter off), e.g. to show what it does."""
        return self.target_replies([as_dialogs(dialog)[0][0]], max_new_tokens=max_new_tokens)[0]

    @torch.no_grad()
    def target_replies(self, dialogs, *, max_new_tokens: int = 40, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None,
                       batch_size: int | None = None, progress=None) -> list[str]:
        """The target's own reply (adapter off) to each dialog, batched; greedy by default."""
        dialogs, _ = as_dialogs(dialogs)
        prompts = [render_dialog(self.tokenizer, d, add_generation_prompt=True,
                                 max_tokens=self.info.max_positions).input_ids for d in dialogs]
        with as_target(self.model):
            return generate_text(self.model, self.tokenizer, prompts, pad_id=self.pad_id,
                                 max_new_tokens=max_new_tokens,
                                 batch_size=batch_size or self.batch_size,
                                 temperature=temperature, top_p=top_p, seed=seed,
                                 progress=progress)

    def render(self, dialog, *, add_generation_prompt: bool | None = None,
               check_context: bool = True):
        """The dialog as the target sees it (a ``RenderedDialog``; a generation prompt after a
        final user turn unless ``add_generation_prompt`` says otherwise), as ``ask`` renders
        it; ``Read.mask`` of it picks tokens. ``check_context=False`` skips the model's context
        check, for a caller that applies a smaller limit of its own."""
        dialog = as_dialogs(dialog)[0][0]
        if add_generation_prompt is None:
            add_generation_prompt = dialog[-1]["role"] == "user"
        return render_dialog(self.tokenizer, dialog, add_generation_prompt=add_generation_prompt,
                             max_tokens=self.info.max_positions if check_context else None)

    def token_texts(self, rendered) -> list[str]:
        """Each token's text in a ``render``-ed dialog: its characters in the rendered text,
        or the tokenizer's decoding when it has none of its own."""
        whole = len(rendered.offsets) == len(rendered)
        return [rendered.text[rendered.offsets[k][0]:rendered.offsets[k][1]]
                if whole and rendered.offsets[k][1] > rendered.offsets[k][0]
                else self.tokenizer.decode([token])
                for k, token in enumerate(rendered.input_ids)]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], *, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int | None = None) -> list[tuple[str, int, bool]]:
        """Replies to token prompts (``render(..., add_generation_prompt=True)``) from the
        model with the adapters its caller made active (``decoder.as_target`` for the plain
        target): per prompt the text (special tokens dropped, not stripped), how many tokens
        came before the end of the turn, and whether the turn ended."""
        got = generate(self.model, self.tokenizer, prompts, pad_id=self.pad_id,
                       max_new_tokens=max_new_tokens, batch_size=batch_size or self.batch_size,
                       temperature=temperature, top_p=top_p, seed=seed)
        return [(self.tokenizer.decode(kept, skip_special_tokens=True), len(kept), ended)
                for kept, ended in got]

    @property
    def read_at(self) -> int | tuple[int, ...]:
        """What ``layer=None`` reads: the decoder's read layer, or the tuple of layers it reads
        together."""
        return self._layer(None)

    @property
    def groups(self) -> int:
        """Placeholder groups per probe: the layers read together, or 1."""
        return len(self.spec.read_layers) if self.spec.read_together else 1

    def count(self, vectors) -> int:
        """How many tokens one dialog's ``vectors`` hold (rows over the layers read together):
        the ``count`` its ``probe`` takes."""
        return len(vectors) // self.groups

    def probe(self, count: int, question: str, answer: str | None = None,
              layer: int | None = None):
        """The decoder's prompt for ``count`` read tokens and a question (and a candidate
        answer, supervised, when given), checked against the model's context. A decoder that
        reads layers together gets one labelled group of ``count`` placeholders per layer."""
        if self.spec.read_together:
            probe = self.builder.build(count, question, answer, supervise="answer",
                                       layers=self._layer(layer))
        else:
            probe = self.builder.build(
                count, question, answer, supervise="answer",
                layer=self._layer(layer) if self.layout.layer_prefix else None)
        limit = self.info.max_positions
        if limit is not None and len(probe.input_ids) > limit:
            groups = f" x {self.groups} layers" if self.groups > 1 else ""
            raise DialogTooLongError(
                f"the decoder's prompt is {len(probe.input_ids)} tokens ({count} read "
                f"activations{groups}, the question"
                f"{'' if answer is None else ' and a candidate'}), "
                f"more than the model's context of {limit} tokens; shorten the question or "
                "read fewer tokens")
        return probe

    # ---- internals --------------------------------------------------------------------

    @property
    def _device(self):
        return next(self.model.parameters()).device

    def _layer(self, layer) -> int | tuple[int, ...]:
        """The layer to read (checked), or for a decoder that reads layers together the tuple
        of them: its own by default, or as many others given as a list."""
        if self.spec.read_together:
            layers = list(self.spec.read_layers) if layer is None else layer
            if isinstance(layers, int) or len(layers) != len(self.spec.read_layers):
                raise ReadingError(
                    f"this decoder reads layers {list(self.spec.read_layers)} together (one "
                    f"placeholder group each): give no layer, or a list of "
                    f"{len(self.spec.read_layers)} layers, not {layer!r}")
            return self._standardised_at(
                tuple(self.info.check_layer(k, "read layer") for k in layers))
        layer = self.spec.read_layer if layer is None else layer
        if isinstance(layer, (list, tuple)):
            raise ReadingError(f"this decoder reads one layer (it was not trained with "
                               f"read_together); give one layer, not {list(layer)}")
        return self._standardised_at(self.info.check_layer(layer, "read layer"))

    def _standardised_at(self, layer):
        own = self.spec.read_at
        if self.norm is not None and layer != own:
            raise ReadingError(f"this decoder standardises what it reads with statistics of "
                               f"layer(s) {own}; it cannot read {layer}")
        return layer

    def _reads(self, read, n: int) -> list[Read]:
        if isinstance(read, (list, tuple)) and read and not all(isinstance(r, int) for r in read):
            if len(read) != n:
                raise ReadingError(f"read: got {len(read)} selections for {n} dialogs")
            return [as_read(r) for r in read]
        return [as_read(read)] * n

    def _sources(self, dialogs, read, layer, control, injection):
        """Per dialog: how many placeholders, and the vectors to inject (None: inject nothing),
        after applying the control."""
        mode = injection or self.spec.injection
        if mode not in INJECTION_MODES:
            raise ReadingError(f"injection must be one of {INJECTION_MODES}, got {mode!r}")
        control = check_control(control)
        layer, reads = self._layer(layer), self._reads(read, len(dialogs))
        if control == "none":  # same probe as the real reading, nothing written into it
            counts = [int(self._render(d, r)[1].sum()) for d, r in zip(dialogs, reads)]
            return counts, None, mode
        vectors = self._read(dialogs, reads, layer)
        if control == "shuffled":
            if len(dialogs) > 1:  # each dialog is its own label: any other dialog is a donor
                vectors = [vectors[j] for j in shuffled_donors(range(len(dialogs)))]
            else:
                neutral = self._read(NEUTRAL_DIALOGS, [Read()] * len(NEUTRAL_DIALOGS), layer)
                vectors = [neutral[i % len(neutral)] for i in range(len(dialogs))]
        groups = 1 if isinstance(layer, int) else len(layer)  # layers read together
        return [len(v) // groups for v in vectors], vectors, mode

    def _render(self, dialog, read: Read):
        rendered, mask = render_read(self.tokenizer, dialog, read,
                                     max_tokens=self.info.max_positions)
        return torch.tensor(rendered.input_ids, dtype=torch.long), mask

    def _baseline(self, dialog, read: Read, ids, mask):
        """The dialog without its instruction, read at the same tokens (``instruction_gain``)."""
        return render_baseline(self.tokenizer, list(dialog), read_messages(dialog, read),
                               ids, mask, max_tokens=self.info.max_positions)

    def _read(self, dialogs, reads, layer) -> list[torch.Tensor]:
        rendered = [self._render(d, r) for d, r in zip(dialogs, reads)]
        baselines = [self._baseline(d, r, *x) for d, r, x in zip(dialogs, reads, rendered)] \
            if self.spec.instruction_gain else None
        out: list[torch.Tensor | None] = [None] * len(dialogs)
        for rows in self._batches([ids for ids, _ in rendered], None):
            ids, attn, masks = pad_tokens([rendered[r] for r in rows], self.pad_id)
            base = None if baselines is None else tuple(
                t.to(self._device) for t in pad_tokens([baselines[r] for r in rows], self.pad_id))
            got = read_activations(self.model, ids.to(self._device), attn.to(self._device),
                                   masks.to(self._device), layer, baseline=base,
                                   instruction_gain=self.spec.instruction_gain)
            for r, v in zip(rows, got):
                out[r] = v
        return out

    def _batches(self, items, batch_size):
        """Row indices in batches of similar length (less padding), longest first."""
        length = (lambda item: len(item)) if items and isinstance(items[0], torch.Tensor) else (
            lambda item: len(item.input_ids))
        return length_batches([length(i) for i in items], batch_size or self.batch_size)
