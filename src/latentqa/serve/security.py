"""Who may talk to the server: loopback by default, a bearer token otherwise, small bodies.

``Guard`` is plain ASGI middleware, in front of everything else:

- ``allowed_hosts``: the Host header must name one of these (a server bound to loopback
  without a token accepts only loopback names, which stops DNS-rebinding pages);
- ``token``: every request but the static page must carry ``Authorization: Bearer <token>``
  (the page itself holds no data; its API calls carry the token) -> else 401;
- ``max_body_bytes``: a larger Content-Length, or a chunked body that grows past it -> 413.

``PAGE_HEADERS`` are the headers the page is sent with (its Content-Security-Policy).
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.exceptions import HTTPException

from .errors import error_response

PUBLIC_PATHS = ("/", "/favicon.ico")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

# The page is one file with its script and styles inline and nothing loaded from elsewhere:
# inline scripts and styles are allowed, every other source only from this server (and images
# also as data: URLs). docs/serve.md quotes this header as it is.
PAGE_CSP = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data:")
PAGE_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": PAGE_CSP}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; any other name or address is not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without its port: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def token_ok(authorization: str | None, token: str) -> bool:
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


class Guard:
    def __init__(self, app, *, token: str | None = None, allowed_hosts=None,
                 max_body_bytes: int = 1_000_000):
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit, seen = self.max_body_bytes, 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # FastAPI re-raises HTTPException from body reading
                    raise HTTPException(413, f"the request body is over {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def _refusal(self, scope, headers):
        if self.allowed_hosts is not None and \
                host_name(headers.get("host", "")) not in self.allowed_hosts:
            return error_response(400, "this server answers only to "
                                  f"{', '.join(sorted(self.allowed_hosts))} as Host",
                                  type="invalid_request_error", param="Host")
        if self.token and scope["path"] not in PUBLIC_PATHS and \
                not token_ok(headers.get("authorization"), self.token):
            return error_response(401, "missing or wrong token: send 'Authorization: Bearer "
                                  "<token>' (the token given to latentqa serve --token)",
                                  type="authentication_error",
                                  headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return error_response(400, f"bad Content-Length {length!r}",
                                      param="Content-Length")
            if int(length) > self.max_body_bytes:
                return error_response(413, f"the request body is {int(length)} bytes; this "
                                      f"server accepts at most {self.max_body_bytes}",
                                      type="request_too_large")
        return None
