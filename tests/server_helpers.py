"""Helpers of the memory server's tests and benchmark: the upstream and a server in a thread.

:class:`Upstream` is :class:`openai_server.ScriptedServer` with what a proxy test needs on
top: ``GET /v1/models``, a ``retry-after`` header on every 429, the request headers recorded
beside the bodies, and :meth:`Upstream.reset`.

:func:`serve` runs ``headroom.memory.server.create_app`` on uvicorn in a daemon thread on a
free port of 127.0.0.1 and stops it (with the lifespan's flush) on exit.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import uvicorn
from openai_server import ScriptedServer

from headroom.memory.cli.serve_command import sdk_factory
from headroom.memory.server import ServerConfig, create_app

RETRY_AFTER = "7"
MODELS = {"object": "list", "data": [{"id": "scripted-model", "object": "model"}]}


class Upstream(ScriptedServer):
    """The scripted upstream, with ``/v1/models``, ``retry-after`` and recorded headers."""

    def __init__(self, **kwargs: Any) -> None:
        self.headers: list[tuple[str, dict[str, str]]] = []
        #: seconds to wait before each streamed event (a slow model), and the streams cut short
        self.stream_delay = 0.0
        self.broken_streams = 0
        super().__init__(**kwargs)
        # a burst of concurrent streams (each on its own connection) must not overflow the
        # listen backlog of http.server (5)
        self._httpd.socket.listen(256)

    def reset(self) -> None:
        """Forget queued replies, the responder and what was received."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.headers.clear()
        self.responder = None
        self.stream_delay = 0.0
        self.broken_streams = 0

    def headers_of(self, suffix: str) -> list[dict[str, str]]:
        """Headers (lower-case names) of the requests whose path ends with ``suffix``."""
        with self._lock:
            return [h for path, h in self.headers if path.split("?")[0].endswith(suffix)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler_class()
        upstream = self

        class Handler(base):  # type: ignore[misc]
            def send_response(self, code: int, message: str | None = None) -> None:
                super().send_response(code, message)
                if code == 429:
                    self.send_header("retry-after", RETRY_AFTER)
                self.send_header("x-request-id", "req-scripted")

            def do_POST(self) -> None:
                with upstream._lock:
                    upstream.headers.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()})
                    )
                super().do_POST()

            def _send_stream(self, events: Iterator[str], named: bool = False) -> None:
                def slow() -> Iterator[str]:
                    for event in events:
                        time.sleep(upstream.stream_delay)
                        yield event

                delayed = slow() if upstream.stream_delay else events
                try:
                    super()._send_stream(delayed, named)
                finally:
                    if upstream.stream_delay and next(delayed, None) is not None:
                        upstream.broken_streams += 1

            def do_GET(self) -> None:
                with upstream._lock:
                    upstream.headers.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()})
                    )
                    upstream.requests.append((self.path, {}))
                if self.path.split("?")[0].endswith("/models"):
                    self._send_json(200, MODELS)
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})

        return Handler


def free_port() -> int:
    """A free TCP port of 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    """A running memory server."""

    base_url: str  # .../v1
    app: Any
    server: uvicorn.Server

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")


@contextlib.contextmanager
def serve(config: ServerConfig) -> Iterator[Served]:
    """Run the memory server for ``config`` in a thread; stop it (flushing) on exit."""
    app = create_app(config, sdk_factory)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="memory-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the memory server did not start")
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}/v1", app, server)
    finally:
        server.should_exit = True
        thread.join(30)


def sse_events(raw: str) -> list[str]:
    """The ``data:`` payloads of a server-sent-events body, in order."""
    return [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]


def sse_text(raw: str) -> str:
    """The concatenated choice-0 content of a chat completion stream."""
    out = []
    for data in sse_events(raw):
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices") or []:
            if choice.get("index", 0) == 0:
                out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)
