"""The PostgreSQL schema of the server backend, as numbered migrations.

Migration ``n`` takes a database from schema version ``n - 1`` to ``n``; ``meta`` records the
version reached. :func:`migrate` applies what is missing in one transaction that holds a
transaction-level advisory lock, so any number of processes may start at once: the first one
migrates, the others wait for its commit and then find nothing to do. A transaction-level
lock (never a session one) is also what works behind PgBouncer in transaction mode.

Every table that holds a user's data leads its keys with ``user_id`` (so the tables can be
distributed by it) and has row-level security ENABLEd and FORCEd (the owner is subject to it
too): a statement sees a row only when the transaction set ``app.user_id`` to the row's user
(``set_config('app.user_id', ..., true)``), or set ``app.scope`` to ``all`` for the few
cross-user reads the backend makes on purpose (users(), pending() of every user, the
candidates of a job claim across users, stats(), compact()). A statement with neither
setting sees no rows: isolation fails closed. Inserts and updates always need the user
setting (``WITH CHECK``); deletes under ``app.scope = all`` do not (compact). The role
that runs the library must not be a superuser or have BYPASSRLS: those skip row-level
security, and the backend refuses to open with one.

docs/postgres.md describes the tables and what each column holds.
"""

from __future__ import annotations

from typing import Any

from ...errors import PostgresSetupError, StoreVersionError

#: Key of the transaction-level advisory lock held while migrating (a fixed bigint: the
#: ASCII bytes of "headroom").
MIGRATION_LOCK = 0x68656164726F6F6D

#: The policy every user-scoped table gets. ``current_setting(..., true)`` is NULL when the
#: setting was never made in the session and '' once a transaction that made it has ended:
#: neither equals a user id (user ids are never empty: the tables CHECK it).
_USER_MATCH = "user_id = current_setting('app.user_id', true)"
_ALL_SCOPE = "current_setting('app.scope', true) = 'all'"


def _rls(table: str) -> list[str]:
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_user ON {table} "
        f"USING ({_USER_MATCH} OR {_ALL_SCOPE}) WITH CHECK ({_USER_MATCH})",
    ]


#: Changed rows (besides 1% of the table) after which autovacuum analyzes the big tables.
ANALYZE_ROWS = 1000

#: Migration n (1-based) is MIGRATIONS[n - 1]: a list of statements run in order.
MIGRATIONS: list[list[str]] = [
    # 1: the tables, their indexes and their row-level security.
    [
        # Store-level settings written through Entry.config (the store's embedding model).
        """CREATE TABLE config (
            key text PRIMARY KEY,
            value text NOT NULL,
            seq bigint NOT NULL
        )""",
        # Every entry gets the next number: labels of live versions and the change feed's
        # positions. A sequence never goes back, even across failed transactions.
        "CREATE SEQUENCE entry_seq AS bigint MINVALUE 1",
        # One row per user with any state: the user's seq (newest entry that touched them),
        # the seq from which their change feed is complete (a whole-user PURGE drops the row;
        # the next write starts a new one), live memories and the dim of their live vectors.
        # Appends lock the rows of the users they touch, so one user's writes commit in the
        # order of their seqs.
        """CREATE TABLE user_state (
            user_id text PRIMARY KEY CHECK (user_id <> ''),
            seq bigint NOT NULL DEFAULT 0,
            reset_seq bigint,
            live integer NOT NULL DEFAULT 0,
            dim integer NOT NULL DEFAULT 0
        )""",
        # The current state of every known memory, live or soft-deleted (deleted_seq set).
        # label: seq of the live version (UPDATE and REVECTOR give a new one); first_seq: seq
        # of the ADD (creation order); times in microseconds since the Unix epoch (the
        # protocol's unit, exact). embedding has no fixed dim: the store's dim is known at its
        # first write and may change through a re-embedding; the backend keeps one dim per
        # user, and an ANN index over it would be built on a cast to a fixed dim.
        """CREATE TABLE memories (
            user_id text NOT NULL CHECK (user_id <> ''),
            id text NOT NULL,
            label bigint NOT NULL,
            first_seq bigint NOT NULL,
            version integer NOT NULL,
            text text NOT NULL,
            category smallint NOT NULL,
            source smallint NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}',
            created_us bigint NOT NULL,
            updated_us bigint NOT NULL,
            model text NOT NULL DEFAULT '',
            embedding vector,
            deleted_seq bigint,
            PRIMARY KEY (user_id, id)
        )""",
        "CREATE INDEX memories_live ON memories (user_id, first_seq) WHERE deleted_seq IS NULL",
        "CREATE INDEX memories_label ON memories (user_id, label) WHERE deleted_seq IS NULL",
        # History: one row per ADD / UPDATE / DELETE / CLEAR (REVECTOR is not a version). A
        # DELETE or CLEAR row repeats the content of the version it deleted.
        """CREATE TABLE memory_versions (
            user_id text NOT NULL CHECK (user_id <> ''),
            memory_id text NOT NULL,
            seq bigint NOT NULL,
            op smallint NOT NULL,
            version integer NOT NULL,
            text text NOT NULL,
            category smallint NOT NULL,
            source smallint NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}',
            at_us bigint NOT NULL,
            PRIMARY KEY (user_id, memory_id, seq)
        )""",
        # The change feed's removals: label was live and stopped being live at seq. Numbers
        # only: no id, text or vector (a single-memory PURGE leaves its removed label here so
        # other processes' caches learn of it; a whole-user PURGE deletes the user's rows).
        """CREATE TABLE removals (
            user_id text NOT NULL CHECK (user_id <> ''),
            seq bigint NOT NULL,
            label bigint NOT NULL,
            PRIMARY KEY (user_id, seq, label)
        )""",
        # Durable background jobs; payload is the JSON text as written.
        """CREATE TABLE jobs (
            user_id text NOT NULL CHECK (user_id <> ''),
            id text NOT NULL,
            payload text NOT NULL,
            created_us bigint NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (user_id, id)
        )""",
        "CREATE INDEX jobs_seq ON jobs (seq)",
        *_rls("user_state"),
        *_rls("memories"),
        *_rls("memory_versions"),
        *_rls("removals"),
        *_rls("jobs"),
    ],
    # 2: claims of background jobs. A worker claims a job by setting a new token and a lease
    # end (server clock, µs); completing deletes the job only while the token is still its
    # own. A killed worker's job is claimable again once claimed_until has passed.
    [
        "ALTER TABLE jobs ADD COLUMN claim_token text, ADD COLUMN claimed_by text, "
        "ADD COLUMN claimed_until bigint",
    ],
    # 3: how many rows of the change feed's removals each user has (counted from here on),
    # so appends keep the feed bounded (the oldest go, and reset_seq moves past them).
    ["ALTER TABLE user_state ADD COLUMN removals integer NOT NULL DEFAULT 0"],
    # 4: planner statistics that follow growth. The default autovacuum analyzes a table once
    # 20% of it changed: one new user of 10k memories in a table of millions never gets
    # there, and the planner keeps guessing that user's row counts. These tables are
    # analyzed after ANALYZE_ROWS changed rows plus 1% of the table (a bulk load analyzes
    # at its end: backend.bulk_load).
    [
        f"ALTER TABLE {table} SET (autovacuum_analyze_scale_factor = 0.01, "
        f"autovacuum_analyze_threshold = {ANALYZE_ROWS})"
        for table in ("memories", "memory_versions", "removals")
    ],
]

#: The schema version this library writes and reads.
SCHEMA_VERSION = len(MIGRATIONS)


def _ensure_extension(conn: Any) -> None:
    """Install pgvector in the database if it is missing, or raise PostgresSetupError.

    Runs inside the migration transaction (under its lock), the attempt in a savepoint.
    """
    import psycopg

    found = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
    if found is not None:
        return
    database, role = conn.execute("SELECT current_database(), current_user").fetchone()
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    if available is None:
        raise PostgresSetupError(
            f"the PostgreSQL server has no pgvector extension: install pgvector (0.8.4 or "
            f"newer) on the server, then run as a superuser in database {database!r}: "
            f"CREATE EXTENSION IF NOT EXISTS vector;"
        )
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege:
        raise PostgresSetupError(
            f"the pgvector extension is not installed in database {database!r} and role "
            f"{role!r} may not install it; run as a superuser in database {database!r}: "
            f"CREATE EXTENSION IF NOT EXISTS vector;"
        ) from None


def schema_version(conn: Any) -> int:
    """The schema version of the database (0: no store schema)."""
    exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: Any, *, create: bool) -> int:
    """Bring the database's schema to :data:`SCHEMA_VERSION`; returns the version it had.

    ``conn`` is a psycopg connection in autocommit mode; everything happens in one
    transaction holding :data:`MIGRATION_LOCK`. With ``create`` False a database without the
    schema is left alone and 0 is returned (the caller raises). Raises StoreVersionError for
    a schema newer than this library, PostgresSetupError when pgvector is missing and this
    role may not install it.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the database has schema version {found}; this library reads up to "
                f"{SCHEMA_VERSION}: upgrade headroom-memory"
            )
        if found == 0 and not create:
            return 0
        _ensure_extension(conn)
        if found == 0:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text)")
        for number in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(number),),
            )
        return found
