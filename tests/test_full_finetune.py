"""Full fine-tuning as a peft adapter: the target stays exact, only the copies train, and a saved
decoder reloads through the reader unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from latentqa.decoder import DecoderSpec, add_full_finetune_adapter, as_target, save_decoder


@pytest.mark.parametrize("arch,blocks,final_norm", [
    ("llama", "model.layers", "model.norm"), ("gpt2", "transformer.h", "transformer.ln_f"),
    ("gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm"),
])
def test_adapter_off_is_the_original_and_only_the_copies_train(arch, blocks, final_norm):
    from peft.tuners.ln_tuning.layer import LNTuningLayer

    model = tiny_model(arch)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        original = model(input_ids=ids).logits
    decoder = add_full_finetune_adapter(model)
    copied = {n.removeprefix("base_model.model.") for n, m in decoder.named_modules()
              if isinstance(m, LNTuningLayer)}
    assert copied == {f"{blocks}.{i}" for i in range(4)} | {final_norm}
    trainable = [(n, p) for n, p in decoder.named_parameters() if p.requires_grad]
    assert trainable and all(".ln_tuning_layers.default." in n for n, _ in trainable)

    optimizer = torch.optim.SGD([p for _, p in trainable], lr=0.5)
    decoder(input_ids=ids).logits.pow(2).mean().backward()
    for name, p in decoder.named_parameters():  # gradients reach every copy and nothing else
        assert (p.grad is not None) == p.requires_grad, name
    optimizer.step()

    flags = [p.requires_grad for p in decoder.parameters()]
    with torch.no_grad():
        trained = decoder(input_ids=ids).logits
        with as_target(decoder):
            target = decoder(input_ids=ids).logits
    assert not torch.allclose(trained, original)
    assert torch.equal(target, original)  # exactly the original weights, untouched
    assert flags == [p.requires_grad for p in decoder.parameters()]


def test_saved_decoder_reloads_through_the_reader_with_the_same_scores(tiny_target, tmp_path):
    from latentqa.models import load_model
    from latentqa.reading import CASES, load
    from latentqa.reading.reader import Reader

    loaded = load_model(str(tiny_target))
    decoder = add_full_finetune_adapter(loaded.model)
    torch.manual_seed(1)
    with torch.no_grad():  # a stand-in for training: every copy moves
        for p in decoder.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    spec = DecoderSpec(target=str(tiny_target), model_type="llama", num_blocks=4,
                       hidden_size=32, read_layer=2, write_layer=0)
    save_decoder(decoder, tmp_path / "decoder", spec)
    config = json.loads((tmp_path / "decoder" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LN_TUNING"

    dialog, question = CASES[0].dialog("Arr, a fine stew of fish!"), "Is the assistant a pirate?"
    before = Reader(decoder.eval(), loaded.tokenizer, spec).score(dialog, question, ["Yes", "No"])
    reader = load(str(tmp_path / "decoder"), str(tiny_target))
    after = reader.score(dialog, question, ["Yes", "No"])
    assert [c.logprob for c in after.candidates] == pytest.approx(
        [c.logprob for c in before.candidates], abs=1e-5)
    plain = load_model(str(tiny_target)).model
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), as_target(reader.model):
        assert torch.equal(reader.model(input_ids=ids).logits, plain(input_ids=ids).logits)
