"""``Backend.get_many`` on every backend, and the hybrid search reading its results with it.

On a server backend every read is a round trip, so a search reads its top-k memories in one
``get_many``, not k ``get`` calls. These tests pin the contract of ``get_many`` and that a
search reads its rows in one call, on real stores (a store directory, and a real PostgreSQL
from tests/pg_fixture.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from headroom.memory.store.backend import Backend
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import Memory, NewMemory
from tests.backends import KINDS, BackendKind
from tests.store_helpers import HashEmbedder

TEXTS = [f"the user keeps notes about topic {i} and tea" for i in range(40)]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind: BackendKind = request.param
    return kind.new_location(tmp_path)


@pytest.fixture
def store(location: str) -> Iterator[MemoryStore]:
    with MemoryStore(location, embedder=HashEmbedder(64), sync="off") as store:
        yield store


class Counting:
    """A backend that counts ``get`` and ``get_many`` calls; ``drop_once`` leaves the first
    asked id out of the first ``get_many`` (as if another writer deleted it meanwhile)."""

    def __init__(self, inner: Backend, drop_once: bool = False) -> None:
        self.inner = inner
        self.gets = 0
        self.get_manys: list[list[str]] = []
        self.dropped: str | None = None
        self._drop = drop_once

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        self.gets += 1
        return self.inner.get(user_id, memory_id)

    def get_many(self, user_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        self.get_manys.append(list(memory_ids))
        found = self.inner.get_many(user_id, memory_ids)
        if self._drop and memory_ids:
            self._drop = False
            self.dropped = memory_ids[0]
            found.pop(memory_ids[0], None)
        return found


def test_get_many_returns_the_users_live_memories_among_the_ids(store: MemoryStore) -> None:
    kept = store.add_many("alice", [NewMemory(t) for t in TEXTS[:3]], dedup=False).added
    deleted = store.add("alice", "a memory deleted later")
    store.delete("alice", deleted.id)
    bobs = store.add("bob", "a memory of bob")
    ids = [m.id for m in kept]
    backend = store.backend
    got = backend.get_many("alice", [*ids, deleted.id, bobs.id, "0" * 32, ids[0]])
    assert got == {m.id: backend.get("alice", m.id) for m in kept}
    assert backend.get_many("alice", []) == {}
    assert backend.get_many("bob", ids) == {}


def test_a_hybrid_search_reads_its_results_in_one_call(store: MemoryStore) -> None:
    store.add_many("u", [NewMemory(t) for t in TEXTS], dedup=False)
    counting = Counting(store.backend)
    with MemoryStore(store.location, embedder=HashEmbedder(64), backend=counting) as view:  # type: ignore[arg-type]
        results = view.search("u", "notes about topic tea", top_k=10)
    assert len(results) == 10
    assert counting.gets == 0 and len(counting.get_manys) == 1
    assert [m.id for m, _ in results] == counting.get_manys[0]


def test_a_dense_search_and_a_write_read_their_memories_in_one_call(store: MemoryStore) -> None:
    store.add_many("u", [NewMemory(t) for t in TEXTS], dedup=False)
    counting = Counting(store.backend)
    with MemoryStore(store.location, embedder=HashEmbedder(64), backend=counting) as view:  # type: ignore[arg-type]
        results = view.search("u", "notes about topic tea", top_k=7, hybrid=False)
        assert len(results) == 7 and [m.id for m, _ in results] == counting.get_manys[0]
        applied = view.add_many("u", [NewMemory(f"a new note {i}") for i in range(3)], dedup=False)
        assert [m.text for m in applied.added] == [f"a new note {i}" for i in range(3)]
    assert counting.gets == 0 and len(counting.get_manys) == 2
    assert counting.get_manys[1] == [m.id for m in applied.added]


def test_a_result_deleted_meanwhile_is_replaced_by_the_next(store: MemoryStore) -> None:
    store.add_many("u", [NewMemory(t) for t in TEXTS], dedup=False)
    expected = [m.id for m, _ in store.search("u", "notes about topic tea", top_k=11)]
    counting = Counting(store.backend, drop_once=True)
    with MemoryStore(store.location, embedder=HashEmbedder(64), backend=counting) as view:  # type: ignore[arg-type]
        results = [m.id for m, _ in view.search("u", "notes about topic tea", top_k=10)]
    assert counting.dropped == expected[0]
    assert results == expected[1:]
    assert [len(ids) for ids in counting.get_manys] == [10, 1]


def test_a_postgres_search_takes_the_same_round_trips_whatever_k(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    from headroom.memory.store.postgres import PostgresBackend
    from tests import pg_fixture

    url = pg_fixture.server().new_store_database(prefix="getmany")
    backend = PostgresBackend(url, ann_threshold=None)  # no index lookups in between
    with MemoryStore(url, embedder=HashEmbedder(64), backend=backend) as store:
        store.add_many("u", [NewMemory(t) for t in TEXTS], dedup=False)
        store.search("u", "tea", top_k=1)  # the ranking state is built here
        reads: list[int] = []
        real_read = PostgresBackend._read

        def counting_read(self: PostgresBackend, *args: Any, **kwargs: Any) -> Any:
            reads.append(1)
            return real_read(self, *args, **kwargs)

        monkeypatch.setattr(PostgresBackend, "_read", counting_read)
        for k in (1, 10, 30):
            reads.clear()
            assert len(store.search("u", "notes about topic tea", top_k=k)) == k
            # the user's seq (ranking caught up?), the dense top-k, the rows
            assert len(reads) == 3, k
            reads.clear()
            assert len(store.search("u", "notes about topic tea", top_k=k, hybrid=False)) == k
            assert len(reads) == 2, k  # the dense top-k, the rows
