"""Hybrid search: the dense candidates of the engine plus a per-user lexical index, fused.

This is what ``MemoryStore.search`` runs for a text query (and so what the wrapper injects):
dense top-``pool`` from the engine and BM25 top-``pool`` from the user's ``LexicalIndex``,
filtered alike, reordered by :func:`headroom.memory.store.ranking.rerank` with the configuration
tuned on LoCoMo's tune split (bench/README.md lists every setting tried and what it scored).

The lexical index is derived from the log exactly like the vector index: built from the user's
live memories on first use, then kept current from the log's ``changes`` (labels are the
sequence numbers of live versions), and dropped when the log is compacted. It is held in
memory only; rebuilding costs ~70 µs per memory on first use.

The same per-user state holds the sum of the user's live vectors (from the log's compiled
core, then kept current from ``changes``): the dense side searches with the query centred on
the user's mean memory (``RankConfig.centroid_weight``; see :func:`centred_query`).

The lexical side needs only the query text, so :meth:`HybridSearcher.prefetch` starts it on a
small shared thread pool while the caller embeds the query: onnxruntime releases the GIL while
it runs, so on a machine with a free core the lexical candidates cost no wall time. A prefetch
that has not started by the time the caller needs it is cancelled and run inline instead (a
busy pool never makes a search wait).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from ..types import from_timestamp_us
from .ranking import (
    DEFAULT_CONFIG,
    Candidate,
    LexicalIndex,
    RankConfig,
    query_time_window,
    rerank,
)

#: Candidates taken from each side (dense and lexical) before fusion; measured: 20 lost at
#: R@10, 100 tied 50 and cost more.
DEFAULT_POOL = 50

#: Users with fewer live memories are searched without centring: each memory is 1/n of the
#: mean, so in a small store a memory mostly resembles the centroid because it is part of it
#: (at 4 memories centring would move a score by 0.15 for that alone; at 100, by 0.006).
CENTRING_MIN_MEMORIES = 100

#: Threads of the shared prefetch pool: lexical work holds the GIL, so more would only queue.
PREFETCH_THREADS = 2

Row = dict[str, Any]

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _prefetch_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="headroom-lexical")
        return _pool


def _forget_pool_in_child() -> None:
    # The parent's worker threads do not exist in a forked child; a new pool starts on demand.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


#: The sum of a user's live vectors, how many, and the user seq it is exact at.
VectorTotal = tuple[npt.NDArray[np.float64], int, int]


@dataclass
class _Lexicon:
    """What the hybrid search derives from the log for one user, caught up together: the
    lexical index (with each memory's label and date) and the sum of the live vectors."""

    index: LexicalIndex = field(default_factory=LexicalIndex)
    label_ids: dict[int, str] = field(default_factory=dict)
    #: created_at (µs) of every indexed memory: the ranking's date terms need no row reads.
    created: dict[str, int] = field(default_factory=dict)
    #: (sum in float64, count, seq) of the user's live vectors: exact at that user seq (every
    #: vector with a label at or below it is in, none above). Replaced as one tuple, never
    #: changed in place, so a reader without the lock sees a consistent sum and count.
    vectors: VectorTotal | None = None
    covered_seq: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def centroid(self) -> npt.NDArray[np.float32] | None:
        """The mean of the user's live vectors; None below :data:`CENTRING_MIN_MEMORIES`."""
        vectors = self.vectors
        if vectors is None or vectors[1] < CENTRING_MIN_MEMORIES:
            return None
        return (vectors[0] / vectors[1]).astype(np.float32)


#: A user's lexical index, caught up, and its top-``pool`` ``(id, BM25)`` for one query.
Lexical = tuple[_Lexicon, list[tuple[str, float]]]


class HybridSearcher:
    """Per-user lexical indexes and vector sums over one engine's log, and the fused search."""

    def __init__(self, config: RankConfig = DEFAULT_CONFIG, pool: int = DEFAULT_POOL) -> None:
        self.config = config
        self.pool = pool
        self._lexicons: dict[str, _Lexicon] = {}
        self._lock = threading.Lock()
        self._generation = -1

    def drop(self, user_id: str | None = None) -> None:
        """Forget one user's lexical index (all when None); it is rebuilt on next use."""
        with self._lock:
            if user_id is None:
                self._lexicons.clear()
            else:
                self._lexicons.pop(user_id, None)

    def warm(self, log: Any, user_id: str) -> None:
        """Catch the user's lexical index up with the log now, if it is loaded."""
        with self._lock:
            loaded = user_id in self._lexicons
        if loaded:
            self._lexicon(log, user_id)

    def _lexicon(self, log: Any, user_id: str) -> _Lexicon:
        generation = int(log.generation)
        with self._lock:
            if generation != self._generation:
                self._lexicons.clear()
                self._generation = generation
            lexicon = self._lexicons.get(user_id)
            if lexicon is None:
                lexicon = self._lexicons[user_id] = _Lexicon()
        target = int(log.user_seq(user_id))
        if target == lexicon.covered_seq:
            return lexicon
        with lexicon.lock:
            if target == lexicon.covered_seq:
                return lexicon
            if lexicon.covered_seq < 0:
                rows = log.list(user_id, 0)
                lexicon.index.add_many((row["id"], row["text"]) for row in rows)
                lexicon.label_ids = {int(row["seq"]): row["id"] for row in rows}
                lexicon.created = {row["id"]: int(row["created_at"]) for row in rows}
                self._sum_vectors(log, user_id, lexicon)
            else:
                since = lexicon.covered_seq
                removed, added, vectors = log.changes(user_id, since)
                total = lexicon.vectors
                # Adding to the sum is exact only when it holds nothing past ``since``: a vector
                # written after ``since`` and removed since then is in neither list.
                if len(removed) or total is None or total[2] > since:
                    self._sum_vectors(log, user_id, lexicon)
                elif len(added):
                    lexicon.vectors = _add_vectors(total, added, vectors)
                for label in np.asarray(removed).tolist():
                    memory_id = lexicon.label_ids.pop(int(label), None)
                    if memory_id is not None:
                        lexicon.index.remove(memory_id)
                        lexicon.created.pop(memory_id, None)
                labels = np.asarray(added, np.uint64)
                for label, info in zip(labels.tolist(), log.resolve(user_id, labels), strict=True):
                    if info is None:
                        continue
                    row = log.get(user_id, info[0])
                    if row is not None:
                        lexicon.index.add(row["id"], row["text"])
                        lexicon.label_ids[int(label)] = row["id"]
                        lexicon.created[row["id"]] = int(row["created_at"])
            lexicon.covered_seq = target
        return lexicon

    @staticmethod
    def _sum_vectors(log: Any, user_id: str, lexicon: _Lexicon) -> None:
        # The whole sum again (compiled, ~1 ms per 10k memories): after a removal, or at build.
        # Its seq comes from the same read, so writes that land meanwhile are not counted twice.
        total, count, seq = log.vector_sum(user_id)
        lexicon.vectors = (np.asarray(total, np.float64), int(count), int(seq)) if count else None

    def lexical_candidates(self, log: Any, user_id: str, query: str) -> Lexical:
        """The user's lexical index, caught up with the log, and its top-``pool`` for ``query``."""
        lexicon = self._lexicon(log, user_id)
        with lexicon.lock:
            return lexicon, lexicon.index.top(query, self.pool)

    def prefetch(self, log: Any, user_id: str, query: str) -> Future[Lexical] | None:
        """Start :meth:`lexical_candidates` on the shared pool; hand the future to search().

        None when the pool takes no more work (the interpreter is exiting: a search from an
        ``atexit`` handler or a daemon thread): search() then runs the lexical side inline.
        """
        try:
            return _prefetch_pool().submit(self.lexical_candidates, log, user_id, query)
        except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
            return None

    def search(
        self,
        log: Any,
        dense_search: Callable[[npt.NDArray[np.float32], int], list[tuple[str, float]]],
        user_id: str,
        query: str,
        vector: npt.NDArray[np.float32],
        top_k: int,
        accept: Callable[[Row], bool] | None = None,
        prefetched: Future[Lexical] | None = None,
    ) -> list[tuple[Row, float]]:
        """Top-k ``(row, fused score)`` of the user's live memories, best first.

        ``vector`` is ``query`` embedded; ``dense_search(v, n)`` returns the engine's filtered top-n
        ``(id, dot product with v)``, and is given the query vector centred on the user's
        mean memory (:func:`centred_query`); ``accept(row)`` (None when the search has no
        filters) applies the same filters to lexical-only candidates. ``prefetched`` is
        :meth:`prefetch` of the same query (its result, or its exception, is what the
        lexical side returns). Candidates' dates come from the lexical index (no row reads);
        rows are read only to filter lexical-only candidates, when the ranking needs texts
        (``entity_weight``), and for the memories returned.
        """
        # The lexical side first: waiting on a running prefetch lets it finish at full speed,
        # where the dense search's native calls would hand it the GIL and then queue for it.
        if prefetched is None or prefetched.cancel():
            lexicon, lexical = self.lexical_candidates(log, user_id, query)
        else:
            lexicon, lexical = prefetched.result()
        centred, offset = centred_query(vector, lexicon.centroid(), self.config.centroid_weight)
        dense = [
            (memory_id, score + offset)
            for memory_id, score in dense_search(centred, max(self.pool, top_k))
        ]
        need_texts = bool(self.config.entity_weight)
        need_dates = self.config.uses_context or (
            bool(self.config.date_weight) and query_time_window(query) is not None
        )
        ids: list[str] = []
        scores: list[float | None] = []
        rows: dict[str, Row] = {}
        for memory_id, score in dense:
            if memory_id not in rows and memory_id not in ids:
                ids.append(memory_id)
                scores.append(score)
        dense_ids = set(ids)
        for memory_id, _ in lexical:
            if memory_id in dense_ids or memory_id in rows:
                continue
            if accept is not None:
                row = log.get(user_id, memory_id)
                if row is None or not accept(row):
                    continue
                rows[memory_id] = row
            ids.append(memory_id)
            scores.append(None)
        if need_texts:
            for memory_id in ids:
                if memory_id not in rows and (row := log.get(user_id, memory_id)) is not None:
                    rows[memory_id] = row
        if not ids:
            return []
        with lexicon.lock:
            created = lexicon.created if need_dates else {}
            candidates = [
                Candidate(
                    key=memory_id,
                    text=rows[memory_id]["text"] if memory_id in rows else "",
                    dense_score=score,
                    created_at=_created(created.get(memory_id)),
                )
                for memory_id, score in zip(ids, scores, strict=True)
            ]
            order = rerank(query, candidates, lexicon.index, self.config)
        results: list[tuple[Row, float]] = []
        for i, score in order:
            row = rows.get(ids[i]) or log.get(user_id, ids[i])
            if row is not None:  # None: deleted by another writer meanwhile
                results.append((row, float(score)))
                if len(results) == top_k:
                    break
        return results


def _add_vectors(
    vectors: VectorTotal, labels: npt.NDArray[np.uint64], added: npt.NDArray[np.float32]
) -> VectorTotal:
    """``vectors`` plus the added ones; the new seq is the highest label summed.

    ``changes`` is read after the catch-up's target seq, so the labels may run past it; the
    next catch-up then sees a sum ahead of its ``since`` and sums everything again.
    """
    total, count, seq = vectors
    labels = np.asarray(labels, np.uint64)
    extra = np.asarray(added, np.float32).sum(axis=0, dtype=np.float64)
    return total + extra, count + len(labels), max(seq, int(labels.max()))


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


def _created(created_us: int | None) -> datetime | None:
    return from_timestamp_us(created_us) if created_us else None
