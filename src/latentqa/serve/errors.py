"""Every error is JSON, in the OpenAI shape: ``{"error": {"message", "type", "param"}}``.

The user errors latentqa raises (bad dialogs, questions, layers, templates, too-long inputs)
become 400 with their message; a few checks of our own name the offending field (422).
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..errors import LatentQAError


class ApiError(Exception):
    """An error to send to the client as it is."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.headers = param, headers


def error_body(message: str, type: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param}}


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
    if isinstance(e, user_errors()):
        return ApiError(400, str(e).strip() or type(e).__name__)
    return None
