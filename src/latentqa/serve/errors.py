"""Every error is JSON, in the OpenAI shape: ``{"error": {"message", "type", "param"}}``.

The user errors latentqa raises (bad dialogs, questions, layers, templates, too-long inputs)
become 400 with their message; a value that breaks ``latentqa.validation``'s rules (a
``FieldError``) and a few checks of our own name the offending field (422). Text in an error
is made valid UTF-8 first, so even a message quoting a lone surrogate can be sent.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..errors import LatentQAError
from ..validation import FieldError


class ApiError(Exception):
    """An error to send to the client as it is."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.headers = param, headers


def sendable(text):
    """``text`` as valid UTF-8 (a lone surrogate becomes ``\\udXXX``); JSON responses are
    encoded as UTF-8, which a lone surrogate would break."""
    if isinstance(text, str):
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(text, list):
        return [sendable(t) for t in text]
    if isinstance(text, dict):
        return {sendable(k): sendable(v) for k, v in text.items()}
    return text


def error_body(message: str, type: str, param: str | None = None) -> dict:
    return {"error": {"message": sendable(message), "type": type, "param": sendable(param)}}


def error_response(status: int, message: str, *, type: str = "invalid_request_error",
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param), status_code=status, headers=headers)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message tells the client what to fix: latentqa's own, and the
    ``ValueError``s the libraries below it raise for bad values."""
    return (LatentQAError, ValueError)


def as_api_error(e: BaseException) -> ApiError | None:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, FieldError):
        return ApiError(422, str(e), param=e.param)
    if isinstance(e, user_errors()):
        return ApiError(400, str(e).strip() or type(e).__name__)
    return None
