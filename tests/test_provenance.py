"""What a run records about where it came from: the command as typed, the source's revision."""

from __future__ import annotations

import subprocess

import pytest

from latentqa.provenance import command_line, invocation, source_revision


@pytest.mark.parametrize("argv,expected", [
    (["/venv/bin/latentqa", "train", "--config", "c.yaml"], "latentqa train --config c.yaml"),
    (["/src/latentqa/cli.py", "train", "lr=3e-4"], "latentqa train lr=3e-4"),
    (["/src/latentqa/__main__.py", "eval", "persona"], "latentqa eval persona"),
    (["script.py", "a b"], "script.py 'a b'"),
])
def test_command_line_is_what_a_user_types_again(argv, expected):
    assert command_line(argv) == expected


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_source_revision_of_a_checkout_clean_dirty_and_outside(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    assert source_revision(outside) == {"git_revision": None, "git_dirty": None}
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert source_revision(repo) == {"git_revision": head, "git_dirty": False}
    (repo / "run.log").write_text("an untracked output is not a change to the source\n")
    assert source_revision(repo)["git_dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    assert source_revision(repo) == {"git_revision": head, "git_dirty": True}


def test_invocation_names_the_time_command_and_place():
    row = invocation(["/venv/bin/latentqa", "train"])
    assert row["command"] == "latentqa train" and row["started"].endswith("+00:00")
    assert {"cwd", "latentqa_version", "git_revision", "git_dirty"} <= set(row)
