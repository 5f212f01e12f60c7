"""`latentqa read`, `score`, batch mode and `demo`'s wiring; bad input is one line, exit 2.

The commands reuse one loaded reader (``_load`` patched) except where loading is under test.
"""

from __future__ import annotations

import json
import socket

import pytest
from reading_fixtures import dev_decoder_dir, reading_main

from latentqa.reading import cli as reading_cli
from latentqa.reading import load

ARGS = ["--system", "You are a pirate.", "--user", "Hi!", "--assistant", "Arr, ahoy!"]


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    return str(dev_decoder_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def reader(dev_dir):
    return load(dev_dir)


@pytest.fixture
def patched(reader, monkeypatch):
    seen = []

    def fake_load(args):
        seen.append(args)
        return reader

    monkeypatch.setattr(reading_cli, "_load", fake_load)
    return seen


def test_read_json_from_flags_keeps_message_order(patched, capsys):
    assert reading_main(["read", *ARGS, "-q", "Who is the assistant?", "-q", "Why?",
                         "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in out["answers"]] == ["Who is the assistant?", "Why?"]
    assert all(isinstance(a["answer"], str) for a in out["answers"])
    assert patched[0].messages == [{"role": "system", "content": "You are a pirate."},
                                   {"role": "user", "content": "Hi!"},
                                   {"role": "assistant", "content": "Arr, ahoy!"}]


def test_read_text_from_json_and_jsonl_files(patched, tmp_path, capsys):
    messages = [{"role": "system", "content": "Be a chef."}, {"role": "user", "content": "Hi"}]
    (tmp_path / "d.json").write_text(json.dumps(messages))
    assert reading_main(["read", str(tmp_path / "d.json"), "-q", "Who?",
                         "--max-new-tokens", "3"]) == 0
    assert "Q: Who?\nA:" in capsys.readouterr().out
    lines = [{"messages": messages, "label": "x"}, {"messages": messages, "read": [1]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert reading_main(["read", str(tmp_path / "d.jsonl"), "-q", "Who?", "--json",
                         "--max-new-tokens", "3", "--control", "shuffled"]) == 0
    out = json.loads(capsys.readouterr().out)["answers"]
    assert [a["dialog"] for a in out] == [0, 1]


def test_score_json(patched, capsys):
    assert reading_main(["score", *ARGS, "-q", "Describe the assistant.", "-c", "a pirate",
                         "-c", "a chef", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["scores"][0]
    assert s["best"] in ("a pirate", "a chef")
    assert {"candidate", "logprob", "mean_logprob", "num_tokens", "tokens",
            "token_logprobs"} <= set(s["candidates"][0])
    assert reading_main(["score", *ARGS, "-q", "Who?", "-c", "a pirate"]) == 0
    assert "candidate (best first)" in capsys.readouterr().out


def test_batch_mode_writes_one_row_per_question(patched, tmp_path, capsys):
    rows = [{"id": "a", "messages": [{"role": "user", "content": "Hi"}], "question": "Who?"},
            {"id": "b", "dialog": "Ahoy matey", "questions": ["Who?", "Why?"]}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    assert reading_main(["read", "--batch", str(tmp_path / "rows.jsonl"), "-o", str(out),
                         "--max-new-tokens", "3"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["id"], g["question"]) for g in got] == [("a", "Who?"), ("b", "Who?"),
                                                       ("b", "Why?")]
    assert all("answer" in g for g in got)
    scored = [dict(r, candidates=["x", "y"]) for r in rows]
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in scored))
    assert reading_main(["score", "--batch", str(tmp_path / "s.jsonl")]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(got) == 3 and all(g["best"] in ("x", "y") and len(g["scores"]) == 2 for g in got)


def test_demo_prints_each_case(patched, monkeypatch, capsys):
    from latentqa.reading import demo

    monkeypatch.setattr(demo, "REPLY_TOKENS", 4)
    assert reading_main(["demo", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("pirate", "salesperson", "rhymes", "plain"):
        assert f". {name} ===" in out
    assert out.count("hidden instruction:") == 4 and out.count("true description ranked") == 4


@pytest.mark.parametrize("argv, message", [
    (["read", *ARGS], "no questions"),
    (["read", "-q", "Who?"], "no dialog"),
    (["read", "--user", "", "-q", "Who?"], "empty"),
    (["score", *ARGS, "-q", "Who?"], "no candidates"),
    (["read", *ARGS, "-q", "Who?", "--read", "bogus"], "cannot parse"),
    (["read", "missing.json", "-q", "Who?"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(patched, capsys, argv, message):
    assert reading_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentqa: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_question_longer_than_context_is_one_line(patched, capsys):
    assert reading_main(["read", *ARGS, "-q", "why " * 9000]) == 2
    err = capsys.readouterr().err
    assert "context of 8192 tokens" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--layer", "40"], "read layer 40 is out of range"),
    (["--target", "/nonexistent/model"], "no model at"),
])
def test_bad_layer_and_target_fail_before_loading_weights(dev_dir, capsys, extra, message):
    assert reading_main(["read", *ARGS, "-q", "Who?", "--decoder", dev_dir, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mismatched_decoder_is_one_line(dev_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "decoder"
    shutil.copytree(dev_dir, bad)
    meta = json.loads((bad / "latentqa_decoder.json").read_text())
    (bad / "latentqa_decoder.json").write_text(json.dumps(dict(meta, hidden_size=4096)))
    assert reading_main(["score", *ARGS, "-q", "Who?", "-c", "x", "--decoder", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "made for another target" in err and "hidden size 4096 vs 576" in err
    assert "Traceback" not in err


# ---- the rules shared with the server (latentqa.validation), batch output, corrupt decoders --

def _one_line(capsys, argv, *needles):
    assert reading_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentqa: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("argv, needles", [
    (["read", "--user", "\udced\udca0\udc80", "-q", "Who?"], ["--user", "lone surrogate"]),
    (["read", *ARGS, "-q", "Who?", "-q", "\udced\udca0\udc80"], ["--question[1]", "Unicode"]),
    (["score", *ARGS, "-q", "Who?", "-c", "\ud800"], ["--candidate[0]", "lone surrogate"]),
    (["read", *ARGS, "-q", ""], ["--question[0] is empty"]),
    (["read", *ARGS, "-q", "Who?", "--temperature", "-1"], ["--temperature", "between 0"]),
    (["read", *ARGS, "-q", "Who?", "--top-p", "2"], ["--top-p", "at most 1"]),
    (["read", *ARGS, "-q", "Who?", "--max-new-tokens", "0"], ["--max-new-tokens"]),
])
def test_the_cli_applies_the_servers_rules(patched, capsys, argv, needles):
    _one_line(capsys, argv, *needles)
    assert not patched  # refused before the model loads


def test_bad_dialog_files_name_the_file_and_line(patched, tmp_path, capsys):
    lone = tmp_path / "lone.json"
    lone.write_text('[{"role": "user", "content": "\\ud800"}]')  # the JSON escape
    _one_line(capsys, ["read", str(lone), "-q", "Who?"], str(lone),
              "messages[0].content", "lone surrogate")
    wizard = tmp_path / "wizard.jsonl"
    wizard.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" +
                      json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}) + "\n")
    _one_line(capsys, ["read", str(wizard), "-q", "Who?"], f"{wizard}, line 2",
              "unknown role 'wizard'")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"dialog": "hi", "question": "Who?"}) + "\n" +
                    json.dumps({"dialog": "hi", "question": "Who?", "id": "\ud800"}) + "\n")
    _one_line(capsys, ["read", "--batch", str(rows)], f"{rows}, line 2", "'id'")
    assert not patched


def test_batch_row_over_the_context_names_its_line_and_writes_nothing(patched, tmp_path,
                                                                      capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"dialog": "Ahoy", "question": "Who?"},
        {"dialog": "Ahoy", "question": "why " * 9000}]) + "\n")
    out = tmp_path / "out.jsonl"
    _one_line(capsys, ["read", "--batch", str(rows), "-o", str(out), "--max-new-tokens", "2"],
              f"{rows}, line 2", "context of 8192 tokens")
    assert not out.exists() and list(tmp_path.iterdir()) == [rows]  # no partial or temp file
    out.write_text("kept\n")  # an existing output is left as it was
    _one_line(capsys, ["score", "--batch", str(rows), "-o", str(out)], "needs a non-empty "
              "'candidates'")
    assert out.read_text() == "kept\n"


def test_batch_output_may_not_be_its_input(patched, tmp_path, capsys, monkeypatch):
    rows = tmp_path / "rows.jsonl"
    text = json.dumps({"dialog": "Ahoy", "question": "Who?"}) + "\n"
    rows.write_text(text)
    monkeypatch.chdir(tmp_path)
    for same in (str(rows), "rows.jsonl", "./sub/../rows.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        _one_line(capsys, ["read", "--batch", str(rows), "-o", same], "is the batch input")
    assert rows.read_text() == text and not patched


def test_batch_output_that_cannot_be_written_is_refused_before_loading(patched, tmp_path,
                                                                       capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"dialog": "Ahoy", "question": "Who?"}) + "\n")
    (tmp_path / "folder").mkdir()
    _one_line(capsys, ["read", "--batch", str(rows), "-o", str(tmp_path / "folder")],
              "is a folder")
    _one_line(capsys, ["read", "--batch", str(rows), "-o", str(rows / "out.jsonl")],
              f"{rows} is a file, not a folder")
    assert not patched  # told before the model loads
    out = tmp_path / "new" / "sub" / "out.jsonl"  # missing folders are made
    assert reading_main(["read", "--batch", str(rows), "-o", str(out),
                         "--max-new-tokens", "2"]) == 0
    assert json.loads(out.read_text())["line"] == 1


@pytest.mark.parametrize("extra, needle", [
    (["--dtype", "fp7"], "--dtype: unknown dtype 'fp7'"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_bad_load_options_are_one_line_before_loading(monkeypatch, capsys, extra, needle):
    from latentqa.reading import reader as reader_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(reader_module, "load", no_load)
    with socket.socket() as s:  # a free port, for serve
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for command in (["read", *ARGS, "-q", "Who?"], ["serve", "--port", port]):
        _one_line(capsys, [*command, *extra], needle)


def test_a_truncated_decoder_is_one_line_naming_the_file(dev_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "decoder"
    shutil.copytree(dev_dir, bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _one_line(capsys, ["read", *ARGS, "-q", "Who?", "--decoder", str(bad)], str(weights),
              "truncated or corrupt")
