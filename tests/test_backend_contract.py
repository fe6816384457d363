"""The backend contract: what MemoryStore promises, run on every backend of tests/backends.py.

Isolation, history, filters inside the search (category, time, metadata: k results whenever k
match), export/import round trip, jobs, the change feed, hard delete, the embedding-model rule
and reopen. A backend joins by adding itself to ``tests.backends.KINDS``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headroom.memory import errors
from headroom.memory.store.backend import Entry, Filter
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import MemoryUpdate, NewMemory
from tests.backends import KINDS, BackendKind
from tests.store_helpers import HashEmbedder

OpenStore = Callable[..., MemoryStore]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> BackendKind:
    kind: BackendKind = request.param
    return kind


@pytest.fixture
def open_store(kind: BackendKind, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store at one fresh location (again and again: reopen sees the same data)."""
    location = kind.new_location(tmp_path)
    opened: list[MemoryStore] = []

    def open_(**kwargs: Any) -> MemoryStore:
        kwargs.setdefault("embedder", HashEmbedder(64))
        kwargs.setdefault("sync", "off")
        store = MemoryStore(location, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> MemoryStore:
    return open_store()


def _ids(results: list[Any]) -> list[str]:
    return [m.id for m, _ in results]


# --- isolation --------------------------------------------------------------------------------


def test_every_read_and_write_is_scoped_to_its_user(store: MemoryStore) -> None:
    alice = store.add("alice", "Alice drinks oolong tea", metadata={"team": "x"})
    bob = store.add("bob", "Bob drinks oolong tea", metadata={"team": "x"})
    assert store.get("bob", alice.id) is None and store.get("alice", bob.id) is None
    assert [m.id for m in store.get_all("alice")] == [alice.id]
    for query in ("oolong tea", store.embedder.embed(["Bob drinks oolong tea"])[0]):
        assert _ids(store.search("alice", query, top_k=10)) == [alice.id]
    assert _ids(store.search("alice", "tea", top_k=10, metadata={"team": "x"})) == [alice.id]
    assert store.history("alice", bob.id) == []
    with pytest.raises(errors.MemoryNotFoundError):
        store.update("alice", bob.id, "hijacked")
    with pytest.raises(errors.MemoryNotFoundError):
        store.delete("alice", bob.id)
    applied = store.apply("alice", updates=[MemoryUpdate(bob.id, "hijacked")], deletes=[bob.id])
    assert not applied.updated and not applied.deleted
    assert store.forget("alice", [bob.id]) == 0
    assert store.get("bob", bob.id) is not None and store.get("bob", bob.id).text == bob.text  # type: ignore[union-attr]
    store.clear("alice", hard=True)
    assert [m.id for m in store.get_all("bob")] == [bob.id]
    assert store.users() == ["bob"]


# --- versions ---------------------------------------------------------------------------------


def test_history_keeps_every_version_and_the_deletion(store: MemoryStore) -> None:
    memory = store.add("u", "User is a senior engineer", category="fact", metadata={"a": 1})
    updated = store.update("u", memory.id, "User is a staff engineer", category="context")
    assert updated.category == "context" and updated.metadata == {"a": 1}
    assert updated.created_at == memory.created_at and updated.updated_at >= memory.updated_at
    store.delete("u", memory.id)
    history = store.history("u", memory.id)
    assert [(v.operation, v.text, v.category) for v in history] == [
        ("add", "User is a senior engineer", "fact"),
        ("update", "User is a staff engineer", "context"),
        ("delete", "User is a staff engineer", "context"),
    ]
    assert store.get("u", memory.id) is None and store.get_all("u") == []


def test_dedup_skips_exact_repeats_and_explicit_adds_are_kept(store: MemoryStore) -> None:
    first = store.add_many("u", [NewMemory("User likes jazz")]).added
    again = store.add_many("u", [NewMemory("user likes  JAZZ."), NewMemory("User likes rock")])
    assert len(first) == 1 and again.skipped == ("user likes  JAZZ.",)
    assert [m.text for m in again.added] == ["User likes rock"]
    store.add("u", "User likes jazz")  # an explicit add is not deduplicated
    assert len(store.get_all("u")) == 3


# --- filters inside the search ----------------------------------------------------------------


def _filtered_store(store: MemoryStore) -> dict[str, list[str]]:
    """40 memories near one query, few of which pass each filter."""
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ids: dict[str, list[str]] = {"project": [], "late": [], "preference": []}
    items = []
    for i in range(40):
        metadata: dict[str, Any] = {"n": i, "project": "apollo" if i % 10 == 3 else "zeus"}
        if i % 7 == 0:
            metadata["tags"] = ["a", "b"]
        items.append(
            NewMemory(
                f"User note {i} about the deployment pipeline",
                "preference" if i % 13 == 5 else "fact",
                metadata,
                base + timedelta(days=i),
            )
        )
    for memory in store.add_many("u", items, dedup=False).added:
        n = memory.metadata["n"]
        if memory.metadata["project"] == "apollo":
            ids["project"].append(memory.id)
        if n >= 37:
            ids["late"].append(memory.id)
        if memory.category == "preference":
            ids["preference"].append(memory.id)
    store.add("other", "User note about the deployment pipeline", metadata={"project": "apollo"})
    return ids


@pytest.mark.parametrize("hybrid", [True, False])
def test_filters_apply_inside_the_search(store: MemoryStore, hybrid: bool) -> None:
    ids = _filtered_store(store)
    q = "deployment pipeline note"
    found = store.search("u", q, top_k=5, metadata={"project": "apollo"}, hybrid=hybrid)
    assert sorted(_ids(found)) == sorted(ids["project"])  # 4 match: all 4, nothing else
    found = store.search("u", q, top_k=2, metadata={"project": "apollo"}, hybrid=hybrid)
    assert len(found) == 2 and set(_ids(found)) <= set(ids["project"])
    since = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(days=37)
    found = store.search("u", q, top_k=10, since=since, hybrid=hybrid)
    assert sorted(_ids(found)) == sorted(ids["late"])
    found = store.search("u", q, top_k=10, category="preference", hybrid=hybrid)
    assert sorted(_ids(found)) == sorted(ids["preference"])
    found = store.search(
        "u", q, top_k=10, metadata={"project": ["apollo", "hera"], "n": [3, 13, 14]}, hybrid=hybrid
    )
    assert sorted(m.metadata["n"] for m, _ in found) == [3, 13]
    found = store.search("u", q, top_k=10, metadata={"tags": [["a", "b"]]}, hybrid=hybrid)
    assert sorted(m.metadata["n"] for m, _ in found) == [0, 7, 14, 21, 28, 35]
    assert store.search("u", q, top_k=10, metadata={"missing": 1}, hybrid=hybrid) == []
    found = store.search("u", q, top_k=10, metadata={"n": True}, hybrid=hybrid)
    assert found == []  # JSON equality: true is not 1


def test_get_all_takes_the_same_filters(store: MemoryStore) -> None:
    ids = _filtered_store(store)
    assert [m.id for m in store.get_all("u", metadata={"project": "apollo"})] == ids["project"]
    got = store.get_all("u", "fact", metadata={"project": "apollo"}, since=0)
    assert [m.id for m in got] == [i for i in ids["project"] if i not in ids["preference"]]
    assert store.get_all("u", metadata={"n": [0, 39]}, until=datetime(2025, 1, 2)) != []


def test_a_bad_filter_is_a_typed_error(store: MemoryStore) -> None:
    store.add("u", "User likes tea")
    with pytest.raises(errors.InvalidInputError):
        store.search("u", "tea", metadata=["project"])  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidInputError):
        store.get_all("u", metadata={"project": []})
    with pytest.raises(errors.InvalidInputError):
        store.search("u", "tea", metadata={"k": object()})
    with pytest.raises(errors.InvalidCategoryError):
        store.search("u", "tea", category="hobby")


# --- export / import --------------------------------------------------------------------------


def test_export_import_round_trip_is_exact(
    open_store: OpenStore, kind: BackendKind, tmp_path: Path
) -> None:
    source = open_store()
    memory = source.add("u", "User lives in Lisbon", "fact", {"k": [1, "x"]}, created_at=1.7e9)
    source.update("u", memory.id, "User lives in Porto")
    source.add("v", "User prefers green tea", "preference")
    exported = list(source.export(include_vectors=True))
    target = MemoryStore(kind.new_location(tmp_path), embedder=HashEmbedder(64), sync="off")
    try:
        assert target.import_(json.loads(json.dumps(r)) for r in exported) == 2
        assert list(target.export(include_vectors=True)) == exported
        assert target.import_(exported) == 0  # idempotent
        assert [v.text for v in target.history("u", memory.id)] == [
            "User lives in Lisbon",
            "User lives in Porto",
        ]
    finally:
        target.close()


def test_a_record_without_times_is_dated_now(store: MemoryStore) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    assert store.import_([{"user_id": "u", "id": "a", "text": "User likes tea"}]) == 1
    memory = store.get("u", "a")
    assert memory is not None and memory.created_at >= before and memory.updated_at >= before
    with pytest.raises(errors.InvalidTimeError, match="record 1"):
        store.import_([{"user_id": "u", "id": "b", "text": "x", "created_at": "yesterday"}])


def test_an_import_skips_ids_the_user_already_has_even_deleted(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Export, delete one, import the export back: nothing may fail half-way (one record per
    # batch here, so a failure in a later batch would leave earlier ones written).
    monkeypatch.setattr("headroom.memory.store.store.IMPORT_BATCH", 1)
    kept = store.add("u", "User likes tea")
    gone = store.add("u", "User likes coffee")
    exported = list(store.export())
    store.delete("u", gone.id)
    assert store.import_([*exported, {"user_id": "u", "id": "new", "text": "User is 40"}]) == 1
    assert sorted(m.id for m in store.get_all("u")) == sorted([kept.id, "new"])
    assert store.history("u", gone.id)[-1].operation == "delete"


def test_nul_characters_are_refused_on_every_backend(store: MemoryStore) -> None:
    # PostgreSQL text cannot hold U+0000: no backend takes it, so a store moves anywhere.
    with pytest.raises(errors.InvalidTextError):
        store.add("u", "User likes \x00 tea")
    with pytest.raises(errors.InvalidMetadataError):
        store.add("u", "User likes tea", metadata={"k": ["x\x00"]})
    with pytest.raises(errors.InvalidInputError, match="record 1"):
        store.import_([{"user_id": "u", "id": "a\x00b", "text": "User likes tea"}])
    assert store.get_all("u") == []


def test_a_bad_record_imports_nothing(open_store: OpenStore) -> None:
    store = open_store()
    good = {"user_id": "u", "id": "a", "text": "User likes tea", "category": "fact"}
    bad = {"user_id": "u", "id": "b", "text": "", "category": "fact"}
    with pytest.raises(errors.InvalidTextError, match="record 2"):
        store.import_([good, bad, {**good, "id": "c"}])
    assert store.get_all("u") == []


# --- jobs, change feed, hard delete, config ---------------------------------------------------


def test_jobs_are_durable_until_done_and_forget_drops_them(open_store: OpenStore) -> None:
    store = open_store()
    first = store.enqueue("u", {"turn": 1})
    store.enqueue("v", {"turn": 2})
    store.close()
    store = open_store()
    assert [(j.user_id, j.payload) for j in store.pending()] == [
        ("u", {"turn": 1}),
        ("v", {"turn": 2}),
    ]
    store.complete("v", first)  # another user's job: left alone
    assert len(store.pending()) == 2
    store.complete("u", first)
    assert [j.user_id for j in store.pending()] == ["v"]
    store.enqueue("v", {"turn": 3})
    store.forget("v")
    assert store.pending() == []


def test_the_change_feed_reports_adds_updates_and_removals(store: MemoryStore) -> None:
    backend = store.backend
    a = store.add("u", "User likes tea")
    since = backend.user_seq("u")
    b = store.add("u", "User likes coffee")
    store.update("u", a.id, "User likes green tea")
    changes = backend.changes("u", since)
    assert changes.seq == backend.user_seq("u") > since
    assert sorted(i for _, i in changes.added) == sorted([a.id, b.id])
    assert len(changes.removed) == 1  # a's first version
    since = changes.seq
    store.delete("u", b.id)
    changes = backend.changes("u", since)
    assert changes.added == () and len(changes.removed) == 1
    assert backend.changes("u", backend.user_seq("u")).removed == ()


def test_forget_removes_every_version_for_good(open_store: OpenStore) -> None:
    store = open_store()
    kept = store.add("u", "User keeps this")
    gone = store.add("u", "User wants this forgotten")
    store.update("u", gone.id, "User wants this forgotten, really")
    assert store.forget("u", [gone.id, "nosuch"]) == 1
    assert store.get("u", gone.id) is None and store.history("u", gone.id) == []
    store.close()
    store = open_store()
    assert [m.id for m in store.get_all("u")] == [kept.id]
    assert all(m.id != gone.id for m, _ in store.search("u", "forgotten", top_k=5))
    assert store.forget("u") == 1 and store.get_all("u") == [] and store.users() == []


def test_the_store_is_bound_to_its_embedding_model(open_store: OpenStore) -> None:
    store = open_store()
    store.add("u", "User likes tea")
    assert store.recorded_model() == {"model": "test/hash-64", "dim": 64}
    with pytest.raises(errors.EmbeddingModelMismatchError):
        open_store(embedder=HashEmbedder(32))
    assert store.stats()["embedding_model"] == "test/hash-64"


def test_a_vector_of_another_dimension_is_refused(store: MemoryStore) -> None:
    store.add("u", "User likes tea")
    with pytest.raises(errors.InvalidVectorError):
        store.search("u", np.zeros(32, np.float32))
    with pytest.raises(errors.InvalidVectorError):
        store.backend.append(
            [
                Entry.add(
                    "u", "x", "text", category="fact", source="manual", created_at_us=1,
                    metadata={}, model="m", vector=np.ones(32, np.float32),
                )
            ]
        )  # fmt: skip


def test_a_batch_is_all_or_nothing(store: MemoryStore) -> None:
    store.add("u", "User likes tea")
    vector = np.ones(64, np.float32) / 8
    good = Entry.add(
        "u", "fresh", "a fresh memory", category="fact", source="manual", created_at_us=1,
        metadata={}, model="test/hash-64", vector=vector,
    )  # fmt: skip
    with pytest.raises(errors.MemoryNotFoundError):
        store.backend.append([good, Entry.delete("u", "nosuch")])
    assert store.get("u", "fresh") is None


def test_stats_and_reopen(open_store: OpenStore) -> None:
    store = open_store()
    store.add_many("u", [NewMemory("User likes tea", "preference"), NewMemory("User is 40")])
    store.add("v", "User lives in Porto", "context")
    store.close()
    store = open_store()
    stats = store.stats()
    assert stats["total_memories"] == 3 and stats["users"] == 2
    assert stats["categories"] == {"preference": 1, "fact": 1, "context": 1}
    assert stats["recovery"]["corrupt_bytes"] == 0
    own = store.stats("u")
    assert own["total_memories"] == 2 and own["users"] == 1
    assert not {"store", "path", "recovery"} & set(own)  # nothing about other users or the store
    assert store.backend.memories("u", Filter.build("preference"))[0].text == "User likes tea"


# --- claimed jobs: one worker at a time, exactly once, a killed worker's job comes back --------


def test_a_claimed_job_is_held_until_completed_with_its_ops(store: MemoryStore) -> None:
    first = store.enqueue("u", {"turn": 1})
    second = store.enqueue("v", {"turn": 2})
    claim = store.claim(worker="w1", lease_s=60)
    assert claim is not None and claim.job.id == first and claim.job.payload == {"turn": 1}
    assert claim.worker == "w1" and claim.token
    other = store.claim(worker="w2", lease_s=60)  # the oldest is held: the next one
    assert other is not None and other.job.id == second and other.token != claim.token
    assert store.claim(worker="w3", lease_s=60) is None  # both held
    store.release(other)
    assert store.claim("u", worker="w3", lease_s=60) is None  # never another user's job
    other = store.claim("v", worker="w2", lease_s=60)
    assert other is not None and other.job.id == second
    assert store.claim("u", worker="w3", lease_s=60, job_id=first) is None
    assert len(store.pending()) == 2  # held jobs are still open
    applied = store.apply("u", adds=[NewMemory("User said turn 1")], claim=claim)
    assert [m.text for m in applied.added] == ["User said turn 1"]
    assert [j.id for j in store.pending()] == [second]
    with pytest.raises(errors.JobLostError):  # done already: completing again applies nothing
        store.apply("u", adds=[NewMemory("User said it twice")], claim=claim)
    assert [m.text for m in store.get_all("u")] == ["User said turn 1"]
    with pytest.raises(errors.InvalidInputError):  # a claim completes its own user's job only
        store.apply("u", adds=[NewMemory("mixed")], claim=other)
    store.apply("v", claim=other)  # nothing to apply: the job is still completed
    assert store.pending() == [] and store.get_all("v") == []


def test_a_released_job_is_claimable_at_once_and_the_old_claim_is_lost(
    store: MemoryStore,
) -> None:
    job = store.enqueue("u", {"turn": 1})
    claim = store.claim("u", worker="w1", lease_s=60)
    assert claim is not None
    store.release(claim)
    again = store.claim("u", worker="w2", lease_s=60)
    assert again is not None and again.job.id == job
    store.release(claim)  # no longer held by it: nothing happens
    assert store.claim("u", worker="w3", lease_s=60) is None
    with pytest.raises(errors.JobLostError):
        store.apply("u", adds=[NewMemory("from the first worker")], claim=claim)
    store.apply("u", adds=[NewMemory("from the second worker")], claim=again)
    assert [m.text for m in store.get_all("u")] == ["from the second worker"]


def test_after_its_lease_a_job_is_claimed_again_and_only_the_new_claim_completes(
    store: MemoryStore,
) -> None:
    store.enqueue("u", {"turn": 1})
    slow = store.claim("u", worker="slow", lease_s=0.3)
    assert slow is not None
    assert store.claim("u", worker="fast", lease_s=60) is None
    time.sleep(0.5)
    fast = store.claim("u", worker="fast", lease_s=60)
    assert fast is not None and fast.job.id == slow.job.id
    with pytest.raises(errors.JobLostError):
        store.apply("u", adds=[NewMemory("from the slow worker")], claim=slow)
    store.apply("u", adds=[NewMemory("from the fast worker")], claim=fast)
    assert [m.text for m in store.get_all("u")] == ["from the fast worker"]
    assert store.pending() == []


def test_a_renewed_claim_stays_held_past_its_first_lease(store: MemoryStore) -> None:
    store.enqueue("u", {"turn": 1})
    claim = store.claim("u", worker="slow", lease_s=0.3)
    assert claim is not None
    renewed = store.renew(claim, lease_s=60)
    assert renewed.token == claim.token and renewed.until_us > claim.until_us
    time.sleep(0.5)
    assert store.claim("u", worker="other", lease_s=60) is None  # still held
    store.apply("u", adds=[NewMemory("from the slow worker")], claim=claim)
    with pytest.raises(errors.JobLostError):  # done: nothing left to renew
        store.renew(claim, lease_s=60)
    store.enqueue("u", {"turn": 2})
    lapsed = store.claim("u", worker="slow", lease_s=0.1)
    assert lapsed is not None
    time.sleep(0.3)
    assert store.claim("u", worker="other", lease_s=60) is not None
    with pytest.raises(errors.JobLostError):  # taken over: a late renewal does not steal it
        store.renew(lapsed, lease_s=60)
    with pytest.raises(errors.InvalidInputError):
        store.renew(lapsed, lease_s=0)


def test_a_lapsed_claim_nobody_took_over_still_completes(store: MemoryStore) -> None:
    store.enqueue("u", {"turn": 1})
    claim = store.claim("u", worker="w", lease_s=0.1)
    assert claim is not None
    time.sleep(0.2)
    store.apply("u", adds=[NewMemory("late but alone")], claim=claim)
    assert store.pending() == [] and len(store.get_all("u")) == 1


def test_forgetting_the_user_loses_the_claim_and_applies_nothing(store: MemoryStore) -> None:
    store.enqueue("u", {"turn": 1})
    claim = store.claim(worker="w", lease_s=60)
    assert claim is not None
    store.forget("u")
    with pytest.raises(errors.JobLostError):
        store.apply("u", adds=[NewMemory("User said a secret")], claim=claim)
    assert store.get_all("u") == [] and store.pending() == []


def test_a_bad_lease_is_a_typed_error(store: MemoryStore) -> None:
    for lease in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(errors.InvalidInputError):
            store.claim(lease_s=lease)


_CLAIMER = """
import sys, time
from headroom.memory.store.store import open_backend
backend = open_backend(sys.argv[1], sync="off")
claim = backend.claim(None, "doomed", float(sys.argv[2]))
print(claim.job.id if claim else "none", flush=True)
time.sleep(120)
"""


def test_a_killed_workers_job_is_claimed_again_after_its_lease(store: MemoryStore) -> None:
    job = store.enqueue("u", {"turn": 1})
    store.flush()
    child = subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, store.backend.location, "1.0"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == job  # the child holds it
        assert store.claim(worker="w", lease_s=60) is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 30
    claim = None
    while claim is None:
        assert time.monotonic() < deadline, "the killed worker's job never came back"
        time.sleep(0.1)
        claim = store.claim(worker="w", lease_s=60)
    assert claim.job.id == job
    store.apply("u", adds=[NewMemory("User said turn 1")], claim=claim)
    assert store.pending() == [] and len(store.get_all("u")) == 1
