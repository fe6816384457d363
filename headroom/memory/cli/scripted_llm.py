"""A scripted, local OpenAI-compatible chat endpoint: the stand-in LLM of the offline demo.

It is not a model. For each request it looks up the last user message in a script and answers
with the scripted text, choosing between scripted variants by what the request's injected
memory notes contain (so the demo shows that injection reaches the "model"), and appends the
scripted ``<memory>`` block, naming the short ids it was shown for updates. It speaks the
chat-completions wire format and the Responses API's (``POST /v1/responses``: ``instructions``
and the ``input`` items are read as the messages; the answer is one output message, streamed
as the real event sequence), streaming (SSE) and not, on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Note = Mapping[str, str]


@dataclass(frozen=True)
class ScriptedTurn:
    """One scripted exchange.

    ``match`` is a substring of the user message that selects this turn. ``answer`` builds the
    visible answer from the memory notes the request carried. ``block`` builds the memory
    block's JSON object from those notes (None: no block at all).
    """

    match: str
    answer: Callable[[Sequence[Note]], str]
    block: Callable[[Sequence[Note]], dict[str, Any]] | None = None


@dataclass
class ScriptedLLM:
    """An HTTP server answering from ``turns``; ``base_url`` is ready after ``start()``."""

    turns: Sequence[ScriptedTurn]
    model: str = "scripted-demo-llm"
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ScriptedLLM:
        """Listen on an ephemeral port of 127.0.0.1 in a daemon thread."""
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                llm.requests.append(body)
                path = self.path.rstrip("/")
                if path.endswith("/responses"):
                    text = llm.reply(response_messages(body))
                    if body.get("stream"):
                        self._events(_response_events(text, llm.model, body))
                    else:
                        self._send(200, _response(text, llm.model, body))
                    return
                if not path.endswith("/chat/completions"):
                    message = "only chat completions and responses are scripted"
                    self._send(404, {"error": {"message": message}})
                    return
                text = llm.reply(body.get("messages", []))
                if body.get("stream"):
                    self._stream(text, body)
                else:
                    self._send(200, _completion(text, llm.model))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, text: str, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in _chunks(text, llm.model):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _events(self, events: Iterator[dict[str, Any]]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for event in events:
                    line = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    self.wfile.write(line.encode())
                    self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reply(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The scripted answer (with its block) to a request's messages."""
        user = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        notes = memory_notes(messages)
        for turn in self.turns:
            if turn.match.lower() in user.lower():
                answer = turn.answer(notes)
                if turn.block is not None:
                    answer += "\n\n<memory>" + json.dumps(turn.block(notes)) + "</memory>"
                return answer
        return "(the scripted endpoint has no line for this message)\n\n<memory>{}</memory>"


def memory_notes(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The notes of the injected ``<memories>`` frame of a request, if any."""
    for message in messages:
        content = _text(message.get("content"))
        match = re.search(r"<memories>\n(.*?)\n</memories>", content, re.S)
        if match:
            return [json.loads(line) for line in match.group(1).splitlines() if line.strip()]
    return []


def response_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Responses request as chat messages: ``instructions`` first, then the input items."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    source = body.get("input")
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
    elif isinstance(source, list):
        messages += [item for item in source if isinstance(item, dict) and "role" in item]
    return messages


def note_id(notes: Sequence[Note], needle: str) -> str | None:
    """The short id of the first note whose text contains ``needle``."""
    return next((n["id"] for n in notes if needle.lower() in n["text"].lower()), None)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-scripted-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _chunks(text: str, model: str) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"chatcmpl-scripted-{time.monotonic_ns()}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    for start in range(0, len(text), 7):  # small pieces, so tags get split across chunks
        piece = text[start : start + 7]
        yield {**base, "choices": [{"index": 0, "delta": {"content": piece}}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, text: str | None) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress" if text is None else "completed",
        "content": [] if text is None else [_output_text(text)],
    }


def _response(
    text: str | None, model: str, body: Mapping[str, Any], response_id: str | None = None
) -> dict[str, Any]:
    """A Responses API ``Response``: one output message with ``text`` (in progress if None)."""
    response_id = response_id or f"resp_scripted_{time.monotonic_ns()}"
    done = text is not None
    zero = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    usage = {
        **zero,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if done else "in_progress",
        "model": model,
        "instructions": body.get("instructions"),
        "output": [_message(f"msg_{response_id}", text)] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage if done else None,
        "error": None,
        "incomplete_details": None,
    }


def _response_events(text: str, model: str, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The streamed Response, event by event, in the Responses API's order."""
    response_id = f"resp_scripted_{time.monotonic_ns()}"
    item_id = f"msg_{response_id}"
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response(None, model, body, response_id)},
        {"type": "response.in_progress", "response": _response(None, model, body, response_id)},
        {"type": "response.output_item.added", "output_index": 0, "item": _message(item_id, None)},
        {"type": "response.content_part.added", "part": _output_text(""), **where},
    ]
    for start in range(0, len(text), 7):  # small pieces, so tags get split across events
        piece = text[start : start + 7]
        events.append(
            {"type": "response.output_text.delta", "delta": piece, "logprobs": [], **where}
        )
    events += [
        {"type": "response.output_text.done", "text": text, "logprobs": [], **where},
        {"type": "response.content_part.done", "part": _output_text(text), **where},
        {"type": "response.output_item.done", "output_index": 0, "item": _message(item_id, text)},
        {"type": "response.completed", "response": _response(text, model, body, response_id)},
    ]
    for number, event in enumerate(events):
        yield {**event, "sequence_number": number}
