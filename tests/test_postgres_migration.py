"""Moving a store between the embedded backend and PostgreSQL with the command line, both
ways: ``headroom-memory export --vectors`` piped into ``headroom-memory import --db URL`` is an
exact round trip (ids, texts, times, sources, metadata, history and vectors), and the moved
store answers searches as the original does. Real MiniLM, a real PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import pg_fixture
from tests.pg_fixture import PgTestServer

pg_server = pg_fixture.pg_server


def _cli(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "headroom.memory.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def _records(text: str) -> list[dict[str, object]]:
    return sorted((json.loads(line) for line in text.splitlines()), key=lambda r: str(r["id"]))


def test_export_import_moves_a_store_both_ways_exactly(
    tmp_path: Path, pg_server: PgTestServer
) -> None:
    local, back = str(tmp_path / "local.db"), str(tmp_path / "back.db")
    url = pg_server.new_database(prefix="migrate")
    _cli("add", "--db", local, "--user", "alice", "User prefers PostgreSQL for new projects")
    _cli("add", "--db", local, "--user", "alice", "User lives in Porto", "--category", "context")
    _cli("add", "--db", local, "--user", "bob", "User plays the cello", "--metadata", '{"k": 1}')
    original = _cli("export", "--db", local, "--vectors")
    assert len(_records(original)) == 3

    _cli("import", "--db", url, stdin=original)  # one command each way: export | import
    on_postgres = _cli("export", "--db", url, "--vectors")
    assert _records(on_postgres) == _records(original)

    _cli("import", "--db", back, stdin=on_postgres)
    assert _records(_cli("export", "--db", back, "--vectors")) == _records(original)

    for db in (local, url, back):
        hits = json.loads(
            _cli("search", "--db", db, "--user", "alice", "database preference", "--json")
        )
        assert hits[0]["text"] == "User prefers PostgreSQL for new projects"
