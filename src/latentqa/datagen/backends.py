"""Generator models: anything that answers a list of chat messages with one string.

Two kinds: an OpenAI-compatible ``/chat/completions`` endpoint (a hosted API, vLLM, llama.cpp,
or our own ``latentqa serve``) over plain HTTP with the standard library, and a local
transformers model sampled with its chat template.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Protocol

from .errors import BackendError

Messages = list[dict]


class ChatBackend(Protocol):
    name: str
    max_workers: int  # how many calls may usefully run at once

    def complete(self, messages: Messages, *, temperature: float, max_tokens: int,
                 seed: int) -> str: ...


# Statuses worth another try: rate limits and server-side trouble. Anything else (401, 404,
# 400) will not get better by asking again.
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend:
    """POST ``{base_url}/chat/completions``; retries with exponential backoff and jitter."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 timeout: float = 120.0, retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.name = f"{model} at {base_url}"
        self.max_workers = 64
        self.retried = 0  # how many calls were retried, for the summary and the tests

    def _request(self, payload: dict) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, data=json.dumps(payload).encode(),
                                      headers=headers, method="POST")

    def complete(self, messages, *, temperature, max_tokens, seed):
        payload = {"model": self.model, "messages": messages, "temperature": temperature,
                   "max_tokens": max_tokens, "seed": seed}
        last = ""
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                with urllib.request.urlopen(self._request(payload), timeout=self.timeout) as r:
                    body = r.read()
                return _content(body)
            except urllib.error.HTTPError as e:
                # One line: the CLI prints this as a one-line error, and HTML pages are long.
                detail = " ".join(e.read()[:300].decode("utf-8", "replace").split())[:200]
                last = f"HTTP {e.code} from {self.url}: {detail or e.reason}"
                if e.code not in RETRY_STATUSES:
                    raise BackendError(last) from None
                retry_after = _seconds(e.headers.get("Retry-After"))
            except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
                reason = getattr(e, "reason", e)
                last = f"cannot reach {self.url}: {reason}"
            except ValueError as e:  # a reply that is not a chat completion: maybe transient
                last = f"bad reply from {self.url}: {e}"
            if attempt == self.retries:
                break
            self.retried += 1
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1)
            self.sleep(max(delay, retry_after or 0))
        raise BackendError(f"{last} (gave up after {self.retries + 1} tries)")


def _content(body: bytes) -> str:
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise ValueError("not an OpenAI chat completion") from None
    if not isinstance(content, str):
        raise ValueError("message content is not a string")
    return content


def _seconds(value: str | None) -> float | None:
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


class LocalBackend:
    """Sample from a local transformers model; seeded per call so reruns repeat themselves."""

    def __init__(self, loaded, *, top_p: float = 0.95):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.top_p = top_p
        self.name = f"local {loaded.spec}"
        self.max_workers = 1  # one model, one forward at a time; threads would only contend
        self._lock = threading.Lock()  # torch's seed is global

    @classmethod
    def from_spec(cls, spec: str = "smollm2-135m", *, dtype="fp32", device="cpu",
                  trust_remote_code: bool = False) -> "LocalBackend":
        from ..models import load_model

        return cls(load_model(spec, dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code))

    def complete(self, messages, *, temperature, max_tokens, seed):
        from ..batching import pad_id
        from ..generation import generate_text

        tok = self.tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        with self._lock:
            return generate_text(self.model, tok, [prompt], pad_id=pad_id(tok),
                                 max_new_tokens=max_tokens, temperature=temperature,
                                 top_p=self.top_p, seed=seed)[0]
