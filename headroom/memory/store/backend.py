"""The storage seam: what ``MemoryStore`` needs from a backend, and the typed records it passes.

``MemoryStore`` (validation, embedding, dedup policy, ranking) talks to storage only through
:class:`Backend`. A backend owns its data and everything derived from it: the embedded one
(``store/local``) owns the log, the per-user hnswlib indexes and snapshots, the lexical state
and the vector sums; a server backend owns its rows and its ANN index the same way.

Contracts every backend keeps (``tests/test_backend_contract.py`` checks them on each):

- Isolation: every user-scoped method reads and writes only that user's data.
- Atomic batches: :meth:`Backend.append` applies every entry of a batch or none, visible to
  every later read of every process at once.
- Times are integer microseconds since the Unix epoch; vectors are 1-D float32 arrays.
- Sequence numbers are positive and increase with every appended entry; a user's
  ``user_seq`` is the seq of the newest entry that touched the user.
- Errors are the typed errors of :mod:`headroom.memory.errors` (``MemoryNotFoundError`` for an
  update, delete or revector of an id that is not live for that user, ``InvalidVectorError``
  for a vector of the wrong dimension, ``StoreFailedError`` once a write has failed,
  ``StoreClosedError`` after close).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError
from ..types import CATEGORIES, Category, Memory, MemoryVersion, Source, category_code

Vector = npt.NDArray[np.float32]


class Op(enum.Enum):
    """What an entry does (the log format gives each a numeric code: docs/log-format.md)."""

    ADD = "add"  #: a new memory
    UPDATE = "update"  #: a new version of a live memory; the previous one goes to history
    DELETE = "delete"  #: soft delete: hidden at once, its bytes go at the next compaction
    CLEAR = "clear"  #: soft delete of every live memory of the user
    PURGE = "purge"  #: hard delete of one memory (or the whole user when the id is empty)
    PENDING = "pending"  #: a background job (id = job id, text = JSON payload)
    DONE = "done"  #: the job with this id is finished
    CONFIG = "config"  #: a store-level setting: id = key, text = value; latest wins
    REVECTOR = "revector"  #: a new vector (and model) for the live version; no new version


@dataclass(frozen=True)
class Entry:
    """One operation of an atomic batch. Build it with the class methods below.

    For UPDATE, ``None`` (category, source, metadata, vector) and 0 (``created_at_us``) keep
    the memory's current value. ``at_us`` is the entry's own time (0 = now): import uses it
    to reproduce the times of history versions; a memory's ``updated_at`` is the time of its
    live version.
    """

    op: Op
    user_id: str = ""
    memory_id: str = ""
    text: str = ""
    category: Category | None = None
    source: Source | None = None
    created_at_us: int = 0
    metadata: Mapping[str, Any] | None = None
    model: str = ""
    vector: Vector | None = None
    at_us: int = 0

    @classmethod
    def add(
        cls,
        user_id: str,
        memory_id: str,
        text: str,
        *,
        category: Category,
        source: Source,
        created_at_us: int,
        metadata: Mapping[str, Any],
        model: str,
        vector: Vector,
        at_us: int = 0,
    ) -> Entry:
        """A new memory. Its id must not be known for the user (live or soft-deleted)."""
        return cls(
            Op.ADD, user_id, memory_id, text, category, source, created_at_us, metadata,
            model, vector, at_us,
        )  # fmt: skip

    @classmethod
    def update(
        cls,
        user_id: str,
        memory_id: str,
        text: str,
        *,
        model: str,
        vector: Vector | None,
        category: Category | None = None,
        source: Source | None = None,
        metadata: Mapping[str, Any] | None = None,
        at_us: int = 0,
    ) -> Entry:
        """A new version of a live memory (None keeps the current category, metadata...)."""
        return cls(
            Op.UPDATE, user_id, memory_id, text, category, source, 0, metadata, model, vector,
            at_us,
        )  # fmt: skip

    @classmethod
    def delete(cls, user_id: str, memory_id: str, source: Source | None = None) -> Entry:
        """Soft delete of a live memory."""
        return cls(Op.DELETE, user_id, memory_id, source=source)

    @classmethod
    def clear(cls, user_id: str) -> Entry:
        """Soft delete of every live memory of the user."""
        return cls(Op.CLEAR, user_id)

    @classmethod
    def purge(cls, user_id: str, memory_id: str = "") -> Entry:
        """Hard delete of every version of one memory, or of the whole user when ``memory_id``
        is empty; either way the user's pending jobs go too. The bytes go at the next
        :meth:`Backend.compact`."""
        return cls(Op.PURGE, user_id, memory_id)

    @classmethod
    def pending(cls, user_id: str, job_id: str, payload: str, created_at_us: int) -> Entry:
        """A durable background job with a JSON payload."""
        return cls(Op.PENDING, user_id, job_id, payload, created_at_us=created_at_us)

    @classmethod
    def done(cls, user_id: str, job_id: str) -> Entry:
        """Marks a job finished."""
        return cls(Op.DONE, user_id, job_id)

    @classmethod
    def config(cls, key: str, value: str) -> Entry:
        """A store-level setting (latest wins)."""
        return cls(Op.CONFIG, "", key, value)

    @classmethod
    def revector(cls, user_id: str, memory_id: str, model: str, vector: Vector) -> Entry:
        """A new vector for the live version (a re-embedding); history is unchanged."""
        return cls(Op.REVECTOR, user_id, memory_id, model=model, vector=vector)


@dataclass(frozen=True)
class Filter:
    """Which memories a search or listing may return. The empty filter accepts all.

    ``categories``: the allowed categories (empty: all). ``since_us`` / ``until_us``: an
    inclusive range of ``created_at``. ``metadata``: ``(key, allowed values)`` pairs; a memory
    matches when, for every key, its metadata holds the key with one of the allowed values
    (JSON equality: ``1`` and ``1.0`` are equal, ``True`` and ``1`` are not).
    """

    categories: frozenset[Category] = frozenset()
    since_us: int | None = None
    until_us: int | None = None
    metadata: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @classmethod
    def build(
        cls,
        category: str | Sequence[str] | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Filter:
        """A validated filter. ``metadata`` maps a key to a value (equality) or to a list,
        tuple or set of values (membership: any of them); to match a metadata value that is
        itself a list, wrap it in a list. Raises InvalidInputError / InvalidCategoryError."""
        names: frozenset[Category] = frozenset()
        if category is not None:
            given = [category] if isinstance(category, str) else list(category)
            names = frozenset(CATEGORIES[category_code(name) - 1] for name in given)
        pairs: list[tuple[str, tuple[Any, ...]]] = []
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InvalidInputError(
                    f"a metadata filter must be a mapping; got {type(metadata).__name__}"
                )
            for key, wanted in metadata.items():
                if not isinstance(key, str):
                    raise InvalidInputError(f"metadata filter keys must be str; got {key!r}")
                values = (
                    tuple(wanted)
                    if isinstance(wanted, (list, tuple, set, frozenset))
                    else (wanted,)
                )
                if not values:
                    raise InvalidInputError(f"metadata filter {key!r} allows no value")
                for value in values:
                    _check_json_value(key, value)
                pairs.append((key, values))
        return cls(names, since_us, until_us, tuple(sorted(pairs, key=lambda p: p[0])))

    @property
    def is_empty(self) -> bool:
        """True when the filter accepts every memory."""
        return (
            not self.categories
            and self.since_us is None
            and self.until_us is None
            and (not self.metadata)
        )

    def accepts_created(self, created_at_us: int) -> bool:
        """The time part of the filter."""
        lo, hi = self.since_us, self.until_us
        return (lo is None or created_at_us >= lo) and (hi is None or created_at_us <= hi)

    def accepts_metadata(self, metadata: Mapping[str, Any]) -> bool:
        """The metadata part of the filter."""
        for key, values in self.metadata:
            if key not in metadata:
                return False
            have = metadata[key]
            if not any(_json_equal(have, value) for value in values):
                return False
        return True

    def accepts(self, memory: Memory) -> bool:
        """True when ``memory`` passes every part of the filter."""
        if self.categories and memory.category not in self.categories:
            return False
        created = round(memory.created_at.timestamp() * 1_000_000)
        return self.accepts_created(created) and self.accepts_metadata(memory.metadata)


ALL = Filter()


def _check_json_value(key: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidInputError(f"metadata filter {key!r}: {value!r} is not a JSON value") from None


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of two JSON values as JSON sees them: bools are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


@dataclass(frozen=True)
class Job:
    """A durable background job (with_memory's extraction queue)."""

    id: str
    user_id: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one background job, until ``until_us`` (the backend's clock, µs).

    ``token`` is new at every claim: completing with a claim whose token is no longer the
    job's (another worker claimed it after the lease ran out) is refused.
    """

    job: Job
    token: str
    worker: str
    until_us: int


@dataclass(frozen=True)
class ChangeSet:
    """What changed in a user's live set after a seq: the change feed.

    A label names one live version of a memory (a write gives the memory a new label; its old
    label is then removed). ``seq`` is the user's seq the change set is complete up to.
    """

    seq: int
    removed: tuple[int, ...] = ()
    added: tuple[tuple[int, str], ...] = ()  #: (label, memory id) of versions now live


@dataclass(frozen=True)
class Recovery:
    """What opening the store found and repaired (cumulative over the backend's life)."""

    torn_tail_bytes: int = 0  #: bytes of an interrupted last write, cut off
    corrupt_bytes: int = 0  #: bytes skipped because they failed their checksum
    corrupt_records: int = 0  #: records lost in those bytes (as far as they could be counted)
    segments: int = 0  #: segments read
    damaged_segments: tuple[str, ...] = ()  #: where bytes were skipped or cut off

    @property
    def damaged(self) -> bool:
        """True when anything was skipped or cut off."""
        return bool(self.torn_tail_bytes or self.corrupt_bytes or self.corrupt_records)


class LexicalScorer(Protocol):
    """BM25 over one user's memories (the per-user corpus gives the IDF). Thread-safe."""

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best ``(memory id, BM25)`` for ``query``, best first; ties by id order."""
        ...

    def scores(self, query: str, keys: Sequence[str]) -> list[float]:
        """BM25 of each memory id in ``keys`` (0.0 for an unknown id)."""
        ...

    def group_scores(self, query: str, groups: Sequence[Sequence[str]]) -> list[float]:
        """BM25 of each group of memory ids taken as one document (session context)."""
        ...


class UserRanking(LexicalScorer, Protocol):
    """What a backend derives for ranking one user's memories, current at some seq."""

    def vector_mean(self, min_count: int) -> Vector | None:
        """The mean of the user's live vectors; None when fewer than ``min_count``."""
        ...

    def created_at(self, memory_id: str) -> int | None:
        """``created_at`` (µs) of a live memory, None when unknown (no row read needed)."""
        ...

    def created_many(self, memory_ids: Sequence[str]) -> list[int | None]:
        """:meth:`created_at` of each memory id, in one call (the ranking's date terms)."""
        ...


class Backend(Protocol):
    """Storage for the memories of many users. Every method may be called from any thread."""

    #: Where the data lives, for messages (a directory path or a URL without password).
    location: str

    # --- writes ------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Apply one atomic batch; returns the seq given to each entry (increasing; consecutive
        on the local backend, with gaps where another process drew seqs at the same time on a
        server backend).

        Derived state (indexes, lexical state) catches up before the next search; PURGE and
        REVECTOR drop what they invalidate. Raises the typed errors of the module docstring.
        """
        ...

    # --- reads -------------------------------------------------------------------------------

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        """The live memory, or None (unknown, deleted, or another user's)."""
        ...

    def get_many(self, user_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """The live memories among ``memory_ids``, by id (unknown, deleted and other users'
        ids are left out); one read, however many ids (a server backend: one round trip)."""
        ...

    def memories(self, user_id: str, where: Filter = ALL) -> list[Memory]:
        """The user's live memories that pass ``where``, in creation order (oldest first)."""
        ...

    def history(self, user_id: str, memory_id: str) -> list[MemoryVersion]:
        """Every version of the memory, oldest first, ending with its deletion if deleted;
        empty when unknown. Re-embeddings (REVECTOR) are not versions."""
        ...

    def count(self, user_id: str) -> int:
        """How many live memories the user has."""
        ...

    def users(self) -> list[str]:
        """Every user with at least one live memory, sorted."""
        ...

    def vectors(self, user_id: str) -> dict[str, Vector]:
        """The vector of each live memory of the user, by memory id."""
        ...

    def user_seq(self, user_id: str) -> int:
        """The seq of the newest entry that touched the user (0 when none)."""
        ...

    def changes(self, user_id: str, since: int) -> ChangeSet:
        """The change feed: what changed in the user's live set after seq ``since``."""
        ...

    # --- search ------------------------------------------------------------------------------

    def search(
        self, user_id: str, query: Vector, k: int, where: Filter = ALL
    ) -> list[tuple[str, float]]:
        """Top-k ``(memory id, dot product)`` of the user's live memories, best first.

        Filters apply inside the search: k results whenever at least k memories pass, never
        more than pass. Exact for ordinary users; large users may go through an ANN index with
        recall close to 1. Raises InvalidVectorError for a query of another dimension.
        """
        ...

    def ranking(self, user_id: str) -> UserRanking:
        """The user's lexical scorer and vector mean, caught up with every write so far."""
        ...

    def early_vector_mean(self, user_id: str, min_count: int) -> tuple[Vector | None] | None:
        """``(ranking(user_id).vector_mean(min_count),)``, the same to the bit, when the backend
        can tell it before ``ranking`` is ready and cheaper (the embedded backend in a fresh
        process: from the lexical snapshot's header while the index loads); None when there is
        nothing to gain over waiting for ``ranking`` (the search then does)."""
        ...

    def warm(self, user_id: str) -> None:
        """Fold the user's recent writes into derived state now (off the search path)."""
        ...

    # --- jobs and config ---------------------------------------------------------------------

    def pending(self, user_id: str | None = None) -> list[Job]:
        """Open background jobs (of one user, or all), oldest first."""
        ...

    def claim(
        self, user_id: str | None, worker: str, lease_s: float, job_id: str | None = None
    ) -> Claim | None:
        """Claim the oldest open job nobody holds (of one user, or of any user when
        ``user_id`` is None; only job ``job_id`` when given) for ``lease_s`` seconds, or None.

        A job is held from its claim until it is completed or released, or until the lease
        runs out (a killed worker's job comes back then). One job is held by at most one
        claim at a time; holding it takes no lock and no transaction that outlives the call.
        """
        ...

    def complete(self, claim: Claim, entries: Sequence[Entry] = ()) -> list[int]:
        """Apply ``entries`` and mark the claimed job done, in one atomic batch, only if the
        claim is still the job's; returns the seqs of ``entries``.

        Raises JobLostError (and applies nothing) when the job was claimed again since (the
        lease ran out), or is gone (completed, or purged with its user). A claim whose lease
        ran out but that nobody took over still completes.
        """
        ...

    def renew(self, claim: Claim, lease_s: float) -> Claim:
        """Extend a held claim: the job stays held until ``lease_s`` seconds from now (same
        token). Raises JobLostError when the claim no longer holds the job."""
        ...

    def release(self, claim: Claim) -> None:
        """Give a held job back (claimable again at once); nothing when the claim is lost."""
        ...

    def config(self) -> dict[str, str]:
        """The latest value of every CONFIG key."""
        ...

    # --- maintenance -------------------------------------------------------------------------

    def compact(self) -> dict[str, int]:
        """Reclaim dead data: after it, no byte of a purged or soft-deleted memory remains in
        the backend's files (what a server backend can promise: docs say)."""
        ...

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the stored data and derived state; ``ok`` is True when nothing is wrong. With
        ``repair``, remove what can be rebuilt and reclaim damaged regions (``repaired``)."""
        ...

    def recovery(self) -> Recovery:
        """What opening the store found and repaired."""
        ...

    def stats(self) -> dict[str, Any]:
        """Backend-specific sizes and counts (JSON-safe)."""
        ...

    def flush(self) -> None:
        """Make every acknowledged write durable now."""
        ...

    def close(self) -> None:
        """Make writes durable, save what is worth keeping, release every handle. Idempotent."""
        ...

    def after_fork(self) -> None:
        """In a forked child: drop inherited handles without using them; reopen on next use."""
        ...


def category_names(categories: frozenset[Category]) -> list[Category]:
    """The categories in code order (for deterministic encodings)."""
    return [c for c in CATEGORIES if c in categories]


__all__ = [
    "ALL",
    "Backend",
    "ChangeSet",
    "Claim",
    "Entry",
    "Filter",
    "Job",
    "LexicalScorer",
    "Op",
    "Recovery",
    "UserRanking",
    "Vector",
]
