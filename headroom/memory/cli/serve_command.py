"""``headroom-memory serve``: the OpenAI-compatible memory server (``headroom.memory.server``).

    headroom-memory serve --upstream URL [--host 127.0.0.1] [--port 8787] [--db PATH_OR_URL]
        [--mode fast|background] [--api-key KEY] [--user-keys FILE] [--max-prompt-tokens N]

``--upstream`` is the base URL an OpenAI SDK would be given (``https://host/v1``). The server
key comes from ``--api-key`` or ``HEADROOM_SERVER_KEY``; ``--user-keys FILE`` is a JSON object
``{"key": "user id", ...}``: each key pins its user. Binding another address than loopback
without any key prints a warning: whoever reaches the server chooses whose memories are read.
``--max-prompt-tokens N`` is the wrappers' ``max_prompt_tokens``: every prompt the server
forwards, instruction and memories included, fits N tokens (the oldest turns go first).

The port is bound, the store opened and the embedding model loaded before the server
listens, so a port in use or a bad setting exits 1 with one line. Ctrl-C and SIGTERM stop it
after pending memory writes land; the process then ends by that signal, as uvicorn does (exit
130 on Ctrl-C). Exit codes as every command (``guard``): 0 success, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .guard import EXIT_OK, EXIT_USAGE, fail, guard

ENV_KEY = "HEADROOM_SERVER_KEY"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``serve``."""
    serve = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible memory server in front of an upstream",
        description=(
            "An OpenAI-compatible server with memory: POST /v1/chat/completions and "
            "/v1/responses get the end user's memories (the body's user, then "
            "safety_identifier, then the X-Headroom-User header; none: passed through), every "
            "other /v1 route goes to the upstream untouched, /v1/memory/... is the .memory API "
            "(OpenAPI at /openapi.json). Whoever sets the user field chooses whose memories "
            "are read: keep it behind your own back end, or give each user a key "
            "(--user-keys)."
        ),
    )
    serve.add_argument("--upstream", required=True, help="the upstream's base URL (.../v1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    serve.add_argument("--db", default="memory.db", help="store path or PostgreSQL URL")
    serve.add_argument(
        "--mode",
        choices=("fast", "background"),
        default="fast",
        help="fast: with_fast_memory (the default); background: with_memory",
    )
    serve.add_argument(
        "--api-key", help=f"key callers must send in X-Headroom-Key (or env {ENV_KEY})"
    )
    serve.add_argument(
        "--user-keys", metavar="FILE", help='JSON {"key": "user id"}: each key pins one user'
    )
    serve.add_argument("--top-k", type=int, default=5, help="memories injected per call")
    serve.add_argument(
        "--min-score", type=float, help="a fixed relevance floor (default: decided per user)"
    )
    serve.add_argument(
        "--max-prompt-tokens",
        type=_positive_int,
        metavar="N",
        help="token budget of each prompt forwarded, instruction and memories included "
        "(the oldest turns give way first; default: no budget)",
    )
    serve.add_argument("--extraction-model", help="background mode: model of the extraction")
    serve.add_argument("--max-connections", type=int, default=100, help="upstream pool size")
    serve.add_argument("--access-log", action="store_true", help="log every request's line")
    serve.set_defaults(handler=_serve)


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def sdk_factory(http: Any, base_url: str) -> Any:
    """The async SDK client the server wraps: no retries (the caller's SDK retries), no
    Authorization of its own (each request carries the caller's, or none)."""
    import openai

    class UpstreamClient(openai.AsyncOpenAI):
        """An AsyncOpenAI that sends the caller's Authorization, or none when it had none."""

        def _validate_headers(self, headers: Any, custom_headers: Any) -> None:
            return None

    return UpstreamClient(
        api_key="unused",
        base_url=base_url,
        http_client=http,
        max_retries=0,
        default_headers={"Authorization": openai.Omit()},  # type: ignore[dict-item]
    )


def _user_keys(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in data.items()
    ):
        raise InvalidInputError(f'{path}: must be a JSON object {{"key": "user id", ...}}')
    return data


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@guard
def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server import ServerConfig, create_app

    if not args.upstream.startswith(("http://", "https://")):
        return fail(f"--upstream must be an http(s) URL; got {args.upstream!r}", EXIT_USAGE)
    api_key = args.api_key or os.environ.get(ENV_KEY) or None
    user_keys = _user_keys(args.user_keys)
    options: dict[str, Any] = {}
    if args.min_score is not None:
        options["min_score"] = args.min_score
    if args.max_prompt_tokens is not None:
        options["max_prompt_tokens"] = args.max_prompt_tokens
    config = ServerConfig(
        upstream=args.upstream,
        db=args.db,
        mode=args.mode,
        api_key=api_key,
        user_keys=user_keys,
        top_k=args.top_k,
        extraction_model=args.extraction_model,
        wrap_options=options,
        max_connections=args.max_connections,
        loopback_only=_is_loopback(args.host),
    )
    sock = _listen(args.host, args.port)
    app = create_app(config, sdk_factory)
    app.state.server.check()
    if not _is_loopback(args.host) and api_key is None and not user_keys:
        print(
            f"headroom-memory: warning: serving on {args.host} without --api-key or "
            "--user-keys: anyone who reaches it can read any user's memories",
            file=sys.stderr,
        )
    print(
        f"headroom-memory: serving on http://{args.host}:{args.port}/v1 "
        f"(upstream {args.upstream}, store {args.db}, mode {args.mode})",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=args.access_log,
            timeout_graceful_shutdown=60,
        )
    )
    server.run(sockets=[sock])
    return EXIT_OK


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (so a port in use is one line and exit 1)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
