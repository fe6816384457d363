"""``max_prompt_tokens``: what the provider receives fits the budget, instruction and memories
included. The real openai SDK sends over real HTTP to the scripted server, which records the
body it got; that body is counted with the counter the wrapper was given."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import Reply, ScriptedServer, memory_reply
from store_helpers import HashEmbedder

from headroom.memory import with_fast_memory, with_memory
from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.memory.protocol.block import MEMORY_INSTRUCTION
from headroom.memory.protocol.budget import chat_prompt_tokens, responses_prompt_tokens
from headroom.memory.protocol.injection import FRAME_OPEN
from headroom.transforms import RollingWindowTransform, TokenCounter, default_counter

EMBEDDER = HashEmbedder(dim=32)
COUNTER = default_counter()  # what the README's window uses, and the wrapper by default
BUDGET = 1500
SYSTEM = {"role": "system", "content": "You are terse."}
LAST = "Which editor should I use today?"
MEMORIES = [f"User note {i}: prefers vim keybindings in editor number {i}" for i in range(12)]


def conversation(turns: int = 80) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"message {i} " * 12},
            {"role": "assistant", "content": f"answer {i} " * 12},
        ]
    return [*messages, {"role": "user", "content": LAST}]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


def wrap(server: ScriptedServer, path: Path, *, fast: bool, is_async: bool, **options: Any) -> Any:
    kind = openai.AsyncOpenAI if is_async else openai.OpenAI
    base = kind(base_url=server.base_url, api_key="test", max_retries=0)
    options = {"embedder": EMBEDDER, "min_score": -1.0, "top_k": 10, **options}
    if fast:
        return with_fast_memory(base, user_id="alice", db_path=path, **options)
    return with_memory(base, user_id="alice", db_path=path, extraction_model="m", **options)


def seed(path: Path) -> None:
    base = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="t")  # never called
    client = with_fast_memory(base, user_id="alice", db_path=path, embedder=EMBEDDER)
    for text in MEMORIES:
        client.memory.add(text)


def call(client: Any, api: str, stream: bool, is_async: bool, messages: list[Any]) -> str:
    """Make one call the way a user would; return the answer's text."""

    async def run_async() -> str:
        if api == "chat":
            if stream:
                chunks = await client.chat.completions.create(
                    model="m", messages=messages, stream=True
                )
                return "".join([c.choices[0].delta.content or "" async for c in chunks])
            done = await client.chat.completions.create(model="m", messages=messages)
            return str(done.choices[0].message.content)
        if stream:
            events = await client.responses.create(
                model="m", instructions=SYSTEM["content"], input=messages[1:], stream=True
            )
            return "".join([e.delta async for e in events if e.type.endswith("text.delta")])
        done = await client.responses.create(
            model="m", instructions=SYSTEM["content"], input=messages[1:]
        )
        return str(done.output_text)

    if is_async:
        return asyncio.run(run_async())
    if api == "chat":
        if stream:
            chunks = client.chat.completions.create(model="m", messages=messages, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks)
        done = client.chat.completions.create(model="m", messages=messages)
        return str(done.choices[0].message.content)
    if stream:
        events = client.responses.create(
            model="m", instructions=SYSTEM["content"], input=messages[1:], stream=True
        )
        return "".join(e.delta for e in events if e.type.endswith("text.delta"))
    done = client.responses.create(model="m", instructions=SYSTEM["content"], input=messages[1:])
    return str(done.output_text)


def sent(server: ScriptedServer, api: str) -> tuple[int, str, list[dict[str, Any]]]:
    """(tokens, instruction text, messages or items) of the first request the server got."""
    if api == "chat":
        body = server.chat_requests()[0]
        items = body["messages"]
        system = "\n".join(m["content"] for m in items if m["role"] == "system")
        return chat_prompt_tokens(items, COUNTER), system, items
    body = server.responses_requests()[0]
    tokens = responses_prompt_tokens(body.get("instructions"), body["input"], COUNTER)
    return tokens, body.get("instructions") or "", body["input"]


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("fast", [True, False], ids=["with_fast_memory", "with_memory"])
def test_the_prompt_sent_fits_the_budget(
    server: ScriptedServer, tmp_path: Path, api: str, is_async: bool, stream: bool, fast: bool
) -> None:
    path = tmp_path / "memory.db"
    seed(path)
    messages = conversation()
    unbudgeted = chat_prompt_tokens(messages, COUNTER)
    assert unbudgeted > 3 * BUDGET  # the conversation alone overshoots by far
    client = wrap(server, path, fast=fast, is_async=is_async, max_prompt_tokens=BUDGET)
    server.push(memory_reply("Use vim.", "User asked about editors") if fast else Reply("Use vim."))
    assert call(client, api, stream, is_async, messages) == "Use vim."
    tokens, system, items = sent(server, api)
    assert tokens <= BUDGET
    assert tokens > BUDGET - 150  # the budget is used, not wasted: old turns fill it
    assert (MEMORY_INSTRUCTION in system) is fast
    injected = [m for m in items if FRAME_OPEN in str(m.get("content"))]
    assert len(injected) == 1 and injected[0]["content"].count('"id": "m') >= 5
    assert items[-1] == {"role": "user", "content": LAST}
    assert items[-2] is injected[0] or items[-2] == injected[0]  # just before the last message
    if api == "chat":
        assert items[0] == SYSTEM
    user_texts = [m["content"] for m in items if m.get("role") == "user"]
    assert "message 0 " * 12 not in user_texts and "message 79 " * 12 in user_texts
    client.flush()


def test_without_a_budget_nothing_is_trimmed(server: ScriptedServer, tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    seed(path)
    client = wrap(server, path, fast=True, is_async=False)
    client.chat.completions.create(model="m", messages=conversation(10))
    assert len(server.chat_requests()[0]["messages"]) == len(conversation(10)) + 2


def test_the_budget_matches_the_readme_window_when_nothing_is_added(
    server: ScriptedServer, tmp_path: Path
) -> None:
    # memory="read" on an empty store adds nothing: the wrapper keeps what the window keeps.
    client = wrap(server, tmp_path / "memory.db", fast=True, is_async=False, max_prompt_tokens=900)
    client.chat.completions.create(model="m", messages=conversation(), memory="read")
    expected = RollingWindowTransform(max_tokens=900, token_counter=COUNTER).apply(conversation())
    assert server.chat_requests()[0]["messages"] == expected


def test_a_tight_budget_drops_memories_then_the_instruction_never_the_last_message(
    server: ScriptedServer, tmp_path: Path
) -> None:
    path = tmp_path / "memory.db"
    seed(path)
    messages = conversation(3)
    floor = chat_prompt_tokens([SYSTEM, messages[-1]], COUNTER)
    instruction = COUNTER.count_message({"role": "system", "content": MEMORY_INSTRUCTION})

    # Room for the instruction and a few memories, not all of them.
    budget = floor + instruction + 250
    client = wrap(server, path, fast=True, is_async=False, max_prompt_tokens=budget)
    client.chat.completions.create(model="m", messages=messages)
    tokens, system, items = sent(server, "chat")
    assert tokens <= budget and MEMORY_INSTRUCTION in system
    injected = [m for m in items if FRAME_OPEN in str(m.get("content"))]
    assert len(injected) == 1 and 1 <= injected[0]["content"].count('"id": "m') < 10
    assert items == [SYSTEM, items[1], injected[0], messages[-1]]  # no older turn fits

    # Room for the last message only: no instruction (extracted in the background), no memory.
    server.requests.clear()
    server.push("Use vim.")
    events: list[Any] = []
    client = wrap(
        server, path, fast=True, is_async=False, max_prompt_tokens=floor + 5, observer=events.append
    )
    answer = client.chat.completions.create(model="m", messages=messages)
    assert answer.choices[0].message.content == "Use vim."
    client.flush()
    first = server.chat_requests()[0]["messages"]
    assert first == [SYSTEM, messages[-1]]
    assert chat_prompt_tokens(first, COUNTER) <= floor + 5
    assert {e.kind for e in events} == {"background"}  # queued, then extracted by the worker
    assert len(server.chat_requests()) == 2  # the worker's own extraction call


def test_responses_a_budget_without_room_for_the_instruction_extracts_in_the_background(
    server: ScriptedServer, tmp_path: Path
) -> None:
    path = tmp_path / "memory.db"
    seed(path)
    items = conversation(3)[1:]
    floor = responses_prompt_tokens(SYSTEM["content"], items[-1:], COUNTER)
    events: list[Any] = []
    client = wrap(
        server, path, fast=True, is_async=False, max_prompt_tokens=floor + 5, observer=events.append
    )
    server.push("Use vim.")
    answer = client.responses.create(model="m", instructions=SYSTEM["content"], input=items)
    assert answer.output_text == "Use vim." and answer.instructions == SYSTEM["content"]
    client.flush()
    body = server.responses_requests()[0]
    assert body["instructions"] == SYSTEM["content"] and body["input"] == items[-1:]
    assert responses_prompt_tokens(body["instructions"], body["input"], COUNTER) <= floor + 5
    assert {e.kind for e in events} == {"background"}


def test_a_floor_over_the_budget_is_sent_as_it_is_and_the_call_succeeds(
    server: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memory.db"
    seed(path)
    huge = {"role": "system", "content": "Be brief. " * 400}
    messages = [huge, *conversation(3)[1:]]
    for api in ("chat", "responses"):
        server.requests.clear()
        client = wrap(server, path, fast=True, is_async=False, max_prompt_tokens=200)
        with caplog.at_level(logging.WARNING, logger="headroom.transforms"):
            if api == "chat":
                out = client.chat.completions.create(model="m", messages=messages)
                assert out.choices[0].message.content == "ok"
                assert server.chat_requests()[0]["messages"] == [huge, messages[-1]]
            else:
                out = client.responses.create(
                    model="m", instructions=huge["content"], input=messages[1:]
                )
                assert out.output_text == "ok"
                body = server.responses_requests()[0]
                assert body["instructions"] == huge["content"]
                assert body["input"] == [messages[-1]]
        assert "exceed max_tokens=" in caplog.text
        client.flush()


def test_options_are_checked(tmp_path: Path) -> None:
    base = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="t")
    for bad in (0, -5, 2.5, True, "4000"):
        with pytest.raises(InvalidInputError, match="max_prompt_tokens"):
            with_fast_memory(base, "u", tmp_path / "db", max_prompt_tokens=bad, embedder=EMBEDDER)
    with pytest.raises(InvalidTypeError, match="token counter"):
        with_fast_memory(base, "u", tmp_path / "db", max_prompt_tokens=9, token_counter=3)
    with pytest.raises(InvalidInputError, match="set both"):
        with_fast_memory(base, "u", tmp_path / "db", token_counter=len)
    chars = TokenCounter.from_text_fn(len, name="chars")
    client = with_fast_memory(
        base, "u", tmp_path / "db", max_prompt_tokens=99, token_counter=chars, embedder=EMBEDDER
    )
    assert client._core.budget.counter is chars and client._core.budget.max_tokens == 99
