"""The PostgreSQL + pgvector backend: :class:`PostgresBackend` implements ``Backend``.

Everything lives in the database (schema.py): memories, their history, the change feed's
removals, jobs, config. Nothing is derived on disk; the only per-process state is the
ranking cache (one BM25 index and vector sum per user, caught up through the change feed,
exactly as the embedded backend keeps it).

Connections come from one ``psycopg_pool.ConnectionPool`` per backend, borrowed per call in
a ``with`` block (so always returned), with ``prepare_threshold=None`` (no server-side
prepared statements: works behind PgBouncer in transaction mode) and only transaction-scoped
settings (``set_config(..., true)``). Every statement names its user (``user_id = %s``) and
row-level security checks the same user a second time (see schema.py).

Writes: an append locks the ``user_state`` rows of the users it touches (in user order, so
batches cannot deadlock on them), then draws its seqs from the ``entry_seq`` sequence. So
one user's writes commit in the order of their seqs, which is what makes the change feed
complete: a reader that saw a user's seq S will find every later change of that user at a
seq above S. Seqs of one batch are consecutive unless another batch draws seqs at the same
moment (they still increase within the batch).

Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` for a lease on the server's clock, and
completed (their ops applied, the job deleted) in one transaction only while the claim's token
is still the job's; docs/postgres.md (The job queue) says how claims across users keep
row-level security on every write. The change feed's removals stay bounded (REMOVALS_KEPT).

Searches are exact: the user's live rows (btree on user_id), ordered by ``embedding <#> q``
(the negative inner product; the store's vectors are unit-length and the protocol returns
dot products), with every filter inside the query.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import numpy as np
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ... import types as T
from ...errors import (
    InvalidInputError,
    InvalidVectorError,
    JobLostError,
    MemoryNotFoundError,
    PostgresSetupError,
    PostgresUnavailableError,
    StoreClosedError,
    StoreNotFoundError,
)
from ...types import Memory, MemoryVersion
from ..backend import ALL, ChangeSet, Claim, Entry, Filter, Job, Op, Recovery, Vector
from ..ranking import LexicalIndex, RankingState, VectorTotal
from . import schema

logger = logging.getLogger("headroom.memory")

#: History op codes in memory_versions.op.
V_ADD, V_UPDATE, V_DELETE, V_CLEAR = 1, 2, 3, 4
_VERSION_NAMES = {V_ADD: "add", V_UPDATE: "update", V_DELETE: "delete", V_CLEAR: "clear"}

#: Inherited pools of forked children: kept referenced, never used or closed in the child.
_ABANDONED: list[Any] = []

_BEGIN_SNAPSHOT = sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

#: The server's clock in microseconds since the Unix epoch (leases of claimed jobs).
_NOW_US = sql.SQL("(extract(epoch FROM clock_timestamp()) * 1000000)::bigint")

#: How many claimable jobs a claim across users looks at (their users are tried in turn).
_CLAIM_CANDIDATES = 100

#: The tables a bulk load writes, analyzed when it ends.
BULK_TABLES = ("memories", "memory_versions", "user_state")

_MEMORY_COLUMNS = "id, text, category, source, metadata, created_us, updated_us, user_id, label"


# --- pgvector's binary format ------------------------------------------------------------------


class _VectorDumper(Dumper):
    """A float32 numpy vector as pgvector's binary ``vector`` (dim, unused, big-endian floats)."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        vector = np.asarray(obj, dtype=">f4")
        return struct.pack(">HH", vector.shape[0], 0) + vector.tobytes()


class _VectorBinaryLoader(Loader):
    format = Format.BINARY

    def load(self, data: Any) -> Vector:
        dim = struct.unpack_from(">H", data)[0]
        return np.frombuffer(data, dtype=">f4", count=dim, offset=4).astype(np.float32)


class _VectorTextLoader(Loader):
    format = Format.TEXT

    def load(self, data: Any) -> Vector:
        body = bytes(data).strip(b"[]")
        if not body:
            return np.zeros(0, np.float32)
        return np.array(body.split(b","), dtype=np.float32)


def _register_vector(context: AdaptContext, info: TypeInfo) -> None:
    info.register(context)
    dumper = type("VectorDumper", (_VectorDumper,), {"oid": info.oid})
    context.adapters.register_dumper(np.ndarray, dumper)
    context.adapters.register_loader(info.oid, _VectorBinaryLoader)
    context.adapters.register_loader(info.oid, _VectorTextLoader)


#: Soft-deletes the user's live memories (one when ``id_filter`` names it), records their
#: labels as removed and a history version of op ``op`` for each; returns how many.
_SOFT_DELETE = """
WITH del AS (
    UPDATE memories SET deleted_seq = %(seq)s
    WHERE user_id = %(user)s {id_filter} AND deleted_seq IS NULL
    RETURNING id, label, version, text, category, source, metadata
), rem AS (
    INSERT INTO removals (user_id, seq, label)
    SELECT %(user)s, %(seq)s, label FROM del
), ver AS (
    INSERT INTO memory_versions (user_id, memory_id, seq, op, version, text,
                                 category, source, metadata, at_us)
    SELECT %(user)s, id, %(seq)s, {op}, version, text, category, source, metadata, %(ts)s
    FROM del
)
SELECT count(*) FROM del
"""


# --- the ranking cache -----------------------------------------------------------------------


@dataclass
class PgUserRanking(RankingState):
    """One user's ranking state, caught up through the change feed. ``reset_seq`` is the start
    of the user's change feed when it was built (a whole-user PURGE starts a new feed: the
    state is then built again). The vector sum's seq is not tracked here (0)."""

    reset_seq: int = 0


# --- the backend -----------------------------------------------------------------------------


@dataclass
class _UserWrite:
    """What a batch knows about one user while applying it (read when the row was locked)."""

    live: int
    dim: int
    seq: int = 0
    purged: bool = False
    touched: bool = False
    removed: int = 0  #: rows this batch added to ``removals``


def _refuse_privileged_role(conn: psycopg.Connection[Any], location: str) -> None:
    """PostgresSetupError when the role skips row-level security (superuser or BYPASSRLS):
    the second wall between users would silently not be there."""
    row = conn.execute(
        "SELECT rolname, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row is not None and row[1]:
        raise PostgresSetupError(
            f"the role {row[0]} of {location} is a superuser or has BYPASSRLS, which skips "
            "row-level security between users; connect as a plain role that owns the store's "
            "tables (docs/postgres.md)"
        )


def redact(url: str) -> str:
    """``url`` without its password (for messages and ``location``): the one in the
    authority part, a ``password`` query parameter, or a ``password=`` keyword of a libpq
    key/value string."""
    if "://" not in url:
        return re.sub(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", "password=***", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = (parts.username or "") + "@" + netloc.rsplit("@", 1)[1]
        query = "&".join(
            f"{key}={quote(value)}"
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
            if key.lower() != "password"
        )
    except ValueError:
        return "postgresql://?"
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


class PostgresBackend:
    """Memories of many users in one PostgreSQL database with pgvector (see module docstring).

    ``url`` is a libpq connection URI (``postgresql://role:password@host:port/db``); the role
    must own the store's tables (it creates them with ``create``) and must not be a superuser
    or BYPASSRLS (row-level security would not apply). ``create=False`` refuses a database
    without the schema (StoreNotFoundError). ``pool_size`` bounds the connections this
    process opens. ``compact_full`` makes :meth:`compact` rewrite the tables (VACUUM FULL:
    the bytes of deleted rows leave the table and index files; it locks each table
    exclusively while it runs); False runs a plain VACUUM. ``ann_threshold``: users with at
    least this many live memories get an HNSW index of their own (built by :meth:`compact` or
    :meth:`build_ann_index`, searched with pgvector's iterative scan); None: exact search for
    everyone.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        pool_size: int = 10,
        connect_timeout: float = 30.0,
        compact_full: bool = True,
        ann_threshold: int | None = 10_000,
    ) -> None:
        if pool_size < 1:
            raise InvalidInputError(f"pool_size must be at least 1; got {pool_size}")
        self.url = url
        self.location = redact(url)
        self._create = create
        self._pool_size = pool_size
        self._timeout = connect_timeout
        self._compact_full = compact_full
        self._ann_threshold = ann_threshold
        #: Names of the ANN indexes that exist (refreshed at most every _ANN_REFRESH_S).
        self._ann_names: frozenset[str] = frozenset()
        self._ann_checked = -1e9
        #: Users whose index this process is building, and when it last started one for each.
        self._building: set[str] = set()
        self._build_tried: dict[str, float] = {}
        self._build_locks: dict[str, threading.Lock] = {}
        #: Open bulk_load() blocks, and the users who grew past the threshold inside them.
        self._bulk_depth = 0
        self._bulk_grown: set[str] = set()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._rankings: dict[str, PgUserRanking] = {}
        self._rankings_lock = threading.Lock()
        self._connections: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._vector_type = self._setup()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = self._open_pool()

    # --- plumbing ----------------------------------------------------------------------------

    def _setup(self) -> TypeInfo:
        """Run the migrations (as one locked transaction) and look up pgvector's type."""
        try:
            with psycopg.connect(
                self.url, autocommit=True, prepare_threshold=None,
                connect_timeout=max(1, int(self._timeout)),
            ) as conn:  # fmt: skip
                _refuse_privileged_role(conn, self.location)
                found = schema.migrate(conn, create=self._create)
                if found == 0 and not self._create:
                    raise StoreNotFoundError(f"no store in the database at {self.location}")
                info = TypeInfo.fetch(conn, "vector")
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(
                f"cannot open the store at {self.location}: {_first_line(exc)}"
            ) from None
        if info is None:  # pragma: no cover - migrate() installs it or raises
            raise PostgresSetupError(f"pgvector's type is missing in {self.location}")
        return info

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        info = self._vector_type
        connections = self._connections

        def configure(conn: psycopg.Connection[Any]) -> None:
            _register_vector(conn, info)
            connections.add(conn)

        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "prepare_threshold": None},
            configure=configure,
            timeout=self._timeout,
            name=f"headroom.memory {self.location}",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=self._timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                pool.close()
            raise PostgresUnavailableError(
                f"cannot connect to the store at {self.location}: {_first_line(exc)}"
            ) from None
        return pool

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreClosedError(f"the store at {self.location} is closed")
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self.after_fork()
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._closed:
                    raise StoreClosedError(f"the store at {self.location} is closed")
                if self._pool is None:
                    self._pool = self._open_pool()
                pool = self._pool
        return pool

    @contextlib.contextmanager
    def transaction(
        self, user_id: str | None = None, *, all_users: bool = False, snapshot: bool = False
    ) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor in one transaction on a pooled connection, scoped to ``user_id``.

        Row-level security shows the transaction only that user's rows (no rows when
        ``user_id`` is None), or every user's rows with ``all_users``. ``snapshot``: one
        REPEATABLE READ snapshot for every statement. Commits at the end of the block, rolls
        back on an exception; the connection always goes back to the pool.
        """
        pool = self._get_pool()
        try:
            with pool.connection() as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ if snapshot else None
                with conn.transaction(), conn.cursor() as cur:
                    if user_id is not None or all_users:
                        cur.execute(
                            "SELECT set_config('app.user_id', %s, true), "
                            "set_config('app.scope', %s, true)",
                            (user_id or "", "all" if all_users else ""),
                        )
                    yield cur
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(
                f"the store at {self.location}: {_first_line(exc)}"
            ) from None
        except psycopg.errors.DataException as exc:
            if "different vector dimensions" in str(exc):
                raise InvalidVectorError(_first_line(exc)) from None
            raise

    def _read(
        self,
        user_id: str | None,
        *statements: sql.Composable,
        all_users: bool = False,
        snapshot: bool = False,
    ) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` (their values bound client-side as literals) in one round trip,
        scoped like :meth:`transaction`; returns the rows of each statement.

        A simple-query message of several statements runs as one implicit transaction, so
        the ``set_config(..., true)`` sent first holds for the statements after it and for
        nothing else (this works behind PgBouncer in transaction mode too). ``snapshot``: an
        explicit REPEATABLE READ transaction around them, so they all see one snapshot.
        """
        scope = sql.SQL(
            "SELECT set_config('app.user_id', {}, true), set_config('app.scope', {}, true)"
        ).format(sql.Literal(user_id or ""), sql.Literal("all" if all_users else ""))
        parts = [scope, *statements]
        if snapshot:
            parts = [_BEGIN_SNAPSHOT, *parts, sql.SQL("COMMIT")]
        query = sql.SQL("; ").join(parts)
        pool = self._get_pool()
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute(query)
                results = []
                while True:
                    if cur.description is not None:
                        results.append(cur.fetchall())
                    if not cur.nextset():
                        break
                return results[1:]  # the first is the scope's set_config
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(
                f"the store at {self.location}: {_first_line(exc)}"
            ) from None

    # --- writes ------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Apply one atomic batch (see Backend.append); returns each entry's seq."""
        if not entries:
            return []
        return self._append(entries)

    def _append(self, entries: Sequence[Entry], claim: Claim | None = None) -> list[int]:
        """One transaction: lock the users' rows, check ``claim`` and delete its job (when
        given; JobLostError rolls everything back), draw the seqs, apply the entries."""
        for entry in entries:
            _check_entry(entry)
        touched = {e.user_id for e in entries if e.user_id and e.op not in (Op.DONE, Op.CONFIG)}
        if claim is not None:
            touched.add(claim.job.user_id)
        users = sorted(touched)
        now = time.time_ns() // 1000
        with self.transaction() as cur:
            state: dict[str, _UserWrite] = {}
            # Every lock before the seqs are drawn (the last lock and the draw share a message).
            draw = sql.SQL("SELECT nextval('entry_seq') FROM generate_series(1, {})").format(
                len(entries)
            )
            drawn: list[tuple[Any, ...]] = []
            for n, user in enumerate(users):
                state[user], drawn = self._lock_user(
                    cur, user, draw if n == len(users) - 1 else None
                )
            if not users:
                cur.execute(draw)
                drawn = cur.fetchall()
            seqs = sorted(int(row[0]) for row in drawn)
            current = users[-1] if users else ""
            if claim is not None:
                self._take_claimed(cur, claim)
                current = claim.job.user_id
            i = 0
            while i < len(entries):
                entry = entries[i]
                if entry.user_id != current and entry.user_id:
                    _scope(cur, entry.user_id)
                    current = entry.user_id
                if entry.op is Op.ADD:
                    j = i
                    while (
                        j < len(entries)
                        and entries[j].op is Op.ADD
                        and entries[j].user_id == entry.user_id
                    ):
                        j += 1
                    self._add(cur, state[entry.user_id], entries[i:j], seqs[i:j], now)
                    i = j
                    continue
                self._apply(cur, state, entry, seqs[i], now)
                if entry.op is Op.DONE and not entry.user_id:
                    current = ""  # _apply changed the scope
                i += 1
            for user, write in state.items():
                if write.touched and not write.purged:
                    if current != user:
                        _scope(cur, user)
                        current = user
                    cur.execute(
                        "UPDATE user_state SET seq = %s, live = %s, dim = %s, "
                        "reset_seq = COALESCE(reset_seq, %s), removals = removals + %s "
                        "WHERE user_id = %s RETURNING removals",
                        (write.seq, write.live, write.dim, write.seq, write.removed, user),
                    )
                    if _count(cur) > 2 * REMOVALS_KEPT:
                        _prune_removals(cur, user, REMOVALS_KEPT)
        self._grown([user for user, write in state.items() if write.touched], state)
        return seqs

    @staticmethod
    def _lock_user(
        cur: psycopg.Cursor[Any], user: str, then: sql.Composable | None = None
    ) -> tuple[_UserWrite, list[tuple[Any, ...]]]:
        """Scope the transaction to ``user`` and lock (or create) their user_state row, in
        one round trip; ``then`` runs after the lock in the same message (its rows are
        returned)."""
        u = sql.Literal(user)
        parts: list[sql.Composable] = [
            sql.SQL(
                "SELECT set_config('app.user_id', {}, true), set_config('app.scope', '', true)"
            ).format(u),
            sql.SQL(
                "INSERT INTO user_state (user_id) VALUES ({}) ON CONFLICT (user_id) "
                "DO UPDATE SET user_id = EXCLUDED.user_id RETURNING live, dim"
            ).format(u),
        ]
        if then is not None:
            parts.append(then)
        cur.execute(sql.SQL("; ").join(parts))
        cur.nextset()
        live, dim = cur.fetchone() or (0, 0)
        rows: list[tuple[Any, ...]] = []
        if then is not None:
            cur.nextset()
            rows = cur.fetchall()
        return _UserWrite(live=int(live), dim=int(dim)), rows

    def _add(
        self,
        cur: psycopg.Cursor[Any],
        write: _UserWrite,
        entries: Sequence[Entry],
        seqs: Sequence[int],
        now: int,
    ) -> None:
        user = entries[0].user_id
        if write.purged:
            self._relock(cur, user, write)
        cur.execute(
            """
            WITH rows AS (
                SELECT * FROM unnest(
                    %s::text[], %s::bigint[], %s::text[], %s::smallint[], %s::smallint[],
                    %s::jsonb[], %s::bigint[], %s::bigint[], %s::text[], %b::vector[]
                ) AS r(id, label, text, category, source, metadata, created_us, at_us, model,
                       embedding)
            ), ins AS (
                INSERT INTO memories (user_id, id, label, first_seq, version, text, category,
                                      source, metadata, created_us, updated_us, model,
                                      embedding)
                SELECT %s, id, label, label, 1, text, category, source, metadata, created_us,
                       at_us, model, embedding
                FROM rows
                ON CONFLICT (user_id, id) DO NOTHING
                RETURNING id, label, text, category, source, metadata, updated_us
            ), ver AS (
                INSERT INTO memory_versions (user_id, memory_id, seq, op, version, text,
                                             category, source, metadata, at_us)
                SELECT %s, id, label, 1, 1, text, category, source, metadata, updated_us
                FROM ins
            )
            SELECT id FROM ins
            """,
            (
                [e.memory_id for e in entries],
                list(seqs),
                [e.text for e in entries],
                [T.category_code(e.category) if e.category else 2 for e in entries],
                [T.source_code(e.source) if e.source else 2 for e in entries],
                [Jsonb(dict(e.metadata) if e.metadata is not None else {}) for e in entries],
                [e.created_at_us or (e.at_us or now) for e in entries],
                [e.at_us or now for e in entries],
                [e.model for e in entries],
                [e.vector for e in entries] if any(e.vector is not None for e in entries) else None,
                user,
                user,
            ),
        )
        inserted = {row[0] for row in cur.fetchall()}
        seen: set[str] = set()
        for entry, seq in zip(entries, seqs, strict=True):
            if entry.memory_id in seen or entry.memory_id not in inserted:
                raise InvalidInputError(f"memory id {entry.memory_id} already exists for this user")
            seen.add(entry.memory_id)
            if entry.vector is not None:
                _check_dim(write, len(entry.vector), replacing=False)
            write.live += 1
            write.seq = seq
        write.touched = True

    def _relock(self, cur: psycopg.Cursor[Any], user: str, write: _UserWrite) -> None:
        """After a whole-user PURGE in the same batch: a new user_state row."""
        fresh, _ = self._lock_user(cur, user)
        write.live, write.dim, write.purged = fresh.live, fresh.dim, False

    def _apply(
        self,
        cur: psycopg.Cursor[Any],
        state: dict[str, _UserWrite],
        entry: Entry,
        seq: int,
        now: int,
    ) -> None:
        op, user, memory_id = entry.op, entry.user_id, entry.memory_id
        ts = entry.at_us or now
        if op is Op.CONFIG:
            cur.execute(
                "INSERT INTO config (key, value, seq) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, seq = EXCLUDED.seq "
                "WHERE config.seq < EXCLUDED.seq",
                (memory_id, entry.text, seq),
            )
            return
        if op is Op.DONE:
            if user:
                cur.execute("DELETE FROM jobs WHERE user_id = %s AND id = %s", (user, memory_id))
            else:  # a job id is global: find it among every user's jobs
                cur.execute(
                    "SELECT set_config('app.user_id', '', true), "
                    "set_config('app.scope', 'all', true)"
                )
                cur.execute("DELETE FROM jobs WHERE id = %s", (memory_id,))
                cur.execute("SELECT set_config('app.scope', '', true)")
            return
        write = state[user]
        if write.purged:
            self._relock(cur, user, write)
        write.seq = seq
        write.touched = True
        if op is Op.PENDING:
            cur.execute(
                "INSERT INTO jobs (user_id, id, payload, created_us, seq) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (user, memory_id, entry.text, entry.created_at_us or ts, seq),
            )
            if cur.fetchone() is None:
                raise InvalidInputError(f"job id {memory_id} is already pending")
        elif op is Op.UPDATE or op is Op.REVECTOR:
            self._update(cur, write, entry, seq, ts)
        elif op is Op.DELETE:
            cur.execute(
                _SOFT_DELETE.format(id_filter="AND id = %(id)s", op=V_DELETE),
                {"seq": seq, "user": user, "id": memory_id, "ts": ts},
            )
            if not _count(cur):
                raise MemoryNotFoundError(f"no live memory {memory_id} for this user")
            write.removed += 1
            write.live -= 1
            if write.live <= 0:
                write.live, write.dim = 0, 0
        elif op is Op.CLEAR:
            cur.execute(
                _SOFT_DELETE.format(id_filter="", op=V_CLEAR),
                {"seq": seq, "user": user, "ts": ts},
            )
            write.removed += _count(cur)
            write.live = 0
            write.dim = 0
        elif op is Op.PURGE:
            if memory_id:
                cur.execute(
                    """
                    WITH gone AS (
                        DELETE FROM memories WHERE user_id = %(user)s AND id = %(id)s
                        RETURNING label, deleted_seq IS NULL AS live
                    ), versions AS (
                        DELETE FROM memory_versions
                        WHERE user_id = %(user)s AND memory_id = %(id)s
                    ), jobs AS (
                        DELETE FROM jobs WHERE user_id = %(user)s
                    ), rem AS (
                        INSERT INTO removals (user_id, seq, label)
                        SELECT %(user)s, %(seq)s, label FROM gone WHERE live
                    )
                    SELECT count(*) FILTER (WHERE live) FROM gone
                    """,
                    {"user": user, "id": memory_id, "seq": seq},
                )
                gone = _count(cur)
                write.removed += gone
                write.live -= gone
                if write.live <= 0:
                    write.live, write.dim = 0, 0
            else:
                # The user's ANN indexes name the user in their predicate: they go too.
                cur.execute(
                    "SELECT relname FROM pg_class WHERE relkind = 'i' AND relname LIKE %s",
                    (ann_index_prefix(user) + "%",),
                )
                for (name,) in cur.fetchall():
                    cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
                for table in ("memories", "memory_versions", "removals", "jobs", "user_state"):
                    cur.execute(
                        sql.SQL("DELETE FROM {} WHERE user_id = %s").format(sql.Identifier(table)),
                        (user,),
                    )
                write.live, write.dim, write.purged = 0, 0, True
        else:  # pragma: no cover - every op is handled above
            raise InvalidInputError(f"unknown op {op!r}")

    @staticmethod
    def _update(
        cur: psycopg.Cursor[Any], write: _UserWrite, entry: Entry, seq: int, ts: int
    ) -> None:
        user, memory_id = entry.user_id, entry.memory_id
        params = {
            "seq": seq,
            "user": user,
            "id": memory_id,
            "vec": entry.vector,
            "model": entry.model,
            "ts": ts,
        }
        if entry.op is Op.REVECTOR:
            cur.execute(
                """
                WITH prior AS (
                    SELECT label FROM memories
                    WHERE user_id = %(user)s AND id = %(id)s AND deleted_seq IS NULL
                    FOR UPDATE
                ), upd AS (
                    UPDATE memories m SET label = %(seq)s, model = %(model)s,
                                          embedding = %(vec)b::vector
                    FROM prior WHERE m.user_id = %(user)s AND m.id = %(id)s
                    RETURNING prior.label AS old_label
                ), rem AS (
                    INSERT INTO removals (user_id, seq, label)
                    SELECT %(user)s, %(seq)s, old_label FROM upd
                )
                SELECT count(*) FROM upd
                """,
                params,
            )
        else:
            params.update(
                text=entry.text,
                category=T.category_code(entry.category) if entry.category else None,
                source=T.source_code(entry.source) if entry.source else None,
                metadata=None if entry.metadata is None else Jsonb(dict(entry.metadata)),
                created=entry.created_at_us,
            )
            cur.execute(
                """
                WITH prior AS (
                    SELECT label FROM memories
                    WHERE user_id = %(user)s AND id = %(id)s AND deleted_seq IS NULL
                    FOR UPDATE
                ), upd AS (
                    UPDATE memories m SET
                        label = %(seq)s,
                        version = m.version + 1,
                        text = %(text)s,
                        category = COALESCE(%(category)s::smallint, m.category),
                        source = COALESCE(%(source)s::smallint, m.source),
                        metadata = COALESCE(%(metadata)s::jsonb, m.metadata),
                        created_us = CASE WHEN %(created)s::bigint <> 0 THEN %(created)s::bigint
                                          ELSE m.created_us END,
                        updated_us = %(ts)s,
                        model = CASE WHEN %(vec)b::vector IS NULL THEN m.model
                                     ELSE %(model)s END,
                        embedding = COALESCE(%(vec)b::vector, m.embedding)
                    FROM prior WHERE m.user_id = %(user)s AND m.id = %(id)s
                    RETURNING m.id, m.version, m.text, m.category, m.source, m.metadata,
                              prior.label AS old_label
                ), rem AS (
                    INSERT INTO removals (user_id, seq, label)
                    SELECT %(user)s, %(seq)s, old_label FROM upd
                ), ver AS (
                    INSERT INTO memory_versions (user_id, memory_id, seq, op, version, text,
                                                 category, source, metadata, at_us)
                    SELECT %(user)s, id, %(seq)s, 2, version, text, category, source, metadata,
                           %(ts)s
                    FROM upd
                )
                SELECT count(*) FROM upd
                """,
                params,
            )
        if not _count(cur):
            raise MemoryNotFoundError(f"no live memory {memory_id} for this user")
        write.removed += 1
        if entry.vector is not None:
            _check_dim(write, len(entry.vector), replacing=True)

    # --- reads -------------------------------------------------------------------------------

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        """The live memory, or None (on the primary key: see :func:`by_ids_sql`)."""
        [rows] = self._read(user_id, by_ids_sql(user_id, [memory_id]))
        return _memory(rows[0]) if rows and rows[0][-1] else None

    def get_many(self, user_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """The live memories among ``memory_ids``, by id, in one round trip (on the primary
        key: see :func:`by_ids_sql`)."""
        if not memory_ids:
            return {}
        [rows] = self._read(user_id, by_ids_sql(user_id, list(dict.fromkeys(memory_ids))))
        return {row[0]: _memory(row) for row in rows if row[-1]}

    def known_ids(self, user_id: str, memory_ids: Sequence[str]) -> list[str]:
        """The ids among ``memory_ids`` the user has, live or soft-deleted (until compact()
        or a PURGE drops the row), in one round trip on the primary key."""
        if not memory_ids:
            return []
        [rows] = self._read(user_id, by_ids_sql(user_id, list(dict.fromkeys(memory_ids))))
        return [row[0] for row in rows]

    def memories(self, user_id: str, where: Filter = ALL) -> list[Memory]:
        """Live memories passing ``where``, oldest first."""
        [rows] = self._read(
            user_id,
            sql.SQL(
                "SELECT " + _MEMORY_COLUMNS + " FROM memories "
                "WHERE user_id = {} AND deleted_seq IS NULL {} ORDER BY first_seq"
            ).format(sql.Literal(user_id), _filter_sql(where)),
        )
        return [_memory(row) for row in rows]

    def history(self, user_id: str, memory_id: str) -> list[MemoryVersion]:
        """Every version, oldest first, ending with its deletion if deleted."""
        [rows] = self._read(
            user_id,
            sql.SQL(
                "SELECT memory_id, text, category, at_us, op, source, metadata "
                "FROM memory_versions WHERE user_id = {} AND memory_id = {} ORDER BY seq"
            ).format(sql.Literal(user_id), sql.Literal(memory_id)),
        )
        return [
            MemoryVersion(
                memory_id=row[0],
                text=row[1],
                category=T.category_name(row[2]),
                at=T.from_timestamp_us(row[3]),
                operation=_VERSION_NAMES[row[4]],  # type: ignore[arg-type]
                source=T.source_name(row[5]),
                metadata=row[6],
            )
            for row in rows
        ]

    def count(self, user_id: str) -> int:
        """Live memories of the user."""
        [rows] = self._read(
            user_id,
            sql.SQL("SELECT live FROM user_state WHERE user_id = {}").format(sql.Literal(user_id)),
        )
        return int(rows[0][0]) if rows else 0

    def users(self) -> list[str]:
        """Users with at least one live memory, sorted."""
        [rows] = self._read(
            None,
            sql.SQL("SELECT user_id FROM user_state WHERE live > 0 ORDER BY user_id"),
            all_users=True,
        )
        return [row[0] for row in rows]

    def vectors(self, user_id: str) -> dict[str, Vector]:
        """The vector of each live memory of the user."""
        with self.transaction(user_id) as cur:
            cur.execute(
                "SELECT id, embedding FROM memories WHERE user_id = %s AND deleted_seq IS NULL "
                "AND embedding IS NOT NULL ORDER BY first_seq",
                (user_id,),
                binary=True,
            )
            return {row[0]: row[1] for row in cur.fetchall()}

    def user_seq(self, user_id: str) -> int:
        """Seq of the newest entry that touched the user (0 when none)."""
        return self._user_seq(user_id)[0]

    def _user_seq(self, user_id: str) -> tuple[int, int]:
        [rows] = self._read(
            user_id,
            sql.SQL("SELECT seq, reset_seq FROM user_state WHERE user_id = {}").format(
                sql.Literal(user_id)
            ),
        )
        return (int(rows[0][0]), int(rows[0][1] or 0)) if rows else (0, 0)

    def changes(self, user_id: str, since: int) -> ChangeSet:
        """What changed in the user's live set after ``since`` (one snapshot).

        ``removed``: labels at or below ``since`` that are no longer live; ``added``: live
        labels above it. After a whole-user PURGE nothing of the user's earlier feed remains:
        a reader holding state from before it finds ``since`` below the user's reset seq
        (:meth:`ranking` rebuilds then).
        """
        user = sql.Literal(user_id)
        state, removed, added = self._read(
            user_id,
            _state_sql(user),
            _removed_sql(user, since),
            _added_sql(user, since, sql.SQL("label, id")),
            snapshot=True,
        )
        return ChangeSet(
            int(state[0][0]) if state else 0,
            tuple(int(r[0]) for r in removed),
            tuple((int(r[0]), r[1]) for r in added),
        )

    # --- search ------------------------------------------------------------------------------

    def search(
        self, user_id: str, query: Vector, k: int, where: Filter = ALL
    ) -> list[tuple[str, float]]:
        """Exact top-k by dot product, filters inside the query (see Backend.search)."""
        if k <= 0:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.ndim != 1 or not np.isfinite(query).all():
            raise InvalidVectorError("a query vector must be a finite 1-D float32 array")
        user = sql.Literal(user_id)
        if self._has_ann_index(user_id, query.shape[0]):
            rows = self._ann_search(user_id, query, k, where)
            if rows is not None:
                return rows
        try:
            dims, rows = self._read(
                user_id,
                sql.SQL("SELECT dim FROM user_state WHERE user_id = {}").format(user),
                sql.SQL(
                    "SELECT id, -(embedding <#> {q}) FROM memories "
                    "WHERE user_id = {u} AND deleted_seq IS NULL AND embedding IS NOT NULL {f} "
                    "ORDER BY embedding <#> {q}, first_seq LIMIT {k}"
                ).format(q=_vector_sql(query), u=user, f=_filter_sql(where), k=sql.Literal(k)),
            )
        except psycopg.errors.DataException as exc:
            if "different vector dimensions" not in str(exc):
                raise
            rows, dims = [], []
            with self.transaction(user_id) as cur:
                cur.execute("SELECT dim FROM user_state WHERE user_id = %s", (user_id,))
                dims = cur.fetchall()
        dim = int(dims[0][0]) if dims else 0
        if dim and dim != query.shape[0]:
            raise InvalidVectorError(
                f"the query has {query.shape[0]} dims; the user's vectors have {dim}"
            )
        return [(row[0], float(row[1])) for row in rows]

    # --- ANN indexes of big users ------------------------------------------------------------

    def _has_ann_index(self, user_id: str, dim: int) -> bool:
        if self._ann_threshold is None:
            return False
        now = time.monotonic()
        if now - self._ann_checked > _ANN_REFRESH_S:
            [rows] = self._read(
                None,
                sql.SQL(
                    "SELECT relname FROM pg_class WHERE relkind = 'i' AND relname LIKE {}"
                ).format(_ANN_PREFIX + "%"),
            )
            self._ann_names = frozenset(row[0] for row in rows)
            self._ann_checked = now
        return ann_index_name(user_id, dim) in self._ann_names

    def _ann_search(
        self, user_id: str, query: Vector, k: int, where: Filter
    ) -> list[tuple[str, float]] | None:
        """Top-k through the user's HNSW index, or None when it gave fewer than k rows (a
        filter so selective that the iterative scan stopped early: the caller then scans
        exactly, so the search never returns fewer rows than asked when enough match).

        The query repeats the index's expression and predicate (``embedding::vector(d)``,
        the literal user id, live rows, the dim) so the planner can use it; the iterative
        scan (relaxed order, re-sorted here) keeps filtered searches from coming back short.
        """
        dim = query.shape[0]
        vector = _vector_sql(query)
        try:
            [rows] = self._read(
                user_id,
                sql.SQL(
                    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                    "set_config('hnsw.ef_search', {ef}, true); "
                    "SELECT id, -((embedding::vector({d})) <#> {q}) FROM memories "
                    "WHERE user_id = {u} AND deleted_seq IS NULL AND vector_dims(embedding) = {d} "
                    "{f} ORDER BY (embedding::vector({d})) <#> {q} LIMIT {k}"
                ).format(
                    ef=str(max(_ANN_EF_SEARCH, 2 * k)),
                    d=sql.SQL(str(int(dim))),
                    q=vector,
                    u=sql.Literal(user_id),
                    f=_filter_sql(where),
                    k=sql.Literal(k),
                ),
            )[1:]
        except psycopg.errors.DataException:
            return None
        if len(rows) < k:
            return None
        pairs = [(row[0], float(row[1])) for row in rows]
        pairs.sort(key=lambda pair: -pair[1])
        return pairs

    def _grown(self, users: Sequence[str], state: dict[str, _UserWrite]) -> None:
        """Start building, off the caller's thread, the HNSW index of each user in ``users``
        who now has at least ``ann_threshold`` live memories and none for their dim (one
        build per user at a time in this process, and a look at most every _ANN_REFRESH_S).
        Inside :meth:`bulk_load` the user is only noted; the build runs when it ends."""
        threshold = self._ann_threshold
        if threshold is None:
            return
        now = time.monotonic()
        for user in users:
            write = state[user]
            if write.purged or write.live < threshold or not write.dim:
                continue
            if ann_index_name(user, write.dim) in self._ann_names:
                continue
            with self._lock:
                if self._bulk_depth:  # built once, when the bulk load ends
                    self._bulk_grown.add(user)
                    continue
                if user in self._building or now - self._build_tried.get(user, -1e9) < (
                    _ANN_REFRESH_S
                ):
                    continue
                self._building.add(user)
                self._build_tried[user] = now
            threading.Thread(
                target=self._build_in_background, args=(user,), daemon=True,
                name="headroom-memory-ann-build",
            ).start()  # fmt: skip

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """A block of large appends (an import): inside it no HNSW index build starts (each
        would slow every later insert of its user, since every row then updates the index);
        when the outermost block ends, even by an exception, the tables written are analyzed
        (:meth:`analyze`: the planner's statistics cover the new rows at once) and then the
        index of each user who grew past ``ann_threshold`` is built, one build per user, on
        the caller's thread (:meth:`build_ann_index`). A build that fails is logged and left
        to the next growth or compact(), as a background build would be. Blocks nest; appends
        of other threads of this backend during the block are deferred alike.
        """
        with self._lock:
            self._bulk_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._bulk_depth -= 1
                outermost = self._bulk_depth == 0
                grown = sorted(self._bulk_grown) if outermost else []
                if outermost:
                    self._bulk_grown = set()
            if outermost:
                self._finish_bulk(grown)

    def _finish_bulk(self, grown: Sequence[str]) -> None:
        """ANALYZE, then build the deferred indexes; failures are logged, never raised (the
        rows are committed, and the end of a failed block must not hide its exception)."""
        try:
            self.analyze()
        except Exception:
            logger.warning(
                "headroom.memory: ANALYZE after a bulk load into %s failed",
                self.location,
                exc_info=True,
            )
        for user in grown:
            try:
                self.build_ann_index(user)
            except Exception:
                logger.warning(
                    "headroom.memory: building the HNSW index of a user of %s failed",
                    self.location,
                    exc_info=True,
                )

    def analyze(self, tables: Sequence[str] = BULK_TABLES) -> None:
        """ANALYZE ``tables`` now (the planner's statistics). Autovacuum keeps them fresh
        afterwards (migration 4 sets its thresholds on these tables); a load faster than
        its naptime needs this."""
        pool = self._get_pool()
        try:
            with pool.connection() as conn:
                for table in tables:
                    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(
                f"the store at {self.location}: {_first_line(exc)}"
            ) from None

    def _wait_for_builds(self) -> None:
        """Wait for this process's index builds (a VACUUM FULL beside a CREATE INDEX
        CONCURRENTLY of the same table is a deadlock that PostgreSQL breaks by failing one)."""
        with self._lock:
            locks = list(self._build_locks.values())
        for lock in locks:
            with lock:
                pass

    def _build_in_background(self, user_id: str) -> None:
        try:
            self.build_ann_index(user_id)
        except Exception:  # the next growth or compact() tries again
            logger.warning(
                "headroom.memory: building the HNSW index of a user of %s failed",
                self.location,
                exc_info=True,
            )
        finally:
            with self._lock:
                self._building.discard(user_id)

    def build_ann_index(self, user_id: str) -> str | None:
        """Build the user's HNSW index now if they have at least ``ann_threshold`` live
        memories and none exists for their dim; returns its name (None: not needed).

        ``CREATE INDEX CONCURRENTLY``: writes go on while it builds. The index is partial:
        the user's live rows of one dim, over ``embedding::vector(dim)`` (the column has no
        fixed dim). A whole-user PURGE drops it. An invalid index of that name that no
        session is building (a build that was interrupted, e.g. its process exited) is
        dropped and built again.
        """
        if self._ann_threshold is None:
            return None
        [rows] = self._read(
            user_id,
            sql.SQL("SELECT live, dim FROM user_state WHERE user_id = {}").format(
                sql.Literal(user_id)
            ),
        )
        if not rows or int(rows[0][0]) < self._ann_threshold or not int(rows[0][1]):
            return None
        dim = int(rows[0][1])
        name = ann_index_name(user_id, dim)
        statement = sql.SQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON memories "
            "USING hnsw ((embedding::vector({d})) vector_ip_ops) "
            "WHERE user_id = {u} AND deleted_seq IS NULL AND vector_dims(embedding) = {d}"
        ).format(name=sql.Identifier(name), d=sql.SQL(str(dim)), u=sql.Literal(user_id))
        pool = self._get_pool()
        with self._lock:
            lock = self._build_locks.setdefault(user_id, threading.Lock())
        try:
            with lock, pool.connection() as conn:  # one build per user in this process
                stale = conn.execute(
                    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = %s AND NOT i.indisvalid AND NOT EXISTS ("
                    "SELECT 1 FROM pg_stat_progress_create_index p "
                    "WHERE p.index_relid = i.indexrelid)",
                    (name,),
                ).fetchone()
                if stale is not None:
                    conn.execute(
                        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name))
                    )
                conn.execute(statement)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass  # another process created it at the same moment
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(
                f"the store at {self.location}: {_first_line(exc)}"
            ) from None
        self._ann_checked = -1e9  # see it on the next search
        return name

    def early_vector_mean(self, user_id: str, min_count: int) -> tuple[Vector | None] | None:
        """None: the mean comes with the ranking state (see Backend.early_vector_mean)."""
        return None

    def ranking(self, user_id: str) -> PgUserRanking:
        """The user's lexical index and vector sum, caught up with every write so far."""
        with self._rankings_lock:
            ranking = self._rankings.get(user_id)
            if ranking is None:
                ranking = self._rankings[user_id] = PgUserRanking()
        target, reset = self._user_seq(user_id)
        if target == ranking.covered_seq and reset == ranking.reset_seq:
            return ranking
        with ranking.lock:
            if target == ranking.covered_seq and reset == ranking.reset_seq:
                return ranking
            since = ranking.covered_seq
            if since < 0 or reset != ranking.reset_seq or since < reset:
                self._build_ranking(user_id, ranking)
            else:
                self._catch_up(user_id, ranking, since)
        return ranking

    def _build_ranking(self, user_id: str, ranking: PgUserRanking) -> None:
        user = sql.Literal(user_id)
        state, rows, total = self._read(
            user_id,
            _state_sql(user),
            sql.SQL(
                "SELECT label, id, text, created_us FROM memories "
                "WHERE user_id = {} AND deleted_seq IS NULL ORDER BY first_seq"
            ).format(user),
            _total_sql(user),
            snapshot=True,
        )
        index = LexicalIndex()
        index.add_many((row[1], row[2]) for row in rows)
        ranking.index = index
        ranking.label_ids = {int(row[0]): row[1] for row in rows}
        ranking.created = {row[1]: int(row[3]) for row in rows}
        ranking.vectors = _vector_total(total)
        ranking.covered_seq, ranking.reset_seq = _state(state)

    def _catch_up(self, user_id: str, ranking: PgUserRanking, since: int) -> None:
        user = sql.Literal(user_id)
        # The full sum again only when something was removed (one snapshot with the rest).
        state, removed, added, total = self._read(
            user_id,
            _state_sql(user),
            _removed_sql(user, since),
            _added_sql(user, since, sql.SQL("label, id, text, created_us, embedding")),
            _total_sql(
                user,
                sql.SQL(
                    "AND EXISTS (SELECT 1 FROM removals WHERE user_id = {} AND seq > {} "
                    "AND label <= {})"
                ).format(user, since, since),
            ),
            snapshot=True,
        )
        if _state(state)[1] != ranking.reset_seq:
            # Removals were pruned since the seq read that chose this catch-up: the feed no
            # longer holds all of them, so build afresh.
            self._build_ranking(user_id, ranking)
            return
        for (label,) in removed:
            ranking.remove(label)
        for label, memory_id, text, created_us, _vector in added:
            ranking.add(label, memory_id, text, created_us)
        if removed:
            ranking.vectors = _vector_total(total)
        else:  # only additions: the sum so far (None: no vectors yet) plus theirs
            extra = [row[4] for row in added if row[4] is not None]
            if extra:
                stacked = np.asarray(extra, np.float32).sum(axis=0, dtype=np.float64)
                current = ranking.vectors
                ranking.vectors = (
                    (stacked, len(extra), 0)
                    if current is None
                    else (current[0] + stacked, current[1] + len(extra), 0)
                )
        ranking.covered_seq, ranking.reset_seq = _state(state)

    def warm(self, user_id: str) -> None:
        """Catch the user's ranking cache up now, if this process holds one."""
        with self._rankings_lock:
            loaded = user_id in self._rankings
        if loaded:
            self.ranking(user_id)

    # --- jobs and config ---------------------------------------------------------------------

    def pending(self, user_id: str | None = None) -> list[Job]:
        """Open jobs, oldest first."""
        query = sql.SQL("SELECT id, user_id, payload, created_us FROM jobs")
        if user_id is None:
            [rows] = self._read(None, query + sql.SQL(" ORDER BY seq"), all_users=True)
        else:
            where = sql.SQL(" WHERE user_id = {} ORDER BY seq").format(sql.Literal(user_id))
            [rows] = self._read(user_id, query + where)
        return [
            Job(id=r[0], user_id=r[1], payload=json.loads(r[2]),
                created_at=T.from_timestamp_us(r[3]))
            for r in rows
        ]  # fmt: skip

    def claim(
        self, user_id: str | None, worker: str, lease_s: float, job_id: str | None = None
    ) -> Claim | None:
        """Claim the oldest open job nobody holds (see Backend.claim).

        ``UPDATE jobs ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)``, in a
        transaction scoped to the job's user: row-level security checks the write as it does
        every other. Across users (``user_id`` None) the candidates' users are read first
        (the one cross-user statement, a read), then each is claimed in its own user's
        transaction. The lease is measured on the server's clock, so hosts' clocks may differ.
        """
        if user_id is not None:
            return self._claim_of(user_id, worker, lease_s, job_id)
        only = sql.SQL("id = {} AND").format(job_id) if job_id is not None else sql.SQL("")
        [rows] = self._read(
            None,
            sql.SQL(
                "SELECT user_id FROM jobs WHERE {} (claimed_until IS NULL OR claimed_until <= {}) "
                "ORDER BY seq LIMIT {}"
            ).format(only, _NOW_US, _CLAIM_CANDIDATES),
            all_users=True,
        )
        tried: set[str] = set()
        for (user,) in rows:
            if user not in tried:
                tried.add(user)
                claim = self._claim_of(user, worker, lease_s, job_id)
                if claim is not None:
                    return claim
        return None

    def _claim_of(
        self, user_id: str, worker: str, lease_s: float, job_id: str | None
    ) -> Claim | None:
        token = uuid.uuid4().hex
        only = (
            sql.SQL("AND id = {}").format(sql.Literal(job_id))
            if job_id is not None
            else sql.SQL("")
        )
        with self.transaction(user_id) as cur:
            cur.execute(
                sql.SQL(
                    """
                    UPDATE jobs SET claim_token = {token}, claimed_by = {worker},
                                    claimed_until = {now} + {lease}
                    WHERE user_id = {user} AND id = (
                        SELECT id FROM jobs
                        WHERE user_id = {user} {only}
                          AND (claimed_until IS NULL OR claimed_until <= {now})
                        ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING id, payload, created_us, claimed_until
                    """
                ).format(
                    token=sql.Literal(token),
                    worker=sql.Literal(worker),
                    now=_NOW_US,
                    lease=sql.Literal(max(0, round(lease_s * 1e6))),
                    user=sql.Literal(user_id),
                    only=only,
                )
            )
            row = cur.fetchone()
        if row is None:
            return None
        job = Job(
            id=row[0], user_id=user_id, payload=json.loads(row[1]),
            created_at=T.from_timestamp_us(row[2]),
        )  # fmt: skip
        return Claim(job, token, worker, int(row[3]))

    def complete(self, claim: Claim, entries: Sequence[Entry] = ()) -> list[int]:
        """Apply ``entries`` and delete the claimed job in one transaction if the claim is
        still the job's (see Backend.complete)."""
        return self._append(entries, claim)

    @staticmethod
    def _take_claimed(cur: psycopg.Cursor[Any], claim: Claim) -> None:
        """Delete the claimed job (the transaction is scoped to its user) or raise
        JobLostError, which rolls the transaction back."""
        _scope(cur, claim.job.user_id)
        cur.execute(
            "DELETE FROM jobs WHERE user_id = %s AND id = %s AND claim_token = %s RETURNING id",
            (claim.job.user_id, claim.job.id, claim.token),
        )
        if cur.fetchone() is None:
            raise JobLostError(f"job {claim.job.id} is no longer held by this claim")

    def renew(self, claim: Claim, lease_s: float) -> Claim:
        """Move the claim's lease end to ``lease_s`` from now (server clock), if it still
        holds the job."""
        with self.transaction(claim.job.user_id) as cur:
            cur.execute(
                sql.SQL(
                    "UPDATE jobs SET claimed_until = {now} + {lease} "
                    "WHERE user_id = {user} AND id = {id} AND claim_token = {token} "
                    "RETURNING claimed_until"
                ).format(
                    now=_NOW_US,
                    lease=sql.Literal(max(0, round(lease_s * 1e6))),
                    user=sql.Literal(claim.job.user_id),
                    id=sql.Literal(claim.job.id),
                    token=sql.Literal(claim.token),
                )
            )
            row = cur.fetchone()
        if row is None:
            raise JobLostError(f"job {claim.job.id} is no longer held by this claim")
        return dataclasses.replace(claim, until_us=int(row[0]))

    def release(self, claim: Claim) -> None:
        """Give the job back if this claim still holds it."""
        with self.transaction(claim.job.user_id) as cur:
            cur.execute(
                "UPDATE jobs SET claim_token = NULL, claimed_by = NULL, claimed_until = NULL "
                "WHERE user_id = %s AND id = %s AND claim_token = %s",
                (claim.job.user_id, claim.job.id, claim.token),
            )

    def config(self) -> dict[str, str]:
        """Latest CONFIG values."""
        [rows] = self._read(None, sql.SQL("SELECT key, value FROM config ORDER BY key"))
        return {row[0]: row[1] for row in rows}

    # --- maintenance -------------------------------------------------------------------------

    def compact(self) -> dict[str, int]:
        """Drop soft-deleted memories (rows and history), then VACUUM (FULL by default).

        After it, no SQL can reach a deleted or purged memory (that holds from the commit of
        the PURGE already), and with ``compact_full`` the table and index files have been
        rewritten without their bytes. WAL, replicas and backups still hold them until they
        age out: docs/postgres.md says what Postgres can and cannot promise. The change feed
        starts afresh for every user (their removals go; ``reset_seq`` moves to their seq), so
        every process's ranking cache is built again once.
        """
        with self.transaction(all_users=True) as cur:
            cur.execute(
                """
                WITH gone AS (
                    DELETE FROM memories WHERE deleted_seq IS NOT NULL
                    RETURNING user_id, id
                ), versions AS (
                    DELETE FROM memory_versions v USING gone
                    WHERE v.user_id = gone.user_id AND v.memory_id = gone.id
                )
                SELECT count(*) FROM gone
                """
            )
            dropped = _count(cur)
            cur.execute("SELECT DISTINCT user_id FROM removals")
            feeds = [row[0] for row in cur.fetchall()]
        for user in feeds:  # one short transaction each: appends of others go on meanwhile
            with self.transaction(user) as cur:
                # Locks the row (waits for an append in flight), then reads its final seq.
                cur.execute(
                    "UPDATE user_state SET reset_seq = seq, removals = 0 WHERE user_id = %s",
                    (user,),
                )
                cur.execute("DELETE FROM removals WHERE user_id = %s", (user,))
        tables = ("memories", "memory_versions", "removals", "jobs", "user_state", "config")
        started = time.perf_counter()
        self._wait_for_builds()
        pool = self._get_pool()
        try:
            with pool.connection() as conn:
                before = _table_bytes(conn, tables)
                verb = "VACUUM (FULL, ANALYZE)" if self._compact_full else "VACUUM (ANALYZE)"
                for table in tables:
                    _vacuum(conn, sql.SQL(verb + " {}").format(sql.Identifier(table)))
                after = _table_bytes(conn, tables)
        except psycopg.OperationalError as exc:
            raise PostgresUnavailableError(
                f"the store at {self.location}: {_first_line(exc)}"
            ) from None
        built = 0
        if self._ann_threshold is not None:
            [big] = self._read(
                None,
                sql.SQL("SELECT user_id FROM user_state WHERE live >= {} ORDER BY user_id").format(
                    self._ann_threshold
                ),
                all_users=True,
            )
            for (user,) in big:  # IF NOT EXISTS: an index already there costs nothing
                if self.build_ann_index(user):
                    built += 1
        with self._rankings_lock:
            self._rankings.clear()
        return {
            "ann_indexes": built,
            "dropped_memories": dropped,
            "bytes_before": before,
            "bytes_after": after,
            "full": int(self._compact_full),
            "ms": round((time.perf_counter() - started) * 1000),
        }

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the schema version and the consistency of the derived per-user counts.

        ``user_state.live`` / ``dim`` must match the rows; every memory must have history;
        vectors of one user must share one dim. ``repair`` recomputes the counts.
        """
        with self.transaction(all_users=True) as cur:
            version = schema.schema_version(cur.connection)
            cur.execute(
                """
                WITH actual AS (
                    SELECT user_id, count(*) AS live,
                           COALESCE(min(vector_dims(embedding)), 0) AS lo,
                           COALESCE(max(vector_dims(embedding)), 0) AS hi
                    FROM memories WHERE deleted_seq IS NULL GROUP BY user_id
                )
                SELECT
                  (SELECT count(*) FROM user_state s FULL JOIN actual a USING (user_id)
                   WHERE COALESCE(s.live, 0) <> COALESCE(a.live, 0)
                      OR (COALESCE(a.live, 0) > 0 AND COALESCE(s.dim, 0) <> a.hi)),
                  (SELECT count(*) FROM actual WHERE lo <> hi),
                  (SELECT count(*) FROM memories m WHERE NOT EXISTS (
                      SELECT 1 FROM memory_versions v
                      WHERE v.user_id = m.user_id AND v.memory_id = m.id)),
                  (SELECT count(*) FROM memories),
                  (SELECT count(*) FROM memory_versions)
                """
            )
            row = cur.fetchone()
            assert row is not None
            bad_counts, mixed_dims, no_history, rows, versions = (int(x) for x in row)
            report: dict[str, Any] = {
                "ok": version == schema.SCHEMA_VERSION
                and not (bad_counts or mixed_dims or no_history),
                "schema_version": version,
                "records": rows + versions,
                "bad_counts": bad_counts,
                "mixed_dims": mixed_dims,
                "no_history": no_history,
            }
            if repair and bad_counts:
                # user_state rows are written under their own user's setting (WITH CHECK).
                cur.execute(
                    """
                    SELECT s.user_id, COALESCE(a.live, 0), COALESCE(a.dim, 0)
                    FROM user_state s LEFT JOIN (
                        SELECT user_id, count(*) AS live,
                               COALESCE(max(vector_dims(embedding)), 0) AS dim
                        FROM memories WHERE deleted_seq IS NULL GROUP BY user_id
                    ) a ON a.user_id = s.user_id
                    WHERE s.live <> COALESCE(a.live, 0) OR s.dim <> COALESCE(a.dim, 0)
                    """
                )
                for user, live, dim in cur.fetchall():
                    _scope(cur, user)
                    cur.execute(
                        "UPDATE user_state SET live = %s, dim = %s WHERE user_id = %s",
                        (live, dim, user),
                    )
            if repair:
                report["repaired"] = bool(bad_counts)
        return report

    def recovery(self) -> Recovery:
        """Nothing to recover: the server's WAL replay repairs a crash before we connect."""
        return Recovery()

    def stats(self) -> dict[str, Any]:
        """Counts and sizes that cost no table scan: live memories and users (from the
        per-user counts), pending jobs, bytes of each table with its indexes (JSON-safe)."""
        tables = ("memories", "memory_versions", "removals", "jobs", "user_state", "config")
        counts, jobs, server, sizes = self._read(
            None,
            sql.SQL(
                "SELECT COALESCE(sum(live), 0), count(*) FILTER (WHERE live > 0) FROM user_state"
            ),
            sql.SQL("SELECT count(*) FROM jobs"),
            sql.SQL(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
                "current_setting('server_version')"
            ),
            sql.SQL(
                "SELECT t, pg_total_relation_size(to_regclass(t)) FROM unnest({}::text[]) AS t"
            ).format(list(tables)),
            all_users=True,
        )
        return {
            "backend": "postgres",
            "location": self.location,
            "live": int(counts[0][0]),
            "users": int(counts[0][1]),
            "pending_jobs": int(jobs[0][0]),
            "pgvector": server[0][0],
            "server_version": server[0][1],
            "schema_version": schema.SCHEMA_VERSION,
            "bytes": {name: int(size or 0) for name, size in sizes},
        }

    def flush(self) -> None:
        """Nothing to do: a commit is durable when it returns (synchronous_commit)."""
        if self._closed:
            raise StoreClosedError(f"the store at {self.location} is closed")

    def close(self) -> None:
        """Close this process's pool. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    def after_fork(self) -> None:
        """In a forked child: let go of the parent's pool without touching its sockets.

        The inherited connections' sockets are the parent's: closing them here (a libpq
        ``PQfinish`` sends a Terminate message) would end the parent's sessions. Each one's
        descriptor is pointed at /dev/null in this process, so whatever later finalises the
        inherited objects writes nowhere; the pool object is kept referenced and never
        used. A new pool opens on next use.
        """
        self._lock = threading.RLock()
        self._rankings_lock = threading.Lock()
        self._rankings = {}
        # The parent's builds are the parent's.
        self._building, self._build_tried, self._build_locks = set(), {}, {}
        self._bulk_depth, self._bulk_grown = 0, set()
        self._pid = os.getpid()
        inherited = list(self._connections)
        self._connections = weakref.WeakSet()
        if inherited:
            null = os.open(os.devnull, os.O_RDWR)
            try:
                for conn in inherited:
                    with contextlib.suppress(Exception):
                        os.dup2(null, conn.pgconn.socket)
            finally:
                os.close(null)
        _ABANDONED.extend(inherited)
        if self._pool is not None:
            _ABANDONED.append(self._pool)
            self._pool = None


# --- helpers ---------------------------------------------------------------------------------


#: The change feed keeps about this many removals per user (between this and twice this):
#: a reader further behind rebuilds its state instead of catching up.
REMOVALS_KEPT = 4096


def _prune_removals(cur: psycopg.Cursor[Any], user: str, keep: int) -> int:
    """Drop the user's removals but the newest ``keep`` and move the start of the user's
    change feed (``reset_seq``) past them, so a reader that needed them rebuilds (the
    transaction is scoped to the user and holds their user_state row); returns how many."""
    cur.execute(
        """
        WITH cut AS (
            SELECT seq FROM removals WHERE user_id = %(user)s
            ORDER BY seq DESC OFFSET %(keep)s LIMIT 1
        ), gone AS (
            DELETE FROM removals WHERE user_id = %(user)s AND seq <= (SELECT seq FROM cut)
            RETURNING 1
        ), counted AS (
            SELECT count(*) AS n FROM gone
        )
        UPDATE user_state SET
            reset_seq = GREATEST(COALESCE(reset_seq, 0), COALESCE((SELECT seq FROM cut), 0)),
            removals = (SELECT count(*) FROM removals WHERE user_id = %(user)s)
                       - (SELECT n FROM counted)
        WHERE user_id = %(user)s
        RETURNING (SELECT n FROM counted)
        """,
        {"user": user, "keep": keep},
    )
    return _count(cur)


#: ANN index names: a prefix, a hash of the user id (names never show it), the dim.
_ANN_PREFIX = "memories_ann_"
_ANN_REFRESH_S = 30.0
#: hnsw.ef_search of ANN searches (at least 2k). Measured on a 10k-memory user, 384 dims:
#: recall@10 1.0 on clustered vectors at 40 already; on uniformly random vectors (the worst
#: case) 0.31 at 40, 0.53 at 100, 0.78 at 200, 0.93 at 400.
_ANN_EF_SEARCH = 100


def ann_index_prefix(user_id: str) -> str:
    """The name prefix of a user's ANN indexes."""
    return _ANN_PREFIX + hashlib.sha256(user_id.encode()).hexdigest()[:24] + "_"


def ann_index_name(user_id: str, dim: int) -> str:
    """The name of a user's ANN index over vectors of ``dim``."""
    return f"{ann_index_prefix(user_id)}{dim}"


def by_ids_sql(user_id: str, memory_ids: Sequence[str]) -> sql.Composed:
    """The user's rows of ``memory_ids``, live or not, with a last column telling whether
    each is live. The condition is ``(user_id, id)`` alone, which only the primary key
    matches (the partial indexes need ``deleted_seq IS NULL`` in it): the plan is a
    primary-key lookup whatever the planner's statistics say."""
    return sql.SQL(
        "SELECT " + _MEMORY_COLUMNS + ", deleted_seq IS NULL FROM memories "
        "WHERE user_id = {} AND id = ANY({}::text[])"
    ).format(sql.Literal(user_id), sql.Literal(list(memory_ids)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _scope(cur: psycopg.Cursor[Any], user: str) -> None:
    cur.execute(
        "SELECT set_config('app.user_id', %s, true), set_config('app.scope', '', true)", (user,)
    )


def _count(cur: psycopg.Cursor[Any]) -> int:
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _check_entry(entry: Entry) -> None:
    if entry.op is Op.CONFIG:
        if entry.user_id:
            raise InvalidInputError("a CONFIG entry must not have a user")
        if not entry.memory_id:
            raise InvalidInputError("a CONFIG entry needs a key")
        return
    if entry.op is not Op.DONE and not entry.user_id:
        raise InvalidInputError(f"a {entry.op.name} entry needs a user")
    if entry.op not in (Op.CLEAR, Op.PURGE) and not entry.memory_id:
        raise InvalidInputError(f"a {entry.op.name} entry needs an id")
    if entry.op is Op.ADD and entry.category is None:
        raise InvalidInputError("an ADD entry needs a category")
    if entry.op is Op.REVECTOR and entry.vector is None:
        raise InvalidInputError("a REVECTOR entry needs a vector")
    if entry.vector is not None:
        vector = entry.vector
        if (
            not isinstance(vector, np.ndarray)
            or vector.ndim != 1
            or vector.shape[0] == 0
            or vector.shape[0] > 16000
            or not np.isfinite(vector).all()
        ):
            raise InvalidVectorError(
                "a vector must be a finite 1-D float32 array of 1 to 16000 dims"
            )
    if entry.op is Op.PENDING:
        try:
            json.loads(entry.text)
        except ValueError:
            raise InvalidInputError(f"job {entry.memory_id}: the payload is not JSON") from None


def _check_dim(write: _UserWrite, dim: int, *, replacing: bool) -> None:
    """One dim per user: a write that would mix dims fails (replacing the only live vector
    may change it)."""
    if write.dim and write.dim != dim and not (replacing and write.live <= 1):
        raise InvalidVectorError(f"vector has dim {dim}; this user's vectors have dim {write.dim}")
    write.dim = dim


def _filter_sql(where: Filter) -> sql.Composable:
    """The filter as SQL conditions (``AND ...``) with its values as literals."""
    parts: list[sql.Composable] = []
    if where.categories:
        codes = sorted(T.category_code(c) for c in where.categories)
        parts.append(sql.SQL("AND category = ANY({}::smallint[])").format(sql.Literal(codes)))
    if where.since_us is not None:
        parts.append(sql.SQL("AND created_us >= {}").format(sql.Literal(where.since_us)))
    if where.until_us is not None:
        parts.append(sql.SQL("AND created_us <= {}").format(sql.Literal(where.until_us)))
    for key, values in where.metadata:
        # jsonb equality is JSON equality: 1 = 1.0, true <> 1, arrays and objects by value.
        parts.append(
            sql.SQL("AND (metadata -> {}::text) = ANY({}::jsonb[])").format(
                sql.Literal(key), sql.Literal([Jsonb(v) for v in values])
            )
        )
    return sql.SQL(" ").join(parts)


def _memory(row: Sequence[Any]) -> Memory:
    return Memory(
        id=row[0],
        text=row[1],
        category=T.category_name(row[2]),
        created_at=T.from_timestamp_us(row[5]),
        updated_at=T.from_timestamp_us(row[6]),
        source=T.source_name(row[3]),
        metadata=row[4],
        user_id=row[7],
    )


def _vector_sql(vector: Vector) -> sql.Composable:
    """A finite float32 vector as a ``vector`` literal, rendered once (only digits, signs,
    dots and exponents: nothing to escape). Each float32 widens exactly to a double whose
    shortest repr parses back to the same float32."""
    return sql.SQL("'[" + ",".join(map(repr, vector.tolist())) + "]'::vector")


def _state_sql(user: sql.Composable) -> sql.Composable:
    return sql.SQL("SELECT seq, reset_seq FROM user_state WHERE user_id = {}").format(user)


def _state(rows: list[tuple[Any, ...]]) -> tuple[int, int]:
    return (int(rows[0][0]), int(rows[0][1] or 0)) if rows else (0, 0)


def _removed_sql(user: sql.Composable, since: int) -> sql.Composable:
    return sql.SQL(
        "SELECT label FROM removals WHERE user_id = {} AND seq > {} AND label <= {} ORDER BY label"
    ).format(user, since, since)


def _added_sql(user: sql.Composable, since: int, columns: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "SELECT {} FROM memories WHERE user_id = {} AND deleted_seq IS NULL AND label > {} "
        "ORDER BY label"
    ).format(columns, user, since)


def _total_sql(user: sql.Composable, condition: sql.Composable | None = None) -> sql.Composable:
    # avg() accumulates in double precision; the mean times the count is the sum.
    return sql.SQL(
        "SELECT avg(embedding), count(embedding) FROM memories "
        "WHERE user_id = {} AND deleted_seq IS NULL {}"
    ).format(user, condition or sql.SQL(""))


def _vector_total(rows: list[tuple[Any, ...]]) -> VectorTotal | None:
    if not rows or not rows[0][1]:
        return None
    count = int(rows[0][1])
    return np.asarray(rows[0][0], np.float64) * count, count, 0


def _vacuum(conn: psycopg.Connection[Any], statement: sql.Composed, tries: int = 3) -> None:
    """Run a VACUUM, again after a deadlock (with another host's CREATE INDEX CONCURRENTLY,
    which PostgreSQL broke by failing this side)."""
    for attempt in range(tries):
        try:
            conn.execute(statement)
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _table_bytes(conn: psycopg.Connection[Any], tables: Sequence[str]) -> int:
    row = conn.execute(
        "SELECT sum(pg_total_relation_size(to_regclass(t))) FROM unnest(%s::text[]) AS t",
        (list(tables),),
    ).fetchone()
    return int(row[0] or 0) if row else 0
