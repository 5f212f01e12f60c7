"""The paper's released-decoder layout: a bare peft adapter for a Llama-3 chat model, read
after block 15, written after block 0, with the reference probe. Checked token by token with
the Llama-3 chat template on the SmolLM2 tokenizer (given Llama-3's special tokens) and run on
a tiny random 18-block llama (no download). 18 blocks, not 16: transformers reports the last
block's hidden state after the final norm, so block 15 must not be the last to compare."""

from __future__ import annotations

import copy

import pytest
import torch
from reading_fixtures import dev_decoder_dir

from latentqa.decoder import add_decoder_adapter, as_target
from latentqa.models import build_from_config
from latentqa.reading import DecoderMismatchError, Read, load

# Meta-Llama-3-8B-Instruct's chat template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>"
    "assistant<|end_header_id|>\n\n' }}{% endif %}")
SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def llama_dirs(smol_tokenizer, tmp_path_factory):
    """(a local 'Meta-Llama-3-8B-Instruct' folder, a bare adapter dir without sidecar)."""
    import transformers as T

    tok = copy.deepcopy(smol_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL, "bos_token": SPECIAL[0],
                            "eos_token": SPECIAL[3]})
    tok.chat_template = LLAMA3_TEMPLATE
    root = tmp_path_factory.mktemp("paper")
    base = root / "Meta-Llama-3-8B-Instruct"
    config = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = build_from_config(config)
    model.save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    adapter = root / "latentqa-paper-decoder"
    add_decoder_adapter(model, init_lora_weights=False).save_pretrained(adapter)
    return base, adapter


@pytest.fixture(scope="module")
def paper(llama_dirs):
    base, adapter = llama_dirs
    return load(adapter, base, preset="latentqa-paper")


def test_preset_sets_the_papers_layers_and_layout(paper):
    assert (paper.spec.read_layer, paper.spec.write_layer) == (15, 0)
    assert paper.layout.name == "paper" and paper.layout.reply_role == "reflect"
    assert paper.spec.num_blocks == 18 and paper.spec.hidden_size == 32


def test_probe_is_the_reference_prompt_token_by_token(paper):
    tok = paper.tokenizer
    probe = paper.probe(3, "What is the persona?")
    text = tok.decode(probe.input_ids)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n???<|eot_id|>"
        "<|start_header_id|>reflect<|end_header_id|>\n\nSure, I've analyzed the assistant."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the persona?<|eot_id|>"
        "<|start_header_id|>reflect<|end_header_id|>\n\n")
    ids = probe.input_ids.tolist()
    for special in SPECIAL:  # each is one token, not spelled out
        assert tok.convert_tokens_to_ids(special) in ids
    where = probe.placeholder_mask.nonzero().flatten().tolist()
    qmark = tok.convert_tokens_to_ids("?")
    assert [ids[i] for i in where] == [qmark] * 3
    assert ids[where[0] - 1] == tok("\n\n", add_special_tokens=False)["input_ids"][-1]
    assert ids[where[-1] + 1] == tok.convert_tokens_to_ids("<|eot_id|>")
    scored = paper.probe(3, "What is the persona?", "A pirate.")
    labelled = zip(scored.input_ids.tolist(), scored.labels.tolist())
    answer = [i for i, lab in labelled if lab != -100]
    assert tok.decode(answer) == "A pirate.<|eot_id|>"  # the answer only, with its stop token


def test_reads_the_user_turn_after_block_15(paper):
    dialog = [{"role": "system", "content": "You are a pirate."},
              {"role": "user", "content": "Hello there"}]
    rendered_ids, mask = paper._render(dialog, Read())
    read_text = paper.tokenizer.decode(rendered_ids[mask])
    assert read_text == ("<|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n")
    with torch.no_grad(), as_target(paper.model):
        hidden = paper.model(input_ids=rendered_ids[None], output_hidden_states=True)
    expected = hidden.hidden_states[16][0][mask]  # output of block 15
    assert torch.allclose(paper.activations(dialog)[0], expected, atol=1e-5)


def test_ask_and_score_run(paper):
    dialog = [{"role": "system", "content": "You are a pirate."},
              {"role": "user", "content": "Hello there"}]
    assert isinstance(paper.ask(dialog, "Who?", max_new_tokens=3), str)
    s = paper.score(dialog, "Who?", ["a pirate", "a chef"])
    assert all(torch.isfinite(torch.tensor(c.logprob)) for c in s.candidates)


def test_decoder_for_another_target_is_refused(llama_dirs, tmp_path_factory):
    base, _ = llama_dirs
    with pytest.raises(DecoderMismatchError, match="hidden size 576 vs 32"):
        load(dev_decoder_dir(tmp_path_factory), base)
