"""Per-user lexical state of the embedded backend: a BM25 index in the compiled core, the sum
of the live vectors, and their snapshots.

Derived from the log exactly like the vector index: kept current from the log's ``changes``
(labels are the sequence numbers of live versions) and dropped when the log is compacted (its
generation changes). The index is the compiled core's ``Lexicon`` (native/src/lexicon.h): it
holds each memory's tokens, computed once by :func:`~..ranking.tokenize` when the change feed
delivers the memory, and scores them exactly as :class:`~..ranking.LexicalIndex` does.

Snapshots (docs/lexicon-snapshot.md): ``<db>/indexes/<blake2b(user_id)>.lex`` holds a user's
index with its vocabulary, the vector sum, the seq it is exact at, the log's generation and a
CRC32C. For users of :data:`SNAPSHOT_MIN_MEMORIES` or more it is written after the index is
built from the whole log and whenever it is :data:`SNAPSHOT_EVERY` entries ahead of its last
snapshot (the process then serves the index from the mapped file); at close also for users of
:data:`SNAPSHOT_AT_CLOSE_MIN_MEMORIES` or more; only while it is
exact at the log's current seq for the user, and only after an fsync of the log (so it never
covers an entry a power loss could take); to a temporary file, fsynced and renamed (the
rename is the commit point). A fresh process maps it on the user's first
search and serves the index from the mapped bytes in place (no hash map is built; the pages are
page cache shared by every process), replaying only the log's tail past that seq into a small
in-memory overlay, so no text is tokenized again. A
snapshot that fails its checks (checksum, user, generation, a seq past the log) is ignored
and replaced; one that disagrees with the log after the replay (live count) is rebuilt.

The vector sum (float64, from the compiled core's ``vector_sum``) gives the user's mean memory,
on which the hybrid search centres its query. It is kept current from ``changes`` too: added
vectors are summed in; after any removal the whole sum is taken again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ...errors import StoreCorruptionError, StoreError
from ..ranking import CANDIDATE_POSTINGS_BUDGET, VectorTotal, mean_vector, tokenize
from .engine import SNAPSHOT_EVERY, _native
from .index import user_file_stem

logger = logging.getLogger("headroom.memory")

#: Users with at least this many live memories are snapshotted as soon as their index is built
#: from the log (and then served from the mapped snapshot); below it, building the index takes
#: a few milliseconds, not worth an fsync on a first search (figures in bench/README.md).
SNAPSHOT_MIN_MEMORIES = 256

#: At close, users with at least this many live memories are snapshotted too, so that the next
#: process maps their index (page cache, shared by every worker) instead of building a private
#: copy (about 1 KB per memory).
SNAPSHOT_AT_CLOSE_MIN_MEMORIES = 32

SNAPSHOT_SUFFIX = ".lex"


class LocalRanking:
    """One user's compiled BM25 index and vector sum. Implements ``backend.UserRanking``;
    every public method is thread-safe (``lock`` guards the index).

    ``vectors`` is replaced as one tuple, never changed in place, so a reader without the lock
    sees a consistent sum and count. ``covered_seq`` is the user seq the state is exact at;
    ``saved_seq`` that of its last snapshot (written or loaded; -1: none).
    """

    def __init__(self, lexicon: Any | None = None) -> None:
        self.lexicon: Any = _native.Lexicon() if lexicon is None else lexicon
        self.vectors: VectorTotal | None = None
        self.covered_seq = -1
        self.saved_seq = -1
        self.lock = threading.Lock()
        #: The last query and its tokens: a search asks top, scores and group_scores of one
        #: query (replaced as one tuple, so readers on other threads see a matching pair).
        self._last: tuple[str, list[str]] = ("", [])

    def _tokens(self, query: str) -> list[str]:
        last = self._last
        if last[0] == query and query:
            return last[1]
        tokens = tokenize(query)
        self._last = (query, tokens)
        return tokens

    def __len__(self) -> int:
        return len(self.lexicon)

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best ``(memory id, BM25)`` for ``query`` (``LexicalIndex.top``)."""
        if k <= 0:
            return []
        tokens = self._tokens(query)
        with self.lock:
            top: list[tuple[str, float]] = self.lexicon.top(tokens, k, CANDIDATE_POSTINGS_BUDGET)
        return top

    def scores(self, query: str, keys: Sequence[str]) -> list[float]:
        """BM25 of each memory id in ``keys`` (``LexicalIndex.scores``)."""
        tokens = self._tokens(query)
        with self.lock:
            scores: list[float] = self.lexicon.scores(tokens, list(keys))
        return scores

    def group_scores(self, query: str, groups: Sequence[Sequence[str]]) -> list[float]:
        """BM25 of each group of memory ids taken as one document."""
        tokens = self._tokens(query)
        with self.lock:
            scores: list[float] = self.lexicon.group_scores(tokens, [list(g) for g in groups])
        return scores

    def vector_mean(self, min_count: int) -> npt.NDArray[np.float32] | None:
        """The mean of the user's live vectors; None below ``min_count`` of them."""
        return mean_vector(self.vectors, min_count)

    def created_at(self, memory_id: str) -> int | None:
        """``created_at`` (µs) of an indexed memory."""
        with self.lock:
            created: int | None = self.lexicon.created_at(memory_id)
        return created

    def created_many(self, memory_ids: Sequence[str]) -> list[int | None]:
        """``created_at`` (µs) of each memory id (None: not indexed), under one lock."""
        ids = list(memory_ids)
        with self.lock:
            created: list[int | None] = self.lexicon.created_many(ids)
        return created

    def add(self, label: int, memory_id: str, text: str, created_us: int) -> None:
        """Index a live version (the caller holds ``lock``): its tokens are computed here,
        once."""
        self.lexicon.add(int(label), memory_id, int(created_us), tokenize(text))

    def remove(self, label: int) -> None:
        """Forget a version that is no longer live (the caller holds ``lock``)."""
        self.lexicon.remove(int(label))


class LexicalState:
    """Every user's :class:`LocalRanking` over one log, caught up on use; snapshots in
    ``directory`` (None: none are read or written)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._lexicons: dict[str, LocalRanking] = {}
        self._lock = threading.Lock()
        self._generation = -1
        self._checks: list[threading.Thread] = []

    def drop(self, user_id: str | None = None) -> None:
        """Forget one user's state and snapshot (all states when None: the caller removes the
        snapshot files); it is rebuilt on next use."""
        with self._lock:
            if user_id is None:
                self._lexicons.clear()
            else:
                self._lexicons.pop(user_id, None)
        if user_id is not None and self._directory is not None:
            with contextlib.suppress(FileNotFoundError):
                snapshot_path(self._directory, user_id).unlink()

    def loaded(self, user_id: str) -> LocalRanking | None:
        """The user's state if it is held, without catching it up."""
        with self._lock:
            return self._lexicons.get(user_id)

    def early_vector_mean(
        self, log: Any, user_id: str, min_count: int
    ) -> tuple[npt.NDArray[np.float32] | None] | None:
        """``(mean,)``: the user's mean vector (None below ``min_count``) caught up with the
        log, while no state is held or one is still loading (a fresh process: a search loads
        the index on another thread meanwhile), from the snapshot's header
        (``Lexicon.read_header``: checksum and header checked, no index built) and the vectors
        written since, with the loaded state's float64 arithmetic: its mean to the bit unless a
        write lands between the two reads (the hybrid search compares them and runs again).

        None when a loaded state is held (its mean is at hand) or the header cannot serve (no
        snapshot, another generation, removals since it): the caller asks :meth:`get`.
        """
        held = self.loaded(user_id)
        if held is not None and held.covered_seq >= 0:
            return None
        served = self._vectors_from_header(log, user_id)
        return None if served is None else (mean_vector(served[0], min_count),)

    def _vectors_from_header(self, log: Any, user_id: str) -> tuple[VectorTotal | None] | None:
        """``(total,)``: the user's vector total caught up from the snapshot header; None when
        the header cannot serve."""
        if self._directory is None:
            return None
        generation, target = int(log.generation), int(log.user_seq(user_id))
        try:
            meta = _native.Lexicon.read_header(str(snapshot_path(self._directory, user_id)))
        except (OSError, StoreCorruptionError):
            return None  # get() loads it, or rebuilds it and reports the damage
        covered = int(meta["covered_seq"])
        if meta["user"] != user_id or int(meta["generation"]) != generation or covered > target:
            return None
        removed, added, vectors = log.changes(user_id, covered)
        if len(removed) or not int(meta["vector_count"]):
            return None  # the whole sum is taken again: get() does that once, for both
        return (_caught_up(_header_total(meta), covered, removed, added, vectors, log, user_id),)

    def warm(self, log: Any, user_id: str) -> None:
        """Catch the user's state up with the log now, if it is held."""
        if self.loaded(user_id) is not None:
            self.get(log, user_id)

    def get(self, log: Any, user_id: str) -> LocalRanking:
        """The user's state, caught up with every entry of the log so far."""
        generation = int(log.generation)
        with self._lock:
            if generation != self._generation:
                self._lexicons.clear()
                self._generation = generation
            lexicon = self._lexicons.get(user_id)
            if lexicon is None:
                lexicon = self._lexicons[user_id] = LocalRanking()
        target = int(log.user_seq(user_id))
        if target == lexicon.covered_seq:
            return lexicon
        with lexicon.lock:
            if target != lexicon.covered_seq:
                self._bring_up_to(log, user_id, lexicon, target, generation)
        return lexicon

    def _bring_up_to(
        self, log: Any, user_id: str, lexicon: LocalRanking, target: int, generation: int
    ) -> None:
        """Load, catch up or build ``lexicon`` to ``target`` (the caller holds its lock)."""
        if lexicon.covered_seq < 0 and self._directory is not None:
            self._load(log, user_id, lexicon, target, generation)
        if lexicon.covered_seq >= 0:
            _catch_up(log, user_id, lexicon)
            count = int(log.count(user_id))
            if len(lexicon) != count and int(log.user_seq(user_id)) == target:
                # Not the log's live set (another process purged the whole user, or the
                # snapshot saw entries the log lost): built again. (The live count is only
                # comparable while no write landed after ``target``.)
                lexicon.lexicon = _native.Lexicon()
                lexicon.covered_seq = lexicon.saved_seq = -1
        if lexicon.covered_seq < 0:
            _build(log, user_id, lexicon)
        lexicon.covered_seq = target
        due = target - max(lexicon.saved_seq, 0) >= SNAPSHOT_EVERY or lexicon.saved_seq < 0
        if due and self._save(log, user_id, lexicon, generation, SNAPSHOT_MIN_MEMORIES):
            self._serve_mapped(user_id, lexicon, generation)

    def _load(
        self, log: Any, user_id: str, lexicon: LocalRanking, target: int, generation: int
    ) -> None:
        assert self._directory is not None
        loaded = load_snapshot(self._directory, user_id, generation)
        if loaded is None:
            return
        index, meta = loaded
        if int(meta["covered_seq"]) > target:
            return  # ahead of the log (the log lost a tail the snapshot saw)
        lexicon.lexicon = index
        lexicon.covered_seq = lexicon.saved_seq = int(meta["covered_seq"])
        lexicon.vectors = _header_total(meta)
        self._check_in_full(user_id, index)

    def _check_in_full(self, user_id: str, index: Any) -> None:
        """Check the snapshot just served in full, on a thread: what the bounds check left to
        the writer (the postings and the memories' terms agree, the orders are strict). On a
        failure, log it and drop the user's state and snapshot: the next search rebuilds the
        index from the log, so a bad snapshot serves no longer than this check takes."""
        assert self._directory is not None
        path = snapshot_path(self._directory, user_id)

        def check() -> None:
            try:
                _native.Lexicon.from_file(str(path), full=True)
            except OSError:
                return  # replaced or removed meanwhile: whoever replaced it checked its own
            except StoreCorruptionError as exc:
                held = self.loaded(user_id)
                if held is not None and held.lexicon is index:
                    logger.warning("dropping a damaged lexical snapshot (%s): %s", path.name, exc)
                    self.drop(user_id)

        thread = threading.Thread(target=check, name="headroom-lexicon-check")
        with self._lock:
            self._checks = [t for t in self._checks if t.is_alive()]
            self._checks.append(thread)
        thread.start()

    def join_checks(self) -> None:
        """Wait for the full checks of served snapshots still running (at close, in tests)."""
        with self._lock:
            checks, self._checks = self._checks, []
        for thread in checks:
            thread.join()

    def _save(
        self, log: Any, user_id: str, lexicon: LocalRanking, generation: int, minimum: int
    ) -> bool:
        """Snapshot ``lexicon`` (the caller holds its lock) when it has ``minimum`` memories or
        more and is exact at the log's current seq for the user; True when written. A failed
        write is logged and skipped (counted as a snapshot for when to try again)."""
        if self._directory is None or len(lexicon) < minimum:
            return False
        if int(log.generation) != generation or int(log.user_seq(user_id)) != (lexicon.covered_seq):
            return False
        try:
            # Every entry the snapshot covers is made durable first: after a power loss the
            # log never lacks (and never reuses the seqs of) entries a snapshot has seen.
            log.flush()
            save_snapshot(self._directory, user_id, lexicon, generation)
        except (OSError, StoreError) as exc:
            # Not tried again before SNAPSHOT_EVERY more entries (or close): a directory that
            # refuses writes must not cost an fsync and a warning per search.
            logger.warning("could not write the lexical snapshot of a user: %s", exc)
            lexicon.saved_seq = lexicon.covered_seq
            return False
        lexicon.saved_seq = lexicon.covered_seq
        return True

    def _serve_mapped(self, user_id: str, lexicon: LocalRanking, generation: int) -> None:
        """Replace the in-memory index by the snapshot just written, mapped (the caller holds
        ``lexicon.lock``): the same memories in the same order, so every answer is the same,
        and the index's pages become page cache. Kept as it is when the mapping fails."""
        assert self._directory is not None
        loaded = load_snapshot(self._directory, user_id, generation)
        if loaded is not None and int(loaded[1]["covered_seq"]) == lexicon.covered_seq:
            lexicon.lexicon = loaded[0]

    def save_all(self, log: Any) -> None:
        """Snapshot every held state that advanced since its last snapshot (at close), once the
        full checks of served snapshots are done."""
        self.join_checks()
        log.refresh()
        generation = int(log.generation)
        with self._lock:
            if generation != self._generation:
                return
            items = list(self._lexicons.items())
        for user_id, lexicon in items:
            with lexicon.lock:
                if lexicon.covered_seq > lexicon.saved_seq:
                    self._save(log, user_id, lexicon, generation, SNAPSHOT_AT_CLOSE_MIN_MEMORIES)


def _build(log: Any, user_id: str, lexicon: LocalRanking) -> None:
    rows = log.list(user_id, 0)
    index = lexicon.lexicon
    for row in rows:
        index.add(int(row["seq"]), row["id"], int(row["created_at"]), tokenize(row["text"]))
    lexicon.vectors = _log_total(log, user_id)


def _catch_up(log: Any, user_id: str, lexicon: LocalRanking) -> None:
    since = lexicon.covered_seq
    removed, added, vectors = log.changes(user_id, since)
    lexicon.vectors = _caught_up(lexicon.vectors, since, removed, added, vectors, log, user_id)
    for label in np.asarray(removed).tolist():
        lexicon.remove(label)
    labels = np.asarray(added, np.uint64)
    for label, info in zip(labels.tolist(), log.resolve(user_id, labels), strict=True):
        if info is None:
            continue
        row = log.get(user_id, info[0])
        if row is not None:
            lexicon.add(label, row["id"], row["text"], row["created_at"])


def _log_total(log: Any, user_id: str) -> VectorTotal | None:
    """The whole sum again (one compiled pass): after a removal, or at build. Its seq comes
    from the same read, so writes that land meanwhile are not counted twice."""
    total, count, seq = log.vector_sum(user_id)
    return (np.asarray(total, np.float64), int(count), int(seq)) if count else None


def _caught_up(
    total: VectorTotal | None,
    since: int,
    removed: npt.NDArray[np.uint64],
    added: npt.NDArray[np.uint64],
    vectors: npt.NDArray[np.float32],
    log: Any,
    user_id: str,
) -> VectorTotal | None:
    """``total`` (exact at ``since``) with ``changes(user_id, since)`` applied.

    Adding to the sum is exact only when it holds nothing past ``since``: a vector written
    after ``since`` and removed since then is in neither list; so after a removal, or from a
    sum ahead of ``since``, the whole sum is taken again."""
    if len(removed) or total is None or total[2] > since:
        return _log_total(log, user_id)
    return _add_vectors(total, added, vectors) if len(added) else total


def _header_total(meta: dict[str, Any]) -> VectorTotal | None:
    """The vector total a snapshot header records (None when it summed none)."""
    count = int(meta["vector_count"])
    return (meta["vector_sum"], count, int(meta["vector_seq"])) if count else None


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


# --- snapshot files ------------------------------------------------------------------------------


def snapshot_path(directory: Path, user_id: str) -> Path:
    """Where the user's lexical snapshot lives (a hash of the user id, never the id)."""
    return directory / (user_file_stem(user_id) + SNAPSHOT_SUFFIX)


def save_snapshot(directory: Path, user_id: str, lexicon: LocalRanking, generation: int) -> None:
    """Write the user's snapshot atomically: temporary file, fsync, rename, directory fsync
    (the caller holds ``lexicon.lock``)."""
    vectors = lexicon.vectors
    total, count, vseq = (None, 0, 0) if vectors is None else vectors
    data = lexicon.lexicon.to_bytes(user_id, lexicon.covered_seq, generation, total, count, vseq)
    directory.mkdir(parents=True, exist_ok=True)
    final = snapshot_path(directory, user_id)
    tmp = final.with_suffix(f"{SNAPSHOT_SUFFIX}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_snapshot(
    directory: Path, user_id: str, generation: int
) -> tuple[Any, dict[str, Any]] | None:
    """The user's snapshot as ``(Lexicon, header)`` if present, intact, the user's and of
    log ``generation``, the index mapped from the file and read in place; else None (a
    damaged one is logged: the caller rebuilds)."""
    path = snapshot_path(directory, user_id)
    try:
        # Bounds checked, not cross-checked: the checksum vouches for the sections' agreement
        # (verify runs the full check; docs/lexicon-snapshot.md, "Loading").
        index, meta = _native.Lexicon.from_file(str(path), full=False)
    except OSError:
        return None
    except StoreCorruptionError as exc:
        logger.warning("ignoring a damaged lexical snapshot (%s): %s", path.name, exc)
        return None
    if meta["user"] != user_id or int(meta["generation"]) != generation:
        return None
    return index, meta
