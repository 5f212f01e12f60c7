"""The inspector page in real headless Chromium, against a real `latentqa serve`.

The server is the command itself (`latentqa serve` in a subprocess, on a free loopback port)
over the tiny random target and a random LoRA decoder, so the page's mechanics are checked end
to end: chat with the target, pick its reply (then a token range), ask the decoder, toggle the
shuffled control, score candidate descriptions. Assertions are on the DOM (and on the API
responses the page got, which the DOM must show), never on timing. Screenshots are kept under
test-artifacts/browser/.

Needs Playwright (the `dev` extra) and a Chromium on PATH (`chromium`; `make test` installs
it with apt-get when missing) or at $LATENTQA_CHROMIUM. Playwright drives that system
browser; its own browser download is never used. Without them the tests fail, unless
LATENTQA_SKIP_BROWSER=1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx  # noqa: E402
import pytest
from serve_helpers import random_decoder, serving

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
SKIP_ENV = "LATENTQA_SKIP_BROWSER"
TIMEOUT_MS = 90_000  # generous: a loaded CI machine is slow; nothing waits on a fixed delay
MAX_NEW_TOKENS = 16


def _unavailable(what: str):
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{what} ({SKIP_ENV}=1)")
    pytest.fail(f"browser tests: {what}. `make test` installs both (Playwright with the dev "
                f"extra, Chromium with apt-get: `make browser`); or install them yourself; or "
                f"set {SKIP_ENV}=1 to skip these tests", pytrace=False)


def chromium_path() -> str | None:
    wanted = os.environ.get("LATENTQA_CHROMIUM")
    if wanted:
        return shutil.which(wanted) or (wanted if Path(wanted).is_file() else None)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        _unavailable("no Chromium found (looked for `chromium` on PATH, or $LATENTQA_CHROMIUM)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def decoder_dir(tiny_target, tmp_path_factory):
    """A random (untrained, non-zero) LoRA decoder for the tiny target, saved like `train`."""
    return random_decoder(tiny_target, tmp_path_factory.mktemp("browser") / "decoder")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(decoder_dir, tiny_target, tmp_path_factory):
    """`latentqa serve` (the real command, default loopback settings: no token, loopback Host
    names only) in a subprocess; yields its base URL."""
    port = free_port()
    logs = tmp_path_factory.mktemp("serve-logs") / "serve.log"
    cmd = [sys.executable, "-c", "import sys; from latentqa.cli import main; sys.exit(main())",
           "serve", "--port", str(port), "--decoder", str(decoder_dir),
           "--target", str(tiny_target), "--max-new-tokens", str(MAX_NEW_TOKENS),
           "--steer-dir", str(tmp_path_factory.mktemp("steer")), "--log-level", "warning"]
    # a 32-wide model gains nothing from threads; on a busy 2-core machine they cost ~15x
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = f"http://127.0.0.1:{port}"
    with open(logs, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`latentqa serve` exited with {proc.returncode}:\n"
                            f"{logs.read_text(errors='replace')}", pytrace=False)
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, logs.read_text(errors="replace")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Shots:
    """Full-page screenshots under test-artifacts/browser/, named <test>-<nn>-<step>.png."""

    def __init__(self, page, test: str):
        self.page, self.test, self.n, self.paths = page, test, 0, []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob(f"{test}-*.png"):
            old.unlink()

    def __call__(self, step: str) -> Path:
        self.n += 1
        path = ARTIFACTS / f"{self.test}-{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        print(f"screenshot: {path}")
        return path


@contextlib.contextmanager
def page_of(browser, test: str):
    """A fresh page that records API responses and script errors; a screenshot on failure."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors, responses = [], []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("response", lambda r: responses.append(r) if "/v1/" in r.url else None)
    shots = Shots(page, test)
    try:
        yield page, shots, responses, errors
    except BaseException:
        with contextlib.suppress(Exception):
            shots("FAILED")
        raise
    finally:
        context.close()


def api_calls(responses, path: str) -> list[tuple[dict, dict]]:
    """(request body, response body) of each finished call to ``path``, in order."""
    out = []
    for r in responses:
        if r.url.endswith(path):
            assert r.status == 200, (path, r.status, r.text())
            out.append((r.request.post_data_json, r.json()))
    return out


def click_for(page, selector: str, path: str, control: str | None = None):
    """Click ``selector`` and wait for the response to the call to ``path`` it makes (the
    control call, with ``control``), so that the responses are recorded before we look."""
    def wanted(r):
        return r.url.endswith(path) and (
            control is None or (r.request.post_data_json or {}).get("control") == control)

    with page.expect_response(wanted):
        page.click(selector)


def no_error_banner(page):
    from playwright.sync_api import expect

    expect(page.locator(".error.on")).to_have_count(0)


# ---- the tests ---------------------------------------------------------------------------

def test_chat_pick_ask_control_and_score_in_chromium(browser, served):
    from playwright.sync_api import expect

    with page_of(browser, "inspector") as (page, shot, responses, errors):
        page.goto(served + "/")
        expect(page.locator("#status")).to_have_text("ready")
        expect(page.locator("#model")).to_contain_text("read after block 2 of 4")
        shot("loaded")

        # ---- chat: a hidden system prompt, a user message, the target's reply
        page.locator("#sysBox summary").click()
        page.fill("#system", "You are a pirate. Always talk like a pirate.")
        page.fill("#say", "What should I cook tonight?")
        click_for(page, "#send", "/v1/chat/completions")
        messages = page.get_by_test_id("message")
        expect(messages).to_have_count(3)
        expect(page.locator("#chatSpin")).not_to_be_visible()
        [(sent, completion)] = api_calls(responses, "/v1/chat/completions")
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
        assert sent["max_tokens"] == MAX_NEW_TOKENS  # the page capped its default to the limit
        reply = completion["choices"][0]["message"]["content"]
        assert reply.strip(), completion
        expect(messages.nth(0)).to_contain_text("hidden prompt")
        assert "pirate" not in messages.nth(0).inner_text()  # hidden until "reveal"
        expect(messages.nth(1)).to_contain_text("What should I cook tonight?")
        expect(messages.nth(2)).to_have_class(re.compile(r"\bassistant\b"))
        assert messages.nth(2).evaluate("e => e.lastChild.textContent") == reply
        no_error_banner(page)
        shot("chat-reply")

        # ---- pick the reply, ask the decoder (real activations only)
        messages.nth(2).click()
        expect(page.locator("#sel")).to_have_text("message #2 (whole turn)")
        expect(messages.nth(2)).to_have_class(re.compile(r"\bpicked\b"))
        page.uncheck("#askShuffled")
        click_for(page, "#ask", "/v1/read")
        rows = page.get_by_test_id("answer-row")
        expect(rows).to_have_count(2)  # the two default questions
        expect(page.locator("#askSpin")).not_to_be_visible()
        [(body, read)] = api_calls(responses, "/v1/read")
        assert body["read"] == "messages:2" and "control" not in body
        assert len(body["messages"]) == 3 and body["messages"][2]["content"] == reply
        expect(page.get_by_test_id("control-answer")).to_have_count(0)
        shown = page.get_by_test_id("answer").all_inner_texts()
        assert shown == [a["answer"] for a in read["answers"]]
        assert all(a.strip() for a in shown), shown
        expect(page.locator("#answers")).to_contain_text(
            f"read {read['read_tokens']} tokens (messages 2) after block 2")
        no_error_banner(page)
        shot("answers")

        # ---- the same, with the shuffled control beside it
        page.check("#askShuffled")
        click_for(page, "#ask", "/v1/read", control="shuffled")
        expect(page.get_by_test_id("control-answer")).to_have_count(2)
        expect(page.locator("#askSpin")).not_to_be_visible()
        calls = api_calls(responses, "/v1/read")
        assert len(calls) == 3
        (real_body, real), (ctl_body, ctl) = calls[1], calls[2]
        assert "control" not in real_body and ctl_body["control"] == "shuffled"
        assert ctl["control"] == "shuffled" and real["answers"] == read["answers"]
        assert page.get_by_test_id("answer").all_inner_texts() == shown
        control = page.get_by_test_id("control-answer").all_inner_texts()
        assert control == [a["answer"] for a in ctl["answers"]]
        assert all(a.strip() for a in control), control
        expect(page.locator("#answers th")).to_have_text(
            ["question", "answer (real activations)", "answer (shuffled control)"])
        no_error_banner(page)
        shot("answers-with-control")

        # ---- list the tokens, pick a range inside the reply
        click_for(page, "#showTokens", "/v1/tokens")
        [(_, listing)] = api_calls(responses, "/v1/tokens")
        tokens = page.get_by_test_id("token")
        expect(tokens).to_have_count(len(listing["tokens"]))
        # the hidden system prompt is masked in the token list too, until "reveal"
        assert "pirate" not in page.inner_text("#tokens")
        page.check("#reveal")
        expect(page.locator("#tokens")).to_contain_text("pirate")
        page.uncheck("#reveal")
        assert "pirate" not in page.inner_text("#tokens")
        in_reply = [t["index"] for t in listing["tokens"] if t["message"] == 2]
        assert len(in_reply) >= 2, listing
        first, last = in_reply[0], in_reply[-1]
        tokens.nth(first).click()
        tokens.nth(last).click(modifiers=["Shift"])
        expect(page.locator("#sel")).to_have_text(f"tokens {first}–{last}")
        expect(page.locator("#tokens .tok.s")).to_have_count(last - first + 1)
        no_error_banner(page)
        shot("token-range")

        # ---- score the candidate descriptions: one bar per candidate (and its control)
        candidates = [c.strip() for c in page.input_value("#cands").splitlines() if c.strip()]
        assert len(candidates) == 4
        expect(page.locator("#scoreShuffled")).to_be_checked()
        click_for(page, "#score", "/v1/score", control="shuffled")
        score_rows = page.get_by_test_id("score-row")
        expect(score_rows).to_have_count(len(candidates))
        expect(page.locator("#scoreSpin")).not_to_be_visible()
        expect(page.get_by_test_id("score-bar")).to_have_count(len(candidates))
        expect(page.get_by_test_id("control-bar")).to_have_count(len(candidates))
        (body, scored), (cbody, cscored) = api_calls(responses, "/v1/score")
        assert body["read"] == f"tokens:{first}:{last + 1}" and body["candidates"] == candidates
        assert cbody["control"] == "shuffled"
        want = sorted(scored["scores"][0]["candidates"], key=lambda c: -c["mean_logprob"])
        ctl_of = {c["candidate"]: c for c in cscored["scores"][0]["candidates"]}
        for k, cand in enumerate(want):
            row = score_rows.nth(k)
            assert row.locator(".label").inner_text() == cand["candidate"]
            bar = row.get_by_test_id("score-bar")
            assert float(bar.inner_text()) == pytest.approx(cand["mean_logprob"], abs=0.006)
            assert bar.locator(".fill").bounding_box()["width"] > 0
            ctl_bar = row.get_by_test_id("control-bar")
            assert float(ctl_bar.inner_text()) == pytest.approx(
                ctl_of[cand["candidate"]]["mean_logprob"], abs=0.006)
        expect(score_rows.first).to_have_class(re.compile(r"\bbest\b"))
        expect(page.locator("#chart")).to_contain_text(
            "best (real): " + scored["scores"][0]["best"])
        no_error_banner(page)
        shot("scores")
        assert errors == [], errors




def test_token_from_the_url_and_error_banners_in_chromium(browser, decoder_dir, tiny_target):
    """With a token, the page takes it from #token=... (and drops it from the address bar);
    bad input shows the error banner; a wrong token shows the server as offline."""
    from playwright.sync_api import expect

    from latentqa.reading import load
    from latentqa.serve import Limits, create_app

    reader = load(decoder_dir, str(tiny_target), batch_size=8)
    app = create_app(reader, limits=Limits(max_new_tokens=MAX_NEW_TOKENS), token="s3cret")
    with serving(app) as base, page_of(browser, "token") as (page, shot, responses,
                                                                          errors):
        page.goto(base + "/#token=s3cret")
        expect(page.locator("#status")).to_have_text("ready")
        assert "token" not in page.url
        page.click("#send")  # nothing written: the page says so, without calling the server
        expect(page.locator("#chatErr")).to_have_text("Write a message first.")
        expect(page.locator(".error.on")).to_have_count(1)
        page.fill("#say", "Hello there.")
        page.select_option("#sayRole", "user-only")
        page.click("#send")
        expect(page.locator("#chatErr")).not_to_be_visible()
        page.fill("#lastN", "0")  # "last 0" is refused by the page: back to the default
        page.locator("#lastN").dispatch_event("change")
        expect(page.locator("#sel")).to_have_text("every turn after the system prompt")
        page.fill("#layer", "99")  # a layer the target lacks: the server's 422, on the page
        click_for(page, "#ask", "/v1/read")
        expect(page.locator("#askErr")).to_contain_text("layer")
        shot("error-banner")
        page.fill("#layer", "")
        click_for(page, "#showTokens", "/v1/tokens")
        expect(page.get_by_test_id("token").first).to_be_visible()
        assert api_calls(responses, "/v1/tokens")

        other = page.context.new_page()  # the wrong token (the prompt for a new one dismissed)
        other.on("dialog", lambda d: d.dismiss())
        other.goto(base + "/#token=wrong")
        expect(other.locator("#status")).to_have_text("offline")
        expect(other.locator("#fatal")).to_contain_text("Cannot use the server")
        other.close()
        assert [e for e in errors if "401" not in e and "422" not in e] == [], errors
