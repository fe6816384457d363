"""Hybrid search: gather a backend's dense and lexical candidates, then rank them.

This is what ``MemoryStore.search`` runs for a text query (and so what the wrapper injects):
the dense top-``pool`` from :meth:`Backend.search` with the query centred on the user's mean
memory, and the lexical top-``pool`` from the user's BM25 scorer (:meth:`Backend.ranking`),
filtered alike, ordered by :func:`headroom.memory.store.ranking.rerank` with the tuned
configuration.

The lexical side needs only the query text, so :meth:`HybridSearcher.prefetch` starts it on a
small shared thread pool while the caller embeds the query: onnxruntime releases the GIL while
it runs, so on a machine with a free core the lexical candidates cost no wall time. A prefetch
that has not started by the time the caller needs it is cancelled and run inline instead (a
busy pool never makes a search wait); one still running while the backend can tell the user's
mean vector without it (``Backend.early_vector_mean``: a fresh process loading the user's
lexical state) runs beside the dense search, which needs only that mean. A caller with
nothing to overlap (the query's vector is cached) passes no prefetch: the lexical side then
runs inline, since the search would wait for it all the same and the hand-over to a pool
thread only adds to that (bench/README.md).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from .. import process
from ..types import Memory
from .backend import Backend, Filter, UserRanking
from .ranking import DEFAULT_CONFIG, RankConfig, query_time_window, rerank_columns

#: Candidates taken from each side (dense and lexical) before fusion.
DEFAULT_POOL = 50

#: Users with fewer live memories are searched without centring: each memory is 1/n of the
#: mean, so in a small store a memory resembles the centroid because it is part of it.
CENTRING_MIN_MEMORIES = 100

#: Threads of the shared prefetch pool: lexical work holds the GIL, so more would only queue.
PREFETCH_THREADS = 2

#: The user's ranking state, caught up, and its lexical top-``pool`` for one query.
Lexical = tuple[UserRanking, list[tuple[str, float]]]


def _new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="headroom-lexical")


#: One per process; a forked child starts a new one on demand (the parent's threads are gone).
_POOL = process.PerProcess(_new_pool)


def _prefetch_pool() -> ThreadPoolExecutor:
    return _POOL.get()


class HybridSearcher:
    """The fused search over a backend: gather candidates, then rank."""

    def __init__(self, config: RankConfig = DEFAULT_CONFIG, pool: int = DEFAULT_POOL) -> None:
        self.config = config
        self.pool = pool

    def lexical_candidates(self, backend: Backend, user_id: str, query: str) -> Lexical:
        """The user's ranking state, caught up, and its top-``pool`` for ``query``."""
        ranking = backend.ranking(user_id)
        return ranking, ranking.top(query, self.pool)

    def prefetch(self, backend: Backend, user_id: str, query: str) -> Future[Lexical] | None:
        """Start :meth:`lexical_candidates` on the shared pool; hand the future to search().

        None when the pool takes no more work (the interpreter is exiting: a search from an
        ``atexit`` handler or a daemon thread): search() then runs the lexical side inline.
        """
        try:
            return _prefetch_pool().submit(self.lexical_candidates, backend, user_id, query)
        except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
            return None

    def search(
        self,
        backend: Backend,
        user_id: str,
        query: str,
        vector: npt.NDArray[np.float32],
        top_k: int,
        where: Filter,
        prefetched: Future[Lexical] | None = None,
    ) -> list[tuple[Memory, float]]:
        """Top-k ``(memory, fused score)`` of the user's live memories passing ``where``.

        ``vector`` is ``query`` embedded. ``prefetched`` is :meth:`prefetch` of the same query
        (its result, or its exception, is what the lexical side returns).
        """
        running = prefetched is not None and not prefetched.done() and not prefetched.cancel()
        early = backend.early_vector_mean(user_id, CENTRING_MIN_MEMORIES) if running else None
        if prefetched is not None and early is not None:
            # In a fresh process the user's ranking state may still be loading: the dense side
            # needs only the mean vector, which the backend tells sooner, so it runs meanwhile
            # and the lexical candidates join after.
            dense = self._dense(backend, user_id, vector, early[0], top_k, where)
            ranking, lexical = prefetched.result()
            mean = ranking.vector_mean(CENTRING_MIN_MEMORIES)
            if not _same_vector(mean, early[0]):  # a write landed between the two reads
                dense = self._dense(backend, user_id, vector, mean, top_k, where)
        else:
            if prefetched is None or prefetched.cancelled():
                ranking, lexical = self.lexical_candidates(backend, user_id, query)
            else:
                ranking, lexical = prefetched.result()
            mean = ranking.vector_mean(CENTRING_MIN_MEMORIES)
            dense = self._dense(backend, user_id, vector, mean, top_k, where)
        ids, scores, rows = self._merge(backend, user_id, dense, lexical, where)
        if not ids:
            return []
        return self._rank(backend, user_id, query, ranking, ids, scores, rows, top_k)

    def _dense(
        self,
        backend: Backend,
        user_id: str,
        vector: npt.NDArray[np.float32],
        mean: npt.NDArray[np.float32] | None,
        top_k: int,
        where: Filter,
    ) -> list[tuple[str, float]]:
        """The dense top-``pool`` passing ``where``, scored with the query centred on ``mean``
        (the user's mean vector, None below :data:`CENTRING_MIN_MEMORIES` memories)."""
        centred, offset = centred_query(vector, mean, self.config.centroid_weight)
        hits = backend.search(user_id, centred, max(self.pool, top_k), where)
        return [(memory_id, score + offset) for memory_id, score in hits]

    def _merge(
        self,
        backend: Backend,
        user_id: str,
        dense: list[tuple[str, float]],
        lexical: list[tuple[str, float]],
        where: Filter,
    ) -> tuple[list[str], list[float | None], dict[str, Memory]]:
        """The candidate set: dense hits then lexical-only ones (score None) that pass
        ``where``, and the memories read on the way."""
        ids = [memory_id for memory_id, _ in dense]
        scores: list[float | None] = [score for _, score in dense]
        seen = set(ids)
        rows: dict[str, Memory] = {}
        for memory_id, _ in lexical:
            if memory_id in seen:
                continue
            if not where.is_empty:
                memory = backend.get(user_id, memory_id)
                if memory is None or not where.accepts(memory):
                    continue
                rows[memory_id] = memory
            seen.add(memory_id)
            ids.append(memory_id)
            scores.append(None)
        return ids, scores, rows

    def _rank(
        self,
        backend: Backend,
        user_id: str,
        query: str,
        ranking: UserRanking,
        ids: list[str],
        scores: list[float | None],
        rows: dict[str, Memory],
        top_k: int,
    ) -> list[tuple[Memory, float]]:
        """Order the candidates by :func:`rerank`; read the memories returned."""
        need_dates = self.config.uses_context or (
            bool(self.config.date_weight) and query_time_window(query) is not None
        )
        created = ranking.created_many(ids) if need_dates else [None] * len(ids)
        ranked = rerank_columns(query, ids, scores, created, ranking, self.config)
        results: list[tuple[Memory, float]] = []
        start = 0
        while len(results) < top_k and start < len(ranked):
            # The rows of as many as are still wanted, in one read (a server backend: one
            # round trip); more only when some were deleted by another writer meanwhile.
            chunk = ranked[start : start + top_k - len(results)]
            start += len(chunk)
            missing = [ids[i] for i, _ in chunk if ids[i] not in rows]
            if missing:
                rows.update(backend.get_many(user_id, missing))
            for i, score in chunk:
                memory = rows.get(ids[i])
                if memory is not None:
                    results.append((memory, float(score)))
        return results


def _same_vector(a: npt.NDArray[np.float32] | None, b: npt.NDArray[np.float32] | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def centred_query(
    vector: npt.NDArray[np.float32], centroid: npt.NDArray[np.float32] | None, weight: float
) -> tuple[npt.NDArray[np.float32], float]:
    """The query vector centred on a user's mean memory, and the offset to add to its scores.

    ``memory . (vector - weight * centroid) + weight * |centroid|^2`` is the memory's cosine
    less ``weight`` times how much more it resembles the user's average memory than the
    average memory does (see ``RankConfig.centroid_weight``). With no centroid or a zero
    weight: the vector unchanged and 0.
    """
    if centroid is None or not weight:
        return vector, 0.0
    centred = (vector - np.float32(weight) * centroid).astype(np.float32)
    return centred, float(weight) * float(centroid @ centroid)
