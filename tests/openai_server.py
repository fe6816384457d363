"""A scripted OpenAI-compatible HTTP server for tests: real sockets, real SSE, no mocking.

Start it with ``ScriptedServer()`` (a ``ThreadingHTTPServer`` on 127.0.0.1, port chosen by the
OS, served from a daemon thread), point a real ``openai.OpenAI(base_url=server.base_url)`` at
it, queue answers with :meth:`ScriptedServer.push`, and read what the client sent from
:attr:`ScriptedServer.requests`.

Contract:
- ``POST /v1/chat/completions`` answers with the next queued :class:`Reply` (or, when a
  ``responder`` is set, with whatever it returns for the request body; when neither gives one,
  with ``Reply("ok")``). ``"stream": true`` gets Server-Sent Events: one chunk per piece of
  :attr:`Reply.chunks` (or pieces of 7 characters) per choice, then a chunk with the finish
  reason, a usage chunk when ``stream_options.include_usage`` is set, and ``data: [DONE]``.
- ``Reply.status`` other than 200 answers with an OpenAI-shaped error body and that status.
  ``Reply.stream_error_after=k`` sends k content chunks and then an error event (the SDK
  raises ``APIError`` while iterating); ``Reply.omit_finish`` leaves out the finish-reason
  chunk (a provider that ends a stream without one).
- ``POST /v1/responses`` (the Responses API) answers with the same queue (or responder): a
  ``Response`` whose output is one message item holding one ``output_text`` part with
  :attr:`Reply.content` (none when it is None), then one ``function_call`` item per tool call.
  ``"stream": true`` gets the real event sequence as SSE (``event:`` and ``data:`` lines,
  ``sequence_number`` from 0): ``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per piece (:meth:`Reply.pieces`),
  ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``
  (then the tool call items, added and done), ``response.completed``; no ``[DONE]``.
  ``Reply.stream_error_after=k`` sends k deltas and then an ``error`` event (the SDK raises
  ``APIError``); ``Reply.omit_finish`` ends the stream right after the deltas.
- ``POST /v1/embeddings`` answers with deterministic unit vectors (a hash of each input) of
  the request's ``dimensions``, else the model's real size (``MODEL_DIMS``), else
  ``embedding_dim``.
- Every request body is recorded (``requests``: list of ``(path, body)``), in arrival order,
  before it is answered. Thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer to a chat completion request.

    ``content`` is the text of choice 0; ``choices`` (when given) the text of every choice,
    which makes ``n`` choices. ``tool_calls`` (OpenAI wire shape) go on every choice.
    """

    content: str | None = "ok"
    choices: Sequence[str | None] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    chunks: Sequence[str] | None = None
    status: int = 200
    error_message: str = "scripted error"
    stream_error_after: int | None = None
    omit_finish: bool = False
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    )

    def texts(self) -> list[str | None]:
        """The text of every choice."""
        return list(self.choices) if self.choices is not None else [self.content]

    def pieces(self, text: str) -> list[str]:
        """How ``text`` is split into stream chunks."""
        if self.chunks is not None and self.choices is None:
            return list(self.chunks)
        return [text[i : i + 7] for i in range(0, len(text), 7)] or [""]


#: Vector sizes of the OpenAI embedding models; other names get ``embedding_dim``.
MODEL_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (not semantic; for plumbing tests only)."""
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class ScriptedServer:
    """The server; use as a context manager or call :meth:`close`."""

    def __init__(self, *, embedding_dim: int = 16) -> None:
        self.embedding_dim = embedding_dim
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.responder: Callable[[dict[str, Any]], Reply | None] | None = None
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give an OpenAI client."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def push(self, *replies: Reply | str) -> None:
        """Queue answers (a str means ``Reply(content=str)``), served first in, first out."""
        with self._lock:
            self._queue.extend(Reply(r) if isinstance(r, str) else r for r in replies)

    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests received so far."""
        with self._lock:
            return [body for path, body in self.requests if path.endswith("/chat/completions")]

    def responses_requests(self) -> list[dict[str, Any]]:
        """Bodies of the Responses API requests received so far."""
        with self._lock:
            return [body for path, body in self.requests if path.endswith("/responses")]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        responder = self.responder
        if responder is not None:
            reply = responder(body)
            if reply is not None:
                return reply
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    def _record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append((path, body))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server._record(self.path, body)
                if self.path.endswith("/embeddings"):
                    self._send_json(200, server._embeddings(body))
                elif self.path.endswith("/chat/completions"):
                    reply = server._next_reply(body)
                    if reply.status != 200:
                        error = {"message": reply.error_message, "type": "server_error"}
                        self._send_json(reply.status, {"error": error})
                    elif body.get("stream"):
                        self._send_stream(_stream_events(reply, body))
                    else:
                        self._send_json(200, _completion(reply, body))
                elif self.path.endswith("/responses"):
                    reply = server._next_reply(body)
                    if reply.status != 200:
                        error = {"message": reply.error_message, "type": "server_error"}
                        self._send_json(reply.status, {"error": error})
                    elif body.get("stream"):
                        self._send_stream(_response_events(reply, body), named=True)
                    else:
                        self._send_json(200, _response(reply, body))
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})

            def _send_json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_stream(self, events: Iterator[str], named: bool = False) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for event in events:
                        head = f"event: {json.loads(event)['type']}\n" if named else ""
                        self.wfile.write(f"{head}data: {event}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # client closed early
                    pass
                self.close_connection = True

        return Handler

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        model = str(body.get("model", ""))
        dim = int(body.get("dimensions") or MODEL_DIMS.get(model, self.embedding_dim))
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(str(t), dim)}
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return {"object": "list", "data": data, "model": body.get("model", ""), "usage": usage}


def _message(text: str | None, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reply.tool_calls is not None:
        message["tool_calls"] = reply.tool_calls
    return message


def _finish(reply: Reply) -> str:
    if reply.finish_reason is not None:
        return reply.finish_reason
    return "tool_calls" if reply.tool_calls else "stop"


def _completion(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": _message(text, reply),
            "finish_reason": _finish(reply),
            "logprobs": None,
        }
        for i, text in enumerate(reply.texts())
    ]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": choices,
        "usage": reply.usage,
    }


def _chunk(body: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> str:
    payload = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": choices,
        **extra,
    }
    return json.dumps(payload)


def _stream_events(reply: Reply, body: dict[str, Any]) -> Iterator[str]:
    sent = 0
    for index, text in enumerate(reply.texts()):
        first = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
        }
        yield _chunk(body, [first])
        if reply.tool_calls is not None:
            calls = [dict(call, index=i) for i, call in enumerate(reply.tool_calls)]
            delta = {"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}
            yield _chunk(body, [delta])
        for piece in reply.pieces(text or "") if text is not None else []:
            if reply.stream_error_after is not None and sent >= reply.stream_error_after:
                yield json.dumps(
                    {"error": {"message": reply.error_message, "type": "server_error"}}
                )
                return
            sent += 1
            yield _chunk(
                body, [{"index": index, "delta": {"content": piece}, "finish_reason": None}]
            )
        if not reply.omit_finish:
            yield _chunk(body, [{"index": index, "delta": {}, "finish_reason": _finish(reply)}])
    if (body.get("stream_options") or {}).get("include_usage"):
        yield _chunk(body, [], usage=reply.usage)
    yield "[DONE]"


def memory_reply(answer: str, *adds: str, category: str = "fact", **extra: Any) -> Reply:
    """A reply whose content is ``answer`` followed by a block adding ``adds``."""
    block = json.dumps({"add": [{"text": t, "category": category} for t in adds]})
    return Reply(f"{answer}<memory>{block}</memory>", **extra)


# --- the Responses API ---------------------------------------------------------------------------


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = [_output_text(text)] if status == "completed" else []
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _call_items(reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "type": "function_call",
            "id": f"fc_{i}",
            "call_id": call.get("id", f"call_{i}"),
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }
        for i, call in enumerate(reply.tool_calls or [])
    ]


def _response(reply: Reply, body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    """A Response object (``status`` "completed"; "in_progress" with no output yet)."""
    output: list[dict[str, Any]] = []
    if status == "completed":
        if reply.content is not None:
            output.append(_message_item(reply.content))
        output += _call_items(reply)
    usage = {
        "input_tokens": reply.usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": reply.usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.usage["total_tokens"],
    }
    return {
        "id": "resp_test",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": body.get("model", "test-model"),
        "instructions": body.get("instructions"),
        "previous_response_id": body.get("previous_response_id"),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "text": body.get("text", {"format": {"type": "text"}}),
        "usage": usage if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "metadata": {},
    }


def _response_events(reply: Reply, body: dict[str, Any]) -> Iterator[str]:
    """The SSE data of a streamed Response, in the real event order."""
    number = 0

    def event(kind: str, **fields: Any) -> str:
        nonlocal number
        payload = {"type": kind, "sequence_number": number, **fields}
        number += 1
        return json.dumps(payload)

    yield event("response.created", response=_response(reply, body, "in_progress"))
    yield event("response.in_progress", response=_response(reply, body, "in_progress"))
    index = 0
    if reply.content is not None:
        text = reply.content
        yield event(
            "response.output_item.added",
            output_index=0,
            item=_message_item("", "in_progress"),
        )
        part = {"item_id": "msg_test", "output_index": 0, "content_index": 0}
        yield event("response.content_part.added", part=_output_text(""), **part)
        for sent, piece in enumerate(reply.pieces(text)):
            if reply.stream_error_after is not None and sent >= reply.stream_error_after:
                error = {"message": reply.error_message, "type": "server_error"}
                yield event("error", code="server_error", message=reply.error_message, error=error)
                return
            yield event("response.output_text.delta", delta=piece, logprobs=[], **part)
        if reply.omit_finish:
            return
        yield event("response.output_text.done", text=text, logprobs=[], **part)
        yield event("response.content_part.done", part=_output_text(text), **part)
        yield event("response.output_item.done", output_index=0, item=_message_item(text))
        index = 1
    for offset, item in enumerate(_call_items(reply)):
        yield event("response.output_item.added", output_index=index + offset, item=item)
        yield event("response.output_item.done", output_index=index + offset, item=item)
    yield event("response.completed", response=_response(reply, body))
