"""The Starlette application of the memory server.

Routes:

- ``POST /v1/chat/completions`` and ``POST /v1/responses`` (the Responses API, same rules; its
  stream re-emitted as ``event: {type}`` / ``data: {event}`` pairs with no ``[DONE]``, as the
  upstream sends it): when the request names an end user, the call goes through
  ``with_fast_memory`` (``--mode fast``) or ``with_memory`` (``--mode background``) wrapped
  around an async SDK client that carries the caller's headers (``Authorization`` included, as
  it came); the wrapper injects, calls the upstream, hides and stores the ``<memory>`` block.
  A streamed answer is re-emitted as server-sent events (``data: {chunk}`` ... ``data:
  [DONE]``), chunk for chunk as the SDK read them, minus the block. Without an end user, or
  with a body the SDK cannot take (no ``messages`` / ``input`` or ``model``, not JSON), it is
  passed through untouched.
- ``/v1/memory/...`` and ``/openapi.json``: ``rest.py``.
- every other ``/v1/...`` route: passed to the upstream untouched (method, query, headers, the
  body streamed both ways), over one ``httpx2.AsyncClient`` per process with a bounded pool.

The end user of a request, in order: a user key (``user_keys``: the key pins the user), the
body's ``user`` field, its ``safety_identifier``, the ``X-Headroom-User`` header. None of them:
no memory.

Keys: ``api_key`` (the server key) and ``user_keys`` protect the server itself. Callers
present them in ``X-Headroom-Key``; ``Authorization`` stays the upstream's and is forwarded as
it came (never logged). With a user key the request's user is the key's: a ``user`` field or
``X-Headroom-User`` header naming anyone else is refused (403).

Errors: an upstream error reaches the client with its status, body and headers
(``retry-after`` included); an unreachable upstream is 502, a timeout 504; bad input to the
memory layer is 400 with a JSON error naming the problem. A failure inside the memory layer
never fails the call (the wrappers' rule): a store that cannot be opened for a request sends
the call through without memory, and it is logged.

Shutdown (the lifespan's end) waits for pending memory writes (``flush_timeout``), stops the
extraction workers (their pending jobs are durable and resume at the next start) and closes the
upstream pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..client.background import close_all
from ..client.wrapper import with_fast_memory, with_memory
from ..client.writer import flush_all
from ..errors import HeadroomMemoryError, InvalidInputError, MemoryNotFoundError

logger = logging.getLogger("headroom.memory.server")

#: The header carrying the server key or a user key.
KEY_HEADER = "x-headroom-key"
#: The header naming the end user (after the body's ``user`` and ``safety_identifier``).
USER_HEADER = "x-headroom-user"

#: ``(http_client, upstream_base_url) -> async OpenAI-compatible SDK client`` whose requests go
#: through ``http_client``, with no retries and no Authorization of its own (the caller's is
#: added per request).
SdkFactory = Callable[[httpx2.AsyncClient, str], Any]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers never sent upstream: hop-by-hop, our own, and what the client library sets.
_NOT_FORWARDED = _HOP_BY_HOP | {"host", KEY_HEADER, USER_HEADER}
#: Request headers the SDK sets itself on the memory path (the rest are the caller's).
_SDK_OWNED = _NOT_FORWARDED | {
    "content-length",
    "content-type",
    "accept",
    "accept-encoding",
    "user-agent",
    "cookie",
}
#: Upstream response headers not copied to a re-serialised (memory path) response.
_RESPONSE_OWNED = _HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "content-type",
    "date",
    "server",
    "set-cookie",
}


@dataclass(frozen=True)
class ServerConfig:
    """What ``headroom-memory serve`` configures.

    ``upstream`` is the base URL an OpenAI SDK would be given (``https://host/v1``); the
    server's ``/v1/X`` goes to ``{upstream}/X``. ``db`` is the store (a path or a PostgreSQL
    URL). ``wrap_options`` are extra options of the wrappers (``min_score``, ``embedder``...).
    """

    upstream: str
    db: str = "memory.db"
    mode: Literal["fast", "background"] = "fast"
    api_key: str | None = None
    user_keys: Mapping[str, str] = field(default_factory=dict)
    top_k: int = 5
    extraction_model: str | None = None
    wrap_options: Mapping[str, Any] = field(default_factory=dict)
    max_connections: int = 100
    timeout_s: float = 600.0
    flush_timeout_s: float = 30.0
    #: Bound to a loopback address: a request must name a loopback host (DNS rebinding).
    loopback_only: bool = True


class HttpError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


def error_for(exc: HeadroomMemoryError) -> HttpError:
    """The HTTP error of a typed error of the memory layer (bad input 400, not found 404)."""
    name = type(exc).__name__
    if isinstance(exc, MemoryNotFoundError):
        return HttpError(404, str(exc), "not_found", name)
    if isinstance(exc, (InvalidInputError, TypeError, ValueError)):
        return HttpError(400, str(exc), "invalid_request_error", name)
    return HttpError(503, str(exc), "memory_unavailable", name)


#: Upstream response headers of the current request (set by the pool's response hook).
_UPSTREAM_HEADERS: contextvars.ContextVar[list[httpx2.Headers] | None] = contextvars.ContextVar(
    "headroom_upstream_headers", default=None
)


async def _remember_headers(response: httpx2.Response) -> None:
    """The pool's response hook: keep the upstream's headers for the request being served."""
    holder = _UPSTREAM_HEADERS.get()
    if holder is not None:
        holder.append(response.headers)


def _response_headers(headers: httpx2.Headers | None) -> dict[str, str]:
    """Upstream headers worth relaying on a response we serialise ourselves."""
    if headers is None:
        return {}
    return {k: v for k, v in headers.items() if k.lower() not in _RESPONSE_OWNED}


def _passthrough_headers(headers: httpx2.Headers) -> list[tuple[str, str]]:
    return [
        (k, v)
        for k, v in headers.multi_items()
        if k.lower() not in _HOP_BY_HOP | {"date", "server"}
    ]


class MemoryServer:
    """The server's state: configuration, the upstream pool, the SDK client, the keys."""

    def __init__(self, config: ServerConfig, sdk_factory: SdkFactory) -> None:
        if not config.upstream.startswith(("http://", "https://")):
            raise InvalidInputError(f"upstream must be an http(s) URL; got {config.upstream!r}")
        self.config = config
        self.upstream = config.upstream.rstrip("/")
        limits = httpx2.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        self.http = httpx2.AsyncClient(
            limits=limits,
            timeout=httpx2.Timeout(config.timeout_s, connect=10.0),
            event_hooks={"response": [_remember_headers]},
            trust_env=False,
        )
        self.sdk = sdk_factory(self.http, self.upstream)
        self._wrap = with_fast_memory if config.mode == "fast" else with_memory
        self._user_keys = dict(config.user_keys)
        self._routes = {
            "chat": _signature(self.sdk.chat.completions.create, "messages"),
            "responses": _signature(self.sdk.responses.create, "input"),
        }

    # --- memory --------------------------------------------------------------------------------

    def wrap(self, user: str, headers: Mapping[str, str] | None = None) -> Any:
        """A wrapped async client for ``user`` whose requests carry ``headers``.

        Cheap: the store and the embedder are opened once per process. Raises the wrappers'
        typed errors (a bad user id is InvalidUserIdError).
        """
        sdk = self.sdk.copy(default_headers=dict(headers)) if headers else self.sdk
        options: dict[str, Any] = dict(self.config.wrap_options)
        if self.config.mode == "background" and self.config.extraction_model:
            options["extraction_model"] = self.config.extraction_model
        return self._wrap(sdk, user, db_path=self.config.db, top_k=self.config.top_k, **options)

    def check(self) -> None:
        """Open the store and load the embedder now, so a bad setting fails at start-up.

        Searches for a user that has no memories: nothing is written.
        """
        client = self.wrap("headroom-server-start-up-check")
        client.memory.sync.search("start-up check", top_k=1)

    async def flush(self) -> None:
        """Wait for pending memory writes, then stop the extraction workers."""
        timeout = self.config.flush_timeout_s
        done = await asyncio.to_thread(flush_all, timeout)
        if self.config.mode == "background":
            client = self.wrap("headroom-server-start-up-check")
            done = await client.aflush(timeout) and done
        if not done:
            logger.warning("memory writes still pending after %.0f s at shutdown", timeout)
        await asyncio.to_thread(close_all)

    # --- identity ------------------------------------------------------------------------------

    def authorize(self, request: Request) -> str | None:
        """Check the server key or a user key; return the user a user key pins, if any."""
        if self.config.api_key is None and not self._user_keys:
            return None
        presented = request.headers.get(KEY_HEADER)
        if presented is None:
            raise HttpError(
                401, f"this server requires a key in the {KEY_HEADER} header", "unauthorized"
            )
        if self.config.api_key is not None and hmac.compare_digest(
            presented.encode(), self.config.api_key.encode()
        ):
            return None
        for key, user in self._user_keys.items():
            if hmac.compare_digest(presented.encode(), key.encode()):
                return user
        raise HttpError(401, f"the key in the {KEY_HEADER} header is not valid", "unauthorized")

    @staticmethod
    def user_of(
        pinned: str | None, body: Mapping[str, Any] | None, headers: Mapping[str, str]
    ) -> str | None:
        """The end user: the pinned user, else ``user``, ``safety_identifier``, the header."""
        header = headers.get(USER_HEADER)
        named = body.get("user") if body is not None else None
        if pinned is not None:
            for value, where in ((named, "user field"), (header, "X-Headroom-User header")):
                if value not in (None, "", pinned):
                    raise HttpError(
                        403, f"the {where} names another user than this key's", "forbidden"
                    )
            return pinned
        for value in (named, body.get("safety_identifier") if body is not None else None):
            if isinstance(value, str) and value:
                return value
        return header or None

    # --- routes --------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions`` with memory for the request's end user."""
        return await self._with_memory(request, "chat")

    async def responses(self, request: Request) -> Response:
        """``POST /v1/responses`` with memory for the request's end user."""
        return await self._with_memory(request, "responses")

    async def _with_memory(self, request: Request, route: Literal["chat", "responses"]) -> Response:
        """The call through the wrapped client, or passed through when it cannot have memory."""
        pinned = self.authorize(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return await self.passthrough(request, raw)
        user = self.user_of(pinned, body, request.headers)
        known, required = self._routes[route]
        if user is None or not required <= body.keys():
            return await self.passthrough(request, raw)
        if route == "chat" and not isinstance(body.get("messages"), list):
            return await self.passthrough(request, raw)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SDK_OWNED}
        try:
            client = self.wrap(user, headers)
        except InvalidInputError as exc:
            raise error_for(exc) from None
        except Exception:
            logger.exception("memory unavailable for this request; passing it through")
            return await self.passthrough(request, raw)
        kwargs = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known}
        if extra:
            kwargs["extra_body"] = extra
        resource = client.chat.completions if route == "chat" else client.responses
        holder: list[httpx2.Headers] = []
        token = _UPSTREAM_HEADERS.set(holder)
        try:
            result = await resource.create(**kwargs)
        except HeadroomMemoryError as exc:
            raise error_for(exc) from None
        except Exception as exc:
            return _upstream_error(exc)
        finally:
            _UPSTREAM_HEADERS.reset(token)
        if body.get("stream"):
            response = getattr(result, "response", None)
            headers_out = _response_headers(getattr(response, "headers", None))
            return StreamingResponse(
                _sse(result, named=route == "responses"),
                media_type="text/event-stream",
                headers={**headers_out, "cache-control": "no-cache"},
            )
        return JSONResponse(
            _to_dict(result), headers=_response_headers(holder[-1] if holder else None)
        )

    async def passthrough(self, request: Request, body: bytes | None = None) -> Response:
        """Send the request to the upstream as it came and stream the answer back."""
        if body is None:
            self.authorize(request)
        path = request.url.path.removeprefix("/v1")
        if any(part in ("..", ".") for part in path.split("/")):
            raise HttpError(
                400, "a path may not hold '.' or '..' segments", "invalid_request_error"
            )
        url = self.upstream + path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
        content: bytes | AsyncIterator[bytes]
        if body is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            content = body
        elif request.method in ("GET", "HEAD", "OPTIONS", "DELETE") and (
            "content-length" not in request.headers and "transfer-encoding" not in request.headers
        ):
            content = b""
        else:
            content = request.stream()
        upstream_request = self.http.build_request(
            request.method, url, headers=headers, content=content
        )
        try:
            upstream = await self.http.send(upstream_request, stream=True)
        except Exception as exc:
            return _upstream_error(exc)
        response = StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            background=BackgroundTask(upstream.aclose),
        )
        response.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in _passthrough_headers(upstream.headers)
        ]
        return response


def _to_dict(value: Any) -> Any:
    """The JSON of an SDK object as the upstream sent it (fields it did not send left out)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return value.model_dump(mode="json", exclude_unset=True, by_alias=True)


def _upstream_error(exc: Exception) -> Response:
    """The upstream's error as it came (status, body, headers); 502/504 when it never answered."""
    response = getattr(exc, "response", None)
    if isinstance(response, httpx2.Response):
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower()
            not in _HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}
        }
        return Response(response.content, status_code=response.status_code, headers=headers)
    causes = (exc, exc.__cause__)
    if (
        any(isinstance(c, httpx2.TimeoutException) for c in causes)
        or "Timeout" in type(exc).__name__
    ):
        error = HttpError(504, "the upstream did not answer in time", "upstream_timeout")
    elif any(isinstance(c, httpx2.HTTPError) for c in causes) or "Connection" in type(exc).__name__:
        error = HttpError(502, f"the upstream could not be reached: {exc}", "upstream_unreachable")
    else:
        logger.exception("unexpected error calling the upstream", exc_info=exc)
        error = HttpError(500, "internal error of the memory server", "server_error")
    return error.response()


def _sse_line(payload: Any, named: bool = False) -> bytes:
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    kind = payload.get("type") if named and isinstance(payload, dict) else None
    return f"event: {kind}\n".encode() + data if isinstance(kind, str) else data


async def _sse(stream: Any, named: bool = False) -> AsyncIterator[bytes]:
    """Re-emit a wrapped SDK stream as server-sent events; close it however the client goes.

    Chat completions: ``data: {chunk}`` lines, then ``data: [DONE]``. Responses (``named``):
    ``event: {type}`` and ``data: {event}`` per event, no ``[DONE]``, as the upstream sends
    them. Closing the stream runs the wrapper's once-only finalisation (which stores the
    block, or nothing for a stream cut short) and releases the upstream connection.
    """
    try:
        async for item in stream:
            yield _sse_line(_to_dict(item), named)
        if not named:
            yield b"data: [DONE]\n\n"
    except Exception as exc:  # an error event in the upstream's stream, or a broken stream
        body = getattr(exc, "body", None)
        if body is None:
            logger.warning("upstream stream failed: %s", exc)
            body = {"message": "the upstream stream failed", "type": "upstream_error"}
        yield _sse_line({"error": body})
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stream.close()


def _signature(create: Callable[..., Any], needed: str) -> tuple[frozenset[str], frozenset[str]]:
    """(the keyword arguments ``create`` takes, those a call needs) of an SDK method."""
    params = inspect.signature(create).parameters
    keywords = {name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    required = {name for name in keywords if params[name].default is inspect.Parameter.empty}
    known = keywords - {"extra_headers", "extra_query", "extra_body", "timeout"}
    return frozenset(known | {"memory"}), frozenset(required | {needed})


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _host_name(value: str) -> str:
    """The host of a ``Host`` header or an ``Origin`` URL, lower-cased, without the port."""
    value = value.strip().lower()
    value = value.split("://", 1)[-1].split("/", 1)[0]
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback_name(name: str) -> bool:
    return name in _LOOPBACK_NAMES or name.startswith("127.")


def browser_problem(headers: Mapping[str, str], loopback_only: bool) -> HttpError | None:
    """Why a request must be refused before any route sees it, or None.

    The server is for back ends, not browsers: a request carrying an ``Origin`` that is not a
    loopback page is refused (a web page the operator visits could otherwise add, read or
    forget memories: browsers send simple cross-site POSTs without asking), and a server bound
    to loopback answers only requests that name a loopback host (DNS rebinding).
    """
    origin = headers.get("origin")
    if origin is not None and not _is_loopback_name(_host_name(origin)):
        return HttpError(403, "cross-origin requests are refused", "forbidden", "bad_origin")
    host = headers.get("host")
    if loopback_only and host is not None and not _is_loopback_name(_host_name(host)):
        return HttpError(421, f"this server answers only loopback hosts, not {host!r}",
                         "invalid_request_error", "bad_host")  # fmt: skip
    return None


class BrowserGuard:
    """ASGI middleware applying :func:`browser_problem` to every HTTP request."""

    def __init__(self, app: Any, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            problem = browser_problem(headers, self.loopback_only)
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ServerConfig, sdk_factory: SdkFactory) -> Starlette:
    """The ASGI application; ``app.state.server`` is its :class:`MemoryServer`."""
    from .rest import memory_routes

    server = MemoryServer(config, sdk_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            try:
                await server.flush()
            finally:
                await server.http.aclose()

    async def handle_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return exc.response()

    async def handle_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("internal error on %s %s: %r", request.method, request.url.path, exc)
        return HttpError(500, "internal error of the memory server", "server_error").response()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/responses", server.responses, methods=["POST"]),
        *memory_routes(server),
        Route("/v1/{path:path}", server.passthrough, methods=methods),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HttpError: handle_http_error, Exception: handle_unexpected},
        middleware=[Middleware(BrowserGuard, loopback_only=config.loopback_only)],
    )
    app.state.server = server
    return app
