"""Request and response bodies of the HTTP API (they make its OpenAPI schema).

Our own endpoints refuse unknown fields (a typo is a 422 naming it); the OpenAI-compatible
``/v1/chat/completions`` ignores them, as clients send many we do not use. Every field is
strict: ``"layer": true`` or ``"temperature": "0.5"`` is a 422, not layer 1 or 0.5. The value
rules (roles, valid Unicode, ranges) are ``latentqa.validation``'s, which the endpoints also
call, as the command line does; the bounds here only repeat them for the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..activations import INJECTION_MODES
from ..validation import ROLES, SEED_MAX, SEED_MIN, TEMPERATURE_MAX

Control = Literal["shuffled", "none"]
Injection = Literal[INJECTION_MODES]  # type: ignore[valid-type]

READ_HELP = ("which tokens the decoder reads: 'after-system' (default: every turn after a "
             "leading system prompt), 'messages:1,2', 'tokens:START:END' (a token range of the "
             "rendered dialog, see /v1/tokens), 'last:N', or a list of message indices")
CONTROL_HELP = ("null: the real activations; 'shuffled': another dialog's activations (a fixed "
                "neutral dialog); 'none': the same probe with nothing injected")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(_Strict):
    role: str = Field(min_length=1, max_length=32, examples=["user"],
                      description=f"one of {', '.join(ROLES)}")
    content: str = Field(examples=["What should I cook tonight?"])


DIALOG_EXAMPLE = [{"role": "system", "content": "You are a pirate."},
                  {"role": "user", "content": "What should I cook tonight?"}]


class _Reading(_Strict):
    messages: list[Message] = Field(min_length=1, examples=[DIALOG_EXAMPLE],
                                    description="the dialog the target runs on")
    read: str | list[int] | None = Field(None, description=READ_HELP)
    layer: int | None = Field(None, description="read after this block (default: the "
                                                "decoder's read layer; a decoder that reads "
                                                "several layers together takes none)")
    control: Control | None = Field(None, description=CONTROL_HELP)
    injection: Injection | None = Field(None, description="default: the decoder's")


class ReadRequest(_Reading):
    questions: list[str] = Field(min_length=1,
                                 examples=[["What is the persona of the assistant?"]])
    max_new_tokens: int | None = Field(None, ge=1, description="default: 48, or the server's "
                                                               "limit if lower")
    temperature: float = Field(0.0, ge=0.0, le=TEMPERATURE_MAX, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)


class Answer(BaseModel):
    question: str
    answer: str


class _ReadingInfo(BaseModel):
    control: Control | None
    read: str = Field(description="what was read, in words")
    read_tokens: int = Field(description="how many of the dialog's tokens were read")
    layer: int | None = Field(description="the block read after (null when several are read "
                                          "together)")
    layers: list[int] = Field(description="every block read, in probe order")


class ReadResponse(_ReadingInfo):
    answers: list[Answer]


class ScoreRequest(_Reading):
    questions: list[str] = Field(
        min_length=1, examples=[["Please describe the persona of the assistant."]])
    candidates: list[str] = Field(min_length=1, examples=[["A pirate.", "A chef."]])


class CandidateScore(BaseModel):
    candidate: str
    logprob: float = Field(description="total log-probability (answer + end-of-turn marker)")
    mean_logprob: float = Field(description="per token; rankings use this")
    num_tokens: int
    tokens: list[str]
    token_logprobs: list[float]


class QuestionScores(BaseModel):
    question: str
    best: str
    candidates: list[CandidateScore] = Field(description="in the order given")


class ScoreResponse(_ReadingInfo):
    scores: list[QuestionScores]


class TokensRequest(_Strict):
    messages: list[Message] = Field(min_length=1, examples=[DIALOG_EXAMPLE])
    read: str | list[int] | None = Field(None, description=READ_HELP)


class Token(BaseModel):
    index: int
    text: str
    message: int = Field(description="the message whose content it is in, -1: template")
    turn: int = Field(description="the message whose turn it is in, -1: before the first")
    read: bool = Field(description="read by the given selection")


class TokensResponse(BaseModel):
    tokens: list[Token]
    read: str
    read_tokens: int


# ---- OpenAI-compatible chat completions ------------------------------------------------

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str = Field(min_length=1, max_length=32,
                      description=f"one of {', '.join(ROLES)}, or developer (= system)")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="text, or a list of {'type': 'text', 'text': ...} parts")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="'target' (or none) for the plain target; a "
                                                "loaded steering adapter's name for it (see "
                                                "/v1/models); any other name is a 404")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=TEMPERATURE_MAX,
                                      description="default 1; 0: greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, description="only 1 is supported")
    stream: bool | None = Field(None, description="not supported")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    adapter: str | None = Field(None, description="latentqa extension: a loaded steering "
                                                  "adapter to generate with")


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "latentqa"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- steering adapters and jobs ---------------------------------------------------------

class AdapterLoad(_Strict):
    path: str = Field(min_length=1, description="a peft adapter directory for the target "
                                                "(adapter_config.json + adapter_model."
                                                "safetensors) on the server's disk")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                             description="default: steer_<n>")


class AdapterInfo(BaseModel):
    name: str
    path: str


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]


class SteerRequest(_Strict):
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="passed to the steering function as it is, once "
                                               "checked (latentqa.steering: 'control' and "
                                               "SteerConfig fields; anything else is a 422)")
    load: bool = Field(True, description="load the resulting adapter for chat when done")


class SteerJob(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    created: float
    started: float | None = None
    finished: float | None = None
    config: dict[str, Any]
    out_dir: str
    result: dict[str, Any] | None = None
    adapter: str | None = Field(None, description="the loaded adapter's name, once done")
    error: str | None = None


# ---- health and errors ------------------------------------------------------------------

class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    target: str
    decoder: str
    read_layer: int
    write_layer: int
    read_layers: list[int] = Field(description="the blocks read by default, in probe order")
    read_together: bool = Field(description="whether the decoder reads several blocks at "
                                            "once, each in its own placeholder group")
    num_blocks: int
    hidden_size: int
    max_positions: int | None
    queued: int
    adapters: list[str]
    steering: bool
    limits: dict[str, Any]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
