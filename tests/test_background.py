"""with_memory: durable extraction jobs, one user per extraction call, retries, restarts.

Real openai SDK over real HTTP to tests/openai_server.py; the crash test kills a real child
process with SIGKILL while its jobs are pending and resumes them in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import Reply, ScriptedServer
from store_helpers import HashEmbedder

from headroom.memory import MemoryEvent, MemoryStore, with_memory
from headroom.memory.client.background import EXTRACTION_PROMPT, close_all
from headroom.memory.errors import InvalidInputError
from headroom.memory.protocol.block import MEMORY_INSTRUCTION

REPO = Path(__file__).resolve().parent.parent
EMBEDDER = HashEmbedder(dim=32)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s
    close_all()  # no worker thread outlives its test


def test_close_all_stops_workers_and_keeps_jobs(server: ScriptedServer, tmp_path: Path) -> None:
    extractor = Extractor()
    extractor.failing = True
    server.responder = extractor
    client = wrap(client_for(server), tmp_path)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "keep me"}])
    worker = client._core.worker
    close_all()
    assert worker._thread is None or not worker._thread.is_alive()
    assert len(MemoryStore.open(tmp_path / "memory.db").pending()) == 1
    extractor.failing = False
    again = wrap(client_for(server), tmp_path)  # a new worker resumes the job
    assert again._core.worker is not worker
    assert again.flush(timeout=30)
    assert [m.text for m in again.memory.get_all()] == ["User said keep me"]


def is_extraction(body: dict[str, Any]) -> bool:
    return bool(body["messages"]) and body["messages"][0].get("content") == EXTRACTION_PROMPT


def extraction_turn(body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation an extraction request carries (the JSON after its header line)."""
    content = str(body["messages"][-1]["content"])
    return list(json.loads(content.split("\n", 1)[1]))


class Extractor:
    """Responder: chat answers "answer: <text>"; extractions fail or remember the user text."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self, body: dict[str, Any]) -> Reply:
        if not is_extraction(body):
            return Reply(f"answer: {body['messages'][-1]['content']}")
        if self.failing:
            return Reply(status=500, error_message="extraction model is down")
        said = [m["content"] for m in extraction_turn(body) if m["role"] == "user"]
        adds = [{"text": f"User said {text}", "category": "fact"} for text in said]
        return Reply(f"<memory>{json.dumps({'add': adds})}</memory>")


def wrap(client: Any, path: Path, user: str = "alice", **options: Any) -> Any:
    options.setdefault("embedder", EMBEDDER)
    options.setdefault("min_score", -1.0)
    options.setdefault("retry_base", 0.05)
    return with_memory(client, user_id=user, db_path=path / "memory.db", **options)


def client_for(server: ScriptedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def test_response_untouched_and_memory_extracted_later(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.responder = Extractor()
    events: list[MemoryEvent] = []
    client = wrap(client_for(server), tmp_path, observer=events.append)
    client.memory.add("User prefers Python")
    result = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "I work at a fintech startup"}]
    )
    assert result.choices[0].message.content == "answer: I work at a fintech startup"
    chat = server.chat_requests()[0]
    assert MEMORY_INSTRUCTION not in json.dumps(chat)  # no inline block is asked for
    assert "User prefers Python" in json.dumps(chat["messages"][0])  # memories are injected
    assert client.flush(timeout=30)
    extraction = [b for b in server.chat_requests() if is_extraction(b)]
    assert len(extraction) == 1
    assert extraction[0]["model"] == "chat-model"  # default: the model of the call
    assert extraction_turn(extraction[0]) == [
        {"role": "user", "content": "I work at a fintech startup"},
        {"role": "assistant", "content": "answer: I work at a fintech startup"},
    ]
    memories = {m.text: m for m in client.memory.get_all()}
    assert set(memories) == {"User prefers Python", "User said I work at a fintech startup"}
    assert memories["User said I work at a fintech startup"].source == "background"
    assert MemoryStore.open(tmp_path / "memory.db").pending() == []
    assert len(events) == 2  # queued (by the call) and extracted (by the worker), any order
    [queued] = [e for e in events if e.ops.is_empty()]
    [extracted] = [e for e in events if not e.ops.is_empty()]
    assert queued.kind == extracted.kind == "background"
    assert [m.text for _, m, _ in queued.injected] == ["User prefers Python"]
    assert queued.ops.is_empty()
    assert [a.text for a in extracted.ops.add] == ["User said I work at a fintech startup"]


def test_llm_error_leaves_job_pending_then_retried(server: ScriptedServer, tmp_path: Path) -> None:
    extractor = Extractor()
    extractor.failing = True
    server.responder = extractor
    client = wrap(client_for(server), tmp_path, extraction_model="small-model")
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "I use vim"}])
    store = MemoryStore.open(tmp_path / "memory.db")
    assert len(store.pending()) == 1  # recorded before the response returned
    assert client.flush(timeout=30) is False
    [job] = store.pending()
    assert job.user_id == "alice"
    assert client.memory.get_all() == []
    assert client.flush(timeout=30) is False  # retried, failed again, still kept
    assert [j.id for j in store.pending()] == [job.id]
    extractor.failing = False
    assert client.flush(timeout=30)
    assert store.pending() == []
    assert [m.text for m in client.memory.get_all()] == ["User said I use vim"]
    models = {b["model"] for b in server.chat_requests() if is_extraction(b)}
    assert models == {"small-model"}


def test_one_user_per_extraction_call(server: ScriptedServer, tmp_path: Path) -> None:
    server.responder = Extractor()
    base = client_for(server)
    alice, bob = wrap(base, tmp_path, "alice"), wrap(base, tmp_path, "bob")
    for turn in range(3):
        alice.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"alice {turn}"}]
        )
        bob.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"bob {turn}"}]
        )
    assert alice.flush(timeout=30) and bob.flush(timeout=30)
    extractions = [b for b in server.chat_requests() if is_extraction(b)]
    assert len(extractions) == 6
    for body in extractions:
        text = json.dumps(body)
        assert ("alice" in text) != ("bob" in text)
    assert {m.text for m in alice.memory.get_all()} == {f"User said alice {t}" for t in range(3)}
    assert {m.text for m in bob.memory.get_all()} == {f"User said bob {t}" for t in range(3)}


def test_async_client_streamed(server: ScriptedServer, tmp_path: Path) -> None:
    server.responder = Extractor()
    base = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    client = wrap(base, tmp_path)

    async def run() -> str:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "I like jazz"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert await client.aflush(timeout=30)
        return text

    assert asyncio.run(run()) == "answer: I like jazz"
    assert [m.text for m in client.memory.sync.get_all()] == ["User said I like jazz"]


CHILD = """
import sys, time
import openai
from store_helpers import HashEmbedder
from headroom.memory import with_memory

base_url, db = sys.argv[1], sys.argv[2]
client = with_memory(
    openai.OpenAI(base_url=base_url, api_key="test", max_retries=0), user_id="alice",
    db_path=db, embedder=HashEmbedder(dim=32), retry_base=0.05,
)
for i in range(3):
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"topic {i}"}])
print("ready", flush=True)
time.sleep(120)
"""


def test_sigkill_with_pending_jobs_then_resume(server: ScriptedServer, tmp_path: Path) -> None:
    extractor = Extractor()
    extractor.failing = True
    server.responder = extractor
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.base_url, str(tmp_path / "memory.db")],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # Let the child's worker fail at least one extraction before the kill.
        deadline = time.monotonic() + 60
        while not any(is_extraction(b) for b in server.chat_requests()):
            assert time.monotonic() < deadline, "the child never tried an extraction"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    extractor.failing = False
    client = wrap(client_for(server), tmp_path)  # resumes what the dead process left
    assert client.flush(timeout=30)
    assert {m.text for m in client.memory.get_all()} == {f"User said topic {i}" for i in range(3)}
    assert MemoryStore.open(tmp_path / "memory.db").pending() == []


def test_forget_cancels_queued_extractions(server: ScriptedServer, tmp_path: Path) -> None:
    extractor = Extractor()
    extractor.failing = True
    server.responder = extractor
    client = wrap(client_for(server), tmp_path)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "secret"}])
    assert client.flush(timeout=30) is False
    client.memory.forget()  # hard delete of the user: their pending jobs go too
    extractor.failing = False
    assert client.flush(timeout=30)
    assert client.memory.get_all() == []
    assert MemoryStore.open(tmp_path / "memory.db").pending() == []


def test_lease_and_poll_options_reach_the_worker_and_an_idle_worker_polls(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """``lease_s`` / ``poll_s`` of ``with_memory``: the worker's claim lasts ``lease_s`` and an
    idle worker finds a job another process queued after it started (no flush)."""
    server.responder = Extractor()
    client = wrap(client_for(server), tmp_path, lease_s=7.5, poll_s=0.05)
    worker = client._core.worker
    assert (worker.lease_s, worker.poll_s) == (7.5, 0.05)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    enqueue = (
        "import sys\n"
        "from headroom.memory import MemoryStore\n"
        "from headroom.memory.client.background import make_payload\n"
        "from store_helpers import HashEmbedder\n"
        "store = MemoryStore.open(sys.argv[1], embedder=HashEmbedder(dim=32))\n"
        "store.enqueue('alice', make_payload([{'role': 'user', 'content': 'late'}], 'm'))\n"
        "store.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", enqueue, str(tmp_path / "memory.db")], env=env, check=True
    )
    deadline = time.monotonic() + 60
    while [m.text for m in client.memory.get_all()] != ["User said late"]:
        assert time.monotonic() < deadline, "the idle worker never ran the other process's job"
        time.sleep(0.05)
    claims = [b for b in server.chat_requests() if is_extraction(b)]
    assert len(claims) == 1


@pytest.mark.parametrize(
    ("name", "value"), [("lease_s", 0), ("poll_s", -1.0), ("lease_s", "60"), ("poll_s", True)]
)
def test_bad_lease_and_poll_are_refused(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=name):
        wrap(
            openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1"), tmp_path, **{name: value}
        )
