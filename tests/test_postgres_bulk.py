"""Bulk loads and planner statistics on PostgreSQL (issue 12): an import builds each grown
user's HNSW index once, after its last row, and analyzes the tables it wrote; a read by id is
a primary-key lookup with or without statistics; autovacuum analyzes the big tables after a
fixed number of changed rows (migration 4).

A real PostgreSQL server (tests/pg_fixture.py); plans are read with EXPLAIN.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from headroom.memory.store.backend import Entry
from headroom.memory.store.postgres import PostgresBackend
from headroom.memory.store.postgres import backend as pg_backend
from headroom.memory.store.postgres.backend import ann_index_name, by_ids_sql
from headroom.memory.store.postgres.schema import ANALYZE_ROWS
from headroom.memory.store.store import IMPORT_BATCH, MemoryStore
from tests import pg_fixture

pg_server = pg_fixture.pg_server
pg_url = pg_fixture.pg_url

DIM = 8


class SeededEmbedder:
    """Deterministic unit vectors from a hash of each text (the import's vectors; the tests
    here are about the load, not about relevance)."""

    model_id = "seeded-test"
    dim = DIM

    def embed(self, texts: Any) -> np.ndarray:
        out = np.empty((len(texts), DIM), np.float32)
        for i, text in enumerate(texts):
            v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM)
            out[i] = v / np.linalg.norm(v)
        return out


def records(user: str, n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"user_id": user, "id": f"m{i}", "text": f"note number {i}", "category": "fact"}


def vector(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def add(user: str, i: int) -> Entry:
    return Entry.add(
        user, f"m{i}", f"note {i}", category="fact", source="import", created_at_us=1_000_000,
        metadata={}, model="seeded-test", vector=vector(i),
    )  # fmt: skip


def plan(backend: PostgresBackend, user: str, query: Any) -> str:
    with backend.transaction(user) as cur:
        cur.execute(b"EXPLAIN " + query.as_bytes(cur))
        return "\n".join(row[0] for row in cur.fetchall())


def old_shape(user: str, memory_id: str) -> Any:
    """A read by id with ``deleted_seq IS NULL`` in its condition: the shape whose plan the
    statistics decide (the partial indexes match it too)."""
    from psycopg import sql

    return sql.SQL(
        "SELECT id FROM memories WHERE user_id = {} AND id = {} AND deleted_seq IS NULL"
    ).format(sql.Literal(user), sql.Literal(memory_id))


def index_valid(backend: PostgresBackend, name: str) -> bool | None:
    with backend.transaction() as cur:
        cur.execute(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname = %s",
            (name,),
        )
        row = cur.fetchone()
    return None if row is None else bool(row[0])


def analyzed(backend: PostgresBackend, table: str) -> bool:
    with backend.transaction() as cur:
        cur.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        )
        row = cur.fetchone()
    return bool(row and row[0])


def test_import_builds_the_index_once_after_the_last_row_and_analyzes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3 * IMPORT_BATCH  # three appends; the user passes the threshold in the first
    backend = PostgresBackend(pg_url, ann_threshold=IMPORT_BATCH // 2)
    built: list[tuple[str, int, str]] = []
    real_build = PostgresBackend.build_ann_index

    def spy(self: PostgresBackend, user_id: str) -> str | None:
        built.append((user_id, self.count(user_id), threading.current_thread().name))
        return real_build(self, user_id)

    monkeypatch.setattr(PostgresBackend, "build_ann_index", spy)
    store = MemoryStore(pg_url, embedder=SeededEmbedder(), backend=backend)
    try:
        assert not analyzed(backend, "memories")
        assert store.import_(records("alice", n)) == n
        # One build, of the whole user, on the importing thread, done when import_ returns.
        assert built == [("alice", n, threading.current_thread().name)]
        assert index_valid(backend, ann_index_name("alice", DIM)) is True
        for table in pg_backend.BULK_TABLES:
            assert analyzed(backend, table), table
        assert "memories_pkey" in plan(backend, "alice", old_shape("alice", "m7"))
        memory = store.get("alice", "m7")
        assert memory is not None and memory.text == "note number 7"
        # A second import of the same records writes nothing and builds nothing more.
        assert store.import_(records("alice", n)) == 0
        assert len(built) == 1
    finally:
        store.close()


def test_appends_outside_a_bulk_load_still_build_in_the_background(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, ann_threshold=50)
    try:
        backend.append([add("bob", i) for i in range(60)])
        name = ann_index_name("bob", DIM)
        for _ in range(300):
            if index_valid(backend, name):
                break
            threading.Event().wait(0.1)
        assert index_valid(backend, name) is True
    finally:
        backend.close()


def test_a_failed_bulk_load_still_analyzes_and_builds_what_grew(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, ann_threshold=50)
    try:
        with pytest.raises(RuntimeError, match="stop"), backend.bulk_load():
            with backend.bulk_load():  # nested: nothing happens at the inner end
                backend.append([add("carol", i) for i in range(60)])
            assert index_valid(backend, ann_index_name("carol", DIM)) is None
            backend.append([add("dave", i) for i in range(10)])  # below the threshold
            raise RuntimeError("stop")
        assert index_valid(backend, ann_index_name("carol", DIM)) is True
        assert index_valid(backend, ann_index_name("dave", DIM)) is None
        assert analyzed(backend, "memories")
    finally:
        backend.close()


def test_a_read_by_id_uses_the_primary_key_without_statistics(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, ann_threshold=None)
    try:
        for start in range(0, 4000, 1000):
            backend.append([add("erin", i) for i in range(start, start + 1000)])
        assert not analyzed(backend, "memories")
        for ids in (["m5"], ["m5", "m3999", "nope"]):
            assert "memories_pkey" in plan(backend, "erin", by_ids_sql("erin", ids))
        backend.append([Entry.delete("erin", "m5")])
        assert backend.get("erin", "m5") is None
        assert set(backend.get_many("erin", ["m5", "m6", "nope"])) == {"m6"}
        assert backend.get("erin", "m6") is not None
        assert backend.get("someone-else", "m6") is None
    finally:
        backend.close()


def test_autovacuum_analyzes_the_big_tables_after_a_fixed_number_of_rows(pg_url: str) -> None:
    backend = PostgresBackend(pg_url)
    try:
        with backend.transaction() as cur:
            cur.execute(
                "SELECT relname, reloptions FROM pg_class WHERE relname = ANY(%s)",
                (["memories", "memory_versions", "removals"],),
            )
            options = dict(cur.fetchall())
        assert set(options) == {"memories", "memory_versions", "removals"}
        for table, opts in options.items():
            assert "autovacuum_analyze_scale_factor=0.01" in opts, table
            assert f"autovacuum_analyze_threshold={ANALYZE_ROWS}" in opts, table
    finally:
        backend.close()


def test_an_import_asks_which_ids_exist_once_per_user_per_chunk(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = PostgresBackend(pg_url, ann_threshold=None)
    calls: dict[str, int] = {"known_ids": 0, "get": 0, "history": 0}
    for name in calls:
        real = getattr(PostgresBackend, name)

        def counted(self: PostgresBackend, *args: Any, _real: Any = real, _n: str = name) -> Any:
            calls[_n] += 1
            return _real(self, *args)

        monkeypatch.setattr(PostgresBackend, name, counted)
    store = MemoryStore(pg_url, embedder=SeededEmbedder(), backend=backend)
    try:
        store.import_(records("frank", 10))
        store.delete("frank", "m3")  # soft-deleted: still known, so skipped
        calls.update(known_ids=0, get=0, history=0)
        pairs = zip(records("frank", 1500), records("gina", 1500), strict=True)
        mixed = [r for pair in pairs for r in pair]
        # 3,000 records in chunks of IMPORT_BATCH (1024): 3 chunks, each with both users.
        assert store.import_(mixed) == 2 * 1500 - 10
        assert calls == {"known_ids": 6, "get": 0, "history": 0}
        assert store.get("frank", "m3") is None and backend.count("frank") == 1499
    finally:
        store.close()


def test_a_store_of_schema_3_gets_migration_4_and_keeps_its_rows(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headroom.memory.store.postgres import schema

    current = schema.SCHEMA_VERSION
    assert current >= 4
    with monkeypatch.context() as old:  # the library as it was at schema version 3
        old.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
        old.setattr(schema, "SCHEMA_VERSION", 3)
        backend = PostgresBackend(pg_url, ann_threshold=None)
        backend.append([add("hana", i) for i in range(5)])
        with backend.transaction() as cur:
            cur.execute("SELECT reloptions FROM pg_class WHERE relname = 'memories'")
            assert cur.fetchone() == (None,)
        backend.close()
    backend = PostgresBackend(pg_url, ann_threshold=None)
    try:
        assert backend.stats()["schema_version"] == current
        with backend.transaction() as cur:
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert cur.fetchall() == [(str(current),)]
            cur.execute("SELECT reloptions FROM pg_class WHERE relname = 'memories'")
            row = cur.fetchone()
        assert row is not None and "autovacuum_analyze_scale_factor=0.01" in row[0]
        assert backend.count("hana") == 5 and backend.get("hana", "m4") is not None
    finally:
        backend.close()
