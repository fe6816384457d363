"""Relevance of the inline pipeline with the real MiniLM model (no test embedder here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_server import ScriptedServer, memory_reply

from headroom.memory import with_fast_memory
from headroom.memory.protocol.block import MEMORY_INSTRUCTION


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


def test_seed_example_postgres_is_recalled_and_unrelated_left_out(
    server: ScriptedServer, tmp_path: Path
) -> None:
    base = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    client = with_fast_memory(base, user_id="alice", db_path=tmp_path / "memory.db")
    client.memory.add("User has a golden retriever named Rex", category="fact")
    client.memory.add("User's favourite band is Radiohead", category="preference")
    server.push(
        memory_reply(
            "Nice to meet you.",
            "User is a Python developer at a fintech startup",
            "User's team uses PostgreSQL",
        ),
        "PostgreSQL, since your team already runs it.",
    )
    client.chat.completions.create(
        model="m",
        messages=[
            {
                "role": "user",
                "content": "I'm a Python developer at a fintech startup. We use PostgreSQL.",
            }
        ],
    )
    assert client.flush(timeout=60)
    answer = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "What database should I use for my new project?"}],
    )
    assert answer.choices[0].message.content == "PostgreSQL, since your team already runs it."
    messages = server.chat_requests()[-1]["messages"]
    assert messages[0] == {"role": "system", "content": MEMORY_INSTRUCTION}
    injected = messages[-2]["content"]
    first_note = json.loads(injected.split("<memories>\n")[1].split("\n")[0])
    assert first_note["id"] == "m1" and "PostgreSQL" in first_note["text"]
    # Unrelated memories stay below the relevance floor (0.02 and 0.14 against 0.15).
    assert "golden retriever" not in injected and "Radiohead" not in injected
