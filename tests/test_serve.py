"""`latentqa serve`: the HTTP API and page over a tiny random target with an untrained decoder.

Every response is checked against the Python API it wraps (same answers, same scores, same
replies); bad input of every kind must give a 4xx JSON error, never a 500. The datagen HTTP
backend talks to the app over a real loopback socket (uvicorn in a thread).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import random_decoder, serving

from latentqa.serve import Limits, create_app  # noqa: E402
from latentqa.serve.engine import Engine, ReadJob  # noqa: E402
from latentqa.serve.worker import QueueFull, Worker  # noqa: E402

DIALOG = [{"role": "system", "content": "You are a pirate."},
          {"role": "user", "content": "What should I cook tonight?"},
          {"role": "assistant", "content": "Arr, a fish stew, matey!"}]
QUESTION = "What is the persona of the assistant?"
LIMITS = Limits(max_body_bytes=20_000, max_new_tokens=16, max_questions=4, max_candidates=4,
                max_dialog_tokens=256, timeout_s=60)


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reader(tiny_target, tmp_path_factory):
    """The tiny target with a random LoRA decoder, loaded like the CLI."""
    from latentqa.reading import load

    out = random_decoder(tiny_target, tmp_path_factory.mktemp("serve") / "decoder")
    return load(out, str(tiny_target), batch_size=8)


@pytest.fixture(scope="module")
def client(reader):
    with TestClient(create_app(reader, limits=LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def steering_adapter(tiny_target, tmp_path_factory):
    """A peft LoRA adapter for the tiny target, far from zero so it changes the replies."""
    from peft import LoraConfig, get_peft_model

    from latentqa.models import load_model

    torch.manual_seed(2)
    model = load_model(str(tiny_target)).model
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("steer") / "adapter"
    get_peft_model(model, config).save_pretrained(str(out), safe_serialization=True)
    return out


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err
    return err


# ---- reading -------------------------------------------------------------------------------

def test_health_describes_the_model_and_limits(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["num_blocks"] == 4 and h["read_layer"] == 2
    assert h["write_layer"] == 0 and h["hidden_size"] == 32 and h["steering"] is False
    assert h["adapters"] == [] and h["limits"]["max_new_tokens"] == 16


def test_read_gives_the_readers_answers(client, reader):
    r = client.post("/v1/read", json={"messages": DIALOG, "questions": [QUESTION, "Why?"],
                                      "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [a["question"] for a in out["answers"]] == [QUESTION, "Why?"]
    assert [a["answer"] for a in out["answers"]] == reader.ask(DIALOG, [QUESTION, "Why?"],
                                                               max_new_tokens=4)
    assert out["control"] is None and out["layer"] == 2 and out["read_tokens"] > 0
    assert "after" in out["read"]


def test_shuffled_control_flag(client, reader):
    body = {"messages": DIALOG, "questions": [QUESTION], "max_new_tokens": 4,
            "control": "shuffled"}
    out = client.post("/v1/read", json=body).json()
    assert out["control"] == "shuffled"
    assert out["answers"][0]["answer"] == reader.ask(DIALOG, QUESTION, max_new_tokens=4,
                                                     control="shuffled")
    score = {"messages": DIALOG, "questions": [QUESTION], "candidates": ["A pirate."]}
    real = client.post("/v1/score", json=score).json()["scores"][0]["candidates"][0]
    shuffled = client.post("/v1/score", json=dict(score, control="shuffled")).json()
    assert shuffled["control"] == "shuffled"
    assert shuffled["scores"][0]["candidates"][0]["logprob"] != pytest.approx(real["logprob"])


def test_score_gives_the_readers_scores(client, reader):
    cands = ["A pirate.", "A chef who loves cooking."]
    r = client.post("/v1/score", json={"messages": DIALOG, "questions": [QUESTION],
                                       "candidates": cands})
    assert r.status_code == 200, r.text
    s = r.json()["scores"][0]
    expected = reader.score(DIALOG, QUESTION, cands)
    assert s["question"] == QUESTION and s["best"] == expected.best
    for got, want in zip(s["candidates"], expected.candidates):
        assert got["candidate"] == want.candidate and got["num_tokens"] == want.num_tokens
        assert got["logprob"] == pytest.approx(want.logprob, abs=1e-4)
        assert len(got["tokens"]) == len(got["token_logprobs"]) == got["num_tokens"]


def test_read_selections_and_token_listing(client, reader):
    toks = client.post("/v1/tokens", json={"messages": DIALOG}).json()
    n = len(toks["tokens"])
    assert [t["index"] for t in toks["tokens"]] == list(range(n))
    assert toks["read_tokens"] == sum(t["read"] for t in toks["tokens"]) > 0
    assert not any(t["read"] for t in toks["tokens"] if t["turn"] == 0)  # system never read
    assert "".join(t["text"] for t in toks["tokens"]).count("fish stew") == 1
    picked = client.post("/v1/tokens", json={"messages": DIALOG, "read": "tokens:3:9"}).json()
    assert [t["index"] for t in picked["tokens"] if t["read"]] == list(range(3, 9))
    for read, count in [("tokens:3:9", 6), ("last:5", 5), ([1], None)]:
        out = client.post("/v1/read", json={"messages": DIALOG, "questions": [QUESTION],
                                            "read": read, "max_new_tokens": 2}).json()
        assert out["read_tokens"] == (count or sum(t["turn"] == 1 for t in toks["tokens"]))
        assert out["answers"][0]["answer"] == reader.ask(DIALOG, QUESTION, max_new_tokens=2,
                                                         read=read)


class PublicOnly:
    """A Reader seen only through its public methods and attributes: no tokenizer, pad id or
    probe builder to take apart."""

    PUBLIC = ("answer_pairs", "score_pairs", "render", "token_texts", "generate", "model",
              "info", "spec", "decoder_path")

    def __init__(self, reader):
        self._reader = reader

    def __getattr__(self, name):
        if name not in self.PUBLIC:
            raise AttributeError(f"the server reached for Reader.{name}")
        return getattr(self._reader, name)


def test_the_server_calls_the_readers_public_methods_only(client, reader):
    with TestClient(create_app(PublicOnly(reader), limits=LIMITS)) as public:
        for path, body in [
                ("/v1/tokens", {"messages": DIALOG, "read": "last:4"}),
                ("/v1/read", {"messages": DIALOG, "questions": [QUESTION],
                              "max_new_tokens": 3}),
                ("/v1/score", {"messages": DIALOG, "questions": [QUESTION],
                               "candidates": ["A pirate.", "A chef."]}),
                ("/v1/chat/completions", {"messages": DIALOG[:2], "max_tokens": 5,
                                          "temperature": 0, "stop": ["\n"]})]:
            got = public.post(path, json=body)
            assert got.status_code == 200, (path, got.text)
            want = client.post(path, json=body).json()
            if path == "/v1/chat/completions":
                got, want = got.json()["choices"], want["choices"]
            else:
                got = got.json()
            assert got == want, path


def test_compatible_requests_are_merged_and_give_the_same_answers(reader):
    """Engine: two requests in one Reader call equal each alone. Worker: queued jobs with the
    same key are merged; others are not."""
    from latentqa.reading import Read

    engine = Engine(reader, None, LIMITS)
    other = [{"role": "user", "content": "Tell me about the sea."}]
    jobs = [ReadJob(DIALOG, [QUESTION], Read(), 2, None, None, 4),
            ReadJob(other, [QUESTION, "Why?"], Read.last(4), 2, None, None, 4)]
    together = engine.read(jobs)
    alone = [engine.read([j])[0] for j in jobs]
    assert together == alone

    worker, gate, calls = Worker(max_batch=8), threading.Event(), []
    try:
        worker.submit(lambda payloads: (gate.wait(10), [0])[1], None)  # holds the worker

        def run(payloads):
            calls.append(list(payloads))
            return [p * 10 for p in payloads]

        futures = [worker.submit(run, i, key="k") for i in range(3)]
        futures.append(worker.submit(run, 9, key=None))
        futures.append(worker.submit(run, 7, key="k"))
        gate.set()
        assert [f.result(10) for f in futures] == [0, 10, 20, 90, 70]
        assert calls == [[0, 1, 2, 7], [9]]
    finally:
        worker.stop()


def test_a_failing_job_does_not_fail_the_batch_it_was_merged_into():
    worker, gate = Worker(), threading.Event()
    try:
        worker.submit(lambda payloads: (gate.wait(10), [0])[1], None)

        def run(payloads):
            if len(payloads) > 1 and "bad" in payloads:
                raise RuntimeError("merged call failed")
            if payloads == ["bad"]:
                raise ValueError("bad input")
            return [p.upper() for p in payloads]

        futures = [worker.submit(run, p, key="k") for p in ("a", "bad", "c")]
        gate.set()
        assert futures[0].result(10) == "A" and futures[2].result(10) == "C"
        with pytest.raises(ValueError, match="bad input"):
            futures[1].result(10)
    finally:
        worker.stop()


# ---- the target: OpenAI-compatible chat ------------------------------------------------------

def test_chat_completions_shape_and_reply(client, reader):
    messages = DIALOG[:2]
    r = client.post("/v1/chat/completions", json={"model": "target", "messages": messages,
                                                  "max_tokens": 6, "temperature": 0,
                                                  "frequency_penalty": 0, "user": "x"})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-")
    assert isinstance(c["created"], int) and c["model"] == "target"
    [choice] = c["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["content"] == reader.target_reply(messages, max_new_tokens=6)
    u = c["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert 0 < u["completion_tokens"] <= 6 and u["prompt_tokens"] > 5
    # content parts, and a seeded sample repeats itself
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                          {"type": "text", "text": "there"}]}]
    body = {"messages": parts, "max_tokens": 5, "temperature": 0.9, "seed": 3}
    a, b = (client.post("/v1/chat/completions", json=body).json() for _ in range(2))
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


@pytest.mark.parametrize("extra, param", [({"stream": True}, "stream"), ({"n": 2}, "n"),
                                          ({"max_tokens": 10_000}, "max_tokens"),
                                          ({"model": "steer_99"}, "model")])
def test_chat_completions_refusals(client, extra, param):
    r = client.post("/v1/chat/completions", json={"messages": DIALOG[:2], **extra})
    assert error_of(r, {"model": 404, "max_tokens": 422}.get(param, 400))["param"] == param


def test_datagen_http_backend_against_the_server(reader):
    """`latentqa data generate`'s OpenAI backend, over a real loopback socket, with a token."""
    from latentqa.datagen.backends import OpenAIBackend
    from latentqa.datagen.errors import BackendError

    app = create_app(reader, limits=LIMITS, token="s3cret")
    with serving(app) as url:
        base = f"{url}/v1"
        backend = OpenAIBackend(base, "target", api_key="s3cret", timeout=30, retries=0)
        messages = [{"role": "user", "content": "Write one question about cooking."}]
        first = backend.complete(messages, temperature=0.8, max_tokens=6, seed=5)
        assert isinstance(first, str)
        assert backend.complete(messages, temperature=0.8, max_tokens=6, seed=5) == first
        wrong = OpenAIBackend(base, "target", api_key="nope", timeout=30, retries=0)
        with pytest.raises(BackendError, match="HTTP 401"):
            wrong.complete(messages, temperature=0.8, max_tokens=6, seed=5)


# ---- steering adapters and jobs ----------------------------------------------------------------

def test_steering_adapter_side_by_side_on_one_copy(reader, steering_adapter, tmp_path):
    with TestClient(create_app(reader, limits=LIMITS)) as c:
        chat = {"messages": DIALOG[:2], "max_tokens": 8, "temperature": 0}
        read = {"messages": DIALOG, "questions": [QUESTION], "max_new_tokens": 4}
        base_before = c.post("/v1/chat/completions", json=chat).json()
        read_before = c.post("/v1/read", json=read).json()
        params = sum(p.numel() for p in reader.model.parameters())

        r = c.post("/v1/adapters", json={"path": str(steering_adapter)})
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        assert name.startswith("steer_")
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["target", name]
        assert c.get("/health").json()["adapters"] == [name]
        # one copy of the base weights: only the adapter's LoRA matrices were added
        added = sum(p.numel() for p in reader.model.parameters()) - params
        assert 0 < added < params / 10

        steered = c.post("/v1/chat/completions", json=dict(chat, model=name)).json()
        also = c.post("/v1/chat/completions", json=dict(chat, adapter=name)).json()
        assert steered["model"] == name and also["choices"] == steered["choices"]
        assert steered["choices"][0]["message"] != base_before["choices"][0]["message"]
        # the base target and the decoder are unchanged by the loaded adapter
        assert c.post("/v1/chat/completions", json=chat).json()["choices"] == \
            base_before["choices"]
        assert c.post("/v1/read", json=read).json()["answers"] == read_before["answers"]
        assert reader.model.active_adapter == "default"

        (tmp_path / "empty").mkdir()
        for path in (tmp_path / "empty", tmp_path / "missing"):
            assert error_of(c.post("/v1/adapters", json={"path": str(path)}), 400)["param"] \
                == "path"
        again = c.post("/v1/adapters", json={"path": str(steering_adapter)}).json()
        assert again["name"] == name and c.get("/health").json()["adapters"] == [name]
        assert error_of(c.post("/v1/adapters", json={"path": str(steering_adapter),
                                                     "name": name}), 409)


def test_steer_is_501_without_a_steering_function(client):
    err = error_of(client.post("/v1/steer", json={"config": {}}), 501)
    assert "steering is unavailable" in err["message"]
    error_of(client.get("/v1/steer/nope"), 404)


def test_steer_job_runs_the_given_function_and_loads_its_adapter(reader, steering_adapter,
                                                                  tmp_path):
    seen = []

    def steer_fn(config, out_dir):
        seen.append((config, out_dir))
        if config.get("fail"):
            raise ValueError("bad steering config")
        shutil.copytree(steering_adapter, out_dir / "adapter")
        return {"adapter_dir": str(out_dir / "adapter"), "loss": 0.5}

    app = create_app(reader, limits=LIMITS, steer_fn=steer_fn, steer_dir=tmp_path / "jobs")
    with TestClient(app) as c:
        assert c.get("/health").json()["steering"] is True
        r = c.post("/v1/steer", json={"config": {"behaviour": "pirate"}})
        assert r.status_code == 202, r.text
        job = r.json()
        for _ in range(200):
            job = c.get(f"/v1/steer/{job['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done", job
        assert job["result"]["loss"] == 0.5 and job["adapter"] in c.get("/health").json()[
            "adapters"]
        assert seen[0][0] == {"behaviour": "pirate"} and str(seen[0][1]) == job["out_dir"]
        failed = c.post("/v1/steer", json={"config": {"fail": True}}).json()
        for _ in range(200):
            failed = c.get(f"/v1/steer/{failed['id']}").json()
            if failed["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert failed["status"] == "failed" and failed["error"] == "bad steering config"


# ---- limits and safety ---------------------------------------------------------------------------

def test_token_is_checked_on_every_request_but_the_page(reader):
    with TestClient(create_app(reader, limits=LIMITS, token="s3cret")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            err = error_of(c.get("/health", headers=headers), 401)
            assert err["type"] == "authentication_error"
            error_of(c.post("/v1/read", json={}, headers=headers), 401)
            error_of(c.get("/openapi.json", headers=headers), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/health", headers=ok).status_code == 200
        assert c.post("/v1/read", headers=ok, json={
            "messages": DIALOG, "questions": [QUESTION], "max_new_tokens": 2}).status_code == 200
        assert c.get("/").status_code == 200  # the page; its API calls carry the token


def test_host_header_is_checked_when_asked(reader):
    app = create_app(reader, limits=LIMITS, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
        assert error_of(c.get("/health", headers={"Host": "evil.example"}), 400)["param"] == \
            "Host"


def test_oversized_bodies_are_413(client):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 30_000}],
                      "questions": ["Who?"]}).encode()
    err = error_of(client.post("/v1/read", content=big,
                               headers={"Content-Type": "application/json"}), 413)
    assert err["type"] == "request_too_large"

    def chunks():  # no Content-Length: the body is counted as it arrives
        for k in range(0, len(big), 4096):
            yield big[k:k + 4096]

    error_of(client.post("/v1/read", content=chunks(),
                         headers={"Content-Type": "application/json"}), 413)


BAD = [
    ("malformed JSON", b'{"messages": [', 400, "body"),
    ("not an object", b'"hello"', 422, "body"),
    ("missing questions", {"messages": DIALOG}, 422, "questions"),
    ("missing messages", {"questions": [QUESTION]}, 422, "messages"),
    ("empty messages", {"messages": [], "questions": [QUESTION]}, 422, "messages"),
    ("empty contents", {"messages": [{"role": "user", "content": "  "}],
                        "questions": [QUESTION]}, 422, "messages"),
    ("message without role", {"messages": [{"content": "hi"}], "questions": [QUESTION]},
     422, "messages.0.role"),
    ("messages not a list", {"messages": "hi", "questions": [QUESTION]}, 422, "messages"),
    ("empty question", {"messages": DIALOG, "questions": [" "]}, 422, "questions.0"),
    ("too many questions", {"messages": DIALOG, "questions": ["Why?"] * 5}, 422, "questions"),
    ("unknown layer", {"messages": DIALOG, "questions": [QUESTION], "layer": 99}, 422, "layer"),
    ("layer not int", {"messages": DIALOG, "questions": [QUESTION], "layer": "x"}, 422,
     "layer"),
    ("bad control", {"messages": DIALOG, "questions": [QUESTION], "control": "random"}, 422,
     "control"),
    ("too many new tokens", {"messages": DIALOG, "questions": [QUESTION],
                             "max_new_tokens": 999}, 422, "max_new_tokens"),
    ("zero new tokens", {"messages": DIALOG, "questions": [QUESTION], "max_new_tokens": 0},
     422, "max_new_tokens"),
    ("unparsable read", {"messages": DIALOG, "questions": [QUESTION], "read": "sideways"},
     422, "read"),
    ("missing message", {"messages": DIALOG, "questions": [QUESTION], "read": "messages:7"},
     400, None),
    ("empty token range", {"messages": DIALOG, "questions": [QUESTION], "read": "tokens:5:5"},
     400, None),
    ("unknown field", {"messages": DIALOG, "questions": [QUESTION], "qestion": "x"}, 422,
     "qestion"),
    ("seed out of range", {"messages": DIALOG, "questions": [QUESTION], "seed": 2**70,
                           "temperature": 0.5}, 422, "seed"),
    ("too many tokens", {"messages": [{"role": "user", "content": "cook " * 400}],
                         "questions": [QUESTION]}, 422, "messages"),
]


@pytest.mark.parametrize("name, body, status, param", BAD, ids=[b[0] for b in BAD])
def test_bad_read_requests_are_4xx_json(client, name, body, status, param):
    if isinstance(body, bytes):
        r = client.post("/v1/read", content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post("/v1/read", json=body)
    err = error_of(r, status)
    if param is not None:
        assert err["param"] == param, err


def test_other_bad_requests_are_4xx_json(client):
    error_of(client.get("/v1/nothing"), 404)
    error_of(client.get("/v1/read"), 405)
    error_of(client.post("/v1/score", json={"messages": DIALOG, "questions": [QUESTION]}), 422)
    error_of(client.post("/v1/score", json={"messages": DIALOG, "questions": [QUESTION],
                                            "candidates": ["a"] * 5}), 422)
    error_of(client.post("/v1/tokens", json={"messages": DIALOG, "read": "last:0"}), 422)
    error_of(client.post("/v1/chat/completions", json={"messages": []}), 422)
    error_of(client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), 400)
    error_of(client.post("/v1/adapters", json={"path": ""}), 422)
    error_of(client.post("/v1/adapters", json={"path": "x" * 5000}), 400)
    error_of(client.post("/v1/chat/completions", json={"messages": DIALOG, "seed": -2**64}),
             422)


def test_timeouts_and_a_full_queue_are_503_504_json(reader):
    limits = Limits(timeout_s=0.3, max_queue=2)
    with TestClient(create_app(reader, limits=limits)) as c:
        worker, gate = c.app.state.worker, threading.Event()
        worker.submit(lambda payloads: (gate.wait(10), [0])[1], None)  # the model is busy
        try:
            body = {"messages": DIALOG, "questions": [QUESTION], "max_new_tokens": 2}
            assert error_of(c.post("/v1/read", json=body), 504)["type"] == "timeout"
            with pytest.raises(QueueFull):
                for _ in range(3):  # the timed-out request may still hold a place
                    worker.submit(lambda payloads: [0] * len(payloads), None)
            r = c.post("/v1/read", json=body)
            assert error_of(r, 503)["type"] == "overloaded" and r.headers["Retry-After"]
        finally:
            gate.set()
        deadline = time.monotonic() + 60  # generous: a loaded CI machine is slow
        while worker.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.post("/v1/read", json=body).status_code == 200


# ---- schema, page, command line ---------------------------------------------------------------

def test_openapi_schema_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [("/health", "get"), ("/v1/read", "post"), ("/v1/score", "post"),
                         ("/v1/tokens", "post"), ("/v1/chat/completions", "post"),
                         ("/v1/models", "get"), ("/v1/adapters", "post"),
                         ("/v1/steer", "post"), ("/v1/steer/{job_id}", "get")]:
        assert method in paths[path], path
    read = paths["/v1/read"]["post"]
    assert "422" in read["responses"] and "413" in read["responses"]
    assert {"ReadRequest", "ReadResponse", "ChatCompletion", "ErrorBody"} <= set(
        schema["components"]["schemas"])


def test_page_is_served_and_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "latentqa inspector" in page and "/v1/read" in page and "/v1/score" in page
    assert "/v1/chat/completions" in page and "Authorization" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_cli_refuses_non_loopback_without_token(capsys, monkeypatch):
    from latentqa.cli import main
    from latentqa.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.com")
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        assert main(["serve", "--host", host]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "without a token" in err and "Traceback" not in err
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--token-env", "NO_SUCH_TOKEN_VAR"]) == 2
    assert "NO_SUCH_TOKEN_VAR is not set" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        assert "cannot listen" in capsys.readouterr().err


def test_serves_the_shipped_decoder_on_smollm2():
    from latentqa.reading import load

    with TestClient(create_app(load(), limits=LIMITS)) as c:
        out = c.post("/v1/read", json={"messages": DIALOG[:2], "questions": [QUESTION],
                                       "max_new_tokens": 8}).json()
        assert out["answers"][0]["answer"].strip() and out["layer"] == 14
        reply = c.post("/v1/chat/completions", json={"messages": DIALOG[:2],
                                                     "max_tokens": 8, "temperature": 0})
        assert reply.json()["choices"][0]["message"]["content"].strip()


def test_data_generate_command_against_the_server(reader, tmp_path, monkeypatch, capsys):
    """`latentqa data generate --base-url` drives a live inspector's /v1/chat/completions:
    every generator request is answered by the target (a tiny random model writes no usable
    behaviour, so the run ends by saying so, with the rejected outputs kept)."""
    from latentqa.cli import main

    app = create_app(reader, limits=LIMITS, token="s3cret")
    monkeypatch.setenv("LQA_TEST_KEY", "s3cret")
    out = tmp_path / "gen"
    with serving(app) as url:
        rc = main(["data", "generate", "--out", str(out), "--base-url", f"{url}/v1",
                   "--model", "target", "--api-key-env", "LQA_TEST_KEY", "--no-progress",
                   "--num-behaviours", "1", "--max-retries", "1", "--max-tokens", "12",
                   "--http-backoff", "0.01"])
    said = capsys.readouterr()
    assert rc == 1 and "had no valid output" in said.out + said.err
    rejected = [json.loads(line) for line in
                (out / "work" / "rejected.jsonl").read_text().splitlines()]
    assert rejected and all(r["output"].strip() for r in rejected)  # the target's replies
    # what was written is a consistent dataset of the labels that made it: none
    assert "wrote 0 labels" in said.out and json.loads((out / "qa.json").read_text()) == {}


# ---- the rules shared with the command line (latentqa.validation) -----------------------------

LONE = "\ud800"  # a lone surrogate: json.dumps sends it as the escape "\ud800"
SURROGATE_REQUESTS = [
    ("/v1/read", {"messages": [{"role": "user", "content": LONE}], "questions": ["q"]},
     "messages.0.content"),
    ("/v1/read", {"messages": DIALOG, "questions": ["q", LONE]}, "questions.1"),
    ("/v1/score", {"messages": [{"role": "user", "content": LONE}], "questions": ["q"],
                   "candidates": ["a"]}, "messages.0.content"),
    ("/v1/score", {"messages": DIALOG, "questions": [LONE], "candidates": ["a"]},
     "questions.0"),
    ("/v1/score", {"messages": DIALOG, "questions": ["q"], "candidates": ["a", LONE]},
     "candidates.1"),
    ("/v1/tokens", {"messages": [{"role": "user", "content": "a" + LONE}]},
     "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE}]},
     "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": LONE}]}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": DIALOG[:2], "stop": [LONE]}, "stop.0"),
]


@pytest.mark.parametrize("path, body, param", SURROGATE_REQUESTS,
                         ids=[f"{p}:{q}" for p, _, q in SURROGATE_REQUESTS])
def test_a_lone_surrogate_is_a_422_naming_the_field(client, path, body, param):
    r = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    err = error_of(r, 422)
    assert err["param"] == param and "lone surrogate" in err["message"]


STRICT = [
    ("layer true", {"layer": True}, "layer"),
    ("layer as text", {"layer": "2"}, "layer"),
    ("read [true]", {"read": [True]}, "read"),
    ("temperature true", {"temperature": True}, "temperature"),
    ("max_new_tokens true", {"max_new_tokens": True}, "max_new_tokens"),
    ("temperature over 2", {"temperature": 2.5}, "temperature"),
    ("top_p over 1", {"top_p": 2}, "top_p"),
]


@pytest.mark.parametrize("name, extra, param", STRICT, ids=[s[0] for s in STRICT])
def test_fields_are_strict_no_coercion(client, name, extra, param):
    body = {"messages": DIALOG, "questions": [QUESTION], "max_new_tokens": 2, **extra}
    assert error_of(client.post("/v1/read", json=body), 422)["param"].startswith(param)


def test_unknown_roles_are_refused_everywhere(client):
    wizard = [{"role": "system", "content": "Be brief."}, {"role": "wizard", "content": "Hi"}]
    for path, extra in [("/v1/read", {"questions": [QUESTION]}),
                        ("/v1/score", {"questions": [QUESTION], "candidates": ["a"]}),
                        ("/v1/tokens", {}), ("/v1/chat/completions", {})]:
        err = error_of(client.post(path, json={"messages": wizard, **extra}), 422)
        assert err["param"] == "messages.1.role" and "'wizard'" in err["message"], path
        assert "system, user, assistant" in err["message"]
    # OpenAI's developer role is the system prompt
    r = client.post("/v1/chat/completions", json={"max_tokens": 2, "temperature": 0, "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text


def test_chat_with_an_unknown_model_is_a_404_listing_the_known_ones(client):
    err = error_of(client.post("/v1/chat/completions", json={"model": "gpt-4o",
                                                             "messages": DIALOG[:2]}), 404)
    assert err["param"] == "model" and "'gpt-4o'" in err["message"]
    assert "target" in err["message"] and err["type"] == "not_found"
    err = error_of(client.post("/v1/chat/completions", json={"adapter": "steer_77",
                                                             "messages": DIALOG[:2]}), 404)
    assert err["param"] == "adapter"
    for model in (None, "target"):  # the plain target, by name or by default
        body = {"messages": DIALOG[:2], "max_tokens": 2, "temperature": 0}
        assert client.post("/v1/chat/completions",
                           json=body if model is None else dict(body, model=model)
                           ).status_code == 200


def test_a_corrupt_adapter_is_a_400_naming_the_file(client, steering_adapter, tmp_path):
    bad = tmp_path / "adapter"
    shutil.copytree(steering_adapter, bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    err = error_of(client.post("/v1/adapters", json={"path": str(bad)}), 400)
    assert err["param"] == "path" and str(weights) in err["message"]
    assert "truncated or corrupt" in err["message"]
    assert client.get("/health").json()["adapters"] == []


def test_steer_checks_the_config_before_accepting_it(reader, tmp_path):
    from latentqa.serve.steer import find_steer_fn

    steer_fn = find_steer_fn(reader)  # latentqa.steering's, with its config check
    assert steer_fn is not None and callable(steer_fn.check)
    jobs = tmp_path / "jobs"
    with TestClient(create_app(reader, limits=LIMITS, steer_fn=steer_fn,
                               steer_dir=jobs)) as c:
        for body, param in [({}, "config.control"), ({"config": {}}, "config.control"),
                            ({"config": {"control": "Be a pirate.", "stepz": 3}},
                             "config.stepz"),
                            ({"config": {"control": "Be a pirate.", "steps": True}},
                             "config.steps"),
                            ({"config": {"control": "Be a pirate.", "steps": 0}},
                             "config.steps"),
                            ({"config": {"control": [["q"]]}}, "config.control"),
                            ({"config": {"control": str(tmp_path / "none.json")}},
                             "config.control"),
                            ({"config": {"control": "Be a pirate.", "prompts": [3]}},
                             "config.prompts"),
                            ({"config": {"control": "Be a pirate.",
                                         "prompts": str(tmp_path / "none.txt")}},
                             "config.prompts"),
                            ({"config": {"control": "x", "note": LONE}}, "config.note"),
                            # values a run would fail on, or learn nothing with, later
                            ({"config": {"control": "x", "lr": -1}}, "config.lr"),
                            ({"config": {"control": "x", "lr": 0}}, "config.lr"),
                            ({"config": {"control": "x", "lr": float("nan")}}, "config.lr"),
                            ({"config": {"control": "x", "log_every": 0}},
                             "config.log_every"),
                            ({"config": {"control": "x", "lora_r": 0}}, "config.lora_r"),
                            ({"config": {"control": "x", "eval_share": 1.0}},
                             "config.eval_share"),
                            ({"config": {"control": "x", "fluency_weight": float("inf")}},
                             "config.fluency_weight")]:
            r = c.post("/v1/steer", content=json.dumps(body),
                       headers={"Content-Type": "application/json"})
            assert error_of(r, 422)["param"] == param, body
        assert c.get("/health").json()["queued"] == 0
    assert not jobs.exists() or not any(jobs.iterdir())  # no job folder left behind


def test_a_steering_run_that_fails_leaves_no_empty_folder(reader, tmp_path):
    def steer_fn(config, out_dir):
        raise ValueError("bad steering config")

    jobs = tmp_path / "jobs"
    with TestClient(create_app(reader, limits=LIMITS, steer_fn=steer_fn,
                               steer_dir=jobs)) as c:
        job = c.post("/v1/steer", json={"config": {"x": 1}}).json()
        for _ in range(200):
            job = c.get(f"/v1/steer/{job['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "failed" and job["error"] == "bad steering config"
    assert not (jobs / job["id"]).exists()


def test_page_csp_is_what_the_docs_say(client):
    from pathlib import Path

    from latentqa.serve.security import PAGE_CSP

    sent = client.get("/").headers["content-security-policy"]
    assert sent == PAGE_CSP
    doc = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text()
    assert f"`Content-Security-Policy: {sent}`" in doc
