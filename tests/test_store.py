"""MemoryStore: the public store API over the real log, with typed errors and real files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import zlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headroom.memory import errors
from headroom.memory.store import hybrid
from headroom.memory.store.local.engine import _native
from headroom.memory.store.local.index import UserIndex
from headroom.memory.store.ranking import DEFAULT_CONFIG
from headroom.memory.store.store import MemoryStore, NewMemory
from tests.store_helpers import HashEmbedder

WORDS = ["zebra", "typewriter", "violin", "harbour", "lantern"]


@pytest.fixture
def store(tmp_path: Path) -> MemoryStore:
    s = MemoryStore(tmp_path / "memory.db", embedder=HashEmbedder(), sync="off")
    yield s
    s.close()


def test_add_get_search_roundtrip(store: MemoryStore) -> None:
    m = store.add("alice", "  User prefers Python  ", category="preference", metadata={"k": 1})
    assert m.text == "User prefers Python"
    assert m.category == "preference" and m.metadata == {"k": 1} and m.user_id == "alice"
    assert m.created_at.tzinfo is not None
    assert store.get("alice", m.id) == m
    results = store.search("alice", "User prefers Python", top_k=5, hybrid=False)
    assert results[0][0].id == m.id and results[0][1] == pytest.approx(1.0, abs=1e-5)
    fused = store.search("alice", "User prefers Python", top_k=5)  # + the lexical bonus
    bonus = DEFAULT_CONFIG.lexical_weight
    assert fused[0][0].id == m.id and fused[0][1] == pytest.approx(1.0 + bonus, abs=1e-5)


def test_users_are_isolated(store: MemoryStore) -> None:
    a = store.add("alice", "alice secret")
    store.add("bob", "bob secret")
    assert [m.text for m, _ in store.search("bob", "alice secret", top_k=10)] == ["bob secret"]
    assert store.get("bob", a.id) is None
    with pytest.raises(errors.MemoryNotFoundError):
        store.delete("bob", a.id)
    with pytest.raises(errors.MemoryNotFoundError):
        store.update("bob", a.id, "hijacked")
    assert store.get("alice", a.id) is not None
    applied = store.apply("bob", deletes=[a.id], updates=[])
    assert applied.deleted == () and store.get("alice", a.id) is not None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.add("alice", ""), errors.InvalidTextError),
        (lambda s: s.add("alice", "   "), errors.InvalidTextError),
        (lambda s: s.add("alice", 42), errors.InvalidTextError),
        (lambda s: s.add("alice", "x" * 20000), errors.InvalidTextError),
        (lambda s: s.add("", "text"), errors.InvalidUserIdError),
        (lambda s: s.add("a\x00b", "text"), errors.InvalidUserIdError),
        (lambda s: s.add("u" * 300, "text"), errors.InvalidUserIdError),
        (lambda s: s.add(None, "text"), errors.InvalidUserIdError),
        (lambda s: s.add("alice", "t", category="hobby"), errors.InvalidCategoryError),
        (lambda s: s.add("alice", "t", metadata={"x": object()}), errors.InvalidMetadataError),
        (lambda s: s.add("alice", "t", metadata=[1]), errors.InvalidMetadataError),
        (lambda s: s.add("alice", "\ud800 surrogate"), errors.InvalidTextError),
        (lambda s: s.search("alice", np.zeros(3, np.float32)), errors.InvalidVectorError),
        (lambda s: s.search("alice", np.zeros(384, np.float64)), errors.InvalidVectorError),
        (
            lambda s: s.search("alice", np.full(384, np.nan, np.float32)),
            errors.InvalidVectorError,
        ),
        (lambda s: s.update("alice", "nope", "text"), errors.MemoryNotFoundError),
        (lambda s: s.delete("alice", "nope"), errors.MemoryNotFoundError),
        (lambda s: s.prune("alice"), errors.InvalidInputError),
    ],
)
def test_bad_input_is_a_typed_error_and_writes_nothing(store: MemoryStore, call, error) -> None:
    store.add("alice", "kept")
    before = store.backend.log.last_seq
    with pytest.raises(error):
        call(store)
    assert store.backend.log.last_seq == before
    assert [m.text for m in store.get_all("alice")] == ["kept"]


def test_update_keeps_history_and_delete_hides(store: MemoryStore) -> None:
    m = store.add("alice", "Lives in Paris")
    store.update("alice", m.id, "Lives in Berlin", category="context")
    now = store.get("alice", m.id)
    assert now is not None and now.text == "Lives in Berlin" and now.category == "context"
    assert now.created_at == m.created_at and now.updated_at >= m.updated_at
    assert [v.text for v in store.history("alice", m.id)] == ["Lives in Paris", "Lives in Berlin"]
    store.delete("alice", m.id)
    assert store.get("alice", m.id) is None and store.search("alice", "Berlin") == []
    assert [v.operation for v in store.history("alice", m.id)] == ["add", "update", "delete"]


# Measured with the real all-MiniLM-L6-v2 (cosine of the two texts' embeddings):
DOG = "User has a dog named Max"
DOG_PARAPHRASE = "The user has a dog called Max"  # 0.9466 with DOG: must supersede it
CAT = "User has a cat named Max"  # 0.8329 with DOG: same topic, another fact: kept apart
COFFEE = "User drinks coffee every morning"
COFFEE_PARAPHRASE = "Every morning the user drinks coffee"  # 0.9594 with COFFEE


def test_dedup_skips_exact_and_supersedes_near_duplicates(tmp_path: Path) -> None:
    from headroom.memory.embedders import get_embedder
    from headroom.memory.store.store import DEFAULT_DEDUP_THRESHOLD

    embedder = get_embedder()
    threshold = DEFAULT_DEDUP_THRESHOLD
    assert threshold == 0.92
    # The premises, on the real model (a model change that moves them must show here).
    v = embedder.embed([DOG, DOG_PARAPHRASE, CAT, COFFEE, COFFEE_PARAPHRASE])
    assert float(v[0] @ v[1]) == pytest.approx(0.9466, abs=0.005) and v[0] @ v[1] >= threshold
    assert float(v[0] @ v[2]) == pytest.approx(0.8329, abs=0.005) and v[0] @ v[2] < threshold
    assert float(v[3] @ v[4]) == pytest.approx(0.9594, abs=0.005) and v[3] @ v[4] >= threshold
    with MemoryStore(tmp_path / "db", embedder=embedder, sync="off") as store:
        first = store.add_many("u", [NewMemory(DOG)]).added[0]
        # Exact duplicates (case, spacing and a final full stop aside) are skipped.
        again = store.add_many("u", [NewMemory("user has a  dog named max."), NewMemory(DOG)])
        assert again.added == () and again.updated == () and len(again.skipped) == 2
        assert [m.id for m in store.get_all("u")] == [first.id]

        # A paraphrase supersedes: one live memory, the new text, the old one in history.
        merged = store.add_many("u", [NewMemory(DOG_PARAPHRASE, "preference")])
        assert merged.added == () and [m.id for m in merged.updated] == [first.id]
        assert [(m.id, m.text, m.category) for m in store.get_all("u")] == [
            (first.id, DOG_PARAPHRASE, "preference")
        ]
        history = store.history("u", first.id)
        assert [(h.text, h.operation) for h in history] == [
            (DOG, "add"),
            (DOG_PARAPHRASE, "update"),
        ]
        assert store.search("u", "What pet does the user have?", top_k=5)[0][0].id == first.id

        # Same topic, another fact: stored beside it, nothing superseded.
        cat = store.add_many("u", [NewMemory(CAT)])
        assert len(cat.added) == 1 and cat.updated == ()
        assert {m.text for m in store.get_all("u")} == {DOG_PARAPHRASE, CAT}
        assert len(store.history("u", cat.added[0].id)) == 1

        # Through apply (the pipeline's path), in one batch with an unrelated add.
        coffee = store.add("u", COFFEE)
        applied = store.apply(
            "u", adds=[NewMemory(COFFEE_PARAPHRASE), NewMemory("User is learning Portuguese")]
        )
        assert [m.id for m in applied.updated] == [coffee.id]
        assert [m.text for m in applied.added] == ["User is learning Portuguese"]
        assert [h.text for h in store.history("u", coffee.id)] == [COFFEE, COFFEE_PARAPHRASE]
        assert len(store.get_all("u")) == 4

        # dedup=False keeps the paraphrase as a memory of its own.
        kept = store.add_many("u", [NewMemory(COFFEE)], dedup=False)
        assert len(kept.added) == 1 and len(store.get_all("u")) == 5


def test_filters_apply_inside_search(store: MemoryStore) -> None:
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for i in range(30):
        store.add("u", f"memory {i}", category="fact" if i % 10 == 0 else "preference",
                  created_at=base + timedelta(days=i))  # fmt: skip
    facts = store.search("u", "memory 7", top_k=3, category="fact")
    assert {m.text for m, _ in facts} == {"memory 0", "memory 10", "memory 20"}
    window = store.search("u", "memory", top_k=50, since=base + timedelta(days=5),
                          until=base + timedelta(days=9))  # fmt: skip
    assert sorted(m.text for m, _ in window) == [f"memory {i}" for i in range(5, 10)]


def test_export_import_reproduces_ids_times_and_history(tmp_path: Path) -> None:
    emb = HashEmbedder()
    with MemoryStore(tmp_path / "a", embedder=emb) as src:
        m = src.add("alice", "v1", category="fact", metadata={"dia": ["D1:1"]})
        src.update("alice", m.id, "v2")
        src.add("bob", "bob's", category="context")
        exported = list(src.export())
        json.dumps(exported)  # JSON-safe
    with MemoryStore(tmp_path / "b", embedder=emb) as dst:
        assert dst.import_(exported) == 2
        assert list(dst.export()) == exported
        assert dst.import_(exported) == 0  # ids already live: skipped
    assert exported[0]["history"][0]["text"] == "v1"


def test_forget_is_hard_and_compacts(store: MemoryStore) -> None:
    keep = store.add("alice", "KEEP-marker-123")
    gone = store.add("alice", "GONE-marker-456")
    store.update("alice", gone.id, "GONE-marker-789")
    assert store.forget("alice", [gone.id]) == 1
    assert store.history("alice", gone.id) == []
    blob = b"".join(p.read_bytes() for p in Path(store.path).rglob("*") if p.is_file())
    assert b"GONE-marker" not in blob and b"KEEP-marker-123" in blob
    assert store.get("alice", keep.id) is not None


def test_model_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    MemoryStore(tmp_path / "db", embedder=HashEmbedder(dim=384)).close()
    with pytest.raises(errors.EmbeddingModelMismatchError, match="reembed"):
        MemoryStore(tmp_path / "db", embedder=HashEmbedder(dim=384, model_id="other"))


def test_reembed_migrates(tmp_path: Path) -> None:
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder()) as store:
        m = store.add("u", "fact one")
        new = HashEmbedder(dim=64, model_id="other")
        assert store.reembed(new) == 1
        assert store.search("u", "fact one")[0][0].id == m.id
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(dim=64, model_id="other")) as again:
        assert again.get("u", m.id) is not None


def test_open_shares_one_store_per_path(tmp_path: Path) -> None:
    emb = HashEmbedder()
    a = MemoryStore.open(tmp_path / "db", embedder=emb)
    b = MemoryStore.open(str(tmp_path / "db"))
    assert a is b
    a.close()
    c = MemoryStore.open(tmp_path / "db", embedder=emb)
    assert c is not a
    c.close()


def test_pending_jobs_survive_reopen(tmp_path: Path) -> None:
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(), sync="always") as store:
        job = store.enqueue("alice", {"messages": [{"role": "user", "content": "hi"}]})
        done = store.enqueue("alice", {"n": 2})
        store.complete("alice", done)
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder()) as store:
        assert [(j.id, j.payload["messages"][0]["content"]) for j in store.pending()] == [
            (job, "hi")
        ]
        store.forget("alice")
        assert store.pending() == []


def _child_adds(path: str, n: int, tag: str) -> None:
    store = MemoryStore.open(path, embedder=HashEmbedder())
    for i in range(n):
        store.add("shared-user", f"{tag} {i}")
    store.close()


def test_processes_see_each_others_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = MemoryStore.open(path, embedder=HashEmbedder())
    store.add("shared-user", "parent 0")
    ctx = mp.get_context("fork")  # also exercises fork-awareness of the open store
    procs = [ctx.Process(target=_child_adds, args=(path, 50, f"child{k}")) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    texts = {m.text for m in store.get_all("shared-user")}
    assert len(texts) == 101
    assert store.search("shared-user", "child1 7", top_k=1)[0][0].text == "child1 7"
    store.add("shared-user", "parent 1")
    assert len(store.get_all("shared-user")) == 102
    store.close()
    # Every process's writes are durable and distinct: a fresh open replays all 102, once each.
    with MemoryStore(path, embedder=HashEmbedder()) as again:
        replayed = again.get_all("shared-user")
        assert len({m.id for m in replayed}) == len(replayed) == 102
        assert {m.text for m in replayed} == texts | {"parent 1"}
        assert again.verify()["ok"]


def test_ann_index_agrees_with_exact_and_snapshots(tmp_path: Path) -> None:
    emb = HashEmbedder(dim=32)
    rng = np.random.default_rng(7)
    with MemoryStore(tmp_path / "db", embedder=emb, ann_threshold=64) as store:
        items = [NewMemory(f"item {i}", ["fact", "preference"][i % 2]) for i in range(300)]
        store.add_many("big", items, dedup=False)
        queries = [f"item {i}" for i in rng.integers(0, 300, 20)]
        for q in queries:
            top = store.search("big", q, top_k=1)
            assert top[0][0].text == q  # the exact text is its own nearest neighbour
        only = store.search("big", "item 3", top_k=5, category="preference")
        assert len(only) == 5 and all(m.category == "preference" for m, _ in only)
        doomed = store.get_all("big")[0]
        store.delete("big", doomed.id)
        assert all(m.id != doomed.id for m, _ in store.search("big", doomed.text, top_k=10))
    with MemoryStore(tmp_path / "db", embedder=emb, ann_threshold=64) as store:
        assert store.search("big", "item 5", top_k=1)[0][0].text == "item 5"


def test_snapshot_is_written_verified_and_rebuilt_when_bad(tmp_path: Path) -> None:
    emb = HashEmbedder(dim=32)
    with MemoryStore(tmp_path / "db", embedder=emb, ann_threshold=64) as store:
        store.add_many("big", [NewMemory(f"row {i}") for i in range(200)], dedup=False)
        assert store.search("big", "row 1", top_k=1)[0][0].text == "row 1"
    (meta,) = (tmp_path / "db" / "indexes").glob("*.meta")
    assert "big" not in meta.name  # user ids never become file names
    assert json.loads(meta.read_text())["user_id"] == "big"
    graph = meta.with_suffix(".hnsw")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with MemoryStore(tmp_path / "db", embedder=emb, ann_threshold=64) as store:
        assert store.verify()["bad_snapshots"] == 1
        for i in (0, 77, 199):
            assert store.search("big", f"row {i}", top_k=1)[0][0].text == f"row {i}"
        store.add("big", "row 200")
        assert store.search("big", "row 200", top_k=1)[0][0].text == "row 200"


def test_a_graph_header_with_the_older_zlib_checksum_is_still_checked(tmp_path: Path) -> None:
    emb = HashEmbedder(dim=32)
    with MemoryStore(tmp_path / "db", embedder=emb, ann_threshold=64) as store:
        store.add_many("big", [NewMemory(f"row {i}") for i in range(200)], dedup=False)
        store.search("big", "row 1", top_k=1)
    (meta_path,) = (tmp_path / "db" / "indexes").glob("*.meta")
    graph = meta_path.with_suffix(".hnsw")
    meta = json.loads(meta_path.read_text())
    assert meta["crc32c"] == _native.crc32c(graph.read_bytes())
    del meta["crc32c"]
    meta["crc32"] = zlib.crc32(graph.read_bytes())
    meta_path.write_text(json.dumps(meta))
    index_dir = tmp_path / "db" / "indexes"
    assert UserIndex.load(index_dir, "big", 32) is not None
    meta["crc32"] ^= 1
    meta_path.write_text(json.dumps(meta))
    assert UserIndex.load(index_dir, "big", 32) is None


def test_a_snapshot_loads_in_the_background_while_searches_scan_exactly(tmp_path: Path) -> None:
    # A restarted process finds the user's snapshot: its first searches do not wait for the
    # graph to load (exact scans answer them), and the index serves once it is in memory; a
    # drop (a hard delete, a compaction) during the load discards what the loader read.
    from headroom.memory.store.local.engine import Engine

    rng = np.random.default_rng(9)
    vecs = rng.standard_normal((400, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    entries = [
        (1, "big", f"m{i}", 2, 2, 1_000_000 + i, f"memory {i}", "{}", "test", vecs[i])
        for i in range(400)
    ]
    engine = Engine(tmp_path / "db", ann_threshold=64)
    engine.append(entries)
    assert engine.search("big", vecs[0], 1)[0][0] == "m0"  # built here, in the caller
    engine.close()  # snapshots it
    queries = rng.standard_normal((20, 16)).astype(np.float32)

    def exact(q: np.ndarray) -> list[str]:
        return [f"m{i}" for i in np.argsort(-(vecs @ q))[:5]]

    engine = Engine(tmp_path / "db", ann_threshold=64)
    try:
        first = engine.search("big", queries[0], 5)
        assert [m for m, _ in first] == exact(queries[0])
        assert engine.wait_for_index("big", timeout=60)
        hits = [[m for m, _ in engine.search("big", q, 5)] for q in queries]
        recall = np.mean(
            [len(set(h) & set(exact(q))) / 5 for h, q in zip(hits, queries, strict=True)]
        )
        assert recall >= 0.9
    finally:
        engine.close()
    engine = Engine(tmp_path / "db", ann_threshold=64)
    try:
        engine.search("big", queries[1], 5)  # starts the load
        engine.drop_user_index("big")
        assert not engine.wait_for_index("big", timeout=60)
        assert [m for m, _ in engine.search("big", queries[2], 5)] == exact(queries[2])
        assert engine.wait_for_index("big")  # no snapshot left: built in the caller
    finally:
        engine.close()


def test_hybrid_lexical_side_follows_updates_deletes_and_other_writers(tmp_path: Path) -> None:
    # HashEmbedder vectors carry no meaning, so what ranks first here is the lexical side.
    emb = HashEmbedder()
    with MemoryStore(tmp_path / "db", embedder=emb) as store:
        # Random vectors differ by up to ~0.2 in cosine: let the lexical side outweigh them.
        store._hybrid.config = replace(DEFAULT_CONFIG, lexical_weight=1.0)
        filler = [NewMemory(f"note number {i} about nothing") for i in range(30)]
        store.add_many("u", filler, dedup=False)
        m = store.add("u", "User keeps zebras in the garden")
        assert store.search("u", "zebras", top_k=1)[0][0].id == m.id
        store.update("u", m.id, "User keeps giraffes in the garden")
        assert store.search("u", "giraffes", top_k=1)[0][0].id == m.id
        assert store.search("u", "zebras", top_k=1)[0][1] < 1.0  # no lexical bonus left
        with MemoryStore(tmp_path / "db", embedder=emb) as other:  # another writer
            n = other.add("u", "User collects vintage typewriters")
        assert store.search("u", "typewriters", top_k=1)[0][0].id == n.id
        store.delete("u", n.id)
        assert all(mem.id != n.id for mem, _ in store.search("u", "typewriters", top_k=40))
        only = store.search("u", "giraffes", top_k=3, category="preference")
        assert only == []  # filters apply to lexical candidates too


def _texts(results: list[tuple[Any, float]]) -> list[tuple[str, float]]:
    return [(m.text, round(s, 9)) for m, s in results]


def test_prefetched_lexical_side_ranks_exactly_as_the_inline_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder()) as store:
        rows = [NewMemory(f"{w} note {i} on the {w} garden") for i, w in enumerate(WORDS * 6)]
        store.add_many("u", rows, dedup=False)
        queries = [f"{w} garden" for w in WORDS] + ["note 7", "nothing matches this"]
        prefetched = [_texts(store.search("u", q, top_k=8)) for q in queries]
        # The same searches with the prefetch turned off (lexical side run inline).
        monkeypatch.setattr(hybrid.HybridSearcher, "prefetch", lambda *a, **k: None)
        assert [_texts(store.search("u", q, top_k=8)) for q in queries] == prefetched
        assert prefetched[0][0][0].startswith(WORDS[0])


def test_search_does_not_wait_for_a_busy_prefetch_pool(tmp_path: Path) -> None:
    release = threading.Event()
    pool = hybrid._prefetch_pool()
    blockers = [pool.submit(release.wait, 30) for _ in range(hybrid.PREFETCH_THREADS)]
    try:
        with MemoryStore(tmp_path / "db", embedder=HashEmbedder()) as store:
            m = store.add("u", "User keeps zebras in the garden")
            store.add("u", "User reads about trains")
            # Every pool thread is blocked: the search runs its lexical side inline, now.
            assert store.search("u", "zebras", top_k=1)[0][0].id == m.id
            assert not any(b.done() for b in blockers)  # it did not wait for the pool
    finally:
        release.set()
        for b in blockers:
            b.result(30)


def _child_searches(path: str, queue: Any) -> None:
    store = MemoryStore.open(path, embedder=HashEmbedder())
    found = [m.text for m, _ in store.search("u", "zebras", top_k=1)]
    # The parent's pool threads do not exist here: the child's pool must be a working one.
    pool = hybrid._prefetch_pool()
    jobs = [pool.submit(os.getpid) for _ in range(2 * hybrid.PREFETCH_THREADS)]
    queue.put((found, all(job.result(timeout=20) == os.getpid() for job in jobs)))


def test_a_forked_child_searches_with_its_own_prefetch_pool(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    store = MemoryStore.open(path, embedder=HashEmbedder())
    store.add("u", "User keeps zebras in the garden")
    store.add("u", "User reads about trains")
    assert store.search("u", "zebras", top_k=1)[0][0].text.endswith("garden")
    # Start every thread of the parent's pool (each task waits until all are running).
    barrier = threading.Barrier(hybrid.PREFETCH_THREADS)
    pool = hybrid._prefetch_pool()
    for job in [pool.submit(barrier.wait, 20) for _ in range(hybrid.PREFETCH_THREADS)]:
        job.result(30)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_searches, args=(path, queue))
    proc.start()
    try:
        assert queue.get(timeout=60) == (["User keeps zebras in the garden"], True)
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    store.close()


_SEARCH_AT_EXIT = """
import atexit
from headroom.memory.store.store import MemoryStore
from tests.store_helpers import HashEmbedder

store = MemoryStore({path!r}, embedder=HashEmbedder())
store.add("u", "User keeps zebras in the garden")


def at_exit() -> None:
    print("found:", [m.text for m, _ in store.search("u", "zebras", top_k=1)])


atexit.register(at_exit)
"""


def test_a_text_search_works_at_interpreter_exit(tmp_path: Path) -> None:
    # atexit handlers run after concurrent.futures stops taking work: the lexical side of a
    # search from one (or from a daemon thread then) must run inline, not raise.
    import subprocess
    import sys

    code = _SEARCH_AT_EXIT.format(path=str(tmp_path / "db"))
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "found: ['User keeps zebras in the garden']" in done.stdout, done.stderr


class _FailingEmbedder(HashEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def embed(self, texts: Any) -> Any:
        if self.fail:
            raise RuntimeError("embedding service down")
        return super().embed(texts)


def _child_searches_once(path: str, queue: Any) -> None:
    store = MemoryStore.open(path, embedder=HashEmbedder())
    queue.put([m.text for m, _ in store.search("u", "zebras", top_k=1)])


def test_a_forked_child_does_not_inherit_a_held_lexicon_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "db")
    embedder = _FailingEmbedder()
    store = MemoryStore.open(path, embedder=embedder)
    store.add("u", "User keeps zebras in the garden")
    store.search("u", "zebras")
    store.add("u", "User reads about trains")
    entered, release = threading.Event(), threading.Event()
    top, parent = _native.Lexicon.top, os.getpid()

    def held_top(index: Any, tokens: list[str], k: int, budget: int) -> Any:
        on_pool = threading.current_thread().name.startswith("headroom-lexical")
        if on_pool and os.getpid() == parent:
            entered.set()
            release.wait(30)
        return top(index, tokens, k, budget)

    monkeypatch.setattr(_native.Lexicon, "top", held_top)
    embedder.fail = True
    with pytest.raises(RuntimeError, match="embedding service down"):
        store.search("u", "zebras")
    embedder.fail = False
    # The search raised, but its prefetch goes on, holding the lexicon's lock, over a fork.
    assert entered.wait(30)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_searches_once, args=(path, queue))
    proc.start()
    release.set()
    try:
        assert queue.get(timeout=30) == ["User keeps zebras in the garden"]
    finally:
        proc.join(10)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        store.close()
    assert proc.exitcode == 0


class _SharedTopicEmbedder(HashEmbedder):
    """HashEmbedder vectors, plus one shared direction for texts that say "common": those
    memories resemble each other (and the user's mean) far more than the rest do."""

    def embed(self, texts: Any) -> Any:
        vecs = super().embed(texts)
        shared = super().embed(["the shared direction"])[0]
        for i, text in enumerate(texts):
            if "common" in text:
                mixed = vecs[i] + 2.0 * shared
                vecs[i] = mixed / np.linalg.norm(mixed)
        return vecs


def _centred_top(store: MemoryStore, emb: HashEmbedder, user: str, query: str, k: int) -> Any:
    memories = store.get_all(user)
    vecs = emb.embed([m.text for m in memories]).astype(np.float64)
    q = emb.embed([query])[0].astype(np.float64)
    beta = store._hybrid.config.centroid_weight
    if len(memories) >= hybrid.CENTRING_MIN_MEMORIES:
        c = vecs.mean(axis=0)
        scores = vecs @ q - beta * (vecs @ c - c @ c)
    else:
        scores = vecs @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [(memories[i].id, float(scores[i])) for i in order]


def test_hybrid_search_centres_the_query_on_the_users_mean_memory(tmp_path: Path) -> None:
    emb = _SharedTopicEmbedder()
    dense_only = replace(
        DEFAULT_CONFIG,
        lexical_weight=0.0,
        date_weight=0.0,
        context_weight=0.0,
        context_top_weight=0.0,
    )
    assert dense_only.centroid_weight > 0
    with MemoryStore(tmp_path / "db", embedder=emb) as store:
        store._hybrid.config = dense_only
        small = store.add_many("u", [NewMemory(f"common note {i}") for i in range(10)]).added
        query = "common note 3"
        # Below CENTRING_MIN_MEMORIES: plain cosine, so the exact match scores 1.
        assert store.search("u", query, top_k=1)[0][1] == pytest.approx(1.0, abs=1e-5)
        rows = [NewMemory(f"{'common' if i % 3 == 0 else 'rare'} note {i}") for i in range(10, 140)]
        store.add_many("u", rows, dedup=False)

        def check(q: str) -> None:
            got = [(m.id, s) for m, s in store.search("u", q, top_k=10)]
            want = _centred_top(store, emb, "u", q, 10)
            assert [i for i, _ in got] == [i for i, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)

        check(query)
        check("rare note 11")
        # The typical ("common") memories lose against the plain cosine, the rare ones gain.
        plain = dict((m.id, s) for m, s in store.search("u", query, top_k=50, hybrid=False))
        centred = dict((m.id, s) for m, s in store.search("u", query, top_k=50))
        assert centred[small[3].id] < plain[small[3].id] - 0.05
        # The centroid follows deletes, updates and another writer's adds.
        for memory in small[:5]:
            store.delete("u", memory.id)
        store.update("u", small[5].id, "rare note, once common")
        with MemoryStore(tmp_path / "db", embedder=emb) as other:
            other.add_many("u", [NewMemory(f"common extra {i}") for i in range(20)], dedup=False)
        check(query)
        check("common extra 4")


def _sum_in_step(store: MemoryStore, user: str) -> None:
    store.search(user, "note", top_k=1)  # catch up
    total, count, _ = store.backend.log.vector_sum(user)
    lexicon = store.backend._lexical.loaded(user)
    assert lexicon is not None
    vectors = lexicon.vectors
    assert vectors is not None and vectors[1] == count
    assert np.allclose(vectors[0], total, atol=1e-6)


def test_a_write_landing_during_the_catch_up_is_summed_once(tmp_path: Path) -> None:
    # The catch-up reads the user's seq, then the changes: another writer's adds that land in
    # between come back from changes now and again (after that seq) at the next catch-up.
    def other_writer_adds(texts: list[str]) -> None:
        with MemoryStore(tmp_path / "db", embedder=HashEmbedder(64), sync="off") as writer:
            writer.add_many("u", [NewMemory(t) for t in texts], dedup=False)

    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(64), sync="off") as store:
        store.add_many("u", [NewMemory(f"note {i}") for i in range(120)], dedup=False)
        store.search("u", "note", top_k=1)
        other_writer_adds([f"more {i}" for i in range(3)])
        log = store.backend.log

        class LateWriteLog:
            fired = False

            def __getattr__(self, name: str) -> Any:
                return getattr(log, name)

            def changes(self, user: str, since: int) -> Any:
                if not LateWriteLog.fired:
                    LateWriteLog.fired = True
                    other_writer_adds([f"late {i}" for i in range(5)])
                return log.changes(user, since)

        store.backend._lexical.get(LateWriteLog(), "u")
        assert LateWriteLog.fired
        _sum_in_step(store, "u")


def test_searches_racing_a_writer_keep_the_vector_sum(tmp_path: Path) -> None:
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(64), sync="off") as store:
        store.add_many("u", [NewMemory(f"note {i}") for i in range(150)], dedup=False)
        store.search("u", "note", top_k=1)
        done = threading.Event()

        def writer() -> None:
            try:
                for i in range(600):
                    store.add("u", f"written {i}")
            finally:
                done.set()

        def searcher() -> None:
            while not done.is_set():
                store.search("u", "note 3", top_k=5)

        threads = [threading.Thread(target=writer)]
        threads += [threading.Thread(target=searcher) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert done.is_set()
        _sum_in_step(store, "u")


def test_a_memory_written_during_a_full_sum_and_deleted_after_leaves_it(tmp_path: Path) -> None:
    # The full sum reads later than the catch-up's target seq, so it may hold a vector written
    # after that seq; once that memory is deleted, changes() since the target reports it nowhere.
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(64), sync="off") as store:
        store.add_many("u", [NewMemory(f"note {i}") for i in range(120)], dedup=False)
        log = store.backend.log
        late: list[str] = []

        class LateWriteLog:
            def __getattr__(self, name: str) -> Any:
                return getattr(log, name)

            def vector_sum(self, user: str) -> Any:
                if not late:
                    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(64)) as writer:
                        late.append(writer.add("u", "written during the sum").id)
                return log.vector_sum(user)

        store.backend._lexical.get(LateWriteLog(), "u")
        assert late
        store.delete("u", late[0])
        _sum_in_step(store, "u")
