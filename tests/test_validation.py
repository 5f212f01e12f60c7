"""latentqa.validation: one set of rules for the CLI, the server, files and the Python API
(issue 20), and the corrupt-adapter and injection-choice checks that go with it."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest

from latentqa.errors import LatentQAError, ReadingError, UsageError
from latentqa.validation import (
    ROLES,
    FieldError,
    check_dialog,
    check_sampling,
    check_texts,
    find_bad_text,
    unicode_problem,
)

REPO = Path(__file__).resolve().parents[1]
LONE = "\ud800"


def test_field_errors_are_user_errors_of_every_kind_callers_catch():
    e = FieldError("x: bad", "x")
    assert isinstance(e, LatentQAError) and isinstance(e, UsageError)
    assert isinstance(e, ReadingError) and isinstance(e, ValueError) and e.param == "x"


def test_dialogs():
    assert ROLES == ("system", "user", "assistant")
    dialog = [{"role": "system", "content": ""}, {"role": "user", "content": "hi", "x": 1}]
    assert check_dialog(dialog) == [{"role": "system", "content": ""},
                                    {"role": "user", "content": "hi"}]
    for bad, param, needle in [
        ([{"role": "wizard", "content": "hi"}], "messages.0.role", "unknown role 'wizard'"),
        ([{"role": "user", "content": "a" + LONE}], "messages.0.content", "U+D800 at "
                                                                           "character 1"),
        ([{"role": "user", "content": 3}], "messages.0.content", "expected a string"),
        ([{"role": "user"}], "messages.0.content", "missing 'content'"),
        ([{"role": "user", "content": " "}], "messages", "empty"),
        ([], "messages", "empty"),
        (["hi"], "messages.0", "expected a {role, content} object"),
    ]:
        with pytest.raises(FieldError, match=re.escape(needle)) as got:
            check_dialog(bad)
        assert got.value.param == param
    with pytest.raises(FieldError, match=r"^f\.jsonl, line 3: messages\[0\]\.role"):
        check_dialog([{"role": "tool", "content": "x"}], where="f.jsonl, line 3: ")


def test_texts_and_unicode():
    assert check_texts(["a", "b"], "questions") == ["a", "b"]
    with pytest.raises(FieldError, match="no questions"):
        check_texts([], "questions")
    with pytest.raises(FieldError, match=r"candidates\[1\] is empty") as got:
        check_texts(["a", "  "], "candidates", kind="candidate")
    assert got.value.param == "candidates.1"
    assert unicode_problem("fine ✓ 🦜") is None and "U+DCED" in unicode_problem("\udced")
    assert find_bad_text({"a": [1, {"b": LONE}]}, "config") == ("config.a.1.b",
                                                                unicode_problem(LONE))
    assert find_bad_text({"a": ["ok"]}, "config") is None


def test_sampling_ranges_and_names():
    check_sampling(max_new_tokens=1, temperature=0, top_p=1, seed=-5)
    check_sampling(temperature=2.0, top_p=0.01, seed=2**64 - 1)
    for kwargs, param in [({"temperature": -1}, "temperature"), ({"temperature": 2.1},
                                                                  "temperature"),
                          ({"temperature": float("nan")}, "temperature"),
                          ({"top_p": 0}, "top_p"), ({"top_p": 2}, "top_p"),
                          ({"max_new_tokens": 0}, "max_new_tokens"),
                          ({"max_new_tokens": True}, "max_new_tokens"),
                          ({"seed": 2**64}, "seed"), ({"seed": 1.5}, "seed")]:
        with pytest.raises(FieldError) as got:
            check_sampling(**kwargs)
        assert got.value.param == param, kwargs
    with pytest.raises(FieldError, match="^--top-p must be"):
        check_sampling(top_p=2, names={"top_p": "--top-p"})


def test_the_python_api_applies_the_same_rules():
    from latentqa.reading.inputs import as_candidates, as_dialogs, as_questions

    with pytest.raises(FieldError, match="unknown role 'wizard'"):
        as_dialogs([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ReadingError, match="dialog 1: .*lone surrogate"):
        as_dialogs(["hi", [{"role": "user", "content": LONE}]])
    with pytest.raises(ReadingError, match="lone surrogate"):
        as_dialogs(LONE)
    with pytest.raises(FieldError, match="lone surrogate"):
        as_questions(LONE)
    with pytest.raises(FieldError, match="lone surrogate"):
        as_candidates(["a", LONE])


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    from conftest import tiny_model

    from latentqa.arch import model_info
    from latentqa.decoder import DecoderSpec, add_decoder_adapter, save_decoder

    model = tiny_model("llama")
    info = model_info(model)
    spec = DecoderSpec(target="tiny", model_type=info.model_type, num_blocks=info.num_blocks,
                       hidden_size=info.hidden_size, read_layer=2, write_layer=0)
    return save_decoder(add_decoder_adapter(model, r=2), tmp_path_factory.mktemp("a") / "d",
                        spec)


def test_a_truncated_adapter_is_a_decoder_error_naming_the_file(tiny_adapter, tmp_path):
    import shutil

    from conftest import tiny_model

    from latentqa.decoder import (
        DecoderError,
        DecoderSpec,
        check_adapter_weights,
        load_decoder_adapter,
    )
    from latentqa.reading import DecoderError as ReadingsDecoderError
    from latentqa.reading import resolve_decoder

    assert ReadingsDecoderError is DecoderError and issubclass(DecoderError, ReadingError)
    assert check_adapter_weights(tiny_adapter).name == "adapter_model.safetensors"
    assert DecoderSpec.read(tiny_adapter).read_layer == 2
    bad = tmp_path / "decoder"
    shutil.copytree(tiny_adapter, bad)
    weights = bad / "adapter_model.safetensors"
    for cut in (weights.stat().st_size // 2, 4):  # in the tensors, in the header
        weights.write_bytes((tiny_adapter / weights.name).read_bytes()[:cut])
        for call in (lambda: check_adapter_weights(bad), lambda: DecoderSpec.read(bad),
                     lambda: resolve_decoder(bad),
                     lambda: load_decoder_adapter(tiny_model("llama"), bad)):
            with pytest.raises(DecoderError, match="truncated or corrupt") as got:
                call()
            assert str(weights) in str(got.value)
    (bad / "latentqa_decoder.json").write_text("[1, 2]")
    with pytest.raises(DecoderError, match="not a valid decoder sidecar"):
        DecoderSpec.read(bad)


def _choices(parser: argparse.ArgumentParser, command: str, flag: str):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_injection_choices_are_injection_modes_everywhere():
    from latentqa.activations import INJECTION_MODES
    from latentqa.cli import build_parser
    from latentqa.serve import schemas

    assert INJECTION_MODES == ("replace", "norm_add")
    parser = build_parser()
    for command in ("read", "score", "demo", "serve"):
        assert _choices(parser, command, "--injection") == INJECTION_MODES, command
    assert typing.get_args(schemas.Injection) == INJECTION_MODES
    for path in ("reading/cli.py", "serve/cli.py", "serve/schemas.py"):
        text = (REPO / "src" / "latentqa" / path).read_text()
        assert '"replace", "norm_add"' not in text, path


def test_reading_doc_uses_the_exported_load():
    import latentqa
    from latentqa.reading import load

    assert latentqa.load is load
    doc = (REPO / "docs" / "reading.md").read_text()
    assert "once the package exports it" not in doc and "latentqa.load()" in doc


def test_reader_ask_applies_the_sampling_rules():
    from latentqa.reading.reader import Reader

    reader = Reader.__new__(Reader)  # the rules run before any model is touched
    for kwargs, param in [({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"),
                          ({"max_new_tokens": 0}, "max_new_tokens")]:
        with pytest.raises(FieldError) as got:
            reader.ask([{"role": "user", "content": "hi"}], "Who?", **kwargs)
        assert got.value.param == param
