"""The embedded backend: one store directory, the compiled log and everything derived from it.

``LocalBackend`` implements :class:`~headroom.memory.store.backend.Backend` over
:class:`~.engine.Engine` (the native log plus per-user hnswlib indexes and snapshots) and
:class:`~.lexical.LexicalState` (per-user BM25 and vector sums). It is the only code that
knows the native entry tuples, op codes and row dicts: records cross the seam typed.

Fork-aware: in a forked child the inherited log is abandoned (its handles and ``flock`` belong
to the parent) and the log is reopened on first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import types as T
from ...errors import (
    InvalidVectorError,
    JobLostError,
    StoreClosedError,
    StoreCorruptionError,
    StoreNotFoundError,
)
from ...types import Memory, MemoryVersion
from ..backend import ALL, ChangeSet, Claim, Entry, Filter, Job, Op, Recovery, Vector
from .engine import Engine, _native
from .index import UserIndex
from .lexical import SNAPSHOT_SUFFIX, LexicalState, LocalRanking

logger = logging.getLogger("headroom.memory")

#: Native op code of each op: the numbers come from the compiled core (docs/log-format.md).
NATIVE_OP: dict[Op, int] = {op: int(getattr(_native, op.name)) for op in Op}

#: History entries as the public API names them; REVECTOR is not a version.
_VERSION_OPS = {"ADD": "add", "UPDATE": "update", "DELETE": "delete", "CLEAR": "clear"}

#: Inherited engines of forked children: kept alive, never used or destroyed in the child.
_ABANDONED: list[Engine] = []


def is_store_dir(path: Path) -> bool:
    """True when ``path`` is a store directory (it holds a log segment or the LOCK file)."""
    return path.is_dir() and ((path / "LOCK").exists() or any(path.glob("seg-*.log")))


class LocalBackend:
    """A store directory on a local filesystem (several processes may share it)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "interval",
        ann_threshold: int | None = None,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        if not create and not is_store_dir(self.path):
            raise StoreNotFoundError(f"no store at {self.path}")
        self._sync = sync
        self._ann_threshold = ann_threshold
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._lexical = LexicalState(self.path / "indexes")
        #: Descriptors holding the ``.held`` locks of this process's claims, by token.
        self._holds: dict[str, int] = {}
        self._engine: Engine | None = self._open_engine()
        self._report_recovery()

    # --- plumbing ----------------------------------------------------------------------------

    def _open_engine(self) -> Engine:
        kwargs: dict[str, Any] = {"sync": self._sync}
        if self._ann_threshold is not None:
            kwargs["ann_threshold"] = self._ann_threshold
        return Engine(self.path, **kwargs)

    @property
    def engine(self) -> Engine:
        """The engine, reopened in a forked child on first use."""
        if self._closed:
            raise StoreClosedError(f"the store at {self.path} is closed")
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self.after_fork()
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._open_engine()
                engine = self._engine
        return engine

    @property
    def log(self) -> Any:
        """The native log (tests and tools; the store never reaches for it)."""
        return self.engine.log

    def _report_recovery(self) -> None:
        recovery = self.recovery()
        if recovery.damaged:
            logger.warning(
                "the store at %s recovered from damage: %d corrupt bytes (%d records) skipped, "
                "%d bytes of a torn last write cut off, in %s; run "
                "`headroom-memory verify --db %s` for details",
                self.path, recovery.corrupt_bytes, recovery.corrupt_records,
                recovery.torn_tail_bytes, ", ".join(recovery.damaged_segments) or "?", self.path,
            )  # fmt: skip

    # --- writes ------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append one atomic batch (see Backend.append)."""
        if not entries:
            return []
        engine = self.engine
        seqs: list[int] = engine.append([_native_entry(e) for e in entries])
        for user_id in {e.user_id for e in entries if e.op in (Op.PURGE, Op.REVECTOR)}:
            engine.drop_user_index(user_id)
            self._lexical.drop(user_id)
        return seqs

    # --- reads -------------------------------------------------------------------------------

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        """The live memory, or None."""
        row = self.engine.log.get(user_id, memory_id)
        return None if row is None else _memory(row)

    def get_many(self, user_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """The live memories among ``memory_ids``, by id (in-process reads)."""
        found = {}
        for memory_id in memory_ids:
            row = self.engine.log.get(user_id, memory_id)
            if row is not None:
                found[memory_id] = _memory(row)
        return found

    def memories(self, user_id: str, where: Filter = ALL) -> list[Memory]:
        """Live memories passing ``where``, oldest first."""
        return [_memory(row) for row in self._rows(user_id, where)]

    def _rows(self, user_id: str, where: Filter) -> list[dict[str, Any]]:
        lo = _native.INT64_MIN if where.since_us is None else where.since_us
        hi = _native.INT64_MAX if where.until_us is None else where.until_us
        rows: list[dict[str, Any]] = self.engine.log.list(user_id, _mask(where), lo, hi)
        if where.metadata:
            rows = [r for r in rows if where.accepts_metadata(_metadata(r))]
        return rows

    def history(self, user_id: str, memory_id: str) -> list[MemoryVersion]:
        """Every version, oldest first (REVECTOR entries are not versions)."""
        versions = []
        for row in self.engine.log.history(user_id, memory_id):
            operation = _VERSION_OPS.get(str(row["op"]))
            if operation is not None:
                versions.append(
                    MemoryVersion(
                        memory_id=row["id"],
                        text=row["text"],
                        category=T.category_name(row["category"]) if row["category"] else "fact",
                        at=T.from_timestamp_us(row["updated_at"]),
                        operation=operation,  # type: ignore[arg-type]
                        source=T.source_name(row["source"]) if row["source"] else "manual",
                        metadata=_metadata(row),
                    )
                )
        return versions

    def count(self, user_id: str) -> int:
        """Live memories of the user."""
        return int(self.engine.log.count(user_id))

    def users(self) -> list[str]:
        """Users with at least one live memory, sorted."""
        log = self.engine.log
        return [u for u in log.users() if u and log.count(u)]

    def vectors(self, user_id: str) -> dict[str, Vector]:
        """The vector of each live memory of the user."""
        log = self.engine.log
        labels, matrix = log.vectors(user_id)
        return {
            info[0]: np.array(row, np.float32)
            for info, row in zip(log.resolve(user_id, labels), matrix, strict=True)
            if info is not None
        }

    def user_seq(self, user_id: str) -> int:
        """Seq of the newest entry that touched the user."""
        return int(self.engine.log.user_seq(user_id))

    def changes(self, user_id: str, since: int) -> ChangeSet:
        """What changed in the user's live set after ``since``."""
        log = self.engine.log
        seq = int(log.user_seq(user_id))
        removed, added, _ = log.changes(user_id, since)
        labels = np.asarray(added, np.uint64)
        infos = log.resolve(user_id, labels)
        pairs = tuple(
            (int(label), info[0])
            for label, info in zip(labels.tolist(), infos, strict=True)
            if info is not None
        )
        top = max([seq, *(label for label, _ in pairs)])
        return ChangeSet(top, tuple(int(x) for x in np.asarray(removed).tolist()), pairs)

    # --- search ------------------------------------------------------------------------------

    def search(
        self, user_id: str, query: Vector, k: int, where: Filter = ALL
    ) -> list[tuple[str, float]]:
        """Top-k by dot product; filters inside the search (see Backend.search)."""
        if k <= 0:
            return []
        if where.metadata:
            return self._scan(user_id, query, k, where)
        return self.engine.search(
            user_id, query, k, categories=_mask(where), t_min=where.since_us,
            t_max=where.until_us,
        )  # fmt: skip

    def _scan(self, user_id: str, query: Vector, k: int, where: Filter) -> list[tuple[str, float]]:
        """Exact top-k over the memories passing a metadata filter (ties: older first)."""
        wanted = {int(row["seq"]): row["id"] for row in self._rows(user_id, where)}
        labels, matrix = self.engine.log.vectors(user_id)
        if not len(labels):
            return []
        if matrix.shape[1] != query.shape[0]:
            raise InvalidVectorError(
                f"the query has {query.shape[0]} dims; the user's vectors have {matrix.shape[1]}"
            )
        keep = np.fromiter((int(x) in wanted for x in labels.tolist()), bool, len(labels))
        labels, matrix = labels[keep], matrix[keep]
        scores = matrix @ query
        order = sorted(range(len(labels)), key=lambda i: (-float(scores[i]), int(labels[i])))
        return [(wanted[int(labels[i])], float(scores[i])) for i in order[:k]]

    def ranking(self, user_id: str) -> LocalRanking:
        """The user's lexical index and vector sum, caught up with the log."""
        return self._lexical.get(self.engine.log, user_id)

    def early_vector_mean(self, user_id: str, min_count: int) -> tuple[Vector | None] | None:
        """In a fresh process, the mean from the lexical snapshot's header while the index
        loads (see Backend.early_vector_mean)."""
        return self._lexical.early_vector_mean(self.engine.log, user_id, min_count)

    def warm(self, user_id: str) -> None:
        """Fold the user's recent writes into the hnswlib index and the lexical state now."""
        engine = self.engine
        engine.warm(user_id)
        self._lexical.warm(engine.log, user_id)

    # --- jobs and config ---------------------------------------------------------------------

    def pending(self, user_id: str | None = None) -> list[Job]:
        """Open jobs, oldest first."""
        return [
            _job(row)
            for row in self.engine.log.pending()
            if user_id is None or row["user"] == user_id
        ]

    def claim(
        self, user_id: str | None, worker: str, lease_s: float, job_id: str | None = None
    ) -> Claim | None:
        """Claim the oldest open job nobody holds (see Backend.claim).

        A claim is a small file per job under ``jobs/`` (token, worker, lease end), read and
        written under an ``flock`` of that file held only for the check and the write. The
        holder also keeps an ``flock`` on the job's ``.held`` file until it completes or
        releases: the kernel drops it when the holder dies, so on one host a killed worker's
        job is claimable at once (not only after its lease).
        """
        for row in self.engine.log.pending():
            if (user_id is not None and row["user"] != user_id) or (
                job_id is not None and row["id"] != job_id
            ):
                continue
            job = _job(row)
            with self._job_file(job.id) as handle:
                held = _read_claim(handle)
                now = _now_us()
                alive = self._hold(job.id)  # None: the holder still runs
                if held is not None and int(held.get("until_us", 0)) > now and alive is None:
                    continue
                if not self._is_pending(job):  # completed while we waited for the lock
                    if alive is not None:
                        os.close(alive)
                    continue
                claim = Claim(job, uuid.uuid4().hex, worker, now + round(lease_s * 1e6))
                _write_claim(
                    handle, {"token": claim.token, "worker": worker, "until_us": claim.until_us}
                )
                if alive is not None:
                    self._holds[claim.token] = alive
                return claim
        return None

    def _hold(self, job_id: str) -> int | None:
        """A descriptor holding the job's ``.held`` lock, or None when another holder (a
        live process, or another claim of this one) has it."""
        path = self._job_path(job_id).with_suffix(".held")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _let_go(self, token: str) -> None:
        fd = self._holds.pop(token, None)
        if fd is not None:
            os.close(fd)

    def complete(self, claim: Claim, entries: Sequence[Entry] = ()) -> list[int]:
        """Apply ``entries`` and DONE of the job in one batch if the claim is still the
        job's (see Backend.complete); the job's claim is emptied (its files go at the next
        compaction)."""
        job = claim.job
        with self._job_file(job.id) as handle:
            held = _read_claim(handle)
            if held is None or held.get("token") != claim.token or not self._is_pending(job):
                raise JobLostError(f"job {job.id} is no longer held by this claim")
            seqs = self.append([*entries, Entry.done(job.user_id, job.id)])
            # Emptied, not unlinked: unlinking costs milliseconds on some filesystems (an
            # overlay), and compact() removes the files of finished jobs.
            _write_claim(handle, None)
            self._let_go(claim.token)
        return seqs[:-1]

    def renew(self, claim: Claim, lease_s: float) -> Claim:
        """Move the claim's lease end to ``lease_s`` from now, if it still holds the job."""
        job = claim.job
        with self._job_file(job.id) as handle:
            held = _read_claim(handle)
            if held is None or held.get("token") != claim.token or not self._is_pending(job):
                raise JobLostError(f"job {job.id} is no longer held by this claim")
            until = _now_us() + round(lease_s * 1e6)
            _write_claim(handle, {**held, "until_us": until})
        return dataclasses.replace(claim, until_us=until)

    def release(self, claim: Claim) -> None:
        """Give the job back if this claim still holds it."""
        with self._job_file(claim.job.id) as handle:
            held = _read_claim(handle)
            if held is not None and held.get("token") == claim.token:
                _write_claim(handle, None)
            self._let_go(claim.token)

    def _is_pending(self, job: Job) -> bool:
        return any(
            row["id"] == job.id and row["user"] == job.user_id for row in self.engine.log.pending()
        )

    def _job_path(self, job_id: str) -> Path:
        """A job's claim file (named by a hash: a job id may hold any character)."""
        name = hashlib.sha256(job_id.encode()).hexdigest()[:32]
        return self.path / "jobs" / f"{name}.claim"

    @contextlib.contextmanager
    def _job_file(self, job_id: str) -> Iterator[int]:
        """The job's claim file, open and exclusively ``flock``ed for the block."""
        _ = self.engine  # raises StoreClosedError on a closed store
        path = self._job_path(job_id)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the flock

    def _prune_claims(self) -> int:
        """Remove the claim files of jobs that are no longer open; returns how many."""
        folder = self.path / "jobs"
        if not folder.is_dir():
            return 0
        keep = {self._job_path(job.id).stem for job in self.pending()}
        removed = 0
        for path in [*folder.glob("*.claim"), *folder.glob("*.held")]:
            if path.stem not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def config(self) -> dict[str, str]:
        """Latest CONFIG values."""
        return dict(self.engine.log.config())

    # --- maintenance -------------------------------------------------------------------------

    def compact(self) -> dict[str, int]:
        """Rewrite the log without dead records; drop every snapshot and derived index."""
        with self._lock:
            report = self.engine.compact()
            self._lexical.drop()
            self._prune_claims()
            return report

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check every record and every index snapshot (see Backend.verify).

        Reports what the last open recovered, how many records were read, stored vectors that
        are not finite, and snapshots that fail their checks (lexical ones in full). With
        ``repair``: bad snapshots are deleted (rebuilt on use; this process's lexical states
        too) and, when the log had damage, it is compacted so the damaged regions are gone
        from disk.
        """
        with self._lock:
            log = self.engine.log
            recovery = dict(log.recovery)
            records = bad_vectors = 0
            for record in log.records():
                records += 1
                vector = record.get("vector")
                if vector is not None and not np.isfinite(vector).all():
                    bad_vectors += 1
            bad_snapshots = self._bad_snapshots()
            damaged = bool(recovery.get("corrupt_bytes") or recovery.get("torn_tail_bytes"))
            report: dict[str, Any] = {
                "ok": not damaged and not bad_vectors and not bad_snapshots,
                "records": records,
                "bad_vectors": bad_vectors,
                "bad_snapshots": len(bad_snapshots),
                **{f"recovered_{k}": v for k, v in recovery.items()},
            }
            if repair:
                for path in bad_snapshots:
                    lexical = path.suffix == SNAPSHOT_SUFFIX
                    for suffix in (SNAPSHOT_SUFFIX,) if lexical else (".meta", ".hnsw"):
                        with contextlib.suppress(FileNotFoundError):
                            path.with_suffix(suffix).unlink()
                if any(path.suffix == SNAPSHOT_SUFFIX for path in bad_snapshots):
                    self._lexical.drop()  # states served from a deleted one: rebuilt on use
                if damaged:
                    self.compact()
                report["repaired"] = bool(bad_snapshots or damaged)
            return report

    def _bad_snapshots(self) -> list[Path]:
        index_dir = self.path / "indexes"
        bad = []
        if index_dir.is_dir():
            for meta_path in sorted(index_dir.glob("*.meta")):
                try:
                    meta = json.loads(meta_path.read_text(encoding="utf-8"))
                    ok = UserIndex.load(index_dir, meta["user_id"], int(meta["dim"]))
                except (OSError, ValueError, KeyError, TypeError):
                    ok = None
                if ok is None:
                    bad.append(meta_path)
            for lex_path in sorted(index_dir.glob(f"*{SNAPSHOT_SUFFIX}")):
                try:
                    _native.Lexicon.from_file(str(lex_path))
                except (OSError, StoreCorruptionError):
                    bad.append(lex_path)
        return bad

    def recovery(self) -> Recovery:
        """What the opens of this log found (cumulative)."""
        found = self.engine.log.recovery
        return Recovery(
            torn_tail_bytes=int(found["torn_tail_bytes"]),
            corrupt_bytes=int(found["corrupt_bytes"]),
            corrupt_records=int(found["corrupt_records"]),
            segments=int(found["segments"]),
            damaged_segments=tuple(found["damaged_segments"]),
        )

    def stats(self) -> dict[str, Any]:
        """The log's counts and sizes."""
        return dict(self.engine.log.stats())

    def flush(self) -> None:
        """fsync everything appended so far."""
        self.engine.log.flush()

    def close(self) -> None:
        """Snapshot indexes worth keeping and close the log. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine, self._engine = self._engine, None
            holds, self._holds = list(self._holds.values()), {}
        for fd in holds:  # this process's claims end here, as at its exit
            with contextlib.suppress(OSError):
                os.close(fd)
        if engine is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self._lexical.save_all(engine.log)
            engine.close()

    def after_fork(self) -> None:
        """In the child: drop the inherited log without flushing; reopen lazily."""
        self._lock = threading.RLock()
        self._pid = os.getpid()
        # The parent's claims stay the parent's: our copies of their lock descriptors go.
        for fd in self._holds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._holds = {}
        # A thread of the parent may have held a lexicon's lock mid-update: start afresh.
        self._lexical = LexicalState(self.path / "indexes")
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.abandon()
            # Its handles belong to the parent; nothing of it may run here (not a destructor).
            _ABANDONED.append(self._engine)
            self._engine = None


# --- conversions at the binding ---------------------------------------------------------------


def _native_entry(entry: Entry) -> tuple[Any, ...]:
    """The binding's positional tuple of an entry (docs/architecture.md, ``append``)."""
    metadata = (
        "" if entry.metadata is None else json.dumps(dict(entry.metadata), ensure_ascii=False)
    )
    return (
        NATIVE_OP[entry.op],
        entry.user_id,
        entry.memory_id,
        T.category_code(entry.category) if entry.category else 0,
        T.source_code(entry.source) if entry.source else 0,
        entry.created_at_us,
        entry.text,
        metadata,
        entry.model,
        entry.vector,
        entry.at_us,
    )


def _job(row: dict[str, Any]) -> Job:
    """A job of the log's ``pending()`` rows."""
    return Job(
        id=row["id"],
        user_id=row["user"],
        payload=json.loads(row["text"]),
        created_at=T.from_timestamp_us(row["created_at"]),
    )


def _now_us() -> int:
    return time.time_ns() // 1000


#: Size of a claim file's one record: always written whole, padded with spaces, never
#: truncated (on ext4 a write after a truncate to 0 makes close() wait for the disk).
_CLAIM_BYTES = 512


def _read_claim(fd: int) -> dict[str, Any] | None:
    """The claim a claim file holds (None: empty, or unreadable after a torn write)."""
    data = os.pread(fd, _CLAIM_BYTES, 0).strip()
    try:
        held = json.loads(data) if data else None
    except ValueError:
        return None
    return held if isinstance(held, dict) else None


def _write_claim(fd: int, held: dict[str, Any] | None) -> None:
    data = b""
    if held is not None:
        held = {**held, "worker": str(held.get("worker", ""))[:64]}  # fits the record
        data = json.dumps(held, ensure_ascii=True).encode()
    os.pwrite(fd, data.ljust(_CLAIM_BYTES), 0)


def _json(metadata: Any) -> str:
    return json.dumps(dict(metadata), ensure_ascii=False)


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(row["metadata"]) if row["metadata"] else {}
    return loaded


def _memory(row: dict[str, Any]) -> Memory:
    return Memory(
        id=row["id"],
        text=row["text"],
        category=T.category_name(row["category"]),
        created_at=T.from_timestamp_us(row["created_at"]),
        updated_at=T.from_timestamp_us(row["updated_at"]),
        source=T.source_name(row["source"]) if row["source"] else "manual",
        metadata=_metadata(row),
        user_id=row["user"],
    )


def _mask(where: Filter) -> int:
    mask = 0
    for name in where.categories:
        mask |= 1 << T.category_code(name)
    return mask
