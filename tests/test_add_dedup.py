"""``.memory.add(..., dedup=...)``: kept as given by default, deduplicated on request with the
inline path's rule (exact text skipped, near-duplicate superseded), on the store, the sync and
async facades and the REST route; the real MiniLM model decides what is near."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from headroom.memory import with_fast_memory
from headroom.memory.embedders import get_embedder
from headroom.memory.embedders.base import Embedder
from headroom.memory.errors import InvalidTypeError
from headroom.memory.store.store import DEFAULT_DEDUP_THRESHOLD, MemoryStore

# Measured with all-MiniLM-L6-v2 (tests/test_store.py pins the same premises).
DOG = "User has a dog named Max"
DOG_PARAPHRASE = "The user has a dog called Max"  # 0.9466 with DOG: a near-duplicate
CAT = "User has a cat named Max"  # 0.8329 with DOG: another fact
# Nothing goes over HTTP: the facade never talks to the model.
BASE_URL = "http://127.0.0.1:9/v1"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = get_embedder()
    v = model.embed([DOG, DOG_PARAPHRASE, CAT])
    assert v[0] @ v[1] >= DEFAULT_DEDUP_THRESHOLD > v[0] @ v[2]  # the premises hold
    return model


def test_store_add_keeps_every_copy_by_default(tmp_path: Path, embedder: Embedder) -> None:
    with MemoryStore(tmp_path / "db", embedder=embedder, sync="off") as store:
        ids = {store.add("u", DOG).id for _ in range(3)}
        assert len(ids) == 3 and [m.text for m in store.get_all("u")] == [DOG] * 3


def test_store_add_with_dedup_returns_the_existing_or_superseded_memory(
    tmp_path: Path, embedder: Embedder
) -> None:
    with MemoryStore(tmp_path / "db", embedder=embedder, sync="off") as store:
        first = store.add("u", DOG, dedup=True)
        # The same text three times: one memory, returned unchanged, no new version.
        for text in (DOG, "user has a  dog named max.", DOG):
            again = store.add("u", text, dedup=True)
            assert again == first
        assert len(store.get_all("u")) == 1 and len(store.history("u", first.id)) == 1
        # A near-duplicate supersedes it: same id, the new text, the old one in history.
        merged = store.add("u", DOG_PARAPHRASE, category="preference", dedup=True)
        assert merged.id == first.id and merged.text == DOG_PARAPHRASE
        assert merged.category == "preference"
        assert [h.text for h in store.history("u", first.id)] == [DOG, DOG_PARAPHRASE]
        # Another fact on the same topic is a memory of its own.
        cat = store.add("u", CAT, dedup=True)
        assert cat.id != first.id
        assert {m.text for m in store.get_all("u")} == {DOG_PARAPHRASE, CAT}
        # Another user's identical memory is never returned or touched.
        theirs = store.add("v", DOG_PARAPHRASE, dedup=True)
        assert theirs.id != first.id and store.get("v", first.id) is None
        assert [h.text for h in store.history("u", first.id)] == [DOG, DOG_PARAPHRASE]
        # A non-bool dedup is a typed error, and nothing is written.
        with pytest.raises(InvalidTypeError, match="dedup must be a bool"):
            store.add("u", "User likes tea", dedup="yes")  # type: ignore[arg-type]
        assert len(store.get_all("u")) == 2


def test_a_near_duplicate_deleted_meanwhile_is_not_a_target(
    tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process deletes the near-duplicate between the dedup search and its read: the
    # add stores its text as a new memory (an update of a memory no longer live would drop it).
    with MemoryStore(tmp_path / "db", embedder=embedder, sync="off") as store:
        first = store.add("u", DOG)
        real_get = store.backend.get

        def get_after_a_delete(user_id: str, memory_id: str) -> object:
            store.backend.get = real_get  # type: ignore[method-assign]
            store.delete(user_id, memory_id)
            return real_get(user_id, memory_id)

        monkeypatch.setattr(store.backend, "get", get_after_a_delete)
        added = store.add("u", DOG_PARAPHRASE, dedup=True)
        assert added.id != first.id and added.text == DOG_PARAPHRASE
        assert [m.text for m in store.get_all("u")] == [DOG_PARAPHRASE]


def test_facades_sync_and_async(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "memory.db"
    sync = with_fast_memory(
        openai.OpenAI(base_url=BASE_URL, api_key="t"),
        user_id="alice",
        db_path=path,
        embedder=embedder,
    )
    three = [sync.memory.add(DOG) for _ in range(3)]
    assert len({m.id for m in three}) == 3  # the documented default: every add is kept
    sync.memory.clear(hard=True)
    first = sync.memory.add(DOG, dedup=True)
    assert [sync.memory.add(DOG, dedup=True) for _ in range(2)] == [first, first]
    assert [m.id for m in sync.memory.get_all()] == [first.id]

    async def run() -> None:
        client = with_fast_memory(
            openai.AsyncOpenAI(base_url=BASE_URL, api_key="t"),
            user_id="alice",
            db_path=path,
            embedder=embedder,
        )
        same = await client.memory.add(DOG, dedup=True)
        assert same == first
        merged = await client.memory.add(DOG_PARAPHRASE, dedup=True)
        assert merged.id == first.id and merged.text == DOG_PARAPHRASE
        copy = await client.memory.add(DOG_PARAPHRASE)
        assert copy.id != first.id
        assert len(await client.memory.get_all()) == 2

    asyncio.run(run())
