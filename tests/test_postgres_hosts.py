"""Several hosts on one PostgreSQL store, and the server going away under load.

Real processes stand in for hosts, on a real PostgreSQL server (tests/pg_fixture.py). The
restart test runs on a server of its own (the session's server is never stopped), stopped
as a crash (``pg_ctl -m immediate``) in the middle of a load of writes and searches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from store_helpers import HashEmbedder

from headroom.memory.errors import PostgresUnavailableError
from headroom.memory.store.postgres import PostgresBackend
from headroom.memory.store.store import MemoryStore
from tests import pg_fixture

pg_server = pg_fixture.pg_server
pg_url = pg_fixture.pg_url

REPO = Path(__file__).resolve().parent.parent

HOST = """
import sys
from store_helpers import HashEmbedder
from headroom.memory.store.store import MemoryStore

url, name, count, hosts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = MemoryStore(url, embedder=HashEmbedder(dim=32))
print("ready", flush=True)
sys.stdin.readline()  # every host starts writing at once
for i in range(count):
    text = f"{name} wrote fact {i}"
    memory = store.add("shared", text)
    hits = store.search("shared", text, top_k=1)
    assert hits and hits[0][0].id == memory.id, (text, hits)  # its own write, at once
print("wrote", flush=True)
sys.stdin.readline()  # every host has written
texts = {m.text for m in store.get_all("shared")}
expected = {f"host{h} wrote fact {i}" for h in range(hosts) for i in range(count)}
assert texts == expected, sorted(expected ^ texts)
for h in range(hosts):  # the other hosts' writes are found by meaning and by words
    text = f"host{h} wrote fact {count - 1}"
    assert store.search("shared", text, top_k=1)[0][0].text == text
    assert store.search("shared", text, top_k=1, hybrid=False)[0][0].text == text
print("seen", flush=True)
"""


def test_hosts_writing_and_searching_one_user_see_each_other_and_lose_nothing(
    pg_url: str,
) -> None:
    hosts, count = 4, 25
    MemoryStore(pg_url, embedder=HashEmbedder(dim=32)).close()  # the schema, once
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", HOST, pg_url, f"host{h}", str(count), str(hosts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for h in range(hosts)
    ]
    try:
        for step in ("ready", "wrote", "seen"):
            for child in children:
                assert child.stdout is not None
                line = child.stdout.readline().strip()
                assert line == step, f"a host failed before {step!r} (exit {child.wait()})"
            for child in children:
                if step != "seen":
                    assert child.stdin is not None
                    child.stdin.write("go\n")
                    child.stdin.flush()
        for child in children:
            assert child.wait(timeout=60) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    store = MemoryStore(pg_url, embedder=HashEmbedder(dim=32))
    memories = store.get_all("shared")
    assert len(memories) == hosts * count == len({m.id for m in memories})
    assert store.stats("shared")["total_memories"] == hosts * count
    store.close()


@dataclass
class Load:
    """What one thread of the load saw."""

    written: list[str] = field(default_factory=list)  # texts whose add returned
    failed: list[BaseException] = field(default_factory=list)
    ok_after_restart: int = 0
    longest_call_s: float = 0.0


def run_load(store: MemoryStore, name: str, load: Load, stop: threading.Event,
             restarted: threading.Event) -> None:  # fmt: skip
    i = 0
    while not stop.is_set():
        text = f"{name} fact {i}"
        i += 1
        started = time.monotonic()
        try:
            store.add("u", text)
            load.written.append(text)
            store.search("u", text, top_k=3)
            if restarted.is_set():
                load.ok_after_restart += 1
        except Exception as exc:  # every failure is recorded and checked below
            load.failed.append(exc)
            time.sleep(0.05)
        load.longest_call_s = max(load.longest_call_s, time.monotonic() - started)


def test_a_server_restart_mid_load_fails_calls_typed_and_loses_nothing() -> None:
    server = pg_fixture.start_private()
    try:
        url = server.new_database(prefix="restart")
        backend = PostgresBackend(url, pool_size=4, connect_timeout=2)
        store = MemoryStore(url, embedder=HashEmbedder(dim=32), backend=backend)
        stop, restarted = threading.Event(), threading.Event()
        loads = [Load() for _ in range(3)]
        threads = [
            threading.Thread(target=run_load, args=(store, f"t{n}", load, stop, restarted))
            for n, load in enumerate(loads)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while min(len(load.written) for load in loads) < 10:
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.05)
        server.stop_postgres("immediate")  # a crash: no clean shutdown
        down = sum(len(load.failed) for load in loads)
        outage_end = time.monotonic() + 60
        while sum(len(load.failed) for load in loads) < down + 3:
            assert time.monotonic() < outage_end, "no call failed while the server was down"
            time.sleep(0.05)
        with_outage = {n: len(load.written) for n, load in enumerate(loads)}
        server.start_postgres()
        restarted.set()
        deadline = time.monotonic() + 90
        while min(load.ok_after_restart for load in loads) < 10:
            assert time.monotonic() < deadline, "the store did not come back after the restart"
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()

        errors = [exc for load in loads for exc in load.failed]
        assert errors and all(isinstance(exc, PostgresUnavailableError) for exc in errors), {
            type(exc).__name__ for exc in errors
        }
        # Never a hang: each call ended within the pool's timeout (2 s) and a margin.
        assert max(load.longest_call_s for load in loads) < 30
        # Writes went on after the restart, and everything acknowledged is there.
        assert all(len(load.written) > with_outage[n] for n, load in enumerate(loads))
        stored = {m.text for m in store.get_all("u")}
        acknowledged = {text for load in loads for text in load.written}
        assert acknowledged <= stored
        assert store.backend.verify()["ok"]
        store.close()
    finally:
        server.stop()
