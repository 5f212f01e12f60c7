"""`latentqa info` and the CLI's error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_models import _save_tiny

from latentqa.cli import main


def test_info_prints_architecture_blocks_template_and_spans(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for expected in ("LlamaForCausalLM", "blocks         30", "hidden size    576",
                     "chat template  yes", "message 0 (system)", "message 1 (user)",
                     "template scaffolding", "'What is the capital of France?'"):
        assert expected in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_blocks"] == 30 and report["hidden_size"] == 576
    owners = [s["message"] for s in report["sample"]["spans"]]
    assert owners == [-1, 0, -1, 1, -1, 2, -1]


def test_info_on_a_model_without_chat_template(tmp_path, smol_tokenizer, capsys):
    _save_tiny(tmp_path, smol_tokenizer, chat_template=False)
    assert main(["info", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "chat template  NO" in out and "blocks         4" in out


def test_bad_model_is_one_line_without_traceback(capsys):
    assert main(["info", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentqa: error: unknown model spec") and "Traceback" not in err


def test_bad_dtype_is_one_line_without_traceback(capsys):
    assert main(["info", "--dtype", "fp7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentqa: error: unknown dtype 'fp7'") and "Traceback" not in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "latentqa.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("latentqa ")


@pytest.mark.parametrize("module", ["latentqa", "latentqa.cli"])
def test_python_dash_m_reports_errors_without_a_traceback(module):
    run = subprocess.run([sys.executable, "-m", module, "train", "batch_size=0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "bad training config" in run.stderr
