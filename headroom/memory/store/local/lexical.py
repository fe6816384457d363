"""Per-user lexical state of the embedded backend: a BM25 index and the sum of the live vectors.

Derived from the log exactly like the vector index: built from the user's live memories on
first use, then kept current from the log's ``changes`` (labels are the sequence numbers of
live versions), and dropped when the log is compacted (its generation changes). It is held in
memory only and built on first use (costs: bench/README.md).

The vector sum (float64, from the compiled core's ``vector_sum``) gives the user's mean memory,
on which the hybrid search centres its query. It is kept current from ``changes`` too: added
vectors are summed in; after any removal the whole sum is taken again.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from ..ranking import RankingState, VectorTotal


class LexicalState:
    """Every user's :class:`RankingState` over one log, caught up on use."""

    def __init__(self) -> None:
        self._lexicons: dict[str, RankingState] = {}
        self._lock = threading.Lock()
        self._generation = -1

    def drop(self, user_id: str | None = None) -> None:
        """Forget one user's state (all when None); it is rebuilt on next use."""
        with self._lock:
            if user_id is None:
                self._lexicons.clear()
            else:
                self._lexicons.pop(user_id, None)

    def loaded(self, user_id: str) -> RankingState | None:
        """The user's state if it is held, without catching it up."""
        with self._lock:
            return self._lexicons.get(user_id)

    def warm(self, log: Any, user_id: str) -> None:
        """Catch the user's state up with the log now, if it is held."""
        if self.loaded(user_id) is not None:
            self.get(log, user_id)

    def get(self, log: Any, user_id: str) -> RankingState:
        """The user's state, caught up with every entry of the log so far."""
        generation = int(log.generation)
        with self._lock:
            if generation != self._generation:
                self._lexicons.clear()
                self._generation = generation
            lexicon = self._lexicons.get(user_id)
            if lexicon is None:
                lexicon = self._lexicons[user_id] = RankingState()
        target = int(log.user_seq(user_id))
        if target == lexicon.covered_seq:
            return lexicon
        with lexicon.lock:
            if target != lexicon.covered_seq:
                if lexicon.covered_seq < 0:
                    _build(log, user_id, lexicon)
                else:
                    _catch_up(log, user_id, lexicon)
                lexicon.covered_seq = target
        return lexicon


def _build(log: Any, user_id: str, lexicon: RankingState) -> None:
    rows = log.list(user_id, 0)
    lexicon.index.add_many((row["id"], row["text"]) for row in rows)
    lexicon.label_ids = {int(row["seq"]): row["id"] for row in rows}
    lexicon.created = {row["id"]: int(row["created_at"]) for row in rows}
    _sum_vectors(log, user_id, lexicon)


def _catch_up(log: Any, user_id: str, lexicon: RankingState) -> None:
    since = lexicon.covered_seq
    removed, added, vectors = log.changes(user_id, since)
    total = lexicon.vectors
    # Adding to the sum is exact only when it holds nothing past ``since``: a vector written
    # after ``since`` and removed since then is in neither list.
    if len(removed) or total is None or total[2] > since:
        _sum_vectors(log, user_id, lexicon)
    elif len(added):
        lexicon.vectors = _add_vectors(total, added, vectors)
    for label in np.asarray(removed).tolist():
        lexicon.remove(label)
    labels = np.asarray(added, np.uint64)
    for label, info in zip(labels.tolist(), log.resolve(user_id, labels), strict=True):
        if info is None:
            continue
        row = log.get(user_id, info[0])
        if row is not None:
            lexicon.add(label, row["id"], row["text"], row["created_at"])


def _sum_vectors(log: Any, user_id: str, lexicon: RankingState) -> None:
    # The whole sum again (one compiled pass): after a removal, or at build.
    # Its seq comes from the same read, so writes that land meanwhile are not counted twice.
    total, count, seq = log.vector_sum(user_id)
    lexicon.vectors = (np.asarray(total, np.float64), int(count), int(seq)) if count else None


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
