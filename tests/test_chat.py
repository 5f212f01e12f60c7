"""Chat rendering labels every token from the template itself, on four template styles."""

from __future__ import annotations

import copy

import pytest
import torch

from latentqa import SCAFFOLD, ChatTemplateError, DialogTooLongError, render_dialog

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
STYLES = {"chatml": None, "llama3": LLAMA3, "mistral": MISTRAL, "gemma": GEMMA}
# The markers each family's own tokenizer has as special tokens (Mistral v0.1's [INST] is text).
SPECIALS = {"llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            "gemma": ["<start_of_turn>", "<end_of_turn>"]}


@pytest.fixture(scope="module")
def tokenizers(smol_tokenizer):
    """SmolLM2's tokenizer, given each template family's special tokens."""
    out = {}
    for style in STYLES:
        tok = copy.deepcopy(smol_tokenizer)
        if style in SPECIALS:
            tok.add_special_tokens({"additional_special_tokens": SPECIALS[style]})
        out[style] = tok
    return out

DIALOG = [
    {"role": "system", "content": "You are a pirate. Speak like one."},
    {"role": "user", "content": "What is the capital of France? "},
    {"role": "assistant", "content": "Arr, 'tis Paris!"},
    {"role": "user", "content": "And of Spain?"},
]


def _decoded(tok, rendered, owner, field="message_index"):
    ids = [t for t, m in zip(rendered.input_ids, getattr(rendered, field)) if m == owner]
    return tok.decode(ids)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_every_token_is_labelled_from_the_template(tokenizers, style, generation_prompt):
    tok = tokenizers[style]
    r = render_dialog(tok, DIALOG, chat_template=STYLES[style],
                      add_generation_prompt=generation_prompt)
    # the ids are exactly what the template renders
    if not r.notes:
        assert r.text == tok.apply_chat_template(
            DIALOG, chat_template=STYLES[style], tokenize=False,
            add_generation_prompt=generation_prompt)
    assert tok.decode(r.input_ids) == r.text
    for i, m in enumerate(DIALOG):
        assert _decoded(tok, r, i).strip() == m["content"].strip()
    scaffold = _decoded(tok, r, SCAFFOLD)
    for m in DIALOG:
        assert m["content"].strip() not in scaffold


def test_chatml_default_system_prompt_is_scaffolding_not_a_turn(smol_tokenizer):
    tok = smol_tokenizer
    r = render_dialog(tok, DIALOG[1:3])
    before_first_turn = _decoded(tok, r, SCAFFOLD, "turn_index")
    assert "You are a helpful AI assistant named SmolLM" in before_first_turn
    assert _decoded(tok, r, 0, "turn_index") == "<|im_start|>user\n" + DIALOG[1]["content"] + \
        "<|im_end|>\n"
    assert _decoded(tok, r, 1, "turn_index") == \
        "<|im_start|>assistant\nArr, 'tis Paris!<|im_end|>\n"


@pytest.mark.parametrize("style,first_header", [
    ("chatml", "<|im_start|>system\n"),
    ("llama3", "<|start_header_id|>system<|end_header_id|>\n\n"),
])
def test_turns_own_their_role_headers(tokenizers, style, first_header):
    tok = tokenizers[style]
    r = render_dialog(tok, DIALOG, chat_template=STYLES[style], add_generation_prompt=True)
    turns = [_decoded(tok, r, i, "turn_index") for i in range(len(DIALOG))]
    assert turns[0].startswith(first_header)
    assert "user" in turns[1].split(DIALOG[1]["content"].strip())[0]
    assert turns[3].rstrip().endswith("assistant" + ("<|end_header_id|>" if style == "llama3"
                                                      else ""))
    assert "".join(turns) in r.text
    assert _decoded(tok, r, SCAFFOLD, "turn_index") in ("", tok.bos_token)


def test_template_that_refuses_system_gets_it_merged_but_still_labelled(tokenizers):
    for style in ("mistral", "gemma"):
        tok = tokenizers[style]
        r = render_dialog(tok, DIALOG, chat_template=STYLES[style])
        assert any("refuses a system message" in n for n in r.notes)
        assert _decoded(tok, r, 0).strip() == DIALOG[0]["content"]
        assert _decoded(tok, r, 1).strip() == DIALOG[1]["content"].strip()
        # the system text sits inside the first user turn, before the user's words
        assert r.token_span(0)[1] <= r.token_span(1)[0]


def test_custom_reflect_role(tokenizers):
    tok = tokenizers["gemma"]
    dialog = [{"role": "user", "content": "? ? ?"},
              {"role": "reflect", "content": "Sure, I've analyzed the assistant."}]
    chatml = render_dialog(tok, dialog)
    assert "<|im_start|>reflect\n" in chatml.text and not chatml.notes
    gemma = render_dialog(tok, dialog, chat_template=GEMMA)
    assert "<start_of_turn>reflect\n" in gemma.text
    # Mistral's template refuses unknown roles: rendered as assistant, and said so
    mistral = render_dialog(tok, dialog, chat_template=MISTRAL)
    assert any("reflect" in n for n in mistral.notes)
    assert _decoded(tok, mistral, 1) == dialog[1]["content"]


def test_content_that_looks_like_scaffolding_is_still_content(smol_tokenizer):
    tok = smol_tokenizer
    dialog = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]
    r = render_dialog(tok, dialog)
    assert _decoded(tok, r, 0) == "user" and _decoded(tok, r, 1) == "assistant"


def test_no_chat_template_is_a_clear_error(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        render_dialog(tok, "hello")


def test_dialog_longer_than_context_is_refused(smol_tokenizer):
    with pytest.raises(DialogTooLongError, match=r"renders to \d+ tokens, more than .* 16"):
        render_dialog(smol_tokenizer, "word " * 50, max_tokens=16)


@pytest.mark.parametrize("bad", [[], "", [{"role": "user"}], [{"role": 1, "content": "x"}], 5])
def test_malformed_dialogs_are_refused(smol_tokenizer, bad):
    with pytest.raises(ValueError, match="dialog|message 0"):
        render_dialog(smol_tokenizer, bad)


def test_pad_tokens_right_and_left():
    from latentqa.batching import pad_tokens

    ids, attn, masks = pad_tokens([([5, 6, 7], [False, True, True]), ([8], [True])], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert masks.tolist() == [[False, True, True], [True, False, False]]
    ids, attn, masks = pad_tokens([[5, 6, 7], torch.tensor([8])], 9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and masks is None
    assert attn.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_tokens([[1]], 0, side="middle")
