"""StoreFailedError driven through MemoryStore and through the wrapper, by the compiled I/O
layer's fault hook (``Log._set_fault``, reached only through ``store_helpers.native_log``).

A failed write or fsync fails the store: the failing write raises StoreFailedError, every later
write is refused with it, reads keep working, nothing half-written is visible (now or after a
reopen) and what was acknowledged before survives. The wrapper's call still returns the clean
answer when storing its memories fails.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_server import ScriptedServer, memory_reply
from store_helpers import HashEmbedder, native_log

from headroom.memory import MemoryEvent, MemoryStore, with_fast_memory
from headroom.memory.client.background import close_all
from headroom.memory.errors import StoreFailedError
from headroom.memory.store.store import NewMemory

ACKED = ["User keeps bees on the roof", "User plays the oboe"]
#: Long enough that half of its record holds a good part of the text.
DOOMED = "User collects Zanzibar stamps " * 12


def _segment_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db.glob("*.log")))


def _refuses_every_write(store: MemoryStore, kept_id: str) -> None:
    writes = [
        lambda: store.add("u", "refused add"),
        lambda: store.add_many("u", [NewMemory("refused batch")]),
        lambda: store.update("u", kept_id, "refused update"),
        lambda: store.delete("u", kept_id),
        lambda: store.apply("u", deletes=[kept_id]),
        lambda: store.enqueue("u", {"n": 1}),
    ]
    for write in writes:
        with pytest.raises(StoreFailedError):
            write()


@pytest.mark.parametrize(
    ("fault", "sync", "err"),
    [
        ("write", "always", errno.ENOSPC),
        ("write", "off", errno.EIO),
        ("fsync", "always", errno.EIO),
    ],
)
def test_a_failed_write_fails_the_store_and_leaves_nothing_half_written(
    tmp_path: Path, fault: str, sync: str, err: int
) -> None:
    db = tmp_path / "db"
    store = MemoryStore(db, embedder=HashEmbedder(), sync=sync)
    kept = [store.add("u", text) for text in ACKED]
    store.flush()
    native_log(store)._set_fault(fault, 1, err)
    with pytest.raises(StoreFailedError, match=f"errno {err}"):
        store.add_many("u", [NewMemory(DOOMED), NewMemory("User owns a red kayak")])
    _refuses_every_write(store, kept[0].id)
    # Reads go on and never show the failed batch.
    assert [m.text for m in store.get_all("u")] == ACKED
    assert {m.text for m, _ in store.search("u", "Zanzibar stamps kayak", top_k=10)} == set(ACKED)
    assert store.get("u", kept[1].id) == kept[1]
    with pytest.raises(StoreFailedError):
        store.flush()  # nothing acknowledged may be claimed durable by a failed store
    store.close()
    assert b"Zanzibar" not in _segment_bytes(db)  # the partial record was cut off
    with MemoryStore(db, embedder=HashEmbedder()) as again:
        assert again.get_all("u") == kept
        report = again.verify()
        assert report["ok"] and report["recovered_torn_tail_bytes"] == 0
        # A reopened store writes again.
        fresh = again.add("u", "User repaired the disk")
        assert [m.id for m in again.get_all("u")] == [kept[0].id, kept[1].id, fresh.id]


def test_a_torn_record_left_by_a_failed_cleanup_is_truncated_at_reopen(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = MemoryStore(db, embedder=HashEmbedder(), sync="always")
    kept = [store.add("u", text) for text in ACKED]
    size = sum(p.stat().st_size for p in db.glob("*.log"))
    log = native_log(store)
    log._set_fault("truncate", 1, errno.EIO)  # cutting the partial write off fails too
    log._set_fault("write", 1, errno.ENOSPC)  # the write puts half its bytes down, then fails
    with pytest.raises(StoreFailedError):
        store.add("u", DOOMED)
    torn = sum(p.stat().st_size for p in db.glob("*.log")) - size
    assert torn > 0 and b"Zanzibar" in _segment_bytes(db)  # half a record is on disk
    assert [m.text for m in store.get_all("u")] == ACKED  # and invisible
    with pytest.raises(StoreFailedError):
        store.add("u", "refused")
    store.close()
    with MemoryStore(db, embedder=HashEmbedder()) as again:
        assert again.get_all("u") == kept
        assert again.verify()["recovered_torn_tail_bytes"] == torn
        assert b"Zanzibar" not in _segment_bytes(db)  # the torn tail was truncated away
        again.add("u", "User repaired the disk")
    with MemoryStore(db, embedder=HashEmbedder()) as third:
        assert [m.text for m in third.get_all("u")] == [*ACKED, "User repaired the disk"]
        assert third.verify()["ok"]


# --- through the wrapper -------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s
    close_all()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_call_returns_the_clean_answer_when_storing_its_memories_fails(
    server: ScriptedServer, tmp_path: Path, stream: bool
) -> None:
    db = tmp_path / "memory.db"
    events: list[MemoryEvent] = []
    base = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    client = with_fast_memory(
        base,
        user_id="alice",
        db_path=db,
        embedder=HashEmbedder(dim=32),
        min_score=-1.0,
        sync="always",
        observer=events.append,
    )
    client.memory.add("User prefers Python", category="preference")
    store = MemoryStore.open(db)  # the wrapper's own store (one per path per process)
    native_log(store)._set_fault("write", 1, errno.ENOSPC)
    messages = [{"role": "user", "content": "Which language?"}]
    server.push(memory_reply("Use Python.", DOOMED), memory_reply("Still Python.", "User is 40"))

    def ask() -> str:
        if stream:
            chunks = client.chat.completions.create(model="m", messages=messages, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return str(
            client.chat.completions.create(model="m", messages=messages).choices[0].message.content
        )

    assert ask() == "Use Python."
    assert client.flush(timeout=30)
    assert isinstance(events[-1].error, StoreFailedError)
    assert [op.text for op in events[-1].ops.add] == [DOOMED.strip()]
    # The store is failed now: the next call still answers, clean, with memories injected.
    assert ask() == "Still Python."
    assert client.flush(timeout=30)
    assert isinstance(events[-1].error, StoreFailedError)
    assert "User prefers Python" in str(server.chat_requests()[-1]["messages"])
    assert [m.text for m in client.memory.get_all()] == ["User prefers Python"]
    store.close()
    with MemoryStore(db, embedder=HashEmbedder(dim=32)) as again:
        assert [m.text for m in again.get_all("alice")] == ["User prefers Python"]
        assert b"Zanzibar" not in _segment_bytes(db)
