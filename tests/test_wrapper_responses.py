"""Memory on the Responses API and on the chat helpers, over the real openai SDK and real HTTP.

``client.responses.create`` (sync and async, streamed and not), ``responses.parse`` and
``responses.stream``, ``chat.completions.parse`` and ``chat.completions.stream``, against the
scripted server of tests/openai_server.py. As in test_wrapper.py the embedder is the
deterministic HashEmbedder with the relevance floor off, so every stored memory is injected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import Reply, ScriptedServer, memory_reply
from pydantic import BaseModel
from store_helpers import HashEmbedder

from headroom.memory import MemoryEvent, with_fast_memory, with_memory
from headroom.memory.client.background import close_all
from headroom.memory.errors import InvalidInputError
from headroom.memory.protocol.block import MEMORY_INSTRUCTION, clean_text
from headroom.memory.protocol.injection import FRAME_OPEN

EMBEDDER = HashEmbedder(dim=32)
ANSWER = "Use Python, as you prefer."
NEW_FACT = "User works at a fintech startup"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s
    close_all()  # no extraction worker outlives its test


def base_client(server: ScriptedServer, is_async: bool = False) -> Any:
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(base_url=server.base_url, api_key="test", max_retries=0)


def wrap(client: Any, tmp_path: Path, user: str = "alice", **options: Any) -> Any:
    options.setdefault("min_score", -1.0)
    options.setdefault("embedder", EMBEDDER)
    return with_fast_memory(client, user_id=user, db_path=tmp_path / "memory.db", **options)


def wrap_background(client: Any, tmp_path: Path, **options: Any) -> Any:
    options.setdefault("min_score", -1.0)
    options.setdefault("embedder", EMBEDDER)
    options.setdefault("retry_base", 0.01)
    return with_memory(client, user_id="alice", db_path=tmp_path / "memory.db", **options)


def facade(client: Any) -> Any:
    memory = client.memory
    return memory.sync if hasattr(memory, "sync") else memory


def texts_of(client: Any) -> set[str]:
    return {m.text for m in facade(client).get_all()}


def is_memory_item(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and item.get("role") == "system"
        and FRAME_OPEN in str(item.get("content"))
    )


def call(client: Any, is_async: bool, method: str = "create", **kwargs: Any) -> Any:
    """Call ``client.responses.<method>``; a stream comes back as the list of its events."""
    kwargs.setdefault("model", "test-model")

    async def run() -> Any:
        target = getattr(client.responses, method)
        if is_async:
            result = await target(**kwargs)
            if kwargs.get("stream"):
                assert isinstance(result, openai.AsyncStream)
                return [event async for event in result]
            return result
        result = target(**kwargs)
        if kwargs.get("stream"):
            assert isinstance(result, openai.Stream)
            return list(result)
        return result

    return asyncio.run(run())


def check_events_clean(events: list[Any], clean: str) -> None:
    """Everything a streamed caller sees is the clean answer; no block anywhere."""
    for event in events:
        dumped = event.model_dump_json(warnings=False).lower()
        assert "<memory" not in dumped and "</memory" not in dumped, event
        assert NEW_FACT.lower() not in dumped, event
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == clean
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == clean
    [part_done] = [e for e in events if e.type == "response.content_part.done"]
    assert part_done.part.text == clean
    [item_done] = [
        e
        for e in events
        if e.type == "response.output_item.done" and getattr(e.item, "type", "") == "message"
    ]
    assert item_done.item.content[0].text == clean
    assert kinds[-1] == "response.completed"
    assert events[-1].response.output_text == clean
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers)), numbers  # strictly increasing


USER_INPUT: list[dict[str, Any]] = [
    {"role": "developer", "content": "You are terse."},
    {"role": "user", "content": "earlier question"},
    {"role": "assistant", "content": "earlier answer"},
    {"role": "user", "content": [{"type": "input_text", "text": "What language should I use?"}]},
]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_create_injects_strips_and_stores(
    server: ScriptedServer, tmp_path: Path, is_async: bool, stream: bool
) -> None:
    client = wrap(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python", category="preference")
    server.push(memory_reply(ANSWER, NEW_FACT))
    snapshot = json.dumps(USER_INPUT)

    result = call(client, is_async, input=USER_INPUT, instructions="Be kind.", stream=stream)

    assert json.dumps(USER_INPUT) == snapshot  # the caller's input is never mutated
    body = server.responses_requests()[-1]
    # The instruction ends the caller's instructions, byte for byte.
    assert body["instructions"] == "Be kind.\n\n" + MEMORY_INSTRUCTION
    # The memories sit just before the last user item, and only there.
    items = body["input"]
    assert items[:3] == USER_INPUT[:3] and items[-1] == USER_INPUT[-1]
    assert len(items) == len(USER_INPUT) + 1 and is_memory_item(items[-2])
    assert "User prefers Python" in items[-2]["content"]
    if stream:
        check_events_clean(result, ANSWER)
    else:
        assert type(result).__name__ == "Response"
        assert result.output_text == ANSWER
        assert result.output[0].content[0].text == ANSWER
        assert "<memory" not in result.model_dump_json()
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python", NEW_FACT}


def test_string_input_and_no_memories(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(base_client(server), tmp_path)
    server.push(memory_reply("first", "User likes tea"), "second")
    client.responses.create(model="m", input="hello")
    assert client.flush(timeout=30)
    second = client.responses.create(model="m", input="hello again")
    first_body, second_body = server.responses_requests()
    # Nothing to inject yet: the string goes as it was; only the instruction is added.
    assert first_body["input"] == "hello"
    assert first_body["instructions"] == MEMORY_INSTRUCTION
    # Then the string becomes the user item it means, after the memories.
    items = second_body["input"]
    assert is_memory_item(items[0]) and "User likes tea" in items[0]["content"]
    assert items[1:] == [{"role": "user", "content": "hello again"}]
    assert second.output_text == "second"


def test_prefix_stays_stable_across_calls(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(base_client(server), tmp_path)
    for turn in range(3):
        server.push(memory_reply(f"answer {turn}", f"User said thing number {turn}"))
        client.responses.create(
            model="m", instructions="Be kind.", input=[*USER_INPUT[:3], USER_INPUT[3]]
        )
        assert client.flush(timeout=30)
    first, *later = server.responses_requests()
    assert first["input"] == USER_INPUT  # nothing stored yet: nothing injected
    # Everything before the memory item is the same bytes on every call; only it changes.
    prefixes = {json.dumps([b["instructions"], b["input"][:3]]) for b in [first, *later]}
    assert len(prefixes) == 1
    assert all(is_memory_item(b["input"][3]) and len(b["input"]) == 5 for b in later)
    frames = [b["input"][3]["content"] for b in later]
    assert "User said thing number 0" in frames[0] and "thing number 1" not in frames[0]
    assert "User said thing number 1" in frames[1]


def test_memory_modes(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(base_client(server), tmp_path)
    client.memory.add("User prefers Python")
    block = '<memory>{"add": [{"text": "User likes mode tests"}]}</memory>'
    server.push(f"off{block}", f"read{block}", f"write{block}")

    off = client.responses.create(model="m", input="question?", memory="off")
    read = client.responses.create(model="m", input="question?", memory="read")
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python"}
    write = client.responses.create(model="m", input="question?", memory="write")
    assert client.flush(timeout=30)

    off_body, read_body, write_body = server.responses_requests()
    assert off_body["input"] == "question?" and "instructions" not in off_body
    assert "memory" not in off_body
    assert off.output_text == f"off{block}"  # untouched
    assert "instructions" not in read_body
    assert is_memory_item(read_body["input"][0])
    assert read.output_text == "read"  # a stray block is still hidden
    assert write_body["input"] == "question?"  # nothing injected
    assert write_body["instructions"] == MEMORY_INSTRUCTION
    assert write.output_text == "write"
    assert texts_of(client) == {"User prefers Python", "User likes mode tests"}
    with pytest.raises(InvalidInputError):
        client.responses.create(model="m", input="question?", memory="sometimes")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_streamed_modes(server: ScriptedServer, tmp_path: Path, is_async: bool) -> None:
    client = wrap(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python")
    block = f'<memory>{{"add": [{{"text": "{NEW_FACT}"}}]}}</memory>'
    server.push(f"{ANSWER}{block}", f"{ANSWER}{block}")
    read = call(client, is_async, input="question?", stream=True, memory="read")
    off = call(client, is_async, input="question?", stream=True, memory="off")
    assert client.flush(timeout=30)
    check_events_clean(read, ANSWER)
    assert "".join(e.delta for e in off if e.type == "response.output_text.delta") == (
        f"{ANSWER}{block}"
    )
    assert texts_of(client) == {"User prefers Python"}  # read stores nothing


def test_previous_response_id_injects_from_the_new_input_only(
    server: ScriptedServer, tmp_path: Path
) -> None:
    client = wrap(base_client(server), tmp_path)
    client.memory.add("User prefers Python")
    server.push("calling a tool", "after the tool")
    client.responses.create(model="m", input="new question", previous_response_id="resp_1")
    tool_output = [{"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
    client.responses.create(model="m", input=tool_output, previous_response_id="resp_2")
    first, second = server.responses_requests()
    assert first["previous_response_id"] == "resp_1"
    assert is_memory_item(first["input"][0])
    assert first["input"][1] == {"role": "user", "content": "new question"}
    # No user item in the new input: nothing to search with, nothing injected.
    assert second["input"] == tool_output
    assert second["instructions"] == MEMORY_INSTRUCTION


def test_tool_calls_pass_through(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(base_client(server), tmp_path)
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]
    tool_call = {"id": "c1", "function": {"name": "weather", "arguments": '{"city": "Lisbon"}'}}
    server.push(Reply(content=None, tool_calls=[tool_call]), Reply(None, tool_calls=[tool_call]))
    result = client.responses.create(model="m", input="weather?", tools=tools)
    assert server.responses_requests()[-1]["tools"] == tools
    assert result.output[0].type == "function_call"
    assert result.output[0].arguments == '{"city": "Lisbon"}'
    events = list(client.responses.create(model="m", input="weather?", tools=tools, stream=True))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [item.type for item in done] == ["function_call"]


@pytest.mark.parametrize(
    "text", ["trailing space  ", "answer <mem", "answer <memory>{}</memory", "a < b"]
)
@pytest.mark.parametrize("omit_finish", [False, True], ids=["done", "cut"])
def test_held_back_text_is_released(
    server: ScriptedServer, tmp_path: Path, text: str, omit_finish: bool
) -> None:
    client = wrap(base_client(server), tmp_path)
    chunks = [text[:3], text[3:]]
    server.push(Reply(text, chunks=chunks, omit_finish=omit_finish))
    events = list(client.responses.create(model="m", input="hi", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == clean_text(text)
    assert len(deltas) >= len(chunks)
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers))
    if not omit_finish:
        [done] = [e for e in events if e.type == "response.output_text.done"]
        assert done.text == clean_text(text)
        assert events[-1].response.output_text == clean_text(text)


def _events(options: dict[str, Any]) -> list[MemoryEvent]:
    found: list[MemoryEvent] = []
    options["observer"] = found.append
    return found


def test_stream_closed_early_and_stream_error(server: ScriptedServer, tmp_path: Path) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(base_client(server), tmp_path, **options)
    long = "word " * 40 + f'<memory>{{"add": [{{"text": "{NEW_FACT}"}}]}}</memory>'
    server.push(long, Reply(long, stream_error_after=3))
    with client.responses.create(model="m", input="hi", stream=True) as stream:
        for _ in zip(range(6), stream, strict=False):
            pass
    stream.close()
    failing = client.responses.create(model="m", input="hi", stream=True)
    with pytest.raises(openai.APIError, match="scripted error"):
        for _ in failing:
            pass
    assert client.flush(timeout=30)
    assert len(events) == 2  # each stream finalised once
    assert all(e.streamed and e.ops.is_empty() for e in events)
    assert texts_of(client) == set()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_with_memory_on_responses(
    server: ScriptedServer, tmp_path: Path, is_async: bool, stream: bool
) -> None:
    client = wrap_background(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python")
    raw = f'{ANSWER}<memory>{{"add": [{{"text": "stray"}}]}}</memory>'

    def responder(body: dict[str, Any]) -> Reply:
        if "messages" in body:  # the worker's extraction call
            assert "What language should I use?" in json.dumps(body["messages"])
            return memory_reply("", NEW_FACT)
        return Reply(raw)

    server.responder = responder
    result = call(client, is_async, input=USER_INPUT, stream=stream)
    body = server.responses_requests()[-1]
    assert "instructions" not in body
    assert is_memory_item(body["input"][-2])
    # The answer is exactly what the provider sent.
    if stream:
        assert "".join(e.delta for e in result if e.type == "response.output_text.delta") == raw
        assert result[-1].response.output_text == raw
    else:
        assert result.output_text == raw
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python", NEW_FACT}
    [extraction] = server.chat_requests()
    assert ANSWER in json.dumps(extraction["messages"])


JSON_SCHEMA = {
    "type": "json_schema",
    "name": "answer",
    "schema": {
        "type": "object",
        "properties": {"language": {"type": "string"}},
        "required": ["language"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Answer(BaseModel):
    language: str


def _structured_responder(body: dict[str, Any]) -> Reply:
    if "messages" in body:  # the background extraction (chat completions)
        assert "response_format" not in body
        return memory_reply("", "User asked for JSON")
    return Reply('{"language": "Python"}')


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("method", ["create", "parse"])
def test_structured_outputs_fall_back_to_background(
    server: ScriptedServer, tmp_path: Path, is_async: bool, method: str
) -> None:
    client = wrap(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python")
    server.responder = _structured_responder
    if method == "create":
        result = call(client, is_async, input="Pick one", text={"format": JSON_SCHEMA})
    else:
        result = call(client, is_async, "parse", input="Pick one", text_format=Answer)
        assert result.output_parsed == Answer(language="Python")
    assert result.output_text == '{"language": "Python"}'
    body = server.responses_requests()[-1]
    assert body["text"]["format"]["type"] == "json_schema"
    assert "instructions" not in body  # no block asked for
    assert is_memory_item(body["input"][0])
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python", "User asked for JSON"}
    assert len(server.chat_requests()) == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_responses_stream_helper(server: ScriptedServer, tmp_path: Path, is_async: bool) -> None:
    client = wrap(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python")
    server.push(memory_reply(ANSWER, NEW_FACT))

    async def run() -> tuple[list[Any], Any]:
        if is_async:
            async with client.responses.stream(model="m", input=USER_INPUT) as stream:
                events = [event async for event in stream]
                return events, await stream.get_final_response()
        with client.responses.stream(model="m", input=USER_INPUT) as stream:
            events = list(stream)
            return events, stream.get_final_response()

    events, final = asyncio.run(run())
    check_events_clean(events, ANSWER)
    assert final.output_text == ANSWER
    body = server.responses_requests()[-1]
    assert is_memory_item(body["input"][-2]) and body["instructions"] == MEMORY_INSTRUCTION
    assert client.flush(timeout=30)
    assert NEW_FACT in texts_of(client)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_broken_store_never_fails_the_call(
    server: ScriptedServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    is_async: bool,
    stream: bool,
) -> None:
    options: dict[str, Any] = {}
    events = _events(options)
    client = wrap(base_client(server, is_async), tmp_path, **options)
    client._core.store.close()  # every store call now raises StoreClosedError
    server.push(memory_reply(ANSWER, NEW_FACT))
    with caplog.at_level("WARNING", logger="headroom.memory"):
        result = call(client, is_async, input=USER_INPUT, stream=stream)
        assert client.flush(timeout=30)
    if stream:
        check_events_clean(result, ANSWER)
    else:
        assert result.output_text == ANSWER
    body = server.responses_requests()[-1]
    assert body["input"] == USER_INPUT  # nothing injected
    assert body["instructions"] == MEMORY_INSTRUCTION  # the block is still asked for, and hidden
    [event] = events
    assert event.error is not None and event.injected == ()
    assert any(r.name == "headroom.memory" for r in caplog.records)


def test_provider_errors_reach_the_caller(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(base_client(server), tmp_path)
    server.push(Reply(status=400, error_message="bad request from provider"))
    with pytest.raises(openai.BadRequestError, match="bad request from provider"):
        client.responses.create(model="m", input="hi")


# --- the chat helpers -------------------------------------------------------------------------

CHAT_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What language should I use?"},
]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_chat_parse_injects_and_queues_extraction(
    server: ScriptedServer, tmp_path: Path, is_async: bool
) -> None:
    client = wrap(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python")

    def responder(body: dict[str, Any]) -> Reply:
        if body.get("response_format"):
            return Reply('{"language": "Python"}')
        return memory_reply("", "User asked for JSON")

    server.responder = responder

    async def run() -> Any:
        kwargs = {"model": "m", "messages": CHAT_MESSAGES, "response_format": Answer}
        if is_async:
            return await client.chat.completions.parse(**kwargs)
        return client.chat.completions.parse(**kwargs)

    result = asyncio.run(run())
    assert result.choices[0].message.parsed == Answer(language="Python")
    call_body = server.chat_requests()[0]
    assert MEMORY_INSTRUCTION not in json.dumps(call_body)  # no block can follow JSON
    assert "User prefers Python" in call_body["messages"][-2]["content"]
    assert call_body["messages"][-1] == CHAT_MESSAGES[-1]
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python", "User asked for JSON"}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_chat_stream_helper_hides_the_block(
    server: ScriptedServer, tmp_path: Path, is_async: bool
) -> None:
    client = wrap(base_client(server, is_async), tmp_path)
    facade(client).add("User prefers Python")
    server.push(memory_reply(ANSWER, NEW_FACT))

    async def run() -> tuple[list[Any], Any]:
        kwargs = {"model": "m", "messages": CHAT_MESSAGES}
        if is_async:
            async with client.chat.completions.stream(**kwargs) as stream:
                events = [event async for event in stream]
                return events, await stream.get_final_completion()
        with client.chat.completions.stream(**kwargs) as stream:
            events = list(stream)
            return events, stream.get_final_completion()

    events, final = asyncio.run(run())
    for event in events:
        assert "<memory" not in event.model_dump_json() and NEW_FACT not in event.model_dump_json()
    deltas = "".join(e.delta for e in events if e.type == "content.delta")
    assert deltas == ANSWER
    [done] = [e for e in events if e.type == "content.done"]
    assert done.content == ANSWER
    assert final.choices[0].message.content == ANSWER
    body = server.chat_requests()[-1]
    assert body["messages"][1] == {"role": "system", "content": MEMORY_INSTRUCTION}
    assert "User prefers Python" in body["messages"][-2]["content"]
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python", NEW_FACT}


def test_chat_helpers_with_memory_off(server: ScriptedServer, tmp_path: Path) -> None:
    client = wrap(base_client(server), tmp_path)
    client.memory.add("User prefers Python")
    raw = f'{ANSWER}<memory>{{"add": [{{"text": "{NEW_FACT}"}}]}}</memory>'
    server.push(raw)
    with client.chat.completions.stream(model="m", messages=CHAT_MESSAGES, memory="off") as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == raw
    assert server.chat_requests()[-1]["messages"] == CHAT_MESSAGES
    assert client.flush(timeout=30)
    assert texts_of(client) == {"User prefers Python"}


# --- the demo's scripted endpoint -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_demo_endpoint_speaks_the_responses_api(tmp_path: Path, stream: bool) -> None:
    from headroom.memory.cli.scripted_llm import ScriptedLLM, ScriptedTurn

    def answer(notes: Any) -> str:
        return "I remember: " + "; ".join(n["text"] for n in notes) if notes else "Hello."

    turns = [ScriptedTurn("hello", answer, lambda notes: {"add": [{"text": "User said hello"}]})]
    llm = ScriptedLLM(turns).start()
    try:
        client = wrap(openai.OpenAI(base_url=llm.base_url, api_key="test"), tmp_path)
        texts = []
        for _ in range(2):
            result = client.responses.create(model=llm.model, input="hello there", stream=stream)
            if stream:
                events = list(result)
                text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
                assert events[-1].response.output_text == text
                assert [e.sequence_number for e in events] == list(range(len(events)))
            else:
                text = result.output_text
            texts.append(text)
            assert client.flush(timeout=30)
        assert texts == ["Hello.", "I remember: User said hello"]
        assert texts_of(client) == {"User said hello"}
        assert llm.requests[-1]["instructions"] == MEMORY_INSTRUCTION
    finally:
        llm.stop()
