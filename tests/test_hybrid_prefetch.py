"""When the hybrid search hands its lexical side to the prefetch pool: only while a query is
embedded. A query whose vector is cached runs it inline, with the same results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headroom.memory.embedders import get_embedder
from headroom.memory.embedders.base import embed_queries, query_cached
from headroom.memory.embedders.lru import VectorCache
from headroom.memory.store.store import MemoryStore, NewMemory

TOPICS = ["hiking in the Alps", "a sourdough starter", "the PostgreSQL migration", "jazz piano"]


def test_a_cache_answers_membership_without_counting_or_reordering() -> None:
    cache = VectorCache(2)
    cache.put("a", np.ones(3, np.float32))
    cache.put("b", np.ones(3, np.float32))
    assert "a" in cache and "c" not in cache
    assert (cache.hits, cache.misses) == (0, 0)
    cache.put("c", np.ones(3, np.float32))  # "a" was not marked used: it goes first
    assert "a" not in cache and "b" in cache
    assert "x" not in VectorCache(0)


def test_query_cached_says_whether_embed_queries_would_run_the_model() -> None:
    embedder = get_embedder(threads=1)
    text = "Which hiking boots did I say I liked?"
    assert not query_cached(embedder, text)
    embed_queries(embedder, [text])
    assert query_cached(embedder, text)
    embedder.query_cache.clear()
    assert not query_cached(embedder, text)

    class Plain:  # an embedder without a query cache: never "cached"
        model_id, dim = "plain", 3

        def embed(self, texts: Any) -> np.ndarray:
            return np.ones((len(texts), 3), np.float32) / np.sqrt(3)

    assert not query_cached(Plain(), text)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with MemoryStore(tmp_path / "db", embedder=get_embedder(threads=1)) as store:
        memories = [
            NewMemory(f"Note {i}: the user talked about {TOPICS[i % 4]} on day {i}.")
            for i in range(160)  # past CENTRING_MIN_MEMORIES: the centred path
        ]
        store.add_many("u", memories, dedup=False)
        yield store


def test_a_cached_query_runs_the_lexical_side_inline_with_the_same_results(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[str] = []
    prefetch = store._hybrid.prefetch

    def counting(backend: Any, user_id: str, query: str) -> Any:
        submitted.append(query)
        return prefetch(backend, user_id, query)

    monkeypatch.setattr(store._hybrid, "prefetch", counting)
    for query in ("What did the user say about sourdough?", "jazz piano on day 7"):
        first = store.search("u", query, top_k=8)  # embedded: the lexical side prefetched
        assert submitted == [query]
        again = store.search("u", query, top_k=8)  # vector cached: inline
        assert submitted == [query]
        assert [(m.id, s) for m, s in again] == [(m.id, s) for m, s in first]
        assert len(first) == 8
        submitted.clear()
    # A dense search never prefetches.
    store.search("u", "something new entirely", top_k=3, hybrid=False)
    assert submitted == []
