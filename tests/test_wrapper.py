"""with_fast_memory over the real openai SDK and real HTTP (tests/openai_server.py).

The embedder here is the deterministic HashEmbedder (plumbing, not relevance) with the
relevance floor off, so every stored memory of the user is injected; relevance with the
real MiniLM is tested in test_pipeline_minilm.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai_server import Reply, ScriptedServer, memory_reply
from store_helpers import HashEmbedder

from headroom.memory import MemoryEvent, MemoryStore, with_fast_memory
from headroom.memory.client.background import close_all
from headroom.memory.client.wrapper import MemoryClient
from headroom.memory.errors import (
    EmbeddingModelMismatchError,
    InvalidInputError,
    InvalidUserIdError,
)
from headroom.memory.protocol.block import MEMORY_INSTRUCTION, clean_text

EMBEDDER = HashEmbedder(dim=32)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s
    close_all()  # no extraction worker outlives its test


def sync_client(server: ScriptedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def async_client(server: ScriptedServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def wrap(client: Any, tmp_path: Path, user: str = "alice", **options: Any) -> Any:
    options.setdefault("min_score", -1.0)
    options.setdefault("embedder", EMBEDDER)
    return with_fast_memory(client, user_id=user, db_path=tmp_path / "memory.db", **options)


def texts_of(client: Any) -> set[str]:
    memory = client.memory
    found = memory.sync.get_all() if hasattr(memory, "sync") else memory.get_all()
    return {m.text for m in found}


def injected_text(body: dict[str, Any]) -> str:
    """Text of every message that is neither the caller's nor the instruction."""
    return "\n".join(
        str(m.get("content"))
        for m in body["messages"]
        if m.get("role") == "system" and m.get("content") != MEMORY_INSTRUCTION
    )


USER_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "earlier question"},
    {"role": "assistant", "content": "earlier answer"},
    {"role": "user", "content": "What language should I use?"},
]


async def _call(client: Any, is_async: bool, stream: bool, **kwargs: Any) -> str:
    """Call create and return the visible text of choice 0 (joined deltas when streaming)."""
    kwargs.setdefault("model", "test-model")
    kwargs.setdefault("messages", USER_MESSAGES)
    if is_async:
        result = await client.chat.completions.create(stream=stream, **kwargs)
        if stream:
            assert isinstance(result, openai.AsyncStream)
            return "".join([c.choices[0].delta.content or "" async for c in result if c.choices])
    else:
        result = client.chat.completions.create(stream=stream, **kwargs)
        if stream:
            assert isinstance(result, openai.Stream)
            return "".join(c.choices[0].delta.content or "" for c in result if c.choices)
    assert type(result).__name__ == "ChatCompletion"
    return str(result.choices[0].message.content)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_inject_strip_store(
    server: ScriptedServer, tmp_path: Path, is_async: bool, stream: bool
) -> None:
    base = async_client(server) if is_async else sync_client(server)
    client = wrap(base, tmp_path)
    facade = client.memory.sync if is_async else client.memory
    facade.add("User prefers Python", category="preference")
    server.push(memory_reply("Use Python, as you prefer.", "User works at a fintech startup"))

    text = asyncio.run(_call(client, is_async, stream))

    assert text == "Use Python, as you prefer."
    body = server.chat_requests()[-1]
    messages = body["messages"]
    # The caller's system prompt first, then the static instruction, byte for byte.
    assert messages[0] == USER_MESSAGES[0]
    assert messages[1] == {"role": "system", "content": MEMORY_INSTRUCTION}
    # The memories sit just before the last user message, and only there.
    assert messages[-1] == USER_MESSAGES[-1]
    assert "User prefers Python" in str(messages[-2]["content"])
    assert messages[2:-2] == USER_MESSAGES[1:3]
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python", "User works at a fintech startup"}


def test_instruction_bytes_stable_across_calls(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    for question in ("first question", "another question"):
        server.push(memory_reply("ok", f"User asked {question}"))
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": question}])
        assert client.flush(timeout=30)
    first, second = server.chat_requests()
    assert first["messages"][0] == second["messages"][0]
    assert json.dumps(first["messages"][0]) == json.dumps(second["messages"][0])
    assert "User asked first question" not in injected_text(first)
    assert "User asked first question" in injected_text(second)


def test_caller_client_and_messages_untouched(server: ScriptedServer, tmp_path: Path) -> None:
    base = sync_client(server)
    client = wrap(base, tmp_path)
    messages = [dict(m) for m in USER_MESSAGES]
    snapshot = json.dumps(messages)
    server.push(memory_reply("wrapped", "User likes tea"), "<memory>{}</memory>raw")
    client.chat.completions.create(model="m", messages=messages)
    raw = base.chat.completions.create(model="m", messages=messages)
    assert json.dumps(messages) == snapshot
    # The caller's own client still talks to the provider without memory.
    assert server.chat_requests()[-1]["messages"] == USER_MESSAGES
    assert raw.choices[0].message.content == "<memory>{}</memory>raw"


def test_copy_and_with_options_carry_memory(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    client.memory.add("User prefers Python")
    for derived in (client.copy(), client.with_options(timeout=5)):
        assert derived.memory.get_all()[0].text == "User prefers Python"
        server.push(memory_reply("fine", "User runs Linux"))
        result = derived.chat.completions.create(model="m", messages=USER_MESSAGES)
        assert result.choices[0].message.content == "fine"
        assert "User prefers Python" in injected_text(server.chat_requests()[-1])
    assert client.flush(timeout=30)
    assert "User runs Linux" in texts_of(client)


def test_other_attributes_pass_through(server: ScriptedServer, tmp_path: Path) -> None:
    base = sync_client(server)
    client = wrap(base, tmp_path)
    assert str(client.base_url) == str(base.base_url)
    assert client.api_key == "test"
    vectors = client.embeddings.create(model="e", input=["a", "b"])
    assert len(vectors.data) == 2
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.http_request.method == "POST"


def test_n_choices_all_cleaned_choice0_stored(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    server.push(
        Reply(
            choices=[
                'zero<memory>{"add": [{"text": "User is from choice zero"}]}</memory>',
                'one<memory>{"add": [{"text": "User is from choice one"}]}</memory>',
            ]
        )
    )
    result = client.chat.completions.create(model="m", messages=USER_MESSAGES, n=2)
    assert [c.message.content for c in result.choices] == ["zero", "one"]
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User is from choice zero"}


def test_n_choices_streamed(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    server.push(
        Reply(
            choices=[
                'zero text<memory>{"add": [{"text": "User streamed zero"}]}</memory>',
                'one text<memory>{"add": [{"text": "User streamed one"}]}</memory>',
            ]
        )
    )
    parts: dict[int, str] = {0: "", 1: ""}
    for chunk in client.chat.completions.create(
        model="m", messages=USER_MESSAGES, n=2, stream=True
    ):
        for choice in chunk.choices:
            parts[choice.index] += choice.delta.content or ""
    assert parts == {0: "zero text", 1: "one text"}
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User streamed zero"}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_calls_and_multimodal_pass_through(
    server: ScriptedServer, tmp_path: Path, is_async: bool, stream: bool
) -> None:
    base = async_client(server) if is_async else sync_client(server)
    client = wrap(base, tmp_path)
    (client.memory.sync if is_async else client.memory).add("User lives in Lisbon")
    parts = [
        {"type": "text", "text": "What is the weather here?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
        {"role": "user", "content": parts},
    ]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Lisbon"}'},
    }
    server.push(Reply(content=None, tool_calls=[call]))

    async def run() -> Any:
        kwargs: dict[str, Any] = {
            "model": "m",
            "messages": history,
            "tools": tools,
            "stream": stream,
        }
        if is_async:
            result = await client.chat.completions.create(**kwargs)
            return [c async for c in result] if stream else result
        result = client.chat.completions.create(**kwargs)
        return list(result) if stream else result

    result = asyncio.run(run())
    body = server.chat_requests()[-1]
    assert body["tools"] == tools
    assert body["messages"][-1] == {"role": "user", "content": parts}
    assert [m for m in body["messages"] if m.get("content") != MEMORY_INSTRUCTION][:3] == history[
        :3
    ]
    assert "User lives in Lisbon" in str(body["messages"][-2]["content"])
    if stream:
        calls = [tc for chunk in result for c in chunk.choices for tc in (c.delta.tool_calls or [])]
        assert calls[0].function.arguments == call["function"]["arguments"]
        finish = [c.finish_reason for chunk in result for c in chunk.choices if c.finish_reason]
        assert finish == ["tool_calls"]
    else:
        message = result.choices[0].message
        assert message.content is None
        assert message.tool_calls[0].function.arguments == call["function"]["arguments"]
        assert result.choices[0].finish_reason == "tool_calls"


def _events(client_options: dict[str, Any]) -> list[MemoryEvent]:
    events: list[MemoryEvent] = []
    lock = threading.Lock()

    def observer(event: MemoryEvent) -> None:
        with lock:
            events.append(event)

    client_options["observer"] = observer
    return events


LONG = "word " * 40 + '<memory>{"add": [{"text": "User said a long thing"}]}</memory>'


def test_stream_closed_early_finalises_once(server: ScriptedServer, tmp_path: Path) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(sync_client(server), tmp_path, **options)
    server.push(LONG, LONG)
    stream = client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    stream.close()
    with client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True) as second:
        for _ in zip(range(3), second, strict=False):
            pass
    assert client.flush(timeout=30)
    assert len(events) == 2
    assert all(e.streamed and e.ops.is_empty() for e in events)  # cut before the block
    assert texts_of(client) == set()


def test_stream_exhausted_then_closed_finalises_once(
    server: ScriptedServer, tmp_path: Path
) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(sync_client(server), tmp_path, **options)
    server.push(LONG)
    with client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    stream.close()
    assert text == clean_text(LONG) == ("word " * 40).strip()
    assert client.flush(timeout=30)
    assert len(events) == 1
    assert texts_of(client) == {"User said a long thing"}


def test_stream_raising_finalises_once_and_error_reaches_caller(
    server: ScriptedServer, tmp_path: Path
) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(sync_client(server), tmp_path, **options)
    server.push(Reply(LONG, stream_error_after=2))
    stream = client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="scripted error"):
        for _ in stream:
            pass
    stream.close()
    assert client.flush(timeout=30)
    assert len(events) == 1


def test_async_stream_closed_early_finalises_once(server: ScriptedServer, tmp_path: Path) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(async_client(server), tmp_path, **options)
    server.push(LONG, LONG)

    async def run() -> None:
        stream = await client.chat.completions.create(
            model="m", messages=USER_MESSAGES, stream=True
        )
        await stream.__anext__()
        await stream.close()
        async with await client.chat.completions.create(
            model="m", messages=USER_MESSAGES, stream=True
        ) as second:
            async for _ in second:
                break
        assert await client.aflush(timeout=30)
        await client.close()  # awaitable, as AsyncOpenAI.close is

    asyncio.run(run())
    assert len(events) == 2


def test_calls_from_inside_a_running_loop(server: ScriptedServer, tmp_path: Path) -> None:
    sync = wrap(sync_client(server), tmp_path, user="sync-user")
    server.push(memory_reply("a", "User one"), memory_reply("b", "User two"))

    async def run() -> tuple[str | None, int]:
        first = sync.chat.completions.create(model="m", messages=USER_MESSAGES)
        inner = wrap(async_client(server), tmp_path, user="async-user")
        second = await inner.chat.completions.create(model="m", messages=USER_MESSAGES)
        await inner.aflush(timeout=30)
        count = len(await inner.memory.get_all())
        return first.choices[0].message.content, count if second else -1

    assert asyncio.run(run()) == ("a", 1)


def test_memory_modes(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    client.memory.add("User prefers Python")
    block = '<memory>{"add": [{"text": "User likes mode tests"}]}</memory>'
    server.push(f"off{block}", f"read{block}", f"write{block}")

    off = client.chat.completions.create(model="m", messages=USER_MESSAGES, memory="off")
    read = client.chat.completions.create(model="m", messages=USER_MESSAGES, memory="read")
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python"}
    write = client.chat.completions.create(model="m", messages=USER_MESSAGES, memory="write")
    assert client.flush(timeout=30)

    off_body, read_body, write_body = server.chat_requests()
    assert off_body["messages"] == USER_MESSAGES and "memory" not in off_body
    assert off.choices[0].message.content == f"off{block}"  # untouched
    assert MEMORY_INSTRUCTION not in json.dumps(read_body)
    assert "User prefers Python" in injected_text(read_body)
    assert read.choices[0].message.content == "read"  # a stray block is still hidden
    assert "User prefers Python" not in injected_text(write_body)
    assert write_body["messages"][1]["content"] == MEMORY_INSTRUCTION
    assert write.choices[0].message.content == "write"
    assert texts_of(client) == {"User prefers Python", "User likes mode tests"}
    with pytest.raises(InvalidInputError):
        client.chat.completions.create(model="m", messages=USER_MESSAGES, memory="sometimes")


def test_update_and_delete_through_short_ids(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    kept = client.memory.add("User lives in Porto")
    gone = client.memory.add("User has a cat")
    server.push(
        'ok<memory>{"update": [{"id": "m1", "text": "User lives in Berlin"}], '
        '"delete": ["m2", "m9"]}</memory>'
    )
    client.chat.completions.create(model="m", messages=USER_MESSAGES)
    assert client.flush(timeout=30)
    shown = injected_text(server.chat_requests()[-1])
    assert kept.id not in shown and gone.id not in shown  # real ids never reach the model
    # m1/m2 follow the order shown; whichever was m1 was updated, the other deleted.
    remaining = client.memory.get_all()
    assert len(remaining) == 1
    assert remaining[0].text == "User lives in Berlin"
    assert client.memory.history(remaining[0].id)[0].text in {
        "User lives in Porto",
        "User has a cat",
    }


def test_isolation_between_users_on_copies_of_one_client(
    server: ScriptedServer, tmp_path: Path
) -> None:
    base = sync_client(server)
    users = ["alice", "bob"]
    clients = {u: wrap(base, tmp_path, user=u, top_k=50) for u in users}

    def responder(body: dict[str, Any]) -> Reply:
        user = str(body["messages"][-1]["content"]).split(":")[0]
        turn = str(body["messages"][-1]["content"]).split(":")[1]
        return memory_reply("noted", f"secret of {user} number {turn}")

    server.responder = responder
    errors: list[BaseException] = []

    def run(user: str) -> None:
        try:
            for turn in range(8):
                clients[user].chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"{user}:{turn}"}]
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert clients["alice"].flush(timeout=30)
    for body in server.chat_requests():
        user = str(body["messages"][-1]["content"]).split(":")[0]
        other = "bob" if user == "alice" else "alice"
        assert f"secret of {other}" not in json.dumps(body)
    for user in users:
        other = "bob" if user == "alice" else "alice"
        mine = texts_of(clients[user])
        assert len(mine) == 8 and all(t.startswith(f"secret of {user} ") for t in mine)
        hits = clients[user].memory.search(f"secret of {other} number 1", top_k=50)
        assert hits and all(m.text.startswith(f"secret of {user} ") for m, _ in hits)
    # One store for the whole process per path, shared by both wrappers.
    assert MemoryStore.open(tmp_path / "memory.db") is clients["alice"]._core.store


def test_bad_block_never_fails_the_call(server: ScriptedServer, tmp_path: Path) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(sync_client(server), tmp_path, **options)
    server.push(
        'answer<memory>{"add": [{"text": "User', 'two<memory>{"add": [{"text": 5}]}</memory>'
    )
    cut = client.chat.completions.create(model="m", messages=USER_MESSAGES)
    broken = client.chat.completions.create(model="m", messages=USER_MESSAGES)
    assert cut.choices[0].message.content == "answer"
    assert broken.choices[0].message.content == "two"
    assert client.flush(timeout=30)
    assert texts_of(client) == set()
    assert events[-1].problems


def test_broken_store_never_fails_the_call(
    server: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(sync_client(server), tmp_path, **options)
    client._core.store.close()  # every store call now raises StoreClosedError
    server.push(memory_reply("still answered", "User is resilient"))
    with caplog.at_level("WARNING", logger="headroom.memory"):
        result = client.chat.completions.create(model="m", messages=USER_MESSAGES)
        assert client.flush(timeout=30)
    assert result.choices[0].message.content == "still answered"
    assert server.chat_requests()[-1]["messages"][1]["content"] == MEMORY_INSTRUCTION
    [event] = events  # one event per call, carrying the failure
    assert event.error is not None and event.injected == ()
    assert any(r.name == "headroom.memory" for r in caplog.records)


def test_provider_errors_reach_the_caller_unchanged(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(sync_client(server), tmp_path)
    server.push(Reply(status=400, error_message="bad request from provider"))
    with pytest.raises(openai.BadRequestError, match="bad request from provider"):
        client.chat.completions.create(model="m", messages=USER_MESSAGES)


def test_json_mode_falls_back_to_background_extraction(
    server: ScriptedServer, tmp_path: Path
) -> None:
    client = wrap(sync_client(server), tmp_path, retry_base=0.01)

    def responder(body: dict[str, Any]) -> Reply:
        if body.get("response_format"):
            return Reply('{"answer": "Python"}')
        return memory_reply("", "User asked for JSON")

    server.responder = responder
    result = client.chat.completions.create(
        model="m", messages=USER_MESSAGES, response_format={"type": "json_object"}
    )
    assert result.choices[0].message.content == '{"answer": "Python"}'
    call, extraction = server.chat_requests()[0], None
    assert MEMORY_INSTRUCTION not in json.dumps(call)
    assert client.flush(timeout=30)
    extraction = server.chat_requests()[1]
    assert "response_format" not in extraction
    assert texts_of(client) == {"User asked for JSON"}


def test_bad_arguments_raise_typed_errors(server: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidUserIdError):
        wrap(sync_client(server), tmp_path, user="")
    with pytest.raises(InvalidInputError, match="unknown option"):
        wrap(sync_client(server), tmp_path, top_kk=3)
    with pytest.raises(InvalidInputError):
        wrap(object(), tmp_path)
    bad: list[dict[str, Any]] = [
        {"top_k": -1},
        {"top_k": "5"},
        {"min_score": float("nan")},
        {"min_score": "high"},
        {"max_tokens": -1},
        {"role": ""},
        {"observer": "print"},
        {"embedder": object()},
        {"sync": "sometimes"},
        {"retry_base": -1},
    ]
    for options in bad:
        with pytest.raises(InvalidInputError):
            wrap(sync_client(server), tmp_path, **options)
    with pytest.raises(InvalidInputError):
        with_fast_memory(sync_client(server), user_id="alice", db_path=42)  # type: ignore[arg-type]
    assert not (tmp_path / "memory.db").exists()  # nothing was opened for bad input


class _TinyStream:
    """A stream object of another SDK: iterable and closeable, no SDK internals."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.closed = False

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        for raw in self._response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            yield ChatCompletionChunk.model_validate(json.loads(line[6:]))

    def close(self) -> None:
        self.closed = True
        self._response.close()


class _TinyCompletions:
    def __init__(self, base_url: str) -> None:
        self._base_url = base_url

    def create(self, **kwargs: Any) -> Any:
        request = urllib.request.Request(
            f"{self._base_url}/chat/completions",
            data=json.dumps(kwargs).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = urllib.request.urlopen(request)
        if kwargs.get("stream"):
            return _TinyStream(response)
        with response:
            return ChatCompletion.model_validate(json.loads(response.read()))


class TinyClient:
    """An OpenAI-shaped client that is not the openai SDK (as Groq or Together are)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.chat = SimpleNamespace(completions=_TinyCompletions(base_url))

    def copy(self, **options: Any) -> TinyClient:
        return TinyClient(options.get("base_url", self.base_url))


def test_any_client_of_the_same_shape(server: ScriptedServer, tmp_path: Path) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(TinyClient(server.base_url), tmp_path, **options)
    client.memory.add("User prefers Python")
    server.push(memory_reply("plain", "User one"), memory_reply("streamed", "User two"), LONG)
    result = client.chat.completions.create(model="m", messages=USER_MESSAGES)
    assert result.choices[0].message.content == "plain"
    stream = client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "streamed"
    with client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True) as cut:
        next(iter(cut))
    assert cut.closed  # the proxy closed the other SDK's own stream
    cut.close()
    assert client.flush(timeout=30)
    assert len(events) == 3  # each call finalised once, the early-closed one included
    assert texts_of(client) == {"User prefers Python", "User one", "User two"}
    assert all("User prefers Python" in injected_text(b) for b in server.chat_requests())


def test_stream_abandoned_without_close_finalises_at_collection(
    server: ScriptedServer, tmp_path: Path
) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(sync_client(server), tmp_path, **options)
    server.push(LONG)
    stream = client.chat.completions.create(model="m", messages=USER_MESSAGES, stream=True)
    for _ in stream:
        break
    del stream
    gc.collect()
    assert client.flush(timeout=30)
    assert len(events) == 1 and events[0].streamed


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_hostile_memories_stay_quoted_data_end_to_end(
    server: ScriptedServer, tmp_path: Path
) -> None:
    from test_injection import HOSTILE  # the 50+ hostile texts of the injection tests

    storable = [
        t for t in HOSTILE if t.strip() and _utf8(t) and "\x00" not in t
    ]  # refused: the rest
    assert len(storable) >= 50
    client = wrap(sync_client(server), tmp_path, top_k=len(storable), max_tokens=100_000)
    stored = {client.memory.add(text).text for text in storable}
    server.push("fine")
    client.chat.completions.create(model="m", messages=USER_MESSAGES)
    messages = server.chat_requests()[-1]["messages"]
    # Exactly one extra message besides the instruction, and the caller's own are intact.
    assert len(messages) == len(USER_MESSAGES) + 2
    injected = str(messages[-2]["content"])
    assert injected.count("<memories>") == 1 and injected.count("</memories>") == 1
    body = injected.split("<memories>\n", 1)[1].rsplit("\n</memories>", 1)[0]
    notes = [json.loads(line) for line in body.split("\n")]
    assert {n["text"] for n in notes} == stored
    assert all(n["id"] == f"m{i + 1}" for i, n in enumerate(notes))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_api_embeddings_go_through_the_wrapped_client(
    server: ScriptedServer, tmp_path: Path, is_async: bool
) -> None:
    base = async_client(server) if is_async else sync_client(server)
    client = with_fast_memory(
        base,
        user_id="alice",
        db_path=tmp_path / "memory.db",
        use_local_embeddings=False,
        min_score=-1.0,
    )
    facade = client.memory.sync if is_async else client.memory
    facade.add("User prefers Python")
    server.push("ok")

    async def run() -> None:
        if is_async:
            await client.chat.completions.create(model="m", messages=USER_MESSAGES)
        else:
            client.chat.completions.create(model="m", messages=USER_MESSAGES)

    asyncio.run(run())
    embedded = [body for path, body in server.requests if path.endswith("/embeddings")]
    assert {body["model"] for body in embedded} == {"text-embedding-3-small"}
    inputs = [body["input"] for body in embedded]
    assert any("User prefers Python" in str(i) for i in inputs)
    assert any("What language should I use?" in str(i) for i in inputs)
    assert "User prefers Python" in injected_text(server.chat_requests()[-1])


def test_one_rule_binds_a_store_to_its_embedding_model(
    server: ScriptedServer, tmp_path: Path
) -> None:
    # A store made with API embeddings, wrapped again with the defaults (MiniLM) or another
    # API model: both are the same mismatch, raised at wrap time, naming both models.
    db = tmp_path / "memory.db"
    made = with_fast_memory(sync_client(server), "alice", db, use_local_embeddings=False)
    made.memory.add("User prefers Python")
    made.flush()
    MemoryStore.open(db).close()  # the wrappers above share it; reopen from the log
    for kwargs in (
        {},
        {"use_local_embeddings": False, "embedding_model": "text-embedding-3-large"},
    ):
        with pytest.raises(EmbeddingModelMismatchError, match="text-embedding-3-small"):
            with_fast_memory(sync_client(server), "alice", db, **kwargs)
    again = with_fast_memory(sync_client(server), "alice", db, use_local_embeddings=False)
    assert [m.text for m in again.memory.get_all()] == ["User prefers Python"]
    # Without naming a model, the store's own is used (the command line, MemoryStore.open).
    store = MemoryStore.open(db)
    assert store.embedder.model_id == "openai/text-embedding-3-small@1536"


def test_isinstance_and_rewrapping(server: ScriptedServer, tmp_path: Path) -> None:
    base = sync_client(server)
    alice = wrap(base, tmp_path, user="alice")
    assert isinstance(alice, openai.OpenAI) and isinstance(alice, MemoryClient)
    assert isinstance(wrap(async_client(server), tmp_path), openai.AsyncOpenAI)
    alice.memory.add("User is alice")
    bob = wrap(alice, tmp_path, user="bob")  # wraps the SDK client, not alice's wrapper
    assert bob.wrapped is not alice.wrapped and type(bob.wrapped) is openai.OpenAI
    server.push("hi")
    bob.chat.completions.create(model="m", messages=USER_MESSAGES)
    body = server.chat_requests()[-1]
    assert "User is alice" not in json.dumps(body)
    assert json.dumps(body).count(json.dumps(MEMORY_INSTRUCTION)) == 1


@pytest.mark.parametrize("text", ["answer <mem", "answer <memory>{}</memory", "trailing space  "])
def test_stream_without_finish_reason_releases_held_back_text(
    server: ScriptedServer, tmp_path: Path, text: str
) -> None:
    client = wrap(sync_client(server), tmp_path)
    server.push(Reply(text, omit_finish=True))
    stream = client.chat.completions.create(
        model="m", messages=USER_MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == clean_text(text)
    assert any(c.usage is not None for c in chunks)


def _child_call(base_url: str, path: str, queue: Any) -> None:
    client = with_fast_memory(
        openai.OpenAI(base_url=base_url, api_key="test", max_retries=0),
        user_id="child",
        db_path=path,
        embedder=EMBEDDER,
        min_score=-1.0,
    )
    answer = client.chat.completions.create(model="m", messages=USER_MESSAGES)
    queue.put((answer.choices[0].message.content, client.flush(timeout=30)))


def test_forked_child_writes_through_its_own_writer(server: ScriptedServer, tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    parent = wrap(sync_client(server), tmp_path, user="child")
    server.push(memory_reply("in parent", "User was in the parent"))
    parent.chat.completions.create(model="m", messages=USER_MESSAGES)
    assert parent.flush(timeout=30)  # the parent's writer thread has run
    server.push(memory_reply("in child", "User was in the child"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_call, args=(server.base_url, str(path), queue))
    child.start()
    assert queue.get(timeout=60) == ("in child", True)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert texts_of(parent) == {"User was in the parent", "User was in the child"}


def test_facade_reads_its_own_writes(server: ScriptedServer, tmp_path: Path) -> None:
    seen: list[int] = []
    client: Any = None

    def observer(event: MemoryEvent) -> None:  # runs on the writer thread: must not deadlock
        seen.append(len(client.memory.get_all()))

    client = wrap(sync_client(server), tmp_path, observer=observer)
    server.push(memory_reply("ok", "User reads their writes"))
    client.chat.completions.create(model="m", messages=USER_MESSAGES)
    # No flush: the facade waits for the pending write itself.
    assert [m.text for m in client.memory.get_all()] == ["User reads their writes"]
    assert seen == [1]
    server.push(memory_reply("ok", "User wants this gone"))
    client.chat.completions.create(model="m", messages=USER_MESSAGES)
    assert client.memory.forget() == 2  # the queued write landed first, then went
    assert client.flush(timeout=30)
    assert client.memory.get_all() == []


class _GatedEmbedder(HashEmbedder):
    """HashEmbedder whose writer-thread calls for texts containing ``gated`` wait for ``gate``."""

    def __init__(self, gated: str) -> None:
        super().__init__(dim=32)
        self.gated = gated
        self.gate = threading.Event()

    def embed(self, texts: Any) -> Any:
        on_writer = threading.current_thread().name.startswith("headroom-memory-writer")
        if on_writer and any(self.gated in t for t in texts):
            assert self.gate.wait(30)
        return super().embed(texts)


def test_next_injection_sees_the_previous_answers_memories(
    server: ScriptedServer, tmp_path: Path
) -> None:
    embedder = _GatedEmbedder("teal")
    client = wrap(sync_client(server), tmp_path, embedder=embedder)
    server.push(memory_reply("noted", "User's favourite colour is teal"), "sure")
    client.chat.completions.create(model="m", messages=USER_MESSAGES)
    # The write is held on the writer thread until the gate opens, after a short while.
    threading.Timer(0.3, embedder.gate.set).start()
    client.chat.completions.create(model="m", messages=USER_MESSAGES)
    assert "teal" in injected_text(server.chat_requests()[1])


def test_a_users_injection_never_waits_for_another_users_write(
    server: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = _GatedEmbedder("teal")
    alice = wrap(sync_client(server), tmp_path, user="alice", embedder=embedder)
    bob = wrap(sync_client(server), tmp_path, user="bob", embedder=embedder)
    server.push(memory_reply("noted", "User's favourite colour is teal"), "hello bob")
    try:
        alice.chat.completions.create(model="m", messages=USER_MESSAGES)
        with caplog.at_level("WARNING", logger="headroom.memory"):
            answer = bob.chat.completions.create(model="m", messages=USER_MESSAGES)
        assert answer.choices[0].message.content == "hello bob"
        store = MemoryStore.open(tmp_path / "memory.db")  # the same open store (registry)
        assert store.backend.count("alice") == 0  # still held: bob did not wait
        assert "before their previous memories were stored" not in caplog.text
    finally:
        embedder.gate.set()
    assert alice.flush(timeout=30)
    assert texts_of(alice) == {"User's favourite colour is teal"}
