"""`latentqa data replies`: the target's own replies as JSONL dialogs, resumable and validated.

The mechanics run on a tiny random target (SmolLM2's tokenizer and chat template, 4 blocks);
where the replies themselves matter, ``latentqa.generation.generate`` is replaced by a scripted
one so that each kind of degenerate reply is produced on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentqa.cli import main
from latentqa.datagen import validate
from latentqa.datagen.replies import RepliesConfig, generate_replies, reply_read, work_dir

GOOD = Path(__file__).parent / "fixtures" / "data" / "good"
KIND_FILES = ["system.json", "control.json", "stimulus.json", "stimulus_completion.json",
              "qa.json"]


@pytest.fixture(scope="module")
def tiny(tiny_target):
    from latentqa.models import load_model

    torch.set_num_threads(1)
    return load_model(str(tiny_target))


def _cfg(out, files=KIND_FILES, **kw):
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("batch_size", 2)
    return RepliesConfig(data=[GOOD / f for f in files], out=Path(out), progress=False, **kw)


def _lines(path):
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()]


# What the scripted target says to a user turn containing each word (else a fine answer).
SCRIPT = {"egg": ("", True),  # empty
          "boiling": ("ha ha ha ha ha ha ha ha ha ha", True),  # a loop
          "ECHO": (None, True),  # echoes the user turn
          "time": ("It is noon. And the sun is hi", False),  # cut by the token limit
          }


@pytest.fixture
def scripted(monkeypatch, tiny):
    tok = tiny.tokenizer

    def fake_generate(model, tokenizer, prompts, **kw):
        out = []
        for p in prompts:
            last_user = tokenizer.decode(p).rsplit("<|im_start|>user\n", 1)[1]
            text, ended = next((v for k, v in SCRIPT.items() if k in last_user),
                               ("Arr, a fine answer.", True))
            if text is None:
                text = last_user.split("<|im_end|>")[0]
            out.append((tok.encode(text, add_special_tokens=False), ended))
        return out

    monkeypatch.setattr("latentqa.generation.generate", fake_generate)
    return tiny


def test_reads_are_the_papers_plus_the_reply_for_every_kind(tmp_path, scripted):
    s = generate_replies(_cfg(tmp_path / "r.jsonl"), scripted)
    rows = {(r["provenance"]["kind"], r["provenance"]["index"]): r
            for r in _lines(tmp_path / "r.jsonl")}
    roles = {k: [m["role"] for m in r["messages"]] for k, r in rows.items()}
    assert roles[("system", 0)] == ["system", "user", "assistant"]
    assert rows[("system", 0)]["read"] == [1, 2]  # the user turn and the reply, not the prompt
    assert roles[("control", 0)] == ["user", "assistant"]
    assert rows[("control", 0)]["read"] == [0, 1]
    assert roles[("stimulus", 0)] == ["user", "assistant", "user", "assistant"]
    assert rows[("stimulus", 0)]["read"] == [2, 3]  # never the control turn or its reply
    done = rows[("stimulus_completion", 0)]
    assert done["read"] == [2, 3]
    assert done["messages"][3]["content"] == "Arr, a fine answer."  # the target's, not the LLM's
    assert reply_read("stimulus_completion", 3) == (2, 3) and reply_read("system", 2) == (1, 2)
    # The limit cut "It is noon. And the sun is hi": cut back to the whole sentence.
    cut = rows[("stimulus", 0)]
    assert cut["messages"][-1]["content"] == "It is noon." and cut["provenance"]["truncated"]
    assert s.truncated == 1
    # qa copied from qa.json, so the file stands alone
    qa = json.loads((GOOD / "qa.json").read_text())
    assert done["qa"] == qa["persona-pirate"]


def test_degenerate_replies_are_dropped_and_counted(tmp_path, scripted):
    extra = tmp_path / "more_system.json"
    extra.write_text(json.dumps([{"system": "Be terse.", "stimulus_user": "ECHO this back.",
                                  "label": "goal-terse"}]))
    cfg = _cfg(tmp_path / "r.jsonl")
    cfg.data.append(extra)
    s = generate_replies(cfg, scripted)
    assert s.records == 7 and s.dialogs == 7 and s.written == 4
    assert s.dropped == {validate.REPLY_EMPTY: 1, validate.REPLY_REPETITIVE: 1,
                         validate.REPLY_ECHO: 1}
    summary = json.loads((work_dir(tmp_path / "r.jsonl") / "summary.json").read_text())
    assert summary["dropped"] == s.dropped and summary["written"] == 4
    assert summary["by_kind"]["system"] == {"dialogs": 3, "written": 1}
    assert summary["by_kind"]["control"] == {"dialogs": 2, "written": 1}
    assert set(summary["data"]) == {str(p) for p in cfg.data}
    work = _lines(work_dir(tmp_path / "r.jsonl") / "replies.jsonl")
    assert sorted(w["dropped"] for w in work if "dropped" in w) == sorted(s.dropped)
    contents = [r["messages"][-1]["content"] for r in _lines(tmp_path / "r.jsonl")]
    assert "" not in contents and not any("ha ha" in c or "ECHO" in c for c in contents)


def test_validation_of_replies():
    assert validate.repetition("one two three four five six") == 0
    assert validate.repetition("I'm not sure. I'm not sure. I'm not sure.") > 0.5
    for text, reason in [("  ", validate.REPLY_EMPTY), ("?!...", validate.REPLY_EMPTY),
                         ("no no no no no no no", validate.REPLY_REPETITIVE),
                         ("What is it?", validate.REPLY_ECHO)]:
        with pytest.raises(validate.InvalidOutput, match=reason):
            validate.reply(text, prompt=["what is it"])
    assert validate.reply("Paris is the capital.", prompt=["What is it?"])
    assert validate.trim_fragment("Tips:\n1. Eat well. 2. Sle") == "Tips:\n1. Eat well."
    assert validate.trim_fragment("1. Eat") == "1. Eat"  # a list number ends no sentence


def test_output_loads_and_the_decoder_never_reads_the_system_prompt(tmp_path, tiny):
    from latentqa.chat import render_dialog
    from latentqa.data import load_data
    from latentqa.data.examples import render_target

    out = tmp_path / "r.jsonl"
    generate_replies(_cfg(out, ["system.json"]), tiny)  # no qa file: recovery pairs suffice
    written = _lines(out)
    data = load_data(out)
    assert len(data.records) == len(written) > 0
    for record in data.records:
        assert record.messages[0]["role"] == "system" and 0 not in record.read
        assert record.hidden_system_prompt is not None  # so a recovery pair is derived
        assert not record.generation_prompt
        target = render_target(tiny.tokenizer, record)
        rendered = render_dialog(tiny.tokenizer, record.messages)
        start, end = rendered.token_span(0)
        assert not target.read_mask[start:end].any()
        assert target.read_mask[rendered.token_span(2)[0]:].any()  # the reply is read
    assert any(p.derived for p in data.pairs)


def test_resume_after_an_interruption_gives_the_same_file(tmp_path, tiny, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    generate_replies(_cfg(whole), tiny)
    generate_replies(_cfg(tmp_path / "again.jsonl"), tiny)  # greedy is deterministic
    assert (tmp_path / "again.jsonl").read_bytes() == whole.read_bytes()

    from latentqa.datagen.store import JsonlLog

    out = tmp_path / "resumed.jsonl"
    real_append, calls = JsonlLog.append, []

    def dying_append(self, record):
        if len(calls) == 3:  # mid-batch: batches are 2 replies
            raise KeyboardInterrupt
        calls.append(record)
        real_append(self, record)

    monkeypatch.setattr(JsonlLog, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        generate_replies(_cfg(out), tiny)
    assert not out.exists() and not list(tmp_path.glob(".resumed.jsonl.*"))  # no half file
    monkeypatch.setattr(JsonlLog, "append", real_append)
    s = generate_replies(_cfg(out), tiny)
    assert s.generated == 6 - 3
    assert out.read_bytes() == whole.read_bytes()
    keys = [w["key"] for w in _lines(work_dir(out) / "replies.jsonl")]
    assert len(keys) == len(set(keys)) == 6

    # A finished run generates nothing and loads no model; other settings are refused.
    monkeypatch.setattr("latentqa.datagen.replies._load", lambda cfg: pytest.fail("loaded"))
    assert generate_replies(_cfg(out), None).generated == 0
    assert out.read_bytes() == whole.read_bytes()
    from latentqa.datagen.errors import DatagenError

    with pytest.raises(DatagenError, match="max_new_tokens 6 -> 7"):
        generate_replies(_cfg(out, max_new_tokens=7), None)


def test_limit_then_the_rest(tmp_path, tiny):
    out = tmp_path / "r.jsonl"
    s = generate_replies(_cfg(out, limit=2), tiny)
    assert s.dialogs == 2 and s.written + sum(s.dropped.values()) == 2
    s = generate_replies(_cfg(out), tiny)
    assert s.dialogs == 6 and s.generated == 4


def _cli_error(capsys, *args):
    code = main(["data", "replies", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1, err  # one line
    return err


def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    out = ["--out", tmp_path / "r.jsonl"]
    missing = tmp_path / "nope" / "system.json"
    assert str(missing) in _cli_error(capsys, "--data", missing, *out)

    unknown = tmp_path / "things.json"
    unknown.write_text(json.dumps([{"prompt": "hi", "label": "x"}]))
    err = _cli_error(capsys, "--data", unknown, *out)
    assert str(unknown) in err and "cannot tell what this file holds" in err

    dialogs = GOOD / "dialogs.jsonl"
    err = _cli_error(capsys, "--data", dialogs, GOOD / "qa.json", *out)
    assert str(dialogs) in err and "'dialog' record" in err

    no_qa = GOOD / "control.json"  # control labels need QA pairs: no qa.json given
    err = _cli_error(capsys, "--data", no_qa, *out)
    assert str(no_qa) in err and "no QA pairs" in err and "more problem" in err

    err = _cli_error(capsys, "--data", GOOD / "system.json", "--out", tmp_path / "r.json")
    assert "must end in .jsonl" in err
    assert not (tmp_path / "r.jsonl").exists() and not work_dir(tmp_path / "r.jsonl").exists()


def test_loader_checks_provenance(tmp_path):
    from latentqa.data import validate as validate_data

    line = {"messages": [{"role": "user", "content": "hi"}], "label": "x",
            "qa": [["q?", "a."]]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**line, "provenance": {"kind": "system", "index": 3}}) + "\n"
                    + json.dumps({**line, "provenance": ["system"]}) + "\n"
                    + json.dumps({**line, "provenance": {"file": {"nested": 1}}}) + "\n")
    problems = validate_data([path])
    assert [p.index for p in problems] == [1, 2]
    assert all(p.field == "provenance" for p in problems)
