"""``latentqa serve``: the inspector page and the HTTP API (docs/serve.md).

    latentqa serve                                   # http://127.0.0.1:8000/
    latentqa serve --host 0.0.0.0 --token-env LQA_TOKEN --decoder runs/x/decoder
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from ..reading.cli import add_decoder_args, load_reader
from .limits import Limits


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="an interactive inspector page and HTTP API for a target and its decoder",
        description="Serve the inspector page and the HTTP API (docs/serve.md). One model in "
                    "memory; requests are queued and batched.")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default: %(default)s); anything but loopback needs "
                          "--token")
    net.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    net.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every request "
                                     "(visible in `ps`; --token-env is safer)")
    net.add_argument("--token-env", metavar="VAR", help="read the token from this environment "
                                                        "variable")
    add_decoder_args(p)
    p.add_argument("--batch-size", type=int, default=16,
                   help="decoder rows per forward pass (default: %(default)s)")
    lim = p.add_argument_group("limits")
    d = Limits()
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    lim.add_argument("--max-dialog-tokens", type=int, default=d.max_dialog_tokens)
    lim.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    lim.add_argument("--max-questions", type=int, default=d.max_questions)
    lim.add_argument("--max-candidates", type=int, default=d.max_candidates)
    lim.add_argument("--timeout", type=float, default=d.timeout_s,
                     help="seconds a request may wait for the model (default: %(default)s)")
    lim.add_argument("--max-queue", type=int, default=d.max_queue)
    p.add_argument("--steer-dir", default="runs/serve-steer",
                   help="where /v1/steer jobs write (default: %(default)s)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)


def resolve_token(args) -> str | None:
    from ..errors import UsageError

    if args.token is not None and args.token_env:
        raise UsageError("give --token or --token-env, not both")
    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if token is None:
            raise UsageError(f"--token-env {args.token_env}: environment variable "
                            f"{args.token_env} is not set")
    if token is not None and not token.strip():
        raise UsageError("the token is empty")
    return token


def check_binding(host: str, port: int, token: str | None) -> None:
    """Refuse a non-loopback address without a token, and a port we cannot bind."""
    from ..errors import UsageError
    from .security import is_loopback

    if not is_loopback(host) and not token:
        raise UsageError(f"refusing to serve on {host} without a token: anyone who can reach "
                        "it could use the model; add --token (or --token-env VAR), or use "
                        "--host 127.0.0.1")
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a port number")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..errors import UsageError
    from .app import create_app
    from .security import LOOPBACK_NAMES, is_loopback
    from .steer import find_steer_fn

    token = resolve_token(args)
    check_binding(args.host, args.port, token)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_dialog_tokens=args.max_dialog_tokens,
                    max_new_tokens=args.max_new_tokens, max_questions=args.max_questions,
                    max_candidates=args.max_candidates, timeout_s=args.timeout,
                    max_queue=args.max_queue)
    bad = [k for k, v in limits.to_dict().items() if v <= 0]
    if bad:
        raise UsageError(f"limits must be positive: {', '.join(bad)}")
    reader = load_reader(args)
    # On loopback, answer only to loopback names: a web page that rebinds its own name to
    # 127.0.0.1 cannot then talk to us. With a token, the token is the guard.
    hosts = None if token or not is_loopback(args.host) else \
        sorted({*LOOPBACK_NAMES, args.host.strip("[]").lower()})
    steer_fn = find_steer_fn(reader)
    app = create_app(reader, limits=limits, token=token, allowed_hosts=hosts,
                     steer_fn=steer_fn, steer_dir=args.steer_dir)
    shown = f"http://[{args.host}]:{args.port}" if ":" in args.host else \
        f"http://{args.host}:{args.port}"
    lines = [f"latentqa serve: {reader!r}",
             f"  page      {shown}/{'#token=<TOKEN>' if token else ''}",
             f"  API       {shown}/v1/  (schema: {shown}/openapi.json)",
             f"  token     {'required: Authorization: Bearer <TOKEN>' if token else 'none'}",
             f"  steering  {'on' if steer_fn else 'unavailable (/v1/steer answers 501)'}"]
    print("\n".join(lines), file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host.strip("[]"), port=args.port, log_level=args.log_level)
    return 0
