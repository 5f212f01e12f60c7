"""Reading without a model: read selections, input shapes, decoder resolution and checks."""

from __future__ import annotations

import json
import shutil

import pytest
from reading_fixtures import dev_decoder_dir

from latentqa.chat import render_dialog
from latentqa.reading import DecoderError, DecoderMismatchError, Read, ReadingError
from latentqa.reading.controls import check_control, shuffled_sources
from latentqa.reading.decoders import check_compatible, model_name, resolve_decoder
from latentqa.reading.inputs import as_dialogs, as_questions, shaped
from latentqa.reading.reader import config_info
from latentqa.selection import as_read, parse_read

DIALOG = [{"role": "system", "content": "You are a pirate."},
          {"role": "user", "content": "Hi there!"},
          {"role": "assistant", "content": "Arr, ahoy!"}]


@pytest.fixture(scope="module")
def rendered(smol_tokenizer):
    return render_dialog(smol_tokenizer, DIALOG)


def test_default_read_skips_the_system_turn_and_scaffolding(rendered):
    mask = Read().mask(rendered)
    owners = {t for t, m in zip(rendered.turn_index, mask.tolist()) if m}
    assert owners == {1, 2}
    assert mask.tolist() == rendered.mask([1, 2], whole_turns=True).tolist()


def test_read_messages_tokens_and_last(rendered):
    assert as_read(2).mask(rendered).tolist() == rendered.mask([2], whole_turns=True).tolist()
    assert as_read([-1]).mask(rendered).tolist() == rendered.mask([2], whole_turns=True).tolist()
    assert as_read(slice(3, 7)).mask(rendered).nonzero().flatten().tolist() == [3, 4, 5, 6]
    last = as_read("last:4").mask(rendered)
    assert last.sum() == 4 and last[-4:].all()
    assert parse_read("tokens::5").mask(rendered).sum() == 5
    assert parse_read("messages:1,2") == Read.of_messages(1, 2)


@pytest.mark.parametrize("bad", ["last:0", "tokens:5", "nonsense", "messages:", "last:x"])
def test_bad_read_text(bad):
    with pytest.raises(ReadingError):
        parse_read(bad)


def test_read_selecting_nothing_or_missing_messages(smol_tokenizer):
    only_system = render_dialog(smol_tokenizer, DIALOG[:1])
    with pytest.raises(ReadingError, match="nothing to read"):
        Read().mask(only_system)
    with pytest.raises(ReadingError, match="message 5 does not exist"):
        as_read(5).mask(only_system)


def test_dialog_and_question_shapes():
    assert as_dialogs("hi") == ([[{"role": "user", "content": "hi"}]], True)
    assert as_dialogs(DIALOG)[1] is True
    dialogs, single = as_dialogs(["a", DIALOG])
    assert not single and len(dialogs) == 2 and dialogs[1] == DIALOG
    assert as_questions("q") == (["q"], True) and as_questions(["a", "b"]) == (["a", "b"], False)
    flat = ["d0q0", "d0q1", "d1q0", "d1q1"]
    assert shaped(flat, 2, 2, False, False) == [["d0q0", "d0q1"], ["d1q0", "d1q1"]]
    assert shaped(flat[:2], 1, 2, True, False) == ["d0q0", "d0q1"]
    assert shaped(flat[:1], 1, 1, True, True) == "d0q0"


@pytest.mark.parametrize("bad", ["", "   ", [], [{"role": "user", "content": ""}], [[]], 3])
def test_empty_dialogs_are_refused(bad):
    with pytest.raises(ReadingError, match="empty|dialog"):
        as_dialogs(bad)


@pytest.mark.parametrize("bad", [[], "", [""], None])
def test_no_questions_are_refused(bad):
    with pytest.raises(ReadingError):
        as_questions(bad)


def test_controls():
    assert check_control(None) is None and check_control("shuffled") == "shuffled"
    with pytest.raises(ReadingError):
        check_control("random")
    src = shuffled_sources(5)
    assert sorted(src) == list(range(5)) and all(i != j for i, j in enumerate(src))


def test_model_names_compare_across_spec_kinds():
    assert model_name("meta-llama/Meta-Llama-3-8B-Instruct") == model_name(
        "/models/Meta-Llama-3-8B-Instruct/")
    assert model_name("smollm2-135m") == model_name("/root/.cache/latentqa/models/smollm2-135m")


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    return dev_decoder_dir(tmp_path_factory)


def _copy_with(tmp_path, src, **sidecar):
    dst = tmp_path / "decoder"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "latentqa_decoder.json").read_text())
    meta.update(sidecar)
    (dst / "latentqa_decoder.json").write_text(json.dumps(meta))
    return dst


def test_sidecar_decoder_resolves_and_options_override(dev_dir):
    r = resolve_decoder(dev_dir)
    assert r.has_sidecar and r.spec.target == "smollm2-135m" and r.spec.layout == "paper"
    assert resolve_decoder(dev_dir, read_layer=10).spec.read_layer == 10
    check_compatible(r, "smollm2-135m", config_info(_smol_config()))


def _smol_config():
    from latentqa.models import load_config

    return load_config("smollm2-135m")


@pytest.mark.parametrize("change, message", [
    (dict(hidden_size=2048), "hidden size 2048 vs 576"),
    (dict(num_blocks=16), "16 blocks vs 30"),
    (dict(target="other-model"), "model 'other-model' vs 'smollm2-135m'"),
])
def test_mismatched_decoders_are_refused(tmp_path, dev_dir, change, message):
    r = resolve_decoder(_copy_with(tmp_path, dev_dir, **change))
    with pytest.raises(DecoderMismatchError, match=message):
        check_compatible(r, "smollm2-135m", config_info(_smol_config()))


def test_name_check_can_be_waived(tmp_path, dev_dir):
    r = resolve_decoder(_copy_with(tmp_path, dev_dir, target="my-smollm2-copy"))
    check_compatible(r, "smollm2-135m", config_info(_smol_config()), check_name=False)


def test_bare_adapter_needs_layout_and_layers(tmp_path, dev_dir):
    bare = tmp_path / "bare"
    shutil.copytree(dev_dir, bare)
    (bare / "latentqa_decoder.json").unlink()
    with pytest.raises(DecoderError, match="--preset"):
        resolve_decoder(bare)
    r = resolve_decoder(bare, preset="latentqa-paper")
    assert (r.spec.read_layer, r.spec.write_layer, r.spec.layout) == (15, 0, "paper")
    assert r.spec.target == "meta-llama/Meta-Llama-3-8B-Instruct" and not r.has_sidecar
    r = resolve_decoder(bare, layout="paper", read_layer=3, write_layer=1)
    assert (r.spec.read_layer, r.spec.write_layer) == (3, 1)
    with pytest.raises(DecoderError, match="unknown preset"):
        resolve_decoder(bare, preset="nope")


def test_missing_decoders(tmp_path):
    with pytest.raises(DecoderError, match="does not exist"):
        resolve_decoder(tmp_path / "nope")
    with pytest.raises(DecoderError, match="no adapter_config.json"):
        resolve_decoder(tmp_path)


def test_shipped_default_is_looked_for_in_the_package():
    from latentqa.reading import SHIPPED_DECODER

    assert SHIPPED_DECODER.parts[-3:] == ("latentqa", "decoders", "smollm2-135m")
    if not SHIPPED_DECODER.exists():
        with pytest.raises(DecoderError, match="shipped decoder is not installed"):
            resolve_decoder(None)
