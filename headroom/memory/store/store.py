"""MemoryStore: text in, memories out. The one door to the log, the indexes and the embedder.

``MemoryStore.open(path)`` returns the process-wide store for that directory: every wrapper,
facade and CLI command in a process shares one store (and so one loaded model) per path. The
store is fork-aware: a forked child drops the inherited handles and reopens on first use.

The store knows nothing of LLMs or prompts. Every user-scoped method takes the user id first
and touches only that user's memories.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .. import types as T
from ..embedders.base import Embedder
from ..errors import (
    EmbeddingModelMismatchError,
    InvalidInputError,
    InvalidVectorError,
    MemoryNotFoundError,
    StoreClosedError,
)
from ..types import Memory, MemoryVersion
from .hybrid import HybridSearcher
from .local.engine import Engine

# Op codes of the log (docs/log-format.md).
OP_ADD, OP_UPDATE, OP_DELETE, OP_CLEAR, OP_PURGE, OP_PENDING, OP_DONE, OP_CONFIG, OP_REVECTOR = (
    range(1, 10)
)
#: History entries as the public API names them (the log names ops ADD, UPDATE, ...).
_OP_NAMES = {"ADD": "add", "UPDATE": "update", "DELETE": "delete", "CLEAR": "clear"}

#: A new memory this similar (cosine) to an existing one of the same user supersedes it instead
#: of being stored beside it. MiniLM paraphrases of one fact score 0.85-0.95; distinct facts
#: about one topic rarely pass 0.9 (bench/ measures this on LoCoMo observations).
DEFAULT_DEDUP_THRESHOLD = 0.92

_CONFIG_EMBEDDING = "embedding"

logger = logging.getLogger("headroom.memory")


class NewMemoryLike(Protocol):
    """Anything with a text and a category (e.g. protocol.NewMemory)."""

    @property
    def text(self) -> str: ...

    @property
    def category(self) -> str: ...


class MemoryUpdateLike(Protocol):
    """Anything with an id, a new text and an optional new category."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def category(self) -> str | None: ...


@dataclass(frozen=True)
class NewMemory:
    """A memory to add: text, category, optional metadata and creation time."""

    text: str
    category: str = "fact"
    metadata: dict[str, Any] | None = None
    created_at: datetime | float | None = None


@dataclass(frozen=True)
class AppliedOps:
    """What ``apply`` / ``add_many`` did: memories added, memories updated, ids deleted."""

    added: tuple[Memory, ...] = ()
    updated: tuple[Memory, ...] = ()
    deleted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())  # texts dropped as exact duplicates


@dataclass(frozen=True)
class Job:
    """A durable background job (with_memory's extraction queue)."""

    id: str
    user_id: str
    payload: dict[str, Any]
    created_at: datetime


# --- the process-wide registry ----------------------------------------------------------------

_REGISTRY: dict[str, MemoryStore] = {}
_REGISTRY_LOCK = threading.Lock()
_ALL_STORES: weakref.WeakSet[MemoryStore] = weakref.WeakSet()
_ABANDONED: list[Engine] = []


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for store in list(_ALL_STORES):
        store._after_fork()


def _close_all_at_exit() -> None:
    for store in list(_ALL_STORES):
        with contextlib.suppress(Exception):  # exit goes on whatever one store does
            store.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


class MemoryStore:
    """Memories of many users in one store directory, searchable by meaning.

    Thread-safe. Use ``MemoryStore.open`` to share one instance per path in a process;
    the constructor opens a private instance (tests, tools).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        embedder: Embedder | None = None,
        sync: str = "interval",
        ann_threshold: int | None = None,
        dedup_threshold: float = DEFAULT_DEDUP_THRESHOLD,
    ) -> None:
        self.path = Path(path)
        self.sync = sync
        self.dedup_threshold = dedup_threshold
        self._ann_threshold = ann_threshold
        self._embedder = embedder
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._engine: Engine | None = self._open_engine()
        self._hybrid = HybridSearcher()
        if embedder is not None:
            self._check_model(embedder)
        _ALL_STORES.add(self)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] = "memory.db",
        *,
        embedder: Embedder | None = None,
        sync: str = "interval",
    ) -> MemoryStore:
        """The shared store of ``path`` in this process, opened on first use.

        A later call with another embedder model than the store was opened with raises
        EmbeddingModelMismatchError; a call without an embedder reuses the store's.
        """
        key = os.path.realpath(os.fspath(path))
        with _REGISTRY_LOCK:
            store = _REGISTRY.get(key)
            if store is None or store._closed:
                store = cls(path, embedder=embedder, sync=sync)
                _REGISTRY[key] = store
                return store
        if embedder is not None:
            if store._embedder is None:
                store._check_model(embedder)
                store._embedder = embedder
            elif store._embedder is not embedder and store._embedder.model_id != embedder.model_id:
                raise EmbeddingModelMismatchError(
                    f"the store at {key} is open with embedding model {store._embedder.model_id}; "
                    f"got {embedder.model_id}"
                )
        return store

    # --- plumbing ----------------------------------------------------------------------------

    def _open_engine(self) -> Engine:
        kwargs: dict[str, Any] = {"sync": self.sync}
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
                    self._after_fork()
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._open_engine()
                engine = self._engine
        return engine

    def _after_fork(self) -> None:
        # In the child: the inherited log shares the parent's file descriptions (and its flock);
        # drop it without flushing or joining threads, and reopen lazily.
        self._lock = threading.RLock()
        self._pid = os.getpid()
        # The lexical indexes too: a thread of the parent (a prefetch outliving a search whose
        # embedding raised, another caller's search) may have held one's lock mid-update.
        self._hybrid = HybridSearcher(self._hybrid.config, self._hybrid.pool)
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.abandon()
            # Keep the inherited engine alive for the child's lifetime: its handles belong to
            # the parent, and nothing of it may run again here (not even a destructor).
            _ABANDONED.append(self._engine)
            self._engine = None

    @property
    def embedder(self) -> Embedder:
        """The embedder; the default local MiniLM is loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    embedder = self._recorded_embedder()
                    self._check_model(embedder)
                    self._embedder = embedder
        return self._embedder

    def _recorded_embedder(self) -> Embedder:
        """The embedder of the model this store was written with (MiniLM for a new store).

        An ``openai/<model>@<dim>`` store gets an OpenAI embedder with a default client
        (configured from the environment, as the openai SDK does).
        """
        from ..embedders import get_embedder

        recorded = self.engine.log.config().get(_CONFIG_EMBEDDING)
        model = json.loads(recorded)["model"] if recorded else ""
        if model.startswith("openai/"):
            name, _, dim = model.removeprefix("openai/").rpartition("@")
            return get_embedder(use_local=False, model=name, dimensions=int(dim))
        return get_embedder()

    def _check_model(self, embedder: Embedder) -> None:
        """Record the embedding model in a new store; refuse a store of another model."""
        config = self.engine.log.config()
        wanted = {"model": embedder.model_id, "dim": int(embedder.dim)}
        recorded = config.get(_CONFIG_EMBEDDING)
        if recorded is None:
            self.engine.append(
                [(OP_CONFIG, "", _CONFIG_EMBEDDING, 0, 0, 0, json.dumps(wanted), "{}", "", None)]
            )
            return
        have = json.loads(recorded)
        if have != wanted:
            raise EmbeddingModelMismatchError(
                f"the store at {self.path} holds vectors of {have['model']} ({have['dim']} dims); "
                f"the embedder is {wanted['model']} ({wanted['dim']} dims). Open it with the same "
                "model, or migrate it: headroom-memory reembed --db PATH --model MODEL"
            )

    def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors = np.ascontiguousarray(self.embedder.embed(list(texts)), dtype=np.float32)
        if vectors.shape != (len(texts), self.embedder.dim) or not np.isfinite(vectors).all():
            raise InvalidVectorError(
                f"the embedder returned an array of shape {vectors.shape}; expected "
                f"({len(texts)}, {self.embedder.dim}) of finite values"
            )
        return vectors

    def _memory(self, row: dict[str, Any]) -> Memory:
        return Memory(
            id=row["id"],
            text=row["text"],
            category=T.category_name(row["category"]),
            created_at=T.from_timestamp_us(row["created_at"]),
            updated_at=T.from_timestamp_us(row["updated_at"]),
            source=T.source_name(row["source"]) if row["source"] else "manual",
            metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            user_id=row["user"],
        )

    # --- writes ------------------------------------------------------------------------------

    def add(
        self,
        user_id: str,
        text: str,
        category: str = "fact",
        metadata: dict[str, Any] | None = None,
        created_at: datetime | float | None = None,
        source: str = "manual",
    ) -> Memory:
        """Store one memory and return it (no near-duplicate check: an explicit add is kept)."""
        item = NewMemory(text, category, metadata, created_at)
        return self.add_many(user_id, [item], source=source, dedup=False).added[0]

    def add_many(
        self,
        user_id: str,
        items: Sequence[NewMemory | NewMemoryLike],
        *,
        source: str = "inline",
        dedup: bool = True,
    ) -> AppliedOps:
        """Store several memories with one batch embed and one durable write.

        With ``dedup``, a memory whose text is already stored for the user is skipped, and
        one whose meaning is a near-duplicate of a stored memory (cosine at or above
        ``dedup_threshold``) supersedes it: the stored memory is updated and its old version
        kept in history.
        """
        return self.apply(user_id, adds=items, source=source, dedup=dedup)

    def apply(
        self,
        user_id: str,
        *,
        adds: Sequence[NewMemory | NewMemoryLike] = (),
        updates: Sequence[MemoryUpdateLike] = (),
        deletes: Sequence[str] = (),
        source: str = "inline",
        dedup: bool = True,
    ) -> AppliedOps:
        """Apply adds, updates and deletes (real ids) as one atomic batch.

        Updates and deletes of ids that are not live for this user are dropped (they may have
        been deleted since they were shown); invalid texts or categories raise before anything
        is written.
        """
        user_id = T.validate_user_id(user_id)
        src = T.source_code(source)
        now_us = T.to_timestamp_us(datetime.now().astimezone())
        assert now_us is not None
        new_items = [_normalise_new(item) for item in adds]
        upd_items = [
            (
                str(u.id),
                T.validate_text(u.text),
                T.category_code(u.category) if u.category else 0,
            )
            for u in updates
        ]
        del_ids = [str(i) for i in deletes]
        texts = [t for t, *_ in new_items] + [t for _, t, _ in upd_items]
        if not texts and not del_ids:
            return AppliedOps()
        vectors = self._embed(texts) if texts else np.empty((0, 0), np.float32)
        with self._lock:
            engine = self.engine
            log = engine.log
            entries: list[tuple[Any, ...]] = []
            touched: dict[str, tuple[int, str]] = {}  # memory id -> (op, text)
            deleted: list[str] = []
            skipped: list[str] = []
            batch_texts: dict[str, str] = {}
            for (text, cat, meta, created), vector in zip(
                new_items, vectors[: len(new_items)], strict=True
            ):
                norm = _norm_text(text)
                if dedup and norm in batch_texts:
                    skipped.append(text)
                    continue
                target: str | None = None
                if dedup:
                    best = engine.search(user_id, vector, 1)
                    if best:
                        hit_id, score = best[0]
                        hit = log.get(user_id, hit_id)
                        if hit is not None and _norm_text(hit["text"]) == norm:
                            skipped.append(text)
                            continue
                        if score >= self.dedup_threshold and hit_id not in touched:
                            target = hit_id
                batch_texts[norm] = text
                meta_json = json.dumps(meta, ensure_ascii=False)
                if target is not None:
                    entries.append(
                        (OP_UPDATE, user_id, target, cat, src, 0, text, meta_json,
                         self.embedder.model_id, vector)
                    )  # fmt: skip
                    touched[target] = (OP_UPDATE, text)
                else:
                    memory_id = uuid.uuid4().hex
                    entries.append(
                        (OP_ADD, user_id, memory_id, cat, src, created or now_us, text, meta_json,
                         self.embedder.model_id, vector)
                    )  # fmt: skip
                    touched[memory_id] = (OP_ADD, text)
            for (memory_id, text, cat), vector in zip(
                upd_items, vectors[len(new_items) :], strict=True
            ):
                current = log.get(user_id, memory_id)
                if current is None or memory_id in touched:
                    continue
                meta_json = current["metadata"] or "{}"
                entries.append(
                    (OP_UPDATE, user_id, memory_id, cat or current["category"], src, 0, text,
                     meta_json, self.embedder.model_id, vector)
                )  # fmt: skip
                touched[memory_id] = (OP_UPDATE, text)
            for memory_id in del_ids:
                if memory_id in touched or log.get(user_id, memory_id) is None:
                    continue
                entries.append((OP_DELETE, user_id, memory_id, 0, src, 0, "", "", "", None))
                deleted.append(memory_id)
            if entries:
                engine.append(entries)
                self._warm(user_id)
            added: list[Memory] = []
            updated: list[Memory] = []
            for memory_id, (op, _) in touched.items():
                row = log.get(user_id, memory_id)
                if row is None:
                    continue
                (added if op == OP_ADD else updated).append(self._memory(row))
        return AppliedOps(tuple(added), tuple(updated), tuple(deleted), tuple(skipped))

    def _warm(self, user_id: str) -> None:
        """Fold a write into the user's derived indexes now, not in the next search."""
        try:
            self.engine.warm(user_id)
            self._hybrid.warm(self.engine.log, user_id)
        except Exception:  # the next search catches up anyway
            logger.debug("warming the indexes of %r failed", user_id, exc_info=True)

    def update(
        self,
        user_id: str,
        memory_id: str,
        text: str,
        category: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Memory:
        """Write a new version of a memory (the old one stays in history) and return it."""
        user_id = T.validate_user_id(user_id)
        text = T.validate_text(text)
        with self._lock:
            current = self.engine.log.get(user_id, memory_id)
            if current is None:
                raise MemoryNotFoundError(f"no memory {memory_id!r} for user {user_id!r}")
            cat = T.category_code(category) if category else current["category"]
            meta = (
                json.dumps(T.validate_metadata(metadata), ensure_ascii=False)
                if metadata is not None
                else current["metadata"] or "{}"
            )
            vector = self._embed([text])[0]
            self.engine.append(
                [
                    (OP_UPDATE, user_id, memory_id, cat, T.source_code("manual"), 0, text, meta,
                     self.embedder.model_id, vector)
                ]
            )  # fmt: skip
            row = self.engine.log.get(user_id, memory_id)
        return self._memory(row)

    def delete(self, user_id: str, memory_id: str) -> None:
        """Soft delete: hidden at once; its bytes are purged at the next compaction."""
        user_id = T.validate_user_id(user_id)
        with self._lock:
            if self.engine.log.get(user_id, memory_id) is None:
                raise MemoryNotFoundError(f"no memory {memory_id!r} for user {user_id!r}")
            self.engine.append([(OP_DELETE, user_id, memory_id, 0, 0, 0, "", "", "", None)])

    def clear(self, user_id: str, *, hard: bool = False) -> int:
        """Delete every memory of the user; returns how many were live.

        Soft by default (purged at the next compaction); ``hard=True`` is ``forget(user_id)``.
        """
        if hard:
            return self.forget(user_id)
        user_id = T.validate_user_id(user_id)
        with self._lock:
            count = int(self.engine.log.count(user_id))
            if count:
                self.engine.append([(OP_CLEAR, user_id, "", 0, 0, 0, "", "", "", None)])
        return count

    def forget(self, user_id: str, memory_ids: Iterable[str] | None = None) -> int:
        """Hard delete: every version of the memories (all of the user's when ``memory_ids``
        is None, with its pending background jobs), then compaction, so no byte of their text
        or vectors remains in any file of the store when this returns. Returns how many live
        memories were removed."""
        user_id = T.validate_user_id(user_id)
        with self._lock:
            log = self.engine.log
            if memory_ids is None:
                removed = int(log.count(user_id))
                entries = [(OP_PURGE, user_id, "", 0, 0, 0, "", "", "", None)]
            else:
                ids = list(dict.fromkeys(str(i) for i in memory_ids))
                removed = sum(1 for i in ids if log.get(user_id, i) is not None)
                entries = [(OP_PURGE, user_id, i, 0, 0, 0, "", "", "", None) for i in ids]
            if entries:
                self.engine.append(entries)
            self.engine.drop_user_index(user_id)
            self._hybrid.drop(user_id)
            self.engine.compact()
        return removed

    def prune(
        self,
        user_id: str,
        *,
        older_than: datetime | float | None = None,
        category: str | None = None,
        keep_last: int | None = None,
        hard: bool = False,
    ) -> int:
        """Delete memories by age (created before ``older_than``), by category, and/or beyond
        the newest ``keep_last`` (by updated time). Criteria combine with AND; at least one is
        required. Returns how many were deleted (soft unless ``hard``)."""
        if older_than is None and category is None and keep_last is None:
            raise InvalidInputError("prune needs older_than, category or keep_last")
        if keep_last is not None and keep_last < 0:
            raise InvalidInputError("keep_last must be >= 0")
        memories = self.get_all(user_id, category=category)
        doomed = memories
        if older_than is not None:
            limit = T.to_timestamp_us(older_than)
            doomed = [m for m in doomed if (T.to_timestamp_us(m.created_at) or 0) < (limit or 0)]
        if keep_last is not None:
            newest = sorted(memories, key=lambda m: m.updated_at, reverse=True)[:keep_last]
            keep = {m.id for m in newest}
            doomed = [m for m in doomed if m.id not in keep]
        ids = [m.id for m in doomed]
        if not ids:
            return 0
        if hard:
            return self.forget(user_id, ids)
        return len(self.apply(user_id, deletes=ids, source="manual").deleted)

    # --- reads -------------------------------------------------------------------------------

    def search(
        self,
        user_id: str,
        query: str | npt.NDArray[np.float32],
        top_k: int = 5,
        *,
        category: str | Sequence[str] | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        min_score: float | None = None,
        hybrid: bool = True,
    ) -> list[tuple[Memory, float]]:
        """The user's memories most relevant to ``query``, best first, with their scores.

        A text query runs the hybrid search (``hybrid.py``): dense and lexical candidates fused by
        the tuned ranking; the score is the cosine similarity, moved by the centring on the
        user's mean memory (a memory more typical of the user than average loses a little, a
        less typical one gains), plus the lexical, date and session-context bonuses (0 to
        0.49 on top by default: the weights of ``ranking.RankConfig``). ``hybrid=False``, or
        a vector query, gives the plain dense search with cosine scores. Filters (category,
        created_at range) apply inside the search: k results come back whenever at least k
        memories match.
        """
        user_id = T.validate_user_id(user_id)
        if not isinstance(top_k, int) or top_k < 0:
            raise InvalidInputError(f"top_k must be a non-negative int; got {top_k!r}")
        if top_k == 0:
            return []
        mask = _category_mask(category)
        lo, hi = T.to_timestamp_us(since), T.to_timestamp_us(until)
        engine = self.engine
        log = engine.log
        text = query if isinstance(query, str) and hybrid else None
        # The lexical side needs only the text: it runs while the query is embedded.
        prefetched = self._hybrid.prefetch(log, user_id, text) if text is not None else None
        if isinstance(query, str):
            vector = self._embed([query])[0]
        else:
            vector = _check_vector(query, self.embedder.dim)

        def dense(query_vector: npt.NDArray[np.float32], n: int) -> list[tuple[str, float]]:
            return engine.search(user_id, query_vector, n, categories=mask, t_min=lo, t_max=hi)

        def accept(row: dict[str, Any]) -> bool:
            if mask and not (mask >> int(row["category"])) & 1:
                return False
            created = int(row["created_at"])
            return (lo is None or created >= lo) and (hi is None or created <= hi)

        filtered = bool(mask) or lo is not None or hi is not None
        if text is not None:
            pairs = self._hybrid.search(
                log, dense, user_id, text, vector, top_k, accept if filtered else None, prefetched
            )
        else:
            pairs = [
                (row, score)
                for memory_id, score in dense(vector, top_k)
                if (row := log.get(user_id, memory_id)) is not None
            ]
        return [
            (self._memory(row), float(score))
            for row, score in pairs
            if min_score is None or score >= min_score
        ]

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        """The live memory with this id, or None."""
        user_id = T.validate_user_id(user_id)
        row = self.engine.log.get(user_id, str(memory_id))
        return None if row is None else self._memory(row)

    def get_all(self, user_id: str, category: str | Sequence[str] | None = None) -> list[Memory]:
        """Every live memory of the user, oldest first."""
        user_id = T.validate_user_id(user_id)
        rows = self.engine.log.list(user_id, _category_mask(category))
        return [self._memory(row) for row in rows]

    def history(self, user_id: str, memory_id: str) -> list[MemoryVersion]:
        """Every version of a memory, oldest first, including its deletion if deleted."""
        user_id = T.validate_user_id(user_id)
        versions = []
        for row in self.engine.log.history(user_id, str(memory_id)):
            op = _OP_NAMES.get(str(row["op"]))
            if op is None:
                continue
            versions.append(
                MemoryVersion(
                    memory_id=row["id"],
                    text=row["text"],
                    category=T.category_name(row["category"]) if row["category"] else "fact",
                    at=T.from_timestamp_us(row["updated_at"]),
                    operation=op,  # type: ignore[arg-type]
                    source=T.source_name(row["source"]) if row["source"] else "manual",
                    metadata=json.loads(row["metadata"]) if row["metadata"] else {},
                )
            )
        return versions

    def users(self) -> list[str]:
        """Every user with at least one live memory."""
        return [u for u in self.engine.log.users() if u and self.engine.log.count(u)]

    def stats(self, user_id: str | None = None) -> dict[str, Any]:
        """Counts: ``total_chunks`` (live memories), per category, users, and store sizes."""
        log = self.engine.log
        users = [user_id] if user_id is not None else self.users()
        per_category = dict.fromkeys(T.CATEGORIES, 0)
        total = 0
        for user in users:
            for row in log.list(T.validate_user_id(user), 0):
                per_category[T.category_name(row["category"])] += 1
                total += 1
        native = dict(log.stats())
        return {
            "total_chunks": total,
            "total_memories": total,
            "categories": per_category,
            "users": len(users) if user_id is None else 1,
            "embedding_model": self._embedder.model_id if self._embedder else None,
            "path": str(self.path),
            "store": native,
        }

    # --- background jobs ---------------------------------------------------------------------

    def enqueue(self, user_id: str, payload: dict[str, Any]) -> str:
        """Record a background job durably (per the sync mode) and return its id."""
        user_id = T.validate_user_id(user_id)
        job_id = uuid.uuid4().hex
        body = json.dumps(payload, ensure_ascii=False)
        now = T.to_timestamp_us(datetime.now().astimezone())
        self.engine.append([(OP_PENDING, user_id, job_id, 0, 0, now, body, "", "", None)])
        return job_id

    def complete(self, user_id: str, job_id: str) -> None:
        """Mark a background job done."""
        user_id = T.validate_user_id(user_id)
        self.engine.append([(OP_DONE, user_id, job_id, 0, 0, 0, "", "", "", None)])

    def pending(self, user_id: str | None = None) -> list[Job]:
        """Open background jobs, oldest first (all users when ``user_id`` is None)."""
        jobs = []
        for row in self.engine.log.pending():
            if user_id is not None and row["user"] != user_id:
                continue
            jobs.append(
                Job(
                    id=row["id"],
                    user_id=row["user"],
                    payload=json.loads(row["text"]),
                    created_at=T.from_timestamp_us(row["created_at"]),
                )
            )
        return jobs

    # --- export / import ---------------------------------------------------------------------

    def export(
        self, user_id: str | None = None, *, include_vectors: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every live memory (of one user, or all) in the export schema (docs/export.md)."""
        users = [T.validate_user_id(user_id)] if user_id is not None else self.users()
        log = self.engine.log
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        for user in users:
            if include_vectors:
                labels, matrix = log.vectors(user)
                for info, row in zip(log.resolve(user, labels), matrix, strict=True):
                    if info is not None:
                        vectors[info[0]] = row
            for row in log.list(user, 0):
                memory = self._memory(row)
                record = memory.to_dict()
                record["history"] = [
                    {
                        "text": v.text,
                        "category": v.category,
                        "at": v.at.isoformat(),
                        "operation": v.operation,
                        "source": v.source,
                        "metadata": v.metadata,
                    }
                    for v in self.history(user, memory.id)[:-1]
                ]
                if include_vectors and memory.id in vectors:
                    record["model"] = row["model"]
                    record["vector"] = [float(x) for x in vectors[memory.id]]
                yield record

    def import_(self, records: Iterable[dict[str, Any]]) -> int:
        """Import records of the export schema; ids, times, sources and history are reproduced.

        A record whose id is already live for its user is skipped. Each record is written as
        one atomic batch. Returns how many memories were imported.
        """
        count = 0
        for record in records:
            user_id = T.validate_user_id(record.get("user_id"))
            memory_id = str(record.get("id") or uuid.uuid4().hex)
            if self.engine.log.get(user_id, memory_id) is not None:
                continue
            versions = [*record.get("history", []), {**record, "at": record.get("updated_at")}]
            texts = [T.validate_text(v["text"]) for v in versions]
            vectors = self._embed(texts)
            if record.get("vector") is not None and record.get("model") == self.embedder.model_id:
                vectors[-1] = _check_vector(
                    np.asarray(record["vector"], np.float32), self.embedder.dim
                )
            created = T.to_timestamp_us(_parse_time(record.get("created_at")))
            entries: list[tuple[Any, ...]] = []
            for i, (version, text, vector) in enumerate(zip(versions, texts, vectors, strict=True)):
                at = T.to_timestamp_us(_parse_time(version.get("at"))) or 0
                op = OP_ADD if i == 0 else OP_UPDATE
                meta = json.dumps(T.validate_metadata(version.get("metadata")), ensure_ascii=False)
                source = T.source_code(version.get("source") or "import")
                entries.append(
                    (op, user_id, memory_id, T.category_code(version.get("category", "fact")),
                     source, created or at if i == 0 else 0, text, meta, self.embedder.model_id,
                     vector, at)
                )  # fmt: skip
            self.engine.append(entries)
            count += 1
        return count

    # --- maintenance -------------------------------------------------------------------------

    def compact(self) -> dict[str, int]:
        """Rewrite the log without dead records (purges soft-deleted bytes)."""
        with self._lock:
            return self.engine.compact()

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check every record of the log and every index snapshot.

        Reports what the last open recovered (torn tail, corrupt regions skipped), how many
        records were read, stored vectors that are not finite, and snapshots that fail their
        checksum. With ``repair``: bad snapshots are deleted (rebuilt on use) and, when the log
        had damage, it is compacted so the damaged regions are gone from disk.
        """
        from .local.index import UserIndex

        with self._lock:
            log = self.engine.log
            recovery = dict(log.recovery)
            records = 0
            bad_vectors = 0
            for record in log.records():
                records += 1
                vector = record.get("vector")
                if vector is not None and not np.isfinite(vector).all():
                    bad_vectors += 1
            bad_snapshots = []
            index_dir = self.path / "indexes"
            if index_dir.is_dir():
                for meta_path in sorted(index_dir.glob("*.meta")):
                    try:
                        meta = json.loads(meta_path.read_text(encoding="utf-8"))
                        ok = UserIndex.load(index_dir, meta["user_id"], int(meta["dim"]))
                    except (OSError, ValueError, KeyError, TypeError):
                        ok = None
                    if ok is None:
                        bad_snapshots.append(meta_path.stem)
            damaged = bool(recovery.get("corrupt_bytes") or recovery.get("torn_tail_bytes"))
            report: dict[str, Any] = {
                "ok": not damaged and not bad_vectors and not bad_snapshots,
                "records": records,
                "bad_vectors": bad_vectors,
                "bad_snapshots": len(bad_snapshots),
                **{f"recovered_{k}": v for k, v in recovery.items()},
            }
            if repair:
                for stem in bad_snapshots:
                    for suffix in (".meta", ".hnsw"):
                        with contextlib.suppress(FileNotFoundError):
                            (index_dir / (stem + suffix)).unlink()
                if damaged:
                    self.engine.compact()
                report["repaired"] = bool(bad_snapshots or damaged)
            return report

    def reembed(self, embedder: Embedder, *, batch_size: int = 256) -> int:
        """Migrate the store to another embedding model: every live memory gets a vector of
        ``embedder`` (history versions keep theirs; they are never searched). Returns how many
        memories were re-embedded. The store is then bound to the new model."""
        with self._lock:
            log = self.engine.log
            count = 0
            for user in log.users():
                rows = log.list(user, 0)
                for start in range(0, len(rows), batch_size):
                    chunk = rows[start : start + batch_size]
                    vectors = np.ascontiguousarray(
                        embedder.embed([r["text"] for r in chunk]), dtype=np.float32
                    )
                    self.engine.append(
                        [
                            (OP_REVECTOR, user, r["id"], r["category"], r["source"], 0, "", "",
                             embedder.model_id, vector)
                            for r, vector in zip(chunk, vectors, strict=True)
                        ]
                    )  # fmt: skip
                    count += len(chunk)
                self.engine.drop_user_index(user)
            wanted = {"model": embedder.model_id, "dim": int(embedder.dim)}
            self.engine.append(
                [(OP_CONFIG, "", _CONFIG_EMBEDDING, 0, 0, 0, json.dumps(wanted), "{}", "", None)]
            )
            self._embedder = embedder
        return count

    def flush(self) -> None:
        """Make every acknowledged write durable now (fsync), whatever the sync mode."""
        self.engine.log.flush()

    def close(self) -> None:
        """Snapshot indexes worth keeping and close the log. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine, self._engine = self._engine, None
            if engine is not None and self._pid == os.getpid():
                engine.close()
        key = os.path.realpath(os.fspath(self.path))
        with _REGISTRY_LOCK:
            if _REGISTRY.get(key) is self:
                del _REGISTRY[key]

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ----------------------------------------------------------------------------------


def _normalise_new(item: NewMemory | NewMemoryLike) -> tuple[str, int, dict[str, Any], int | None]:
    text = T.validate_text(item.text)
    category = T.category_code(item.category or "fact")
    metadata = T.validate_metadata(getattr(item, "metadata", None))
    created = T.to_timestamp_us(getattr(item, "created_at", None))
    return text, category, metadata, created


def _norm_text(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def _category_mask(category: str | Sequence[str] | None) -> int:
    if category is None:
        return 0
    names = [category] if isinstance(category, str) else list(category)
    mask = 0
    for name in names:
        mask |= 1 << T.category_code(name)
    return mask


def _check_vector(vector: Any, dim: int) -> npt.NDArray[np.float32]:
    array = np.asarray(vector)
    if array.dtype != np.float32:
        raise InvalidVectorError(f"a query vector must be float32; got {array.dtype}")
    if array.ndim != 1 or array.shape[0] != dim:
        raise InvalidVectorError(f"a query vector must have shape ({dim},); got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidVectorError("a query vector must not hold NaN or infinite values")
    return np.ascontiguousarray(array)


def _parse_time(value: Any) -> datetime | float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInputError(f"not an ISO 8601 time: {value!r}") from None
    raise InvalidInputError(f"not a time: {value!r}")
