"""The ``.memory`` facade on both wrappers: bound to one user, awaitable on async clients."""

from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import openai
import pytest
from store_helpers import HashEmbedder

from headroom.memory import Memory, with_fast_memory, with_memory
from headroom.memory.client.facade import AsyncMemoryFacade, MemoryFacade
from headroom.memory.errors import (
    InvalidCategoryError,
    InvalidInputError,
    InvalidTextError,
    MemoryNotFoundError,
)

EMBEDDER = HashEmbedder(dim=32)
# Nothing is called over HTTP here: the facade never talks to the model.
BASE_URL = "http://127.0.0.1:9/v1"


def sync_pair(tmp_path: Path) -> tuple[Any, Any]:
    base = openai.OpenAI(base_url=BASE_URL, api_key="test")
    path = tmp_path / "memory.db"
    alice = with_fast_memory(base, user_id="alice", db_path=path, embedder=EMBEDDER)
    bob = with_memory(base, user_id="bob", db_path=path, embedder=EMBEDDER)
    return alice, bob


def test_sync_facade_round_trip(tmp_path: Path) -> None:
    alice, bob = sync_pair(tmp_path)
    assert isinstance(alice.memory, MemoryFacade) and isinstance(bob.memory, MemoryFacade)
    python = alice.memory.add("User prefers Python", category="preference")
    assert isinstance(python, Memory) and python.category == "preference"
    job = alice.memory.add("User is a senior engineer", metadata={"from": "test"})
    assert job.category == "fact" and job.metadata == {"from": "test"}
    bob.memory.add("User has a dog")

    assert [m.text for m in alice.memory.get_all()] == [
        "User prefers Python",
        "User is a senior engineer",
    ]
    assert [m.text for m in alice.memory.get_all(category="preference")] == ["User prefers Python"]
    hits = alice.memory.search("User prefers Python", top_k=5)
    assert hits[0][0].id == python.id and isinstance(hits[0][1], float)
    assert all(m.text != "User has a dog" for m, _ in alice.memory.search("dog", top_k=10))
    assert alice.memory.get(python.id) == python
    assert bob.memory.get(python.id) is None  # another user's id is invisible

    updated = alice.memory.update(python.id, "User prefers Rust")
    assert updated.id == python.id and updated.text == "User prefers Rust"
    assert [v.text for v in alice.memory.history(python.id)] == [
        "User prefers Python",
        "User prefers Rust",
    ]

    stats = alice.memory.stats()
    assert stats["total_chunks"] == 2
    assert stats["categories"]["preference"] == 1 and stats["categories"]["fact"] == 1

    alice.memory.delete(job.id)
    assert alice.memory.get(job.id) is None
    with pytest.raises(MemoryNotFoundError):
        alice.memory.delete(job.id)
    with pytest.raises(MemoryNotFoundError):
        bob.memory.update(python.id, "not yours")
    assert alice.memory.clear() == 1
    assert alice.memory.get_all() == []
    assert [m.text for m in bob.memory.get_all()] == ["User has a dog"]


def test_bad_input_raises_typed_errors(tmp_path: Path) -> None:
    alice, _ = sync_pair(tmp_path)
    with pytest.raises(InvalidTextError):
        alice.memory.add("   ")
    with pytest.raises(InvalidCategoryError):
        alice.memory.add("User likes tea", category="hobby")
    with pytest.raises(InvalidInputError):
        alice.memory.prune()


def test_forget_prune_export_import(tmp_path: Path) -> None:
    alice, bob = sync_pair(tmp_path)
    old = alice.memory.add(
        "User lived in Porto", created_at=datetime.now(timezone.utc) - timedelta(days=400)
    )
    keep = alice.memory.add("User lives in Berlin", category="context")
    gone = alice.memory.add("User has a cat")
    assert alice.memory.prune(older_than=datetime.now(timezone.utc) - timedelta(days=30)) == 1
    assert alice.memory.get(old.id) is None
    assert alice.memory.forget([gone.id]) == 1
    assert alice.memory.history(gone.id) == []  # hard: no version left

    exported = alice.memory.export()
    assert [r["id"] for r in exported] == [keep.id]
    assert exported[0]["user_id"] == "alice" and "history" in exported[0]
    with pytest.raises(InvalidInputError, match="belongs to user"):
        bob.memory.import_(exported)
    assert alice.memory.forget() == 1
    assert alice.memory.import_(exported) == 1
    assert alice.memory.get(keep.id) == keep


def test_async_facade_is_awaitable_and_bound(tmp_path: Path) -> None:
    base = openai.AsyncOpenAI(base_url=BASE_URL, api_key="test")
    path = tmp_path / "memory.db"
    alice = with_fast_memory(base, user_id="alice", db_path=path, embedder=EMBEDDER)
    assert isinstance(alice.memory, AsyncMemoryFacade)
    public = [n for n in dir(MemoryFacade) if not n.startswith("_")]
    for name in public:
        assert inspect.iscoroutinefunction(getattr(alice.memory, name)), name

    async def run() -> None:
        added = await alice.memory.add("User prefers Python", category="preference")
        assert [m.id for m in await alice.memory.get_all()] == [added.id]
        [(hit, score)] = await alice.memory.search("User prefers Python")
        assert hit.id == added.id and score > 0.99
        assert (await alice.memory.stats())["total_chunks"] == 1
        assert await alice.memory.search("Python", metadata={"team": "x"}) == []
        assert await alice.memory.get_all(metadata={"team": "x"}) == []
        tagged = await alice.memory.add("User is on team x", metadata={"team": "x"})
        assert [m.id for m in await alice.memory.get_all(metadata={"team": "x"})] == [tagged.id]
        await alice.memory.delete(tagged.id)
        assert (await alice.memory.update(added.id, "User prefers Go")).text == "User prefers Go"
        assert len(await alice.memory.history(added.id)) == 2
        records = await alice.memory.export()
        assert await alice.memory.forget() == 1
        assert await alice.memory.import_(records) == 1
        assert await alice.memory.clear() == 1
        assert await alice.memory.get(added.id) is None

    asyncio.run(run())
