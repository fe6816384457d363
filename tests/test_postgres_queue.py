"""with_memory's extraction queue shared by several worker processes on one PostgreSQL store.

Real processes (standing in for hosts), a real PostgreSQL server (tests/pg_fixture.py), the
real openai SDK over real HTTP to tests/openai_server.py. Each job is applied exactly once
(its memory text carries the number of the extraction request that produced it, so a job
applied twice would leave two memories); a worker SIGKILLed while its LLM call is blocked on
the scripted server leaves its job to another worker, which takes it over after the lease.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server import Reply, ScriptedServer
from store_helpers import HashEmbedder

from headroom.memory.client.background import EXTRACTION_PROMPT, make_payload
from headroom.memory.store.store import MemoryStore
from tests import pg_fixture
from tests.pg_fixture import PgTestServer

pg_server = pg_fixture.pg_server
pg_url = pg_fixture.pg_url

REPO = Path(__file__).resolve().parent.parent
LEASE_S = 3.0

WORKER = """
import sys, time
import openai
from store_helpers import HashEmbedder
from headroom.memory.client.background import worker_for
from headroom.memory.store.store import MemoryStore

url, base_url, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = MemoryStore.open(url, embedder=HashEmbedder(dim=32))
worker = worker_for(store, lease_s=lease, poll_s=0.2, retry_base=0.05)
worker.register("any", openai.OpenAI(base_url=base_url, api_key="test", max_retries=0))
print("ready", flush=True)
time.sleep(600)
"""


class Extractor:
    """Remembers what the user said, numbered by request; blocks the first request of the
    turn ``hold`` until ``release`` is set (the worker making it is killed meanwhile)."""

    def __init__(self, hold: str) -> None:
        self.hold = hold
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.turns: list[str] = []

    def __call__(self, body: dict[str, Any]) -> Reply:
        assert body["messages"][0]["content"] == EXTRACTION_PROMPT
        turn = json.loads(str(body["messages"][-1]["content"]).split("\n", 1)[1])
        said = turn[0]["content"]
        with self.lock:
            self.turns.append(said)
            number = len(self.turns)
            first_of_held = said == self.hold and not self.held.is_set()
            if first_of_held:
                self.held.set()
        if first_of_held:
            self.release.wait(60)
        add = {"text": f"User said {said} #{number}", "category": "fact"}
        return Reply(f"<memory>{json.dumps({'add': [add]})}</memory>")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


def start_workers(count: int, url: str, base_url: str) -> list[subprocess.Popen[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, base_url, str(LEASE_S)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(count)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    return workers


def holder_pid(pg_server: PgTestServer, url: str, job_id: str) -> int:
    """The process holding the job's claim, from ``claimed_by`` (host:pid:worker)."""
    database = url.split("@/", 1)[1].split("?", 1)[0]
    with pg_server.admin(database) as conn:
        row = conn.execute("SELECT claimed_by FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None and row[0], "the held job is not claimed"
    return int(str(row[0]).split(":")[1])


def test_several_workers_do_each_job_exactly_once_and_take_over_a_killed_ones(
    server: ScriptedServer, pg_server: PgTestServer, pg_url: str
) -> None:
    extractor = Extractor(hold="u1 turn 2")
    server.responder = extractor
    store = MemoryStore(pg_url, embedder=HashEmbedder(dim=32))
    jobs: dict[str, str] = {}  # job id -> what the user said
    for turn in range(4):
        for user in ("u0", "u1", "u2"):
            said = f"{user} turn {turn}"
            messages = [{"role": "user", "content": said}, {"role": "assistant", "content": "ok"}]
            jobs[store.enqueue(user, make_payload(messages, "m"))] = said
    [victim] = [job for job, said in jobs.items() if said == extractor.hold]

    workers = start_workers(3, pg_url, server.base_url)
    try:
        assert extractor.held.wait(60), "no worker took the held job"
        pid = holder_pid(pg_server, pg_url, victim)
        [doomed] = [w for w in workers if w.pid == pid]
        doomed.send_signal(signal.SIGKILL)  # mid-job: its LLM call is blocked right now
        doomed.wait()
        extractor.release.set()
        deadline = time.monotonic() + 120
        while store.pending():
            assert time.monotonic() < deadline, f"jobs left: {store.pending()}"
            assert all(w.poll() is None for w in workers if w is not doomed)
            time.sleep(0.1)
    finally:
        extractor.release.set()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
            worker.wait()

    assert doomed.returncode == -signal.SIGKILL
    applied: dict[str, list[int]] = {}
    for user in ("u0", "u1", "u2"):
        for memory in store.get_all(user):
            match = re.fullmatch(r"User said (.+) #(\d+)", memory.text)
            assert match is not None and match.group(1).startswith(user)
            applied.setdefault(match.group(1), []).append(int(match.group(2)))
    assert sorted(applied) == sorted(jobs.values())  # nothing lost
    assert all(len(numbers) == 1 for numbers in applied.values()), applied  # nothing twice
    # The killed worker's call was made and never applied; another worker's call was.
    assert extractor.turns.count(extractor.hold) >= 2
    assert applied[extractor.hold][0] > extractor.turns.index(extractor.hold) + 1
    store.close()


def test_a_call_longer_than_the_lease_keeps_its_job(server: ScriptedServer, pg_url: str) -> None:
    import openai

    from headroom.memory.client.background import ExtractionWorker

    def slow(body: dict[str, Any]) -> Reply:
        time.sleep(2.5)  # four leases of 0.6 s
        add = {"text": "User said a slow thing", "category": "fact"}
        return Reply(f"<memory>{json.dumps({'add': [add]})}</memory>")

    server.responder = slow
    store = MemoryStore(pg_url, embedder=HashEmbedder(dim=32))
    worker = ExtractionWorker(store, lease_s=0.6, poll_s=60)
    try:
        messages = [{"role": "user", "content": "a slow thing"}]
        job = store.enqueue("u", make_payload(messages, "m"))
        worker.register("u", openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
        worker.resume()
        stolen = []
        deadline = time.monotonic() + 60
        while not server.chat_requests():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while store.pending():  # another worker trying all along never gets it
            assert time.monotonic() < deadline
            claim = store.claim("u", worker="thief", lease_s=60, job_id=job)
            if claim is not None:
                stolen.append(claim)
                store.release(claim)
            time.sleep(0.05)
        assert stolen == []
        assert worker.flush(timeout=30)
        assert [m.text for m in store.get_all("u")] == ["User said a slow thing"]
        assert len(server.chat_requests()) == 1
    finally:
        worker.close()
        store.close()
