"""`latentqa read`, `score`, batch mode and `demo`'s wiring; bad input is one line, exit 2.

The commands reuse one loaded reader (``_load`` patched) except where loading is under test.
"""

from __future__ import annotations

import json

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
