"""Capture and injection: exact against transformers' own hidden states, on every family."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, tiny_model

from latentqa import (
    LayerError,
    add_decoder_adapter,
    as_target,
    capture,
    find_blocks,
    gather,
    inject,
    model_info,
    position_ids_from_mask,
    render_dialog,
)


def _batch(padding: str, seed: int = 0, vocab: int = 128):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in ((1, 3), (2, 5)):
        if padding == "left":
            mask[row, :n_pad] = 0
        else:
            mask[row, -n_pad:] = 0
    return ids, mask


def _reference_hidden_states(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask,
                    position_ids=position_ids_from_mask(mask), output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_capture_equals_hidden_states_on_every_family(arch, padding):
    model = tiny_model(arch)
    ids, mask = _batch(padding)
    reference = _reference_hidden_states(model, ids, mask)
    n = model_info(model).num_blocks
    # The last block's hidden_states entry has the final norm applied, so compare 0..n-2.
    layers = list(range(n - 1))
    with torch.no_grad():
        got = capture(model, ids, mask, layers=layers)
    for k in layers:
        real = mask.bool()
        torch.testing.assert_close(got[k][real], reference[k + 1][real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padded_row_reads_as_if_alone(arch):
    model = tiny_model(arch)
    ids, mask = _batch("left")
    with torch.no_grad():
        batched = capture(model, ids, mask, layers=2)[2]
        alone = capture(model, ids[2:, 5:], mask[2:, 5:], layers=2)[2]
    torch.testing.assert_close(batched[2, 5:], alone[0], rtol=1e-4, atol=1e-5)


def test_capture_stops_after_the_deepest_requested_block():
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    calls = [0] * len(blocks)
    handles = [b.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(blocks)]
    ids, mask = _batch("right")
    with torch.no_grad():
        got = capture(model, ids, mask, layers=[0, 1])
    for h in handles:
        h.remove()
    assert sorted(got) == [0, 1]
    assert calls == [1, 1, 0, 0]


def test_layer_out_of_range_is_refused_with_the_valid_range():
    model = tiny_model("llama")
    ids, mask = _batch("right")
    with pytest.raises(LayerError, match=r"out of range.*4 blocks.*0\.\.3"):
        capture(model, ids, mask, layers=4)
    with pytest.raises(LayerError, match="write layer 9 is out of range"):
        with inject(model, 9, mask.bool(), torch.zeros(int(mask.sum()), 32)):
            pass
    assert capture(model, ids, mask, layers=-1).keys() == {3}  # negative counts from the end


def test_injection_round_trip_on_tiny_model_and_vector_count_checked():
    model = tiny_model("qwen2")
    ids, mask = _batch("right")
    sel = torch.zeros_like(mask, dtype=torch.bool)
    sel[0, 2:5] = True
    sel[1, 0:2] = True
    with torch.no_grad():
        h = capture(model, ids, mask, layers=1)[1]
        base = model(input_ids=ids, attention_mask=mask).logits
        with inject(model, 1, sel, gather(h, sel)):
            same = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(same, base, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="selects 5 positions but 4 vectors"):
        with inject(model, 1, sel, torch.zeros(4, 32)):
            pass


# --- the real SmolLM2 -------------------------------------------------------------------

DIALOG_A = [{"role": "system", "content": "You are a pirate. Speak like one."},
            {"role": "user", "content": "What is the capital of France?"}]
DIALOG_B = [{"role": "system", "content": "You are a cheerful chef who loves soup."},
            {"role": "user", "content": "What is the capital of Spain?"}]


def _encode(tok, dialog):
    r = render_dialog(tok, dialog, add_generation_prompt=True)
    return r, torch.tensor([r.input_ids])


def test_smollm2_capture_matches_hidden_states_left_and_right_padded(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    (_, a), (_, b) = _encode(tok, DIALOG_A), _encode(tok, DIALOG_B)
    width = max(a.shape[1], b.shape[1])
    for side in ("left", "right"):
        rows, masks = [], []
        for x in (a, b):
            pad = torch.full((1, width - x.shape[1]), tok.pad_token_id)
            m = torch.ones_like(x)
            z = torch.zeros_like(pad)
            rows.append(torch.cat([pad, x] if side == "left" else [x, pad], 1))
            masks.append(torch.cat([z, m] if side == "left" else [m, z], 1))
        ids, mask = torch.cat(rows), torch.cat(masks)
        reference = _reference_hidden_states(model, ids, mask)
        with torch.no_grad():
            got = capture(model, ids, mask, layers=[0, 7, 14, 22, 28])
        for k, h in got.items():
            real = mask.bool()
            torch.testing.assert_close(h[real], reference[k + 1][real], rtol=0, atol=1e-4)


def test_smollm2_inject_same_activations_leaves_logits_unchanged(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ra, a = _encode(tok, DIALOG_A)
    rb, b = _encode(tok, DIALOG_B)
    read_a = ra.mask([1], whole_turns=True)[None]  # the user turn: the pirate prompt is hidden
    read_b = rb.mask([1], whole_turns=True)[None]
    n = min(int(read_a.sum()), int(read_b.sum()))
    with torch.no_grad():
        base = model(input_ids=a).logits
        for j in (0, 14):
            h_a = capture(model, a, layers=j)[j]
            with inject(model, j, read_a, gather(h_a, read_a)) as hook:
                same = model(input_ids=a).logits
            assert hook.calls == 1
            assert (same - base).abs().max().item() < 1e-4
            # another dialog's activations, written at the same positions, change the output
            h_b = capture(model, b, layers=j)[j]
            sel = read_a.clone()
            sel[0, read_a[0].nonzero()[n:, 0]] = False
            with inject(model, j, sel, gather(h_b, read_b)[0][:n]):
                other = model(input_ids=a).logits
            assert (other - base).abs().max().item() > 1e-2


def test_smollm2_norm_add_injection_matches_formula_and_changes_output(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    _, a = _encode(tok, DIALOG_A)
    sel = torch.zeros_like(a, dtype=torch.bool)
    sel[0, -4:] = True
    v = torch.randn(4, model_info(model).hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = capture(model, a, layers=[0, 1])
        seen = {}
        _, blocks = find_blocks(model)

        def record_input(_module, args, kwargs):
            seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

        probe = blocks[1].register_forward_pre_hook(record_input, with_kwargs=True)
        with inject(model, 0, sel, v, mode="norm_add"):
            capture(model, a, layers=1)
        probe.remove()
    hs = h[0][sel]
    expected = hs + hs.norm(dim=-1, keepdim=True) * v / v.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(seen["h"][sel], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["h"][~sel], h[0][~sel], rtol=0, atol=0)


def test_smollm2_injection_acts_on_prompt_pass_only_with_kv_cache(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ra, a = _encode(tok, DIALOG_A)
    read = ra.mask([1], whole_turns=True)[None]
    with torch.no_grad():
        h = capture(model, a, layers=3)[3]
        plain = model.generate(a, max_new_tokens=6, do_sample=False, use_cache=True)
        with inject(model, 3, read, gather(h, read), once=True) as hook:
            same = model.generate(a, max_new_tokens=6, do_sample=False, use_cache=True)
        assert hook.calls == 1
        assert torch.equal(plain, same)
        # Garbage written on the prompt pass changes what is generated, with the cache on.
        with inject(model, 3, read, 50 * torch.randn(int(read.sum()), 576), once=True):
            changed = model.generate(a, max_new_tokens=6, do_sample=False, use_cache=True)
    assert not torch.equal(plain, changed)


def test_gradients_flow_through_injected_vectors(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    _, a = _encode(tok, DIALOG_A)
    sel = torch.zeros_like(a, dtype=torch.bool)
    sel[0, 3:6] = True
    v = torch.randn(3, 576, requires_grad=True)
    with inject(model, 0, sel, v):
        loss = model(input_ids=a).logits[0, -1].logsumexp(-1)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_one_copy_target_capture_with_adapter_disabled_equals_base(smollm2):
    import copy

    base = copy.deepcopy(smollm2.model)  # test-only second copy, to compare against
    base_ptrs = {p.data_ptr() for p in base.parameters()}
    _, a = _encode(smollm2.tokenizer, DIALOG_A)
    with torch.no_grad():
        expected = capture(base, a, layers=[5, 14])
        torch.manual_seed(0)
        decoder = add_decoder_adapter(base, r=4, init_lora_weights=False)  # non-zero adapter
        adapted = capture(decoder, a, layers=[5, 14])
        with as_target(decoder):
            target = capture(decoder, a, layers=[5, 14])
    assert (adapted[14] - expected[14]).abs().max() > 1e-3  # the adapter does something
    for k in (5, 14):
        torch.testing.assert_close(target[k], expected[k], rtol=0, atol=0)
    # peft wraps the base weights in place: the decoder's non-LoRA parameters are the base's
    wrapped = {p.data_ptr() for n, p in decoder.named_parameters() if "lora_" not in n}
    assert wrapped == base_ptrs


def test_folded_adapter_matches_the_adapter_and_restores_the_target_exactly():
    from latentqa.decoder import folded_adapter

    torch.manual_seed(0)
    decoder = add_decoder_adapter(tiny_model("llama"), r=4, init_lora_weights=False).eval()
    ids = torch.randint(3, 120, (2, 9))
    before = {n: p.detach().clone() for n, p in decoder.named_parameters()}
    with torch.no_grad():
        with as_target(decoder):
            target = decoder(input_ids=ids).logits
        adapted = decoder(input_ids=ids).logits
        with folded_adapter(decoder):
            weight = decoder.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
            assert not any(torch.equal(weight, p) for p in before.values())  # really folded
            folded = decoder(input_ids=ids).logits
        torch.testing.assert_close(folded, adapted, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(folded, target, atol=1e-3)
        with as_target(decoder):
            assert torch.equal(decoder(input_ids=ids).logits, target)
        assert torch.equal(decoder(input_ids=ids).logits, adapted)
    for n, p in decoder.named_parameters():
        assert torch.equal(p, before[n]), n


def test_folded_adapter_stays_unfolded_with_gradients_or_without_memory():
    from latentqa.decoder import folded_adapter

    decoder = add_decoder_adapter(tiny_model("llama"), r=4, init_lora_weights=False)
    q = decoder.base_model.model.model.layers[0].self_attn.q_proj
    weight = q.base_layer.weight
    with folded_adapter(decoder):  # gradients on: training must see the adapter
        assert q.base_layer.weight is weight and not q.disable_adapters
    with torch.no_grad(), folded_adapter(decoder, max_share=0.0):
        assert q.base_layer.weight is weight and not q.disable_adapters
    with torch.no_grad(), folded_adapter(decoder):
        assert q.base_layer.weight is not weight and q.disable_adapters
    assert q.base_layer.weight is weight and not q.disable_adapters
    with torch.no_grad(), as_target(decoder), folded_adapter(decoder):  # the target wanted
        assert q.base_layer.weight is weight and q.disable_adapters
