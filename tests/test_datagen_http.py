"""`latentqa data generate` against a real OpenAI-style HTTP server on loopback.

The server replies from a script keyed on our prompts, and misbehaves on purpose: a 500, a 429,
empty replies and a near-duplicate behaviour, so retries, validation and dedup are exercised
over real HTTP, in process and in a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import shared_path

from latentqa.cli import main

TOPICS = ["cooking", "sailing", "chess", "gardening", "astronomy", "pottery", "cycling",
          "jazz", "origami", "beekeeping", "fencing", "knitting", "geology", "baking",
          "climbing", "poetry", "surfing", "weaving", "rowing", "falconry"]


PEOPLE = ["a miller", "a nurse", "a pilot", "a monk", "a tailor", "a judge", "a clown",
          "a diver", "a farmer", "a poet", "a spy", "a chef", "a miner"]
PLACES = ["Vell", "Oslo", "Lima", "Cusco", "Perth", "Quito", "Hanoi", "Accra", "Bergen",
          "Tartu", "Porto"]


def _scripted_reply(messages: list[dict], n: int, server) -> str:
    user = messages[-1]["content"]
    if "gives it a goal" in user or "take on a persona" in user or "made-up scene" in user:
        i = server.next_behaviour()
        if i == 1:  # a near-duplicate of the first behaviour: dedup must drop it
            return server.first_behaviour + "!"
        # Distinct words per behaviour, so only the scripted near-duplicate is one.
        topic = TOPICS[i % len(TOPICS)] + (f" {i}" if i >= len(TOPICS) else "")
        other, third = PEOPLE[i % len(PEOPLE)], PLACES[i % len(PLACES)]
        if "made-up scene" in user:
            text = (f"In {third}, {other} kept {i + 3} tools for {topic}. "
                    "Every spring they were painted blue.")
        elif "persona" in user:
            text = f"Please act as {other}, devoted to {topic}."
        else:
            text = f"Please weave {topic} into answers set in {third}."
        if i == 0:
            server.first_behaviour = text
        return text
    if "(Reply with one sentence agreeing" in user:
        return "Understood, I will do exactly that from now on."
    if "Write one message a user might send" in user:
        return "I am trying to plan a relaxing weekend at home."
    if messages[0]["role"] == "system" and "dataset" not in messages[0]["content"]:
        return "How lovely! A quiet weekend is like a calm harbour after a long voyage."
    if "about a fact in this story" in user:
        with server.lock:  # a new question each time a story is asked about
            k = server.story_questions[user] = server.story_questions.get(user, -1) + 1
        return ["Question: What colour were the tools painted?", "Who kept the tools?"][k % 2]
    if "question about how it would react" in user:
        return "If the user asked for weekend plans, how would the assistant respond?"
    if "Write one question" in user:
        return "What kind of character does the assistant play?"
    if "Answer in a few words" in user:
        return "Blue."
    if "Answer this question about the assistant" in user:
        return "The assistant speaks like an old storyteller with vivid comparisons."
    return "???"


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, delay: float = 0.0, faults: dict | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay = delay
        self.faults = faults or {}  # request number -> "500" | "429" | "empty"
        self.lock = threading.Lock()
        self.requests = 0
        self.behaviours = 0
        self.first_behaviour = ""
        self.seen_auth: set[str | None] = set()
        self.story_questions: dict[str, int] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def next_behaviour(self) -> int:
        with self.lock:
            self.behaviours += 1
            return self.behaviours - 1


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server: ScriptedServer = self.server
        with server.lock:
            server.requests += 1
            n = server.requests
        server.seen_auth.add(self.headers.get("Authorization"))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        assert {"model", "messages", "temperature", "max_tokens"} <= set(body)
        time.sleep(server.delay)
        fault = server.faults.get(n)
        if fault in ("500", "429"):
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": "scripted"}')
            return
        content = "" if fault == "empty" else _scripted_reply(body["messages"], n, server)
        reply = {"id": f"c{n}", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    def start(**kw):
        srv = ScriptedServer(**kw)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        started.append(srv)
        return srv

    started: list[ScriptedServer] = []
    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def http_args(srv, out, *extra):
    return ["data", "generate", "--out", str(out), "--base-url", srv.base_url,
            "--model", "scripted", "--no-progress", "--http-backoff", "0.01", *extra]


def load_checked(out: Path):
    """The data package's loader, which must accept every file we write."""
    from latentqa.data import load_data

    return load_data(out)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def test_generate_over_http_with_faults(server, tmp_path, monkeypatch):
    srv = server(faults={1: "500", 2: "429", 5: "empty", 9: "empty", 14: "empty"})
    monkeypatch.setenv("SCRIPTED_KEY", "sk-test")
    out = tmp_path / "out"
    rc = main(http_args(srv, out, "--num-behaviours", "6", "--api-key-env", "SCRIPTED_KEY"))
    assert rc == 0
    assert srv.seen_auth == {"Bearer sk-test"}

    data = load_checked(out)
    qa = json.loads((out / "qa.json").read_text())
    assert len(qa) == 6 and all(len(pairs) == 2 for pairs in qa.values())
    assert {label.split("-")[0] for label in qa} == {"goal", "persona", "sqa"}
    assert sorted(data.labels) == sorted(qa)
    control = json.loads((out / "control.json").read_text())
    system = json.loads((out / "system.json").read_text())
    assert len(control) == 6  # sqa labels only in control, as upstream
    assert len(system) == sum(not label.startswith("sqa") for label in qa)
    # Questions about goals and personas never name the behaviour's own words.
    for label, pairs in qa.items():
        if not label.startswith("sqa"):
            assert all(t not in q.lower() for q, _ in pairs for t in TOPICS + PLACES)

    rejected = read_jsonl(out / "work" / "rejected.jsonl")
    reasons = " ".join(r["reason"] for r in rejected)
    assert "near-duplicate" in reasons  # the scripted near-duplicate was dropped
    assert "too short" in reasons or "no words" in reasons or "not a question" in reasons


def test_rerun_of_finished_run_calls_nothing(server, tmp_path):
    srv = server()
    out = tmp_path / "out"
    assert main(http_args(srv, out, "--num-behaviours", "3")) == 0
    before = {p.name: p.read_text() for p in out.glob("*.json")}
    calls = srv.requests
    assert main(http_args(srv, out, "--num-behaviours", "3")) == 0
    assert srv.requests == calls
    assert {p.name: p.read_text() for p in out.glob("*.json")} == before


def test_qa_for_existing_system_prompts(server, tmp_path):
    srv = server()
    records = [
        {"system": "Please act as a lighthouse keeper who distrusts machines.",
         "stimulus_user": "What do you think of my new phone?", "label": "persona-job-keeper"},
        {"system": "Please answer every question with a short poem.",
         "stimulus_user": "How do tides work?"},  # no label: one is made
    ]
    src = tmp_path / "unlabeled_system.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "out"
    assert main(http_args(srv, out, "--qa-for", str(src))) == 0
    system = json.loads((out / "system.json").read_text())
    qa = json.loads((out / "qa.json").read_text())
    assert [r["label"] for r in system][0] == "persona-job-keeper"
    assert system[1]["label"].startswith("goal-") and set(qa) == {r["label"] for r in system}
    load_checked(out)


def test_qa_for_shared_unlabeled_file_limit(server, tmp_path):
    shared = shared_path("latentqa", "unlabeled_system.json")
    srv = server()
    out = tmp_path / "out"
    assert main(http_args(srv, out, "--qa-for", str(shared), "--limit", "3")) == 0
    assert len(json.loads((out / "qa.json").read_text())) == 3
    load_checked(out)


def test_unreachable_endpoint_is_one_line_error(tmp_path, capsys):
    srv = ScriptedServer()
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there now
    rc = main(["data", "generate", "--out", str(tmp_path / "o"), "--no-progress",
               "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
               "--http-retries", "2", "--http-backoff", "0.01"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "cannot reach" in err and "after 3 tries" in err


def test_missing_api_key_env_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    rc = main(["data", "generate", "--out", str(tmp_path / "o"), "--base-url",
               "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NO_SUCH_KEY_VAR"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "NO_SUCH_KEY_VAR is not set" in err


@pytest.mark.parametrize("content, message", [
    ("not json at all {", "neither a JSON list nor JSON Lines"),
    ('[{"kind": "villain", "description": "x"}]', "'kind' must be one of"),
    ('[{"kind": "goal"}]', "'description' must be a non-empty string"),
    ("[]", "non-empty list"),
])
def test_bad_seed_file_is_one_line_error(tmp_path, capsys, content, message):
    seeds = tmp_path / "seeds.json"
    seeds.write_text(content)
    rc = main(["data", "generate", "--out", str(tmp_path / "o"), "--seeds", str(seeds),
               "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err


def test_http_error_that_retrying_cannot_fix(server, tmp_path, capsys):
    srv = server()
    rc = main(["data", "generate", "--out", str(tmp_path / "o"), "--no-progress",
               "--base-url", srv.base_url.replace("/v1", "/nope"), "--model", "m",
               "--http-backoff", "0.01"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "HTTP 404" in err
    assert srv.requests <= 4  # one per worker (--concurrency 4): a 404 is not retried


def test_killed_midway_then_resumed(server, tmp_path):
    """SIGKILL a real `latentqa data generate` mid-run; the rerun finishes with no duplicates."""
    srv = server(delay=0.03)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "latentqa.cli",
           *http_args(srv, out, "--num-behaviours", "8", "--concurrency", "2")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    qa_file = out / "work" / "qa.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if qa_file.exists() and len(qa_file.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = read_jsonl(qa_file)
    assert 2 <= len(done_before) < 8
    # A kill can also land mid-write: leave a torn last line, as it would.
    with open(qa_file, "a") as f:
        f.write('{"label": "goal-torn", "qa": [["Wh')

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr

    for name in ("behaviours", "dialogs", "qa"):
        labels = [r["label"] for r in read_jsonl(out / "work" / f"{name}.jsonl")]
        assert len(labels) == len(set(labels)), f"duplicates in {name}.jsonl"
    behaviours = read_jsonl(out / "work" / "behaviours.jsonl")
    assert len(behaviours) == 8
    qa = json.loads((out / "qa.json").read_text())
    assert set(qa) == {b["label"] for b in behaviours}  # nothing lost
    assert all(r in read_jsonl(qa_file) for r in done_before)  # done work was kept, not redone
    assert "goal-torn" not in qa
    data = load_checked(out)
    assert len(data.labels) == 8
