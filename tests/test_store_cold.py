"""A reopened store's first search uses the snapshots left by the last close (no cold rebuild),
and answers exactly as indexes built afresh from the log would.

The hnswlib snapshot stores no label table: what each label is comes from the log at load, and a
label the log no longer has live (deleted or updated after the snapshot) is marked
deleted in the graph, never returned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import HashEmbedder

from headroom.memory.store.local import index as index_module
from headroom.memory.store.store import MemoryStore, NewMemory

ANN = 64
N = 300


def _texts(n: int) -> list[str]:
    animals = ["zebras", "otters", "herons", "lynxes", "bison", "moles", "wrens"]
    return [f"note {i} about {animals[i % 7]} and item{i}" for i in range(n)]


def _results(store: MemoryStore, query: str) -> list[tuple[str, str]]:
    return [(m.id, m.text) for m, _ in store.search("u", query, top_k=10)]


def test_a_reopened_store_searches_from_its_snapshots_as_a_fresh_build_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    emb = HashEmbedder(32)
    with MemoryStore(db, embedder=emb, ann_threshold=ANN) as store:
        added = store.add_many("u", [NewMemory(t) for t in _texts(N)], dedup=False).added
        store.search("u", "zebras", top_k=3)  # builds both indexes; close snapshots them
    assert {p.suffix for p in (db / "indexes").iterdir()} == {".hnsw", ".meta", ".lex"}
    # After the snapshots: deletes and an update by another handle (never searched). (A forget
    # would drop the user's snapshots.)
    with MemoryStore(db, embedder=emb, ann_threshold=ANN) as other:
        other.delete("u", added[1].id)
        other.update("u", added[2].id, "note about otters, rewritten")
        other.delete("u", added[3].id)
    built: list[str] = []
    init = index_module.UserIndex.__init__

    def counting_init(self: object, user_id: str, dim: int, *, empty: bool = True) -> None:
        if empty:
            built.append(user_id)
        init(self, user_id, dim, empty=empty)  # type: ignore[arg-type]

    monkeypatch.setattr(index_module.UserIndex, "__init__", counting_init)
    queries = ["note 1 about otters", "note about otters, rewritten", "note 3", "item2"]
    with MemoryStore(db, embedder=emb, ann_threshold=ANN) as store:
        got = {q: _results(store, q) for q in queries}
        assert store.backend.engine.wait_for_index("u", timeout=60)  # it loads in the background
        loaded = store.backend.engine._indexes["u"]
        # The three labels no longer live were marked deleted in the loaded graph.
        assert loaded.deleted_since_build == 3 and loaded.live_count == N - 2
    assert built == []  # loaded, not built
    monkeypatch.undo()
    gone = {added[1].id, added[3].id}
    for rows in got.values():
        assert not gone & {memory_id for memory_id, _ in rows}
        assert (added[2].id, added[2].text) not in rows
    assert (added[2].id, "note about otters, rewritten") in got["note about otters, rewritten"]
    # The same answers from indexes built afresh (snapshots removed first).
    for path in (db / "indexes").iterdir():
        path.unlink()
    with MemoryStore(db, embedder=emb, ann_threshold=ANN) as fresh:
        assert {q: _results(fresh, q) for q in queries} == got
