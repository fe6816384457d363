"""Per-user approximate vector index (hnswlib) for users with many memories, and its snapshots.

The log is the truth; an index is a cache derived from it. Each index knows the highest log
sequence number it covers (``covered_seq``) and is brought up to date from the log's
``changes(user, since_seq)`` before every search. Labels are the sequence numbers of the live
versions of memories, so an update is "mark the old label deleted, add the new one".

Snapshots: ``<db>/indexes/<blake2b(user_id)>.hnsw`` holds the hnswlib graph and ``<same>.meta`` a
small JSON header with the covered sequence number, the dimension, the element count, the user id
and a CRC32C of the graph file (``crc32c``; headers written before it carry a zlib ``crc32``,
still checked). What each label is (memory id, category, created_at) is not stored:
at load it is read from the log (``resolve``), and a label the log no longer has live is marked
deleted in the graph. Both are written to temporary files, fsynced and renamed (graph first, header
last: the header is the commit point). On load the header must parse and the CRC must match, else
the snapshot is ignored and rebuilt. hnswlib's own format has no checksum, so it is never trusted
alone.

Thread safety: hnswlib allows concurrent queries or concurrent adds, never both, and a resize
with neither. Every index therefore sits behind a readers-writer lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

#: The compiled core (native/), for its CRC32C; typed as Any: a pybind11 module.
_native: Any = importlib.import_module("headroom.memory.store.local._native")

SNAPSHOT_VERSION = 2

#: hnswlib parameters: chosen for recall against the exact scan on real MiniLM vectors
#: (tests/test_store_ann_recall.py holds recall@10 >= 0.99; figures in bench/README.md).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 100

#: What the index knows of a label: (memory id, category code, created_at in microseconds).
LabelInfo = tuple[str, int, int]


class RWLock:
    """A readers-writer lock: many readers or one writer. Writers are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def user_file_stem(user_id: str) -> str:
    """File-name stem for a user's index: a hash, so user ids never become file names."""
    return hashlib.blake2b(user_id.encode("utf-8"), digest_size=16).hexdigest()


class UserIndex:
    """An hnswlib index over one user's live vectors, kept current from the log.

    ``fetch_changes(since_seq)`` must return ``(removed_labels, added_labels, added_vectors,
    new_covered_seq)``; the index applies them under its write lock.
    """

    def __init__(self, user_id: str, dim: int, *, empty: bool = True) -> None:
        """An index for ``user_id``; ``empty=False`` leaves it to be filled by ``load_index``."""
        self.user_id = user_id
        self.dim = dim
        self.covered_seq = 0
        self.lock = RWLock()
        self._index: Any = hnswlib.Index(space="ip", dim=dim)
        if empty:
            self._index.init_index(
                max_elements=1024, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M
            )
            self._index.set_num_threads(1)
        #: label -> (memory id, category code, created_at) of every live label in the graph.
        self.info: dict[int, LabelInfo] = {}
        self.deleted_since_build = 0

    @property
    def live_count(self) -> int:
        """Number of live (not deleted) vectors in the index."""
        return len(self.info)

    def apply_changes(
        self,
        removed: npt.NDArray[np.uint64],
        added_labels: npt.NDArray[np.uint64],
        added_vectors: npt.NDArray[np.float32],
        added_info: Sequence[LabelInfo | None],
        covered_seq: int,
    ) -> None:
        """Apply a change set from the log (caller holds the write lock). Idempotent:
        labels already present are not added twice, unknown labels are not removed."""
        for label in np.asarray(removed).tolist():
            if self.info.pop(int(label), None) is not None:
                self._index.mark_deleted(int(label))
                self.deleted_since_build += 1
        labels = np.asarray(added_labels, np.uint64)
        keep = [
            i
            for i, (label, info) in enumerate(zip(labels.tolist(), added_info, strict=True))
            if info is not None and int(label) not in self.info
        ]
        if keep:
            needed = int(self._index.get_current_count()) + len(keep)
            capacity = int(self._index.get_max_elements())
            if needed > capacity:
                self._index.resize_index(max(needed, capacity * 2))
            vectors = np.ascontiguousarray(np.asarray(added_vectors, np.float32)[keep])
            self._index.add_items(vectors, labels[keep], num_threads=1)
            for i in keep:
                info = added_info[i]
                assert info is not None
                self.info[int(labels[i])] = info
        self.covered_seq = max(self.covered_seq, covered_seq)

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        accept: Callable[[int], bool] | None = None,
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """Top-k labels and inner-product scores, best first (caller holds the read lock).

        Asks for at most the number of live items. With ``accept``, only labels it accepts are
        returned (hnswlib applies the filter during the graph search); fewer than k may come
        back when few labels pass, and the caller falls back to an exact search then.
        """
        k = min(k, len(self.info))
        if k <= 0:
            return np.empty(0, np.uint64), np.empty(0, np.float32)
        self._index.set_ef(max(HNSW_EF_SEARCH, 2 * k))
        try:
            labels, distances = self._index.knn_query(query, k=k, num_threads=1, filter=accept)
        except RuntimeError:
            # hnswlib raises when it finds fewer than k items that pass the filter.
            return np.empty(0, np.uint64), np.empty(0, np.float32)
        # space="ip" returns 1 - dot product.
        return labels[0].astype(np.uint64), (1.0 - distances[0]).astype(np.float32)

    # --- snapshots --------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write a checksummed snapshot atomically (caller holds at least the read lock)."""
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / user_file_stem(self.user_id)
        graph_tmp = stem.with_suffix(f".hnsw.tmp{os.getpid()}.{threading.get_ident()}")
        meta_tmp = stem.with_suffix(f".meta.tmp{os.getpid()}.{threading.get_ident()}")
        try:
            self._index.save_index(str(graph_tmp))
            crc = _file_crc(graph_tmp)
            _fsync_path(graph_tmp)
            os.replace(graph_tmp, stem.with_suffix(".hnsw"))
            meta = {
                "version": SNAPSHOT_VERSION,
                "user_id": self.user_id,
                "covered_seq": self.covered_seq,
                "dim": self.dim,
                "count": int(self._index.get_current_count()),
                "deleted": self.deleted_since_build,
                "crc32c": crc,
            }
            meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
            _fsync_path(meta_tmp)
            os.replace(meta_tmp, stem.with_suffix(".meta"))
            _fsync_dir(directory)
        finally:
            for tmp in (graph_tmp, meta_tmp):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    @classmethod
    def load(
        cls,
        directory: Path,
        user_id: str,
        dim: int,
        resolve: Callable[[npt.NDArray[np.uint64]], Sequence[LabelInfo | None]] | None = None,
    ) -> UserIndex | None:
        """The user's snapshot if present and intact, else None (the caller rebuilds).

        ``resolve`` (the log's) gives what each label of the graph is now; a label it returns
        None for (no longer live) is marked deleted. Without it the labels are left unknown
        (an integrity check only: such an index serves no search).
        """
        stem = directory / user_file_stem(user_id)
        try:
            meta = json.loads(stem.with_suffix(".meta").read_text(encoding="utf-8"))
            graph = stem.with_suffix(".hnsw")
            if (
                meta.get("version") != SNAPSHOT_VERSION
                or meta.get("user_id") != user_id
                or meta.get("dim") != dim
                or not _graph_intact(graph, meta)
            ):
                return None
            index = cls(user_id, dim, empty=False)
            # Headroom to grow before the first resize (a resize copies the whole graph).
            capacity = max(int(meta["count"]) * 5 // 4 + 256, 1024)
            index._index.load_index(str(graph), max_elements=capacity)
            index._index.set_num_threads(1)
            if int(index._index.get_current_count()) != int(meta["count"]):
                return None
            index.covered_seq = int(meta["covered_seq"])
            index.deleted_since_build = int(meta["deleted"])
            if resolve is not None:
                index._label_from_log(resolve)
            return index
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None

    def _label_from_log(
        self, resolve: Callable[[npt.NDArray[np.uint64]], Sequence[LabelInfo | None]]
    ) -> None:
        labels = np.asarray(self._index.get_ids_list(), np.uint64)
        for label, info in zip(labels.tolist(), resolve(labels), strict=True):
            if info is not None:
                self.info[label] = info
                continue
            with contextlib.suppress(RuntimeError):  # already marked deleted
                self._index.mark_deleted(label)
                self.deleted_since_build += 1

    @staticmethod
    def has_snapshot(directory: Path, user_id: str) -> bool:
        """Whether the user has snapshot files (intact or not: :meth:`load` checks)."""
        return (directory / user_file_stem(user_id)).with_suffix(".meta").is_file()

    @staticmethod
    def drop_snapshot(directory: Path, user_id: str) -> None:
        """Remove the user's snapshot files, if any."""
        stem = directory / user_file_stem(user_id)
        for suffix in (".meta", ".hnsw"):
            with contextlib.suppress(FileNotFoundError):
                stem.with_suffix(suffix).unlink()


def _file_crc(path: Path) -> int:
    """CRC32C of a file (the compiled core's kernel, the GIL released while it reads)."""
    crc: int = _native.crc32c_file(str(path))
    return crc


def _graph_intact(graph: Path, meta: dict[str, Any]) -> bool:
    """Whether the graph file matches its header's checksum: ``crc32c``, or the zlib ``crc32``
    that headers written before it carry."""
    if "crc32c" in meta:
        return bool(_file_crc(graph) == meta["crc32c"])
    crc = 0
    with open(graph, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return bool(crc == meta.get("crc32"))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
