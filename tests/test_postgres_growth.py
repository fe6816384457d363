"""What keeps a PostgreSQL store in shape as it grows: the change feed's removals stay bounded
(appends drop the oldest, compact drops them all) while every process's ranking cache stays
right, and a user who grows past ``ann_threshold`` gets an HNSW index without a compact.

A real PostgreSQL server (tests/pg_fixture.py); two backends on one database stand in for
two processes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from headroom.memory.store.backend import Entry
from headroom.memory.store.postgres import PostgresBackend
from headroom.memory.store.postgres import backend as pg_backend
from headroom.memory.store.postgres.backend import ann_index_name
from tests import pg_fixture
from tests.pg_fixture import PgTestServer

pg_server = pg_fixture.pg_server
pg_url = pg_fixture.pg_url

DIM = 16


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def add(user: str, memory_id: str, text: str, vector: np.ndarray) -> Entry:
    return Entry.add(
        user, memory_id, text, category="fact", source="manual", created_at_us=1_000_000,
        metadata={}, model="test-model", vector=vector,
    )  # fmt: skip


def admin_one(server: PgTestServer, url: str, query: str, *args: Any) -> Any:
    database = url.split("@/", 1)[1].split("?", 1)[0]
    with server.admin(database) as conn:
        row = conn.execute(query, args).fetchone()
    return row[0] if row else None


def ranked(backend: PostgresBackend, user: str, query: str) -> list[str]:
    return [memory_id for memory_id, _ in backend.ranking(user).top(query, 10)]


def test_removals_stay_bounded_and_every_cache_stays_right(
    pg_url: str, pg_server: PgTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_backend, "REMOVALS_KEPT", 5)
    rng = np.random.default_rng(3)
    writer, reader = PostgresBackend(pg_url, pool_size=2), PostgresBackend(pg_url, pool_size=2)
    try:
        writer.append([add("u", f"m{i}", f"note {i} apple", unit(rng)) for i in range(4)])
        writer.append([add("v", "x", "other user apple", unit(rng))])
        assert sorted(ranked(reader, "u", "apple")) == ["m0", "m1", "m2", "m3"]
        old = reader.user_seq("u")
        most = 0
        for step in range(40):  # each update removes a label: one removals row each
            memory_id = f"m{step % 4}"
            text = f"note {step} pear" if step % 4 == 0 else f"note {step} apple"
            writer.append(
                [Entry.update("u", memory_id, text, model="test-model", vector=unit(rng))]
            )
            rows = admin_one(pg_server, pg_url, "SELECT count(*) FROM removals WHERE user_id = 'u'")
            most = max(most, int(rows))
            if step % 7 == 0:  # the reader catches up now and then, across prunes
                assert sorted(ranked(reader, "u", "pear")) == ["m0"]
        assert 5 <= most <= 10  # bounded: between REMOVALS_KEPT and twice it
        reset = admin_one(pg_server, pg_url, "SELECT reset_seq FROM user_state WHERE user_id = 'u'")
        assert int(reset) > old  # the feed starts after the pruned removals
        assert reader.changes("u", old).seq == reader.user_seq("u")
        assert sorted(ranked(reader, "u", "pear")) == ["m0"]
        assert sorted(ranked(reader, "u", "apple")) == ["m1", "m2", "m3"]
        assert ranked(reader, "v", "apple") == ["x"]  # the other user's feed is untouched

        writer.append([Entry.purge("u", "m1")])
        assert sorted(ranked(reader, "u", "apple")) == ["m2", "m3"]
        writer.append([Entry.delete("u", "m2")])
        writer.compact()  # every feed starts afresh: no removals left
        assert admin_one(pg_server, pg_url, "SELECT count(*) FROM removals") == 0
        assert sorted(ranked(reader, "u", "apple")) == ["m3"]  # rebuilt, not caught up wrong
        writer.append([Entry.delete("u", "m3")])  # the feed goes on after the compaction
        assert ranked(reader, "u", "apple") == []
        assert writer.verify()["ok"]
    finally:
        writer.close()
        reader.close()


def test_a_prune_between_the_seq_read_and_the_catch_up_rebuilds_the_cache(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader reads the user's seq and reset point, then (a race, made certain here by
    # handing it the values read before the writes) the writer's removals are pruned before the
    # catch-up's snapshot: the feed no longer holds them all, so the cache must be built afresh.
    monkeypatch.setattr(pg_backend, "REMOVALS_KEPT", 2)
    rng = np.random.default_rng(5)
    writer, reader = PostgresBackend(pg_url, pool_size=2), PostgresBackend(pg_url, pool_size=2)
    try:
        writer.append([add("u", f"m{i}", f"note {i} apple", unit(rng)) for i in range(8)])
        assert len(ranked(reader, "u", "apple")) == 8
        before = reader._user_seq("u")
        for i in range(7):  # one removal each: past twice REMOVALS_KEPT, so the oldest go
            writer.append([Entry.delete("u", f"m{i}")])
        assert reader._user_seq("u")[1] != before[1]  # the premise: a prune moved reset_seq
        stale = iter([(reader._user_seq("u")[0], before[1])])
        real = reader._user_seq
        monkeypatch.setattr(reader, "_user_seq", lambda user: next(stale, None) or real(user))
        assert ranked(reader, "u", "apple") == ["m7"]
    finally:
        writer.close()
        reader.close()


def test_a_user_growing_past_the_threshold_gets_an_index_without_a_compact(
    pg_url: str, pg_server: PgTestServer
) -> None:
    rng = np.random.default_rng(9)
    vectors = [unit(rng) for _ in range(60)]
    backend = PostgresBackend(pg_url, ann_threshold=50)
    exact = PostgresBackend(pg_url, ann_threshold=None)
    name = ann_index_name("big", DIM)
    valid = (
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s"
    )
    try:
        for start in range(0, 40, 10):  # below the threshold: no index
            backend.append(
                [add("big", f"m{i}", f"memory {i}", vectors[i]) for i in range(start, start + 10)]
            )
        backend.append([add("small", "s", "a small user", vectors[0])])
        time.sleep(0.5)
        assert admin_one(pg_server, pg_url, valid, name) is None
        backend.append([add("big", f"m{i}", f"memory {i}", vectors[i]) for i in range(40, 60)])
        deadline = time.monotonic() + 120
        while admin_one(pg_server, pg_url, valid, name) is not True:
            assert time.monotonic() < deadline, "no index was built after the user grew"
            time.sleep(0.1)
        query = unit(rng)
        assert backend.search("big", query, 10) == exact.search("big", query, 10)

        # A build that was interrupted leaves an invalid index: the next build replaces it.
        database = pg_url.split("@/", 1)[1].split("?", 1)[0]
        with pg_server.admin(database) as conn:
            conn.execute(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", (name,)
            )
        assert admin_one(pg_server, pg_url, valid, name) is False
        assert backend.build_ann_index("big") == name
        assert admin_one(pg_server, pg_url, valid, name) is True
        assert backend.search("big", query, 10) == exact.search("big", query, 10)
    finally:
        backend.close()
        exact.close()
