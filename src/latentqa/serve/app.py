"""The FastAPI app: the inspector page and the HTTP API over one Reader.

``create_app(reader, ...)`` builds it; any object with the Reader's ``answer_pairs``,
``score_pairs``, ``render``, ``token_texts``, ``generate``, ``model``, ``info`` and ``spec``
will do (``model`` only to add steering adapters to). Requests
are checked here (the server's limits, and ``latentqa.validation``'s rules, the command line's
too), then queued for the worker thread (``worker.py``), which runs them on the one model,
batching compatible ones (``engine.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..arch import LayerError
from ..errors import LatentQAError
from ..reading.errors import ReadingError
from ..selection import as_read
from ..validation import check_dialog, check_sampling, check_text, check_texts
from . import schemas as S
from .adapters import Adapters
from .engine import ChatJob, Engine, ReadJob, ScoreJob, TokensJob, call_each
from .errors import ApiError, as_api_error, error_body, error_response, sendable
from .limits import Limits
from .security import PAGE_HEADERS, Guard
from .steer import SteerFn, SteerJobs
from .worker import Expired, QueueFull, Worker

log = logging.getLogger("latentqa.serve")

ERRORS = {code: {"model": S.ErrorBody, "description": text} for code, text in {
    400: "bad input (the message says what to fix)", 401: "missing or wrong token",
    413: "request body too large", 422: "a field is missing, malformed or over a limit",
    503: "too many requests queued", 504: "timed out waiting for the model"}.items()}

BASE_MODEL = "target"
DESCRIPTION = """Ask a frozen target model's activations questions through a LatentQA decoder.

One model in memory: requests are queued and compatible ones batched. Every error is JSON:
`{"error": {"message", "type", "param"}}`. When the server has a token, every request but the
page needs `Authorization: Bearer <token>`. See docs/serve.md."""


def create_app(reader, *, limits: Limits | None = None, token: str | None = None,
               allowed_hosts=None, steer_fn: SteerFn | None = None,
               adapters: Adapters | None = None, steer_dir: str | Path = "runs/serve-steer",
               max_batch: int = 16) -> FastAPI:
    limits = limits or Limits()
    adapters = adapters or Adapters(reader.model)
    worker = Worker(max_queue=limits.max_queue, max_batch=max_batch)
    engine = Engine(reader, adapters, limits)
    steering = SteerJobs(worker, call_each, steer_fn, adapters, steer_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.stop()

    app = FastAPI(title="latentqa serve", version=__version__, description=DESCRIPTION,
                  docs_url=None, redoc_url=None, lifespan=lifespan)  # docs pages need a CDN
    app.state.worker, app.state.engine, app.state.adapters = worker, engine, adapters
    app.state.steering, app.state.limits = steering, limits
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts,
                       max_body_bytes=limits.max_body_bytes)
    _error_handlers(app)

    async def run(fn, payload, key=None):
        try:
            future = worker.submit(fn, payload, key, timeout=limits.timeout_s)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy ({e}); retry shortly", type="overloaded",
                           headers={"Retry-After": "5"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
        except (asyncio.TimeoutError, Expired):
            future.cancel()
            raise ApiError(504, f"no answer within {limits.timeout_s:g} s (the model is busy "
                           "or the request is large); retry, or ask for less",
                           type="timeout") from None
        except Exception as e:
            known = as_api_error(e)
            if known is None:
                raise
            raise known from None

    # ---- checks that name the field -----------------------------------------------------

    # The rules (roles, valid Unicode, nothing empty, sampling ranges) are
    # latentqa.validation's, shared with the command line; a FieldError is a 422 naming the
    # field. The limits are this server's own.

    def dialog_of(messages) -> list[dict]:
        if len(messages) > limits.max_messages:
            raise ApiError(422, f"{len(messages)} messages; this server accepts at most "
                           f"{limits.max_messages}", param="messages")
        return check_dialog([m if isinstance(m, dict) else
                             {"role": m.role, "content": m.content} for m in messages])

    def texts(values: list[str], field: str, most: int) -> list[str]:
        if len(values) > most:
            raise ApiError(422, f"{len(values)} {field}; this server accepts at most {most}",
                           param=field)
        check_texts(values, field, kind=field.rstrip("s"))
        for k, value in enumerate(values):
            if len(value) > limits.max_text_chars:
                raise ApiError(422, f"{field}[{k}] is {len(value)} characters; this server "
                               f"accepts at most {limits.max_text_chars}", param=f"{field}.{k}")
        return list(values)

    def read_of(value):
        try:
            return as_read(value)
        except ReadingError as e:
            raise ApiError(422, str(e), param="read") from None

    def layer_of(value) -> int | None:
        if reader.spec.read_together:  # None: the reader reads its layers together
            if value is not None:
                raise ApiError(422, f"this decoder reads layers {list(reader.read_at)} "
                               "together; leave layer out", param="layer")
            return None
        try:
            return reader.info.check_layer(reader.spec.read_layer if value is None else value,
                                           "layer")
        except LayerError as e:
            raise ApiError(422, str(e), param="layer") from None

    def new_tokens(n: int, field: str) -> int:
        if n > limits.max_new_tokens:
            raise ApiError(422, f"{field} is {n}; this server generates at most "
                           f"{limits.max_new_tokens} tokens", param=field)
        return n

    def reading_info(req, read, layer, read_tokens) -> dict:
        return {"control": req.control, "read": read.describe(), "read_tokens": read_tokens,
                "layer": layer, "layers": list(reader.read_at) if layer is None else [layer]}

    # ---- the page and health ----------------------------------------------------------------

    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health", response_model=S.Health, responses=ERRORS, tags=["server"])
    async def health():
        """The model, its layers, the queue, loaded adapters, whether steering is on."""
        info = reader.info
        return {"version": __version__, "target": str(reader.spec.target),
                "decoder": str(getattr(reader, "decoder_path", "")),
                "read_layer": reader.spec.read_layer, "write_layer": reader.spec.write_layer,
                "read_layers": list(reader.read_at) if reader.spec.read_together
                else [reader.spec.read_layer], "read_together": reader.spec.read_together,
                "num_blocks": info.num_blocks, "hidden_size": info.hidden_size,
                "max_positions": info.max_positions, "queued": worker.pending(),
                "adapters": adapters.names(), "steering": steering.available,
                "limits": limits.to_dict()}

    # ---- reading --------------------------------------------------------------------------

    @app.post("/v1/read", response_model=S.ReadResponse, responses=ERRORS, tags=["reading"])
    async def read(req: S.ReadRequest):
        """The decoder's answer to each question about the dialog's activations."""
        check_sampling(max_new_tokens=req.max_new_tokens, temperature=req.temperature,
                       top_p=req.top_p, seed=req.seed)
        job = ReadJob(dialog_of(req.messages), texts(req.questions, "questions",
                                                     limits.max_questions),
                      read_of(req.read), layer_of(req.layer), req.control, req.injection,
                      new_tokens(req.max_new_tokens or min(48, limits.max_new_tokens),
                                 "max_new_tokens"), req.temperature,
                      req.top_p, req.seed)
        out = await run(engine.read, job, job.key())
        return {"answers": out["answers"],
                **reading_info(req, job.read, job.layer, out["read_tokens"])}

    @app.post("/v1/score", response_model=S.ScoreResponse, responses=ERRORS, tags=["reading"])
    async def score(req: S.ScoreRequest):
        """Each candidate answer's log-probability under the decoder, per question."""
        questions = texts(req.questions, "questions", limits.max_questions)
        candidates = texts(req.candidates, "candidates", limits.max_candidates)
        if len(questions) * len(candidates) > limits.max_rows:
            raise ApiError(422, f"{len(questions)} questions x {len(candidates)} candidates is "
                           f"over this server's {limits.max_rows} per request",
                           param="candidates")
        job = ScoreJob(dialog_of(req.messages), questions, candidates, read_of(req.read),
                       layer_of(req.layer), req.control, req.injection)
        out = await run(engine.score, job, job.key())
        return {"scores": out["scores"],
                **reading_info(req, job.read, job.layer, out["read_tokens"])}

    @app.post("/v1/tokens", response_model=S.TokensResponse, responses=ERRORS,
              tags=["reading"])
    async def tokens(req: S.TokensRequest):
        """The rendered dialog's tokens, whose message each is, and which ones ``read`` picks
        (to choose a token range)."""
        job = TokensJob(dialog_of(req.messages), read_of(req.read))
        out = await run(engine.tokens, job, job.key())
        return {"tokens": out["tokens"], "read": job.read.describe(),
                "read_tokens": out["read_tokens"]}

    # ---- the target, OpenAI-compatible ----------------------------------------------------

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion, responses=ERRORS,
              tags=["target"])
    async def chat_completions(req: S.ChatRequest):
        """The target's reply (adapters off), or the steered target's with ``model`` (or
        ``adapter``) naming a loaded steering adapter. OpenAI-compatible; no streaming."""
        if req.stream:
            raise ApiError(400, "streaming is not supported; send \"stream\": false",
                           param="stream")
        if req.n not in (None, 1):
            raise ApiError(400, f"n={req.n}: only one choice per request is supported",
                           param="n")
        adapter = _adapter_for(req, adapters)
        max_tokens = req.max_completion_tokens or req.max_tokens or min(256,
                                                                         limits.max_new_tokens)
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        check_sampling(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                       seed=req.seed, names={"max_new_tokens": field})
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        for k, stop in enumerate(stops):
            check_text(stop, "stop" if isinstance(req.stop, str) else f"stop.{k}",
                       allow_empty=True)
        job = ChatJob(dialog_of(_chat_messages(req.messages)), adapter,
                      new_tokens(max_tokens, field),
                      1.0 if req.temperature is None else req.temperature,
                      req.top_p or 1.0, req.seed, tuple(stops))
        out = await run(engine.chat, job, job.key())
        usage = {"prompt_tokens": out["prompt_tokens"],
                 "completion_tokens": out["completion_tokens"],
                 "total_tokens": out["prompt_tokens"] + out["completion_tokens"]}
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": adapter or req.model or BASE_MODEL,
                "choices": [{"index": 0, "finish_reason": out["finish_reason"],
                             "message": {"role": "assistant", "content": out["content"]}}],
                "usage": usage}

    @app.get("/v1/models", response_model=S.ModelList, responses=ERRORS, tags=["target"])
    async def models():
        """``target`` and every loaded steering adapter, as OpenAI model ids."""
        return {"data": [{"id": BASE_MODEL}] + [{"id": n} for n in adapters.names()]}

    # ---- steering -------------------------------------------------------------------------

    @app.get("/v1/adapters", response_model=S.AdapterList, responses=ERRORS, tags=["steering"])
    async def list_adapters():
        return {"adapters": [{"name": n, "path": p}
                             for n, p in adapters.loaded.copy().items()]}

    @app.post("/v1/adapters", response_model=S.AdapterInfo, responses=ERRORS,
              tags=["steering"])
    async def load_adapter(req: S.AdapterLoad):
        """Load a steering adapter (a peft directory for the target, on the server's disk)
        beside the decoder, on the same weights; chat with it by its name."""
        return await run(call_each, lambda: adapters.load(req.path, req.name))

    @app.post("/v1/steer", response_model=S.SteerJob, status_code=202, tags=["steering"],
              responses={**ERRORS, 501: {"model": S.ErrorBody,
                                         "description": "steering is unavailable"}})
    async def steer(req: S.SteerRequest):
        """Start a steering run (a job); poll ``GET /v1/steer/{job_id}``."""
        return steering.submit(req.config, req.load)

    @app.get("/v1/steer/{job_id}", response_model=S.SteerJob, responses=ERRORS,
             tags=["steering"])
    async def steer_status(job_id: str):
        return steering.get(job_id)

    return app


def _adapter_for(req: S.ChatRequest, adapters: Adapters) -> str | None:
    """The steering adapter a chat request names, or None for the plain target. ``model`` must
    be ``target`` (or absent) or a loaded adapter: an OpenAI client's default model name would
    otherwise get the plain target's reply without a word."""
    if req.model is not None and req.model != BASE_MODEL and req.model not in adapters.loaded:
        known = ", ".join([BASE_MODEL, *adapters.names()])
        raise ApiError(404, f"no model named {req.model!r} on this server; known: {known} "
                       "(GET /v1/models; load a steering adapter with POST /v1/adapters)",
                       type="not_found", param="model")
    if req.adapter is not None:
        return adapters.check(req.adapter, param="adapter")
    return None if req.model in (None, BASE_MODEL) else req.model


def _chat_messages(messages: list[S.ChatMessage]) -> list[dict]:
    """OpenAI messages as plain {role, content}: text parts joined, 'developer' = system."""
    out = []
    for k, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{k}]: only text content parts are "
                                   "supported", param=f"messages.{k}.content")
                parts.append(part["text"])
            content = "".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role,
                    "content": content or ""})
    return out


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, type=exc.type, param=exc.param,
                              headers=exc.headers)

    @app.exception_handler(LatentQAError)
    async def user_error(request, exc: LatentQAError):  # raised by a check in an endpoint
        known = as_api_error(exc)
        return error_response(known.status, known.message, type=known.type, param=known.param,
                              headers=known.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON", param="body")
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in errors]
        first = details[0] if details else {"loc": ["body"], "msg": "invalid request"}
        param = ".".join(p for p in first["loc"] if p != "body") or "body"
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        body = error_body(f"{param}: {first['msg']}{more}", "invalid_request_error", param)
        body["error"]["details"] = sendable(details)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed",
                413: "request_too_large"}.get(exc.status_code, "invalid_request_error")
        return error_response(exc.status_code, str(exc.detail), type=kind,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server's "
                              "log", type="internal_error")
