"""`latentqa serve` under concurrent load: 20 simultaneous POST /v1/read requests over a real
loopback socket (uvicorn in a thread) all succeed and each gets exactly the answer it gets
when sent alone.

The server has one worker thread that merges queued compatible reads (same layer, control,
injection and max_new_tokens) into one Reader call, where the dialogs' target passes are
right-padded together and the decoder prompts are left-padded together for generation. The
worker is held busy while the 20 requests arrive, so they are queued together and really
merged (different dialogs, lengths, questions and read selections in one batch); greedy
decoding makes the answers deterministic, so batched and alone must agree exactly.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx  # noqa: E402
import pytest
import torch
from serve_helpers import random_decoder, serving

from latentqa.serve import Limits, create_app  # noqa: E402

N_REQUESTS = 20
MAX_NEW_TOKENS = 8
LIMITS = Limits(max_new_tokens=16, max_questions=4, max_candidates=4, max_dialog_tokens=256,
                timeout_s=120, max_queue=64)

TOPICS = ["fish stew", "the weather in Lisbon", "a broken bicycle chain", "learning the violin",
          "tax forms", "a birthday party for a cat", "black holes", "sourdough bread",
          "a job interview", "the French revolution"]
PERSONAS = ["You are a pirate.", "You are a terse librarian.", "You are a cheerful chef."]
QUESTIONS = ["What is the persona of the assistant?", "What is the assistant trying to do?",
             "Is the user happy?", "What is the topic?", "Why?"]


def request_body(i: int) -> dict:
    """Request ``i`` of 20: dialogs of different lengths and shapes, different questions and
    read selections, all with the same merge key (greedy, same max_new_tokens)."""
    topic = TOPICS[i % len(TOPICS)]
    dialog = []
    if i % 3 == 0:
        dialog.append({"role": "system", "content": PERSONAS[i % len(PERSONAS)]})
    dialog.append({"role": "user", "content": f"Tell me about {topic}." + " Please." * (i % 4)})
    if i % 2 == 0:  # some end with the assistant's turn, some with the user's
        dialog.append({"role": "assistant",
                       "content": f"Sure! {topic.capitalize()} is " + "very " * (i % 5)
                                  + "interesting."})
    questions = [QUESTIONS[i % len(QUESTIONS)]]
    if i % 4 == 1:
        questions.append(QUESTIONS[(i + 2) % len(QUESTIONS)])
    body = {"messages": dialog, "questions": questions, "max_new_tokens": MAX_NEW_TOKENS,
            "temperature": 0}
    if i % 5 == 2:
        body["read"] = f"last:{3 + i % 4}"
    elif i % 5 == 4:
        body["read"] = "messages:" + str(len(dialog) - 1)
    return body


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A 32-wide model gains nothing from intra-op threads, and on a busy 2-core machine they
    make it ~15x slower (spinning threads); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reader(tiny_target, tmp_path_factory):
    """The tiny target with a random LoRA decoder, as in test_serve."""
    from latentqa.reading import load

    out = random_decoder(tiny_target, tmp_path_factory.mktemp("serve-conc") / "decoder")
    return load(out, str(tiny_target), batch_size=8)


def test_concurrent_reads_equal_sequential_reads(reader):
    app = create_app(reader, limits=LIMITS)
    bodies = [request_body(i) for i in range(N_REQUESTS)]
    assert len({str(b["messages"]) for b in bodies}) == len(TOPICS) * 2  # mixed dialogs
    with serving(app) as base, httpx.Client(base_url=base, timeout=120) as client:
        worker = app.state.worker
        sequential = []
        for body in bodies:
            r = client.post("/v1/read", json=body)
            assert r.status_code == 200, r.text
            sequential.append(r.json())
        assert worker.largest_batch == 1  # alone, each was its own batch

        # hold the model busy so that all 20 requests are queued, then merged
        gate = threading.Event()
        worker.submit(lambda payloads: (gate.wait(60), [None] * len(payloads))[1], None)

        def post(body):
            with httpx.Client(base_url=base, timeout=120) as c:
                return c.post("/v1/read", json=body)

        try:
            with ThreadPoolExecutor(N_REQUESTS) as pool:
                futures = [pool.submit(post, body) for body in bodies]
                deadline = time.monotonic() + 60
                while worker.pending() < N_REQUESTS:
                    assert time.monotonic() < deadline, f"only {worker.pending()} queued"
                    assert not any(f.done() for f in futures), [
                        f.result().text for f in futures if f.done()]
                    time.sleep(0.02)
                gate.set()
                responses = [f.result() for f in futures]
        finally:
            gate.set()

    assert [r.status_code for r in responses] == [200] * N_REQUESTS, [
        r.text for r in responses if r.status_code != 200]
    assert worker.largest_batch == 16  # the worker's max_batch: requests were really merged
    concurrent = [r.json() for r in responses]
    for i, (alone, merged) in enumerate(zip(sequential, concurrent)):
        assert [a["question"] for a in merged["answers"]] == bodies[i]["questions"]
        assert merged == alone, (i, bodies[i])
    answers = [a["answer"] for out in concurrent for a in out["answers"]]
    assert all(isinstance(a, str) for a in answers)
    assert len(set(answers)) > 1  # the requests really differ
