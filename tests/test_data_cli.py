"""`latentqa data stats`: counts, token lengths, every problem, exit codes, no traceback."""

import json
from pathlib import Path

from latentqa.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _run(capsys, *args):
    code = main(["data", "stats", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_stats_on_the_shared_files(capsys, shared):
    SHARED = shared("latentqa")
    files = [SHARED / f for f in ("system.json", "control.json", "stimulus.json", "qa.json")]
    code, out, _ = _run(capsys, *files, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["records"] == 1634 and report["pairs_from_qa"] == 3268
    assert report["by_kind"] == {"control": 500, "stimulus": 567, "system": 567}
    assert report["by_family"] == {"goal": 784, "persona": 703, "sqa": 147}
    assert report["pairs_system_recovery"] == 567 and report["problems"] == []
    tokens = report["tokens"]
    assert tokens["target_read"]["count"] == 1634
    assert tokens["decoder_prompt"]["count"] == 3268 + 567
    assert 0 < tokens["target_read"]["p50"] <= tokens["target_read"]["p100"]
    code, out, _ = _run(capsys, *files, "--no-tokens")
    assert code == 0
    assert "1,634" in out and "3,268 from QA" in out and "goal-" in out


def test_stats_text_with_tokens_on_fixtures(capsys):
    code, out, _ = _run(capsys, FIXTURES / "good")
    assert code == 0
    assert "target_read" in out and "decoder_prompt" in out and "problems         0" in out


def test_stats_lists_every_problem_and_fails(capsys):
    code, out, _ = _run(capsys, FIXTURES / "bad", "--no-tokens")
    assert code == 1
    for needle in ("stimulus.json: record 1: field 'stimulus_user': missing",
                   "stimulus.json: record 2: field 'label': expected a string",
                   "record 3: field 'label': label 'persona-nobody-asked' has no QA pairs",
                   "broken_control.json: line 2, column", "empty_control.json: file is empty",
                   "latin1.jsonl: line 1: not UTF-8", "dialogs.jsonl: line 3 (record 2)"):
        assert needle in out, needle
    code, out, _ = _run(capsys, FIXTURES / "bad", "--no-tokens", "--json")
    assert code == 1 and len(json.loads(out)["problems"]) >= 10


def test_load_error_through_the_cli_is_one_clean_message(capsys, monkeypatch):
    # a command that loads strictly raises DataError; the CLI prints it without a traceback
    from latentqa.data import cli as data_cli
    from latentqa.data import load_data

    def strict(args):
        load_data(args.paths)

    monkeypatch.setattr(data_cli, "cmd_stats", strict)
    code = main(["data", "stats", str(FIXTURES / "bad" / "stimulus.json"), "--no-tokens"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert "latentqa: error: 4 problems in the data" in err
    assert "stimulus.json: record 1: field 'stimulus_user': missing" in err


def test_stats_names_a_lone_surrogate_by_file_and_record(capsys, tmp_path):
    bad = tmp_path / "lone.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "label": "a",
                               "qa": [["Who?", "A."]]}) + "\n" +
                   '{"messages": [{"role": "user", "content": "\\ud800"}], "label": "a"}\n')
    for extra in ([], ["--no-tokens"]):  # with tokens: the tokenizer never sees it
        code, out, _ = _run(capsys, bad, *extra)
        assert code == 1
        assert f"{bad}: line 2 (record 1): field 'messages[0].content': is not valid " \
               "Unicode text: it holds a lone surrogate U+D800" in out


def test_stats_on_files_that_hold_nothing_is_a_problem(capsys, tmp_path):
    (tmp_path / "system.json").write_text("[]")
    (tmp_path / "qa.json").write_text("{}")
    code, out, _ = _run(capsys, tmp_path, "--no-tokens")
    assert code == 1
    for name in ("system.json", "qa.json"):
        assert f"{tmp_path / name}: holds no records or QA pairs" in out


def test_stats_on_a_folder_without_data_files_is_an_error(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not data")
    code, out, err = _run(capsys, tmp_path, "--no-tokens")
    assert code == 2 and out == ""
    assert err == f"latentqa: error: {tmp_path} holds no .json or .jsonl files\n"
