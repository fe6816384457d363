"""The engine: the native append-only log plus per-user vector indexes derived from it.

The engine takes vectors and never embeds (``MemoryStore`` adds the embedder on top). Small
users are searched exactly by the compiled core; a user with at least ``ann_threshold`` live
memories gets an hnswlib index (``index.UserIndex``) built from the log, kept current from the
log before each search, and snapshotted so a reopen does not rebuild it. A snapshot is loaded
on a background thread: until it is ready, the user's searches are exact scans (no cold start
waits for the graph to be read).
hnswlib's ``load_index`` holds the GIL while it runs (its binding does not release it): a
search that arrives during the load waits for it (~0.2 s at 100k memories, bench/README.md).

Contracts:
- ``search`` never returns another user's memories (indexes are per user; the log is keyed by
  user) and never more than the live matches; a filtered search returns k results whenever at
  least k memories match (hnswlib's filtered search falls back to the exact scan when it comes
  back short).
- After ``compact`` no snapshot file holds a vector of a deleted memory: compaction drops every
  snapshot and every in-memory index that saw a deletion; an index still loading then is
  discarded when it is ready.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .index import LabelInfo, UserIndex

#: Users with fewer live memories than this are searched exactly: below it the compiled exact
#: scan is the faster path (one thread, MiniLM vectors), and exact search has no recall loss.
#: The crossover is measured by `python -m bench store` (figures in bench/README.md).
DEFAULT_ANN_THRESHOLD = 4096

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: Snapshot an index again once it is this many log entries ahead of its last snapshot.
SNAPSHOT_EVERY = 2048

Entry = tuple[Any, ...]

#: The compiled core (native/); typed as Any: it is a pybind11 module without stubs.
_native: Any = importlib.import_module("headroom.memory.store.local._native")


class Engine:
    """The log and the derived per-user indexes of one store directory."""

    def __init__(
        self,
        path: str | Path,
        *,
        sync: str = "interval",
        sync_interval_ms: int = 100,
        segment_bytes: int = 64 << 20,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
    ) -> None:
        self.path = Path(path)
        self.log: Any = _native.Log(
            str(self.path),
            sync=sync,
            sync_interval_ms=sync_interval_ms,
            segment_bytes=segment_bytes,
        )
        self.ann_threshold = ann_threshold
        self._index_dir = self.path / "indexes"
        self._indexes: dict[str, UserIndex] = {}
        self._saved_seq: dict[str, int] = {}
        self._indexes_lock = threading.Lock()
        self._generation = self.log.generation
        #: Snapshot loads in progress (user -> loader thread), and a counter every drop bumps:
        #: a loader keeps its index only if no drop happened since it started.
        self._loading: dict[str, threading.Thread] = {}
        #: Users whose snapshot this process could not load: their index is built in the caller.
        self._unloadable: set[str] = set()
        self._epoch = 0

    # --- writes ------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append one atomic batch; returns the sequence numbers given to the entries."""
        seqs: list[int] = self.log.append(list(entries))
        return seqs

    def compact(self) -> dict[str, int]:
        """Rewrite the log without dead records; drop every snapshot and derived index."""
        report: dict[str, int] = self.log.compact()
        self._drop_all_indexes()
        return report

    def drop_user_index(self, user_id: str) -> None:
        """Forget the user's derived index and its snapshot (after a hard delete)."""
        with self._indexes_lock:
            self._indexes.pop(user_id, None)
            self._saved_seq.pop(user_id, None)
            self._loading.pop(user_id, None)  # a load under way now publishes nothing
            self._unloadable.discard(user_id)
            self._epoch += 1
        UserIndex.drop_snapshot(self._index_dir, user_id)

    # --- search ------------------------------------------------------------------------------

    def search(
        self,
        user_id: str,
        query: npt.NDArray[np.float32],
        k: int,
        *,
        categories: int = 0,
        t_min: int | None = None,
        t_max: int | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k ``(memory_id, score)`` of the user's live memories by dot product, best first.

        ``categories`` is a bit mask (``1 << code``; 0 = all); ``t_min``/``t_max`` bound
        ``created_at`` (microseconds, inclusive).
        """
        if k <= 0:
            return []
        lo = INT64_MIN if t_min is None else t_min
        hi = INT64_MAX if t_max is None else t_max
        self._check_generation()
        if self.log.count(user_id) < self.ann_threshold:
            exact: list[tuple[str, float]] = self.log.search(user_id, query, k, categories, lo, hi)
            return exact
        dim = int(query.shape[0])
        index = self._current_index(user_id, dim)
        if index is None:  # its snapshot is loading: scan where the vectors lie (no pack)
            scan: list[tuple[str, float]] = self.log.search(
                user_id, query, k, categories, lo, hi, pack=False
            )
            # Started after the scan: the loader's first steps hold the GIL for a while.
            self._start_load(user_id, dim)
            return scan
        filtered = bool(categories) or t_min is not None or t_max is not None
        with index.lock.read():
            info = index.info
            accept = None
            if filtered:

                def accept(label: int) -> bool:
                    found = info.get(label)
                    return found is not None and _passes(found, categories, lo, hi)

            labels, scores = index.search(query, k, accept)
            wanted = min(k, index.live_count)
            results = [
                (info[label][0], score)
                for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
                if label in info
            ]
        if len(results) < wanted:
            # hnswlib came back short (a selective filter): the exact scan is the truth.
            fallback: list[tuple[str, float]] = self.log.search(
                user_id, query, k, categories, lo, hi, pack=False
            )
            return fallback
        return results

    def warm(self, user_id: str) -> None:
        """Bring the user's derived index (if one is loaded) up to date with the log now.

        Called right after a write, on the writer's thread, so the next search does not pay
        for adding the new vectors to the hnswlib graph on the caller's critical path.
        """
        with self._indexes_lock:
            index = self._indexes.get(user_id)
        if index is not None:
            self._catch_up(index)

    def _current_index(self, user_id: str, dim: int) -> UserIndex | None:
        """The user's index, caught up with the log; None while its snapshot loads.

        With no index in memory: a snapshot on disk is to be loaded on a background thread
        (``_start_load``; the caller scans exactly meanwhile); without one the index is built
        here, from the log.
        """
        with self._indexes_lock:
            index = self._indexes.get(user_id)
            if index is None:
                if user_id in self._loading:
                    return None
                if user_id not in self._unloadable and UserIndex.has_snapshot(
                    self._index_dir, user_id
                ):
                    return None
                index = UserIndex(user_id, dim)
                self._indexes[user_id] = index
                self._saved_seq[user_id] = 0
        self._catch_up(index)
        return index

    def _start_load(self, user_id: str, dim: int) -> None:
        """Load the user's snapshot on a background thread, catch it up with the log and publish
        it, unless a drop happened meanwhile; a snapshot that does not load is marked so the
        next search builds the index in the caller. Does nothing when the index is in memory or
        loading already.

        The thread is not a daemon: the interpreter waits for it at exit (one snapshot load)
        rather than killing it inside hnswlib, which aborts the process. So it never builds.
        """
        with self._indexes_lock:
            if user_id in self._indexes or user_id in self._loading:
                return
            self._start_load_locked(user_id, dim)

    def _start_load_locked(self, user_id: str, dim: int) -> None:
        """``_start_load``'s thread start; caller holds ``_indexes_lock``."""
        epoch, generation = self._epoch, self._generation

        def load() -> None:
            index: UserIndex | None = None
            try:
                index = UserIndex.load(
                    self._index_dir, user_id, dim, lambda labels: self.log.resolve(user_id, labels)
                )
                if index is None:
                    with self._indexes_lock:
                        self._unloadable.add(user_id)
                    return
                with self._indexes_lock:
                    if epoch == self._epoch:
                        self._saved_seq[user_id] = index.covered_seq
                self._catch_up(index)
                if self.log.generation != generation:  # compacted meanwhile: not current
                    index = None
            except Exception:  # a closed store, an I/O error: the next search tries again
                index = None
            finally:
                with self._indexes_lock:
                    if self._loading.get(user_id) is threading.current_thread():
                        self._loading.pop(user_id)
                    if index is not None and epoch == self._epoch:
                        self._indexes.setdefault(user_id, index)

        thread = threading.Thread(target=load, name="headroom-index-load", daemon=False)
        self._loading[user_id] = thread
        thread.start()

    def wait_for_index(self, user_id: str, timeout: float | None = None) -> bool:
        """Wait until a snapshot load of the user's index (if one runs) has finished; True
        when the user's index is in memory then (tests and benchmarks)."""
        with self._indexes_lock:
            thread = self._loading.get(user_id)
        if thread is not None:
            thread.join(timeout)
        with self._indexes_lock:
            return user_id in self._indexes

    def _catch_up(self, index: UserIndex) -> None:
        user_id = index.user_id
        target = int(self.log.user_seq(user_id))
        if target <= index.covered_seq:
            return
        with index.lock.write():
            if target <= index.covered_seq:
                return
            if index.covered_seq == 0:
                added_labels, added_vectors = self.log.vectors(user_id)
                removed = np.empty(0, np.uint64)
            else:
                removed, added_labels, added_vectors = self.log.changes(user_id, index.covered_seq)
            added_info = self.log.resolve(user_id, added_labels)
            index.apply_changes(removed, added_labels, added_vectors, added_info, target)
        with self._indexes_lock:
            published = self._indexes.get(user_id) is index  # not a load a drop made stale
        if (
            published
            and target - self._saved_seq.get(user_id, 0) >= SNAPSHOT_EVERY
            and not index.deleted_since_build
        ):
            with index.lock.read(), contextlib.suppress(OSError):
                index.save(self._index_dir)
                self._saved_seq[user_id] = index.covered_seq

    def _check_generation(self) -> None:
        generation = self.log.generation
        if generation != self._generation:
            self._generation = generation
            self._drop_all_indexes(delete_files=False)

    def _drop_all_indexes(self, *, delete_files: bool = True) -> None:
        with self._indexes_lock:
            self._indexes.clear()
            self._saved_seq.clear()
            self._loading.clear()  # loads under way now publish nothing; the next search builds
            self._unloadable.clear()
            self._epoch += 1
            self._generation = self.log.generation
        if delete_files and self._index_dir.is_dir():
            for path in self._index_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # --- lifecycle ---------------------------------------------------------------------------

    def save_snapshots(self) -> None:
        """Snapshot every index that advanced since its last snapshot and saw no deletion.

        An index built before a compaction (this handle's or another's) is dropped, never
        saved: it may hold vectors the compaction purged.
        """
        self.log.refresh()  # learn of another process's compaction
        self._check_generation()
        with self._indexes_lock:
            items = list(self._indexes.items())
        for user_id, index in items:
            if index.covered_seq > self._saved_seq.get(user_id, 0) and not (
                index.deleted_since_build
            ):
                with index.lock.read(), contextlib.suppress(OSError):
                    index.save(self._index_dir)
                    self._saved_seq[user_id] = index.covered_seq

    def close(self) -> None:
        """Snapshot what is worth keeping, then close the log (flushes per the sync mode)."""
        with contextlib.suppress(Exception):
            self.save_snapshots()
        self.log.close()

    def abandon(self) -> None:
        """In a forked child: drop the inherited handles without flushing or joining."""
        self.log.abandon()
        with self._indexes_lock:
            self._indexes.clear()


def _passes(info: LabelInfo, categories: int, lo: int, hi: int) -> bool:
    _, category, created = info
    if categories and not (categories >> category) & 1:
        return False
    return lo <= created <= hi
