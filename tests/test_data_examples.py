"""Token-level checks on SmolLM2: read masks, placeholders, labels, probes, dataset, collator."""

from pathlib import Path

import pytest
import torch

from latentqa.chat import SCAFFOLD, render_dialog
from latentqa.data import (
    AO_LAYOUT,
    IGNORE_INDEX,
    Collator,
    LatentQADataset,
    ProbeBuilder,
    Record,
    build_example,
    build_probe,
    load_data,
    render_target,
)

GOOD = Path(__file__).parent / "fixtures" / "data" / "good"
REPLY = "Sure, I've analyzed the assistant."
FIELDS = {
    "system": {"system": "You are a pirate.", "stimulus_user": "Where is Paris?"},
    "control": {"control_user": "Talk like a pirate."},
    "stimulus": {"control_user": "Talk like a pirate.", "control_model": "Aye!",
                 "stimulus_user": "Where is Paris?"},
    "stimulus_completion": {"control_user": "Talk like a pirate.", "control_model": "Aye!",
                            "stimulus_user": "Where is Paris?",
                            "stimulus_model": "In France, matey."},
}
# What SmolLM2's template makes of the read turns: whole turns, generation prompt included
# where the record ends in a user turn, never the masked turns nor the injected system prompt.
READ_TEXT = {
    "system": "<|im_start|>user\nWhere is Paris?<|im_end|>\n<|im_start|>assistant\n",
    "control": "<|im_start|>user\nTalk like a pirate.<|im_end|>\n<|im_start|>assistant\n",
    "stimulus": "<|im_start|>user\nWhere is Paris?<|im_end|>\n<|im_start|>assistant\n",
    "stimulus_completion": "<|im_start|>user\nWhere is Paris?<|im_end|>\n"
                           "<|im_start|>assistant\nIn France, matey.<|im_end|>\n",
}


@pytest.fixture(scope="module")
def tok():
    from latentqa.models import load_model

    return load_model("smollm2-135m").tokenizer


def _text(tok, ids):
    return "".join(tok.decode([i]) for i in ids)


def _runs(mask):
    """Contiguous runs of True as (start, end) pairs."""
    runs, start = [], None
    for i, m in enumerate(mask.tolist() + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("kind", list(FIELDS))
def test_read_mask_is_exactly_the_papers_table(tok, kind):
    record = Record.from_latentqa(kind, dict(FIELDS[kind], label="persona-pirate"))
    target = render_target(tok, record)
    ids, mask = target.input_ids, target.read_mask
    assert len(_runs(mask)) == 1  # one contiguous span, at the end
    assert mask[-1]
    assert _text(tok, ids[mask].tolist()) == READ_TEXT[kind]
    rendered = render_dialog(tok, list(record.messages),
                             add_generation_prompt=record.generation_prompt)
    assert rendered.input_ids == ids.tolist()
    for i, owner in enumerate(rendered.message_index):
        if owner != SCAFFOLD:  # every content token is read iff its message is
            assert bool(mask[i]) == (owner in record.read)
    if kind == "control":  # SmolLM2 injects a default system prompt here: scaffolding, unread
        assert "SmolLM" in rendered.text and "SmolLM" not in _text(tok, ids[mask].tolist())


@pytest.mark.parametrize("kind", list(FIELDS))
def test_placeholders_and_labels(tok, kind):
    record = Record.from_latentqa(kind, dict(FIELDS[kind], label="persona-pirate"))
    ex = build_example(tok, record, "Who is the assistant?", "A pirate.")
    assert int(ex.placeholder_mask.sum()) == int(ex.read_mask.sum()) == ex.num_read
    assert len(_runs(ex.placeholder_mask)) == 1
    assert set(ex.decoder_input_ids[ex.placeholder_mask].tolist()) == {
        tok("?", add_special_tokens=False)["input_ids"][0]}
    supervised = ex.labels != IGNORE_INDEX
    assert torch.equal(ex.labels[supervised], ex.decoder_input_ids[supervised])
    runs = _runs(supervised)
    assert len(runs) == 2  # the fixed reply and the answer, each with its end-of-turn marker
    texts = [_text(tok, ex.decoder_input_ids[a:b].tolist()) for a, b in runs]
    assert texts == [REPLY + "<|im_end|>\n", "A pirate.<|im_end|>\n"]
    text = _text(tok, ex.decoder_input_ids.tolist())
    assert text.count("<|im_start|>reflect\n") == 2 and "<|im_start|>assistant" not in text
    assert "Who is the assistant?" in _text(tok, ex.decoder_input_ids[~supervised].tolist())


def test_answer_only_supervision(tok):
    record = Record.from_latentqa("control", dict(FIELDS["control"], label="persona-pirate"))
    ex = build_example(tok, record, "Q?", "A pirate.", supervise="answer")
    supervised = ex.labels != IGNORE_INDEX
    assert _text(tok, ex.decoder_input_ids[supervised].tolist()) == "A pirate.<|im_end|>\n"


def test_generation_probe_is_the_prefix_of_the_training_probe(tok):
    builder = ProbeBuilder(tok)
    gen = builder.build(5, "Who is the assistant?")
    full = builder.build(5, "Who is the assistant?", "A pirate.")
    assert _text(tok, gen.input_ids.tolist()).endswith("Who is the assistant?<|im_end|>\n"
                                                       "<|im_start|>reflect\n")
    assert torch.equal(full.input_ids[: len(gen.input_ids)], gen.input_ids)
    assert torch.equal(full.placeholder_mask[: len(gen.input_ids)], gen.placeholder_mask)
    # scoring candidates: the answer-only labels are the candidate's tokens
    cand = builder.build(5, "Who is the assistant?", "A cat.", supervise="answer")
    assert torch.equal(cand.input_ids[: len(gen.input_ids)], gen.input_ids)
    assert (cand.labels[: len(gen.input_ids)] == IGNORE_INDEX).all()


def test_probe_counts_and_cache_agree(tok):
    builder = ProbeBuilder(tok)
    for n in (1, 7, 300):
        cached = builder.build(n, "Q?", "A.")
        fresh = build_probe(tok, n, "Q?", "A.")
        assert int(cached.placeholder_mask.sum()) == n
        assert torch.equal(cached.input_ids, fresh.input_ids)
        assert torch.equal(cached.labels, fresh.labels)
    with pytest.raises(ValueError):
        builder.build(0, "Q?", "A.")


def test_activation_oracles_layout(tok):
    probe = build_probe(tok, 4, "What is the topic?", "Pirates.", layout=AO_LAYOUT, layer=15)
    text = _text(tok, probe.input_ids.tolist())
    assert "<|im_start|>user\nLayer: 15\n ? ? ? ? \nWhat is the topic?<|im_end|>" in text
    assert "<|im_start|>assistant\nPirates." in text
    assert _text(tok, probe.input_ids[probe.labels != IGNORE_INDEX].tolist()) == \
        "Pirates.<|im_end|>\n"
    assert int(probe.placeholder_mask.sum()) == 4
    with pytest.raises(ValueError, match="layer"):
        build_probe(tok, 4, "Q?", "A.", layout=AO_LAYOUT)


def test_dataset_and_collator(tok):
    data = load_data(GOOD)
    ds = LatentQADataset(data, tok)
    assert len(ds) == len(data.pairs) == len(ds.lengths)
    examples = [ds[i] for i in range(len(ds))]
    for ex in examples:
        assert ex.num_read == int(ex.placeholder_mask.sum())
    batch = Collator(tok)(examples[:4])
    assert tok.pad_token_id == 2
    for key in ("target", "decoder"):
        ids, att = batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]
        assert ids.shape == att.shape and ids.shape[0] == 4
        assert (ids[att == 0] == 2).all()
    assert batch["read_mask"].dtype == torch.bool
    for i, ex in enumerate(examples[:4]):
        n_t, n_d = len(ex.target_input_ids), len(ex.decoder_input_ids)
        assert torch.equal(batch["target_input_ids"][i, :n_t], ex.target_input_ids)  # right pad
        assert not batch["read_mask"][i, n_t:].any()
        assert not batch["placeholder_mask"][i, n_d:].any()
        assert (batch["labels"][i, n_d:] == IGNORE_INDEX).all()
        assert int(batch["decoder_attention_mask"][i].sum()) == n_d
    assert batch["read_mask"].sum(1).tolist() == batch["placeholder_mask"].sum(1).tolist()
    left = Collator(tok, padding_side="left")(examples[:4])
    n_t = len(examples[0].target_input_ids)
    assert torch.equal(left["target_input_ids"][0, -n_t:], examples[0].target_input_ids)


def test_record_from_dialog_reads_any_part(tok):
    record = Record.from_dialog([{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"}], read=[-1])
    target = render_target(tok, record)
    assert not record.generation_prompt
    assert _text(tok, target.input_ids[target.read_mask].tolist()) == \
        "<|im_start|>assistant\nHello!<|im_end|>\n"


def test_a_batch_runs_through_capture_and_inject():
    """The pieces fit: DataLoader + sampler + collator feed capture, gather and inject."""
    from latentqa.activations import capture, gather, inject
    from latentqa.data import LengthGroupedBatchSampler
    from latentqa.models import load_model

    loaded = load_model("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    ds = LatentQADataset(load_data(GOOD), tok)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=LengthGroupedBatchSampler(ds.lengths, 3, seed=0),
        collate_fn=Collator(tok))
    batch = next(iter(loader))
    with torch.no_grad():
        hidden = capture(model, batch["target_input_ids"], batch["target_attention_mask"], 2)[2]
        vectors = gather(hidden, batch["read_mask"])
        with inject(model, 0, batch["placeholder_mask"], vectors):
            # the decoder pass only as far as block 0's output, where the activations are
            written = capture(model, batch["decoder_input_ids"],
                              batch["decoder_attention_mask"], 0)[0]
    assert torch.equal(written[batch["placeholder_mask"]], torch.cat(vectors))
    assert batch["labels"].shape == batch["decoder_input_ids"].shape
