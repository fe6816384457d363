"""Properties of the wrapper over real HTTP: for any answer and any chunking, the streamed
text equals the non-streamed clean text, no block text is ever visible, and the block of
choice 0 is stored the same way in both."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_server import Reply, ScriptedServer
from store_helpers import HashEmbedder

from headroom.memory import MemoryEvent, with_fast_memory
from headroom.memory.protocol.block import clean_text

EMBEDDER = HashEmbedder(dim=32)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    path = tmp_path_factory.mktemp("props") / "memory.db"
    return with_fast_memory(
        base, user_id="prop", db_path=path, embedder=EMBEDDER, observer=EVENTS.append
    )


EVENTS: list[MemoryEvent] = []

texts = st.text(alphabet=st.sampled_from(list("ab <>/{}\"'mMemory:\n")), max_size=40)
memory_texts = st.text(alphabet=st.sampled_from(list('xyz <>&"')), min_size=1, max_size=12)


@st.composite
def answers(draw: st.DrawFn) -> str:
    """Answer texts: prose, maybe a real block, maybe stray or cut tags around it."""
    before = draw(texts)
    adds = draw(st.lists(memory_texts.map(lambda t: f"User {t}"), max_size=3))
    block = "<memory>" + json.dumps({"add": [{"text": t} for t in adds]}) + "</memory>"
    tail = draw(st.sampled_from(["", block, block[: len(block) // 2], "<memory", "</memory>"]))
    return before + draw(st.sampled_from(["", "<memory>{}</memory>"])) + tail


@st.composite
def chunkings(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(answers())
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=chunkings())
def test_stream_equals_plain_for_any_chunking(
    server: ScriptedServer, client: Any, case: tuple[str, list[str]]
) -> None:
    text, chunks = case
    messages = [{"role": "user", "content": "hello"}]
    server.push(Reply(text), Reply(text, chunks=chunks))
    EVENTS.clear()
    plain = client.chat.completions.create(model="m", messages=messages)
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert plain.choices[0].message.content == streamed == clean_text(text)
    assert "<memory" not in streamed.lower() and "</memory" not in streamed.lower()
    assert client.flush(timeout=30)
    assert len(EVENTS) == 2 and EVENTS[0].ops == EVENTS[1].ops
