"""Secure delete of a user above the ANN threshold: after ``forget`` no file of the store holds a
byte of the forgotten memories' text or of their float32 vectors (the hnswlib snapshots in
``indexes/`` included), and the other memories stay searchable through the index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_helpers import HashEmbedder

from headroom.memory.store.store import MemoryStore, NewMemory

ANN = 64  # users with this many live memories or more are searched through hnswlib
N = 200


def _files(db: Path) -> dict[Path, bytes]:
    files = {p: p.read_bytes() for p in db.rglob("*") if p.is_file()}
    assert files
    return files


def _needles(text: str, vector: np.ndarray) -> list[bytes]:
    """The text and the vector's raw bytes, whole and as distinctive 32-byte slices (a file
    holding only part of the vector, or the vector at another alignment, still shows)."""
    raw = np.ascontiguousarray(vector, np.float32).tobytes()
    assert len(raw) == 384 * 4
    return [text.encode("utf-8"), raw] + [raw[i : i + 32] for i in (0, 512, len(raw) - 32)]


def _leaks(db: Path, needles: list[bytes]) -> list[str]:
    return [
        f"{path.relative_to(db)} holds {needle[:16]!r}..."
        for path, data in _files(db).items()
        for needle in needles
        if needle in data
    ]


def _text(user: str, i: int) -> str:
    return f"{user} memory number {i} marker-{user}-{i:04d}"


def _build(db: Path, emb: HashEmbedder) -> None:
    with MemoryStore(db, embedder=emb, ann_threshold=ANN, sync="off") as store:
        for user in ("alice", "bob"):
            items = [NewMemory(_text(user, i), ("fact", "preference")[i % 2]) for i in range(N)]
            store.add_many(user, items, dedup=False)
            # A search through hnswlib builds the index; closing snapshots it.
            assert store.search(user, _text(user, 5), top_k=1)[0][0].text == _text(user, 5)


def _snapshot_files(db: Path) -> list[Path]:
    return sorted(p for p in (db / "indexes").glob("*") if p.suffix in (".hnsw", ".meta"))


def test_forget_leaves_no_text_or_vector_bytes_in_any_file_of_an_ann_user(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    emb = HashEmbedder()
    _build(db, emb)
    assert len([p for p in _snapshot_files(db) if p.suffix == ".hnsw"]) == 2  # both users

    with MemoryStore(db, embedder=emb, ann_threshold=ANN, sync="off") as store:
        alice = store.get_all("alice")
        doomed = alice[10:13]
        # One of them gets a second version: both versions (texts and vectors) must go.
        old_text = doomed[0].text
        updated_text = old_text + " (revised)"
        store.update("alice", doomed[0].id, updated_text)
        texts = [updated_text, old_text] + [m.text for m in doomed[1:]]
        needles = [n for t in texts for n in _needles(t, emb.embed([t])[0])]
        # A search loads the snapshot and brings the index up to date (with the new version).
        assert store.search("alice", updated_text, top_k=1)[0][0].id == doomed[0].id
        store.close()  # snapshots the index again, now holding the updated vector too
        # The premise: the bytes are there to be found, in the snapshot as in the log.
        leaks = _leaks(db, needles)
        assert any(".hnsw" in leak for leak in leaks) and any(".log" in leak for leak in leaks)

    with MemoryStore(db, embedder=emb, ann_threshold=ANN, sync="off") as store:
        assert store.search("alice", _text("alice", 20), top_k=1)[0][0].text == _text("alice", 20)
        assert store.forget("alice", [m.id for m in doomed]) == 3
        assert _leaks(db, needles) == []
        kept = [m for m in alice if m.id not in {d.id for d in doomed}]
        assert [m.id for m in store.get_all("alice")] == [m.id for m in kept]
        assert all(store.history("alice", m.id) == [] for m in doomed)
        for i in (0, 11, 57, 199):  # through hnswlib (alice is still above the threshold)
            top = store.search("alice", emb.embed([_text("alice", i)])[0], top_k=3)
            if i == 11:
                assert all(m.id not in {d.id for d in doomed} for m, _ in top)
            else:
                assert top[0][0].text == _text("alice", i)
        only = store.search("alice", _text("alice", 3), top_k=10, category="preference")
        assert len(only) == 10 and all(m.category == "preference" for m, _ in only)
    # The snapshot written at close holds none of it either.
    assert any(p.suffix == ".hnsw" for p in _snapshot_files(db))
    assert _leaks(db, needles) == []

    # Forget the whole user: every text and vector of alice goes; bob stays whole.
    alice_needles = [n for m in kept for n in _needles(m.text, emb.embed([m.text])[0])]
    bob_needles = [_text("bob", i).encode() for i in range(N)]
    with MemoryStore(db, embedder=emb, ann_threshold=ANN, sync="off") as store:
        assert store.search("alice", _text("alice", 30), top_k=1)[0][0].text == _text("alice", 30)
        assert store.search("bob", _text("bob", 30), top_k=1)[0][0].text == _text("bob", 30)
        assert store.forget("alice") == N - 3
        assert _leaks(db, alice_needles + needles) == []
        assert store.get_all("alice") == [] and store.search("alice", "memory", top_k=5) == []
        assert len(store.get_all("bob")) == N
        for i in (0, 77, 199):
            assert store.search("bob", _text("bob", i), top_k=1)[0][0].text == _text("bob", i)
    assert _leaks(db, alice_needles + needles) == []
    blob = b"".join(_files(db).values())
    assert all(needle in blob for needle in bob_needles)
    with MemoryStore(db, embedder=emb, ann_threshold=ANN) as store:
        assert store.verify()["ok"]
        assert store.search("bob", _text("bob", 42), top_k=1)[0][0].text == _text("bob", 42)


@pytest.mark.parametrize("whole_user", [False, True], ids=["ids", "user"])
def test_another_open_handle_does_not_write_forgotten_vectors_back(
    tmp_path: Path, whole_user: bool
) -> None:
    # Another handle on the store (another worker process, another MemoryStore) holds the
    # user's hnswlib index in memory, ahead of its last snapshot; it must not write the
    # forgotten vectors back into indexes/ when it closes after the forget.
    db = tmp_path / "db"
    emb = HashEmbedder()
    _build(db, emb)
    other = MemoryStore(db, embedder=emb, ann_threshold=ANN, sync="off")
    try:
        extra = [NewMemory(f"late memory {i} marker-late-{i}") for i in range(20)]
        other.add_many("alice", extra, dedup=False)
        assert other.search("alice", "late memory 3", top_k=1)[0][0].text.startswith("late")
        with MemoryStore(db, embedder=emb, ann_threshold=ANN, sync="off") as store:
            doomed = [m for m in store.get_all("alice") if "late" in m.text][:5]
            needles = [n for m in doomed for n in _needles(m.text, emb.embed([m.text])[0])]
            if whole_user:
                doomed = store.get_all("alice")
                needles = [
                    n for m in doomed[::25] for n in _needles(m.text, emb.embed([m.text])[0])
                ]
                store.forget("alice")
            else:
                store.forget("alice", [m.id for m in doomed])
            assert _leaks(db, needles) == []
    finally:
        other.close()
    assert _leaks(db, needles) == []
