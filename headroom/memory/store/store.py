"""MemoryStore: text in, memories out, over one storage backend.

``MemoryStore`` owns validation, embedding, the dedup policy and ranking; it talks to storage
only through :class:`~headroom.memory.store.backend.Backend`. ``db_path`` selects the backend:
a directory path the embedded one (``store/local``), a ``postgresql://`` URL the server one.

``MemoryStore.open(path)`` returns the process-wide store for that location: every wrapper,
facade and CLI command in a process shares one store (and so one loaded model) per location.
The store is fork-aware: a forked child drops the inherited handles and reopens on first use.

The store knows nothing of LLMs or prompts. Every user-scoped method takes the user id first
and touches only that user's memories.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import process
from .. import types as T
from ..embedders.base import Embedder, embed_queries, query_cached
from ..errors import (
    EmbeddingModelMismatchError,
    InvalidInputError,
    InvalidTimeError,
    InvalidTypeError,
    InvalidVectorError,
    MemoryNotFoundError,
    StoreClosedError,
)
from ..types import Memory, MemoryUpdate, MemoryVersion, NewMemory
from .backend import Backend, Claim, Entry, Filter, Job
from .hybrid import HybridSearcher

#: A new memory this similar (cosine) to an existing one of the same user supersedes it instead
#: of being stored beside it. MiniLM paraphrases of one fact score 0.85-0.95; distinct facts
#: about one topic rarely pass 0.9.
DEFAULT_DEDUP_THRESHOLD = 0.92

#: How long a claimed background job stays held without being completed or renewed (seconds):
#: a killed worker's job is claimable again after it (the extraction worker renews every
#: third of it while its call runs).
DEFAULT_LEASE_S = 60.0

#: Records written per batch by ``import_`` (every record is validated before the first).
IMPORT_BATCH = 1024

_CONFIG_EMBEDDING = "embedding"

logger = logging.getLogger("headroom.memory")


@dataclass(frozen=True)
class AppliedOps:
    """What ``apply`` / ``add_many`` did: memories added, memories updated, ids deleted."""

    added: tuple[Memory, ...] = ()
    updated: tuple[Memory, ...] = ()
    deleted: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())  # texts dropped as exact duplicates
    existing: tuple[Memory, ...] = ()  # the stored memories those skipped texts duplicate


@dataclass
class _Plan:
    """The entries one ``apply`` will append, and what each does to which memory."""

    entries: list[Entry] = field(default_factory=list)
    touched: dict[str, str] = field(default_factory=dict)  # memory id -> "add" | "update"
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # stored ids that skipped adds duplicate


# --- the process-wide registry ----------------------------------------------------------------

_REGISTRY: dict[str, MemoryStore] = {}
_REGISTRY_LOCK = threading.Lock()
_ALL_STORES: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


@process.after_fork_in_child
def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for store in list(_ALL_STORES):
        store._after_fork()


@process.at_exit
def _close_all_at_exit() -> None:
    for store in list(_ALL_STORES):
        store.close()


def open_backend(
    location: str | os.PathLike[str],
    *,
    sync: str = "interval",
    ann_threshold: int | None = None,
    create: bool = True,
) -> Backend:
    """The backend ``location`` names: ``postgresql://`` (or ``postgres://``) URLs the
    PostgreSQL one (the ``postgres`` extra), anything else a store directory."""
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        postgres = importlib.import_module(".postgres", __package__)  # the postgres extra
        backend: Backend = postgres.PostgresBackend(text, create=create)
        return backend
    from .local.backend import LocalBackend

    return LocalBackend(text, sync=sync, ann_threshold=ann_threshold, create=create)


def _registry_key(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    if "://" in text:
        return text
    return os.path.realpath(text)


class MemoryStore:
    """Memories of many users in one store, searchable by meaning.

    Thread-safe. Use ``MemoryStore.open`` to share one instance per location in a process;
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
        create: bool = True,
        backend: Backend | None = None,
    ) -> None:
        """Open (or, with ``create``, create) the store at ``path``: a directory or a
        ``postgresql://`` URL. Raises StoreNotFoundError when there is none and not
        ``create``; EmbeddingModelMismatchError when ``embedder`` is not the store's model."""
        self.location = os.fspath(path)
        self.sync = sync
        self.dedup_threshold = dedup_threshold
        self._embedder = embedder
        self._lock = threading.RLock()
        self._closed = False
        self.backend: Backend = backend or open_backend(
            path, sync=sync, ann_threshold=ann_threshold, create=create
        )
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
        create: bool = True,
    ) -> MemoryStore:
        """The shared store of ``path`` in this process, opened on first use.

        The embedding rule: a store is bound to the model it was first written with. Without
        an embedder the store uses that model (MiniLM for a new store); an embedder of another
        model raises EmbeddingModelMismatchError (migrate with ``headroom-memory reembed``).
        """
        key = _registry_key(path)
        with _REGISTRY_LOCK:
            store = _REGISTRY.get(key)
            if store is None or store._closed:
                store = cls(path, embedder=embedder, sync=sync, create=create)
                _REGISTRY[key] = store
                return store
        if embedder is not None:
            if store._embedder is None:
                store._check_model(embedder)
                store._embedder = embedder
            elif store._embedder is not embedder and store._embedder.model_id != embedder.model_id:
                raise EmbeddingModelMismatchError(
                    f"the store at {store.backend.location} is open with embedding model "
                    f"{store._embedder.model_id}; got {embedder.model_id}"
                )
        return store

    # --- plumbing ----------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the store lives (a directory path or a URL without its password)."""
        return self.backend.location

    def _backend(self) -> Backend:
        if self._closed:
            raise StoreClosedError(f"the store at {self.path} is closed")
        return self.backend

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        self.backend.after_fork()

    @property
    def embedder(self) -> Embedder:
        """The embedder; the store's recorded model is loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    embedder = self._recorded_embedder()
                    self._check_model(embedder)
                    self._embedder = embedder
        return self._embedder

    def recorded_model(self) -> dict[str, Any] | None:
        """``{"model": id, "dim": n}`` the store's vectors were made with; None for a new one."""
        recorded = self._backend().config().get(_CONFIG_EMBEDDING)
        return json.loads(recorded) if recorded else None

    def _recorded_embedder(self) -> Embedder:
        """The embedder of the model this store was written with (MiniLM for a new store).

        An ``openai/<model>@<dim>`` store gets an OpenAI embedder with a default client
        (configured from the environment, as the openai SDK does).
        """
        from ..embedders import get_embedder

        recorded = self.recorded_model()
        model = recorded["model"] if recorded else ""
        if model.startswith("openai/"):
            name, _, dim = model.removeprefix("openai/").rpartition("@")
            return get_embedder(use_local=False, model=name, dimensions=int(dim))
        return get_embedder()

    def _check_model(self, embedder: Embedder) -> None:
        """Record the embedding model in a new store; refuse a store of another model."""
        wanted = {"model": embedder.model_id, "dim": int(embedder.dim)}
        have = self.recorded_model()
        if have is None:
            self._backend().append([Entry.config(_CONFIG_EMBEDDING, json.dumps(wanted))])
        elif have != wanted:
            raise EmbeddingModelMismatchError(
                f"the store at {self.path} holds vectors of {have['model']} ({have['dim']} dims); "
                f"the embedder is {wanted['model']} ({wanted['dim']} dims). Open it with the same "
                "model (wrappers: use_local_embeddings=False and embedding_model=NAME for an API "
                "model, the defaults for MiniLM), or migrate it: headroom-memory reembed --db "
                "PATH --model MODEL"
            )

    def _embed(self, texts: Sequence[str], query: bool = False) -> npt.NDArray[np.float32]:
        embed = (lambda t: embed_queries(self.embedder, t)) if query else self.embedder.embed
        vectors = np.ascontiguousarray(embed(list(texts)), dtype=np.float32)
        if vectors.shape != (len(texts), self.embedder.dim) or not np.isfinite(vectors).all():
            raise InvalidVectorError(
                f"the embedder returned an array of shape {vectors.shape}; expected "
                f"({len(texts)}, {self.embedder.dim}) of finite values"
            )
        return vectors

    # --- writes ------------------------------------------------------------------------------

    def add(
        self,
        user_id: str,
        text: str,
        category: str = "fact",
        metadata: dict[str, Any] | None = None,
        created_at: datetime | float | None = None,
        source: str = "manual",
        *,
        dedup: bool = False,
    ) -> Memory:
        """Store one memory and return it.

        ``dedup=False`` (the default) always stores a new memory: an explicit add is a
        deliberate write, and a repeated one may be a repeated event; deduplicating costs a
        search, and a near-duplicate would rewrite another memory's text. ``dedup=True`` applies
        the rule of the inline path (:meth:`apply`'s planning, the one source of it): when the
        user already has this text (case, spacing and a final full stop aside) nothing is
        written and that memory is returned; when a stored memory is a near-duplicate (cosine
        at or above ``dedup_threshold``) it is updated to this text (its old version kept in
        history) and returned; otherwise the new memory is.
        """
        if not isinstance(dedup, bool):
            raise InvalidTypeError(f"dedup must be a bool; got {type(dedup).__name__}")
        item = NewMemory(text, T.validate_category(category), metadata, created_at)
        applied = self.add_many(user_id, [item], source=source, dedup=dedup)
        return (applied.added or applied.updated or applied.existing)[0]

    def add_many(
        self,
        user_id: str,
        items: Sequence[NewMemory],
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
        adds: Sequence[NewMemory] = (),
        updates: Sequence[MemoryUpdate] = (),
        deletes: Sequence[str] = (),
        source: str = "inline",
        dedup: bool = True,
        claim: Claim | None = None,
    ) -> AppliedOps:
        """Apply adds, updates and deletes (real ids) as one atomic batch.

        Updates and deletes of ids that are not live for this user are dropped (they may have
        been deleted since they were shown); invalid texts, categories, metadata or times
        raise before anything is written. With ``claim`` (a job of this user, from
        :meth:`claim`) the batch also completes the job, only while the claim holds it
        (JobLostError otherwise, and nothing is applied).
        """
        user_id = T.validate_user_id(user_id)
        if claim is not None and claim.job.user_id != user_id:
            raise InvalidInputError(f"job {claim.job.id} is not a job of this user")
        src = T.validate_source(source)
        new_items = [_normalise_new(item) for item in adds]
        upd_items = [_normalise_update(item) for item in updates]
        del_ids = [str(i) for i in deletes]
        texts = [item.text for item in new_items] + [item.text for item in upd_items]
        if not texts and not del_ids and claim is None:
            return AppliedOps()
        vectors = self._embed(texts) if texts else np.empty((0, 0), np.float32)
        with self._lock:
            backend = self._backend()
            plan = _Plan()
            split = len(new_items)
            self._plan_adds(backend, user_id, new_items, vectors[:split], src, dedup, plan)
            self._plan_updates(backend, user_id, upd_items, vectors[split:], src, plan)
            self._plan_deletes(backend, user_id, del_ids, src, plan)
            if claim is not None:
                backend.complete(claim, plan.entries)
            elif plan.entries:
                backend.append(plan.entries)
            if plan.entries:
                self._warm(user_id)
            added: list[Memory] = []
            updated: list[Memory] = []
            rows = backend.get_many(user_id, list(plan.touched))
            for memory_id, op in plan.touched.items():
                if memory_id in rows:
                    (added if op == "add" else updated).append(rows[memory_id])
            existing = [backend.get(user_id, memory_id) for memory_id in plan.existing]
        return AppliedOps(
            tuple(added),
            tuple(updated),
            tuple(plan.deleted),
            tuple(plan.skipped),
            tuple(memory for memory in existing if memory is not None),
        )

    def _plan_adds(
        self,
        backend: Backend,
        user_id: str,
        items: Sequence[NewMemory],
        vectors: npt.NDArray[np.float32],
        source: T.Source,
        dedup: bool,
        plan: _Plan,
    ) -> None:
        """Plan the adds: exact duplicates are skipped; with ``dedup``, a near-duplicate of a
        stored memory becomes an update of it."""
        now_us = T.to_timestamp_us(datetime.now().astimezone()) or 0
        model = self.embedder.model_id
        seen: set[str] = set()
        for item, vector in zip(items, vectors, strict=True):
            norm = _norm_text(item.text)
            if dedup and norm in seen:
                plan.skipped.append(item.text)
                continue
            target = None
            if dedup:
                best = backend.search(user_id, vector, 1)
                if best:
                    hit_id, score = best[0]
                    hit = backend.get(user_id, hit_id)
                    if hit is not None and _norm_text(hit.text) == norm:
                        plan.skipped.append(item.text)
                        plan.existing.append(hit_id)
                        continue
                    if (
                        hit is not None
                        and score >= self.dedup_threshold
                        and hit_id not in plan.touched
                    ):
                        target = hit_id
            seen.add(norm)
            metadata = item.metadata or {}
            if target is not None:
                plan.entries.append(
                    Entry.update(
                        user_id, target, item.text, model=model, vector=vector,
                        category=item.category, source=source, metadata=metadata,
                    )
                )  # fmt: skip
                plan.touched[target] = "update"
            else:
                memory_id = uuid.uuid4().hex
                created = T.to_timestamp_us(item.created_at) or now_us
                plan.entries.append(
                    Entry.add(
                        user_id, memory_id, item.text, category=item.category,
                        source=source, created_at_us=created, metadata=metadata,
                        model=model, vector=vector,
                    )
                )  # fmt: skip
                plan.touched[memory_id] = "add"

    def _plan_updates(
        self,
        backend: Backend,
        user_id: str,
        items: Sequence[MemoryUpdate],
        vectors: npt.NDArray[np.float32],
        source: T.Source,
        plan: _Plan,
    ) -> None:
        """Plan the updates of live memories not already touched by this batch."""
        model = self.embedder.model_id
        for item, vector in zip(items, vectors, strict=True):
            if item.id in plan.touched or backend.get(user_id, item.id) is None:
                continue
            plan.entries.append(
                Entry.update(
                    user_id, item.id, item.text, model=model, vector=vector,
                    category=item.category, source=source,
                )
            )  # fmt: skip
            plan.touched[item.id] = "update"

    @staticmethod
    def _plan_deletes(
        backend: Backend, user_id: str, ids: Sequence[str], source: T.Source, plan: _Plan
    ) -> None:
        """Plan the soft deletes of live memories not touched by this batch."""
        for memory_id in ids:
            if memory_id in plan.touched or backend.get(user_id, memory_id) is None:
                continue
            plan.entries.append(Entry.delete(user_id, memory_id, source))
            plan.deleted.append(memory_id)

    def _warm(self, user_id: str) -> None:
        """Fold a write into the user's derived state now, not in the next search."""
        try:
            self._backend().warm(user_id)
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
        name = T.validate_category(category) if category else None
        meta = T.validate_metadata(metadata) if metadata is not None else None
        with self._lock:
            backend = self._backend()
            if backend.get(user_id, memory_id) is None:
                raise MemoryNotFoundError(f"no memory {memory_id!r} for user {user_id!r}")
            vector = self._embed([text])[0]
            backend.append(
                [
                    Entry.update(
                        user_id, memory_id, text, model=self.embedder.model_id, vector=vector,
                        category=name, source="manual", metadata=meta,
                    )
                ]
            )  # fmt: skip
            memory = backend.get(user_id, memory_id)
        if memory is None:  # deleted by another process in between
            raise MemoryNotFoundError(f"no memory {memory_id!r} for user {user_id!r}")
        return memory

    def delete(self, user_id: str, memory_id: str) -> None:
        """Soft delete: hidden at once; its bytes are purged at the next compaction."""
        user_id = T.validate_user_id(user_id)
        with self._lock:
            backend = self._backend()
            if backend.get(user_id, memory_id) is None:
                raise MemoryNotFoundError(f"no memory {memory_id!r} for user {user_id!r}")
            backend.append([Entry.delete(user_id, memory_id)])

    def clear(self, user_id: str, *, hard: bool = False) -> int:
        """Delete every memory of the user; returns how many were live.

        Soft by default (purged at the next compaction); ``hard=True`` is ``forget(user_id)``.
        """
        if hard:
            return self.forget(user_id)
        user_id = T.validate_user_id(user_id)
        with self._lock:
            backend = self._backend()
            count = backend.count(user_id)
            if count:
                backend.append([Entry.clear(user_id)])
        return count

    def forget(self, user_id: str, memory_ids: Iterable[str] | None = None) -> int:
        """Hard delete: every version of the memories (all of the user's when ``memory_ids``
        is None, with its pending background jobs), then compaction, so no byte of their text
        or vectors remains in any file of the store when this returns. Returns how many live
        memories were removed."""
        user_id = T.validate_user_id(user_id)
        with self._lock:
            backend = self._backend()
            if memory_ids is None:
                removed = backend.count(user_id)
                entries = [Entry.purge(user_id)]
            else:
                ids = list(dict.fromkeys(str(i) for i in memory_ids))
                removed = sum(1 for i in ids if backend.get(user_id, i) is not None)
                entries = [Entry.purge(user_id, i) for i in ids]
            if entries:
                backend.append(entries)
            backend.compact()
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
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 0):
            raise InvalidInputError("keep_last must be an int >= 0")
        memories = self.get_all(user_id, category=category)
        doomed = memories
        if older_than is not None:
            limit = T.to_timestamp_us(older_than) or 0
            doomed = [m for m in doomed if (T.to_timestamp_us(m.created_at) or 0) < limit]
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
        metadata: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        hybrid: bool = True,
    ) -> list[tuple[Memory, float]]:
        """The user's memories most relevant to ``query``, best first, with their scores.

        A text query runs the hybrid search (``hybrid.py``): dense and lexical candidates
        fused by the tuned ranking. The score is the cosine similarity, moved by the centring
        on the user's mean memory (users of 100 memories or more), plus the lexical, date and
        session-context bonuses (0 to 0.49 on top by default: the weights of
        ``ranking.RankConfig``). ``hybrid=False``, or a vector query, gives the plain dense
        search with cosine scores. Filters apply inside the search: ``category`` (one or
        several), ``since``/``until`` (an inclusive range of ``created_at``), ``metadata``
        (``{key: value}`` equality, ``{key: [a, b]}`` membership; keys combine with AND).
        k results come back whenever at least k memories match.
        """
        user_id = T.validate_user_id(user_id)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise InvalidInputError(f"top_k must be a non-negative int; got {top_k!r}")
        where = _filter(category, since, until, metadata)
        if top_k == 0:
            return []
        backend = self._backend()
        text = query if isinstance(query, str) and hybrid else None
        # The lexical side needs only the text: it runs while the query is embedded (inline
        # when the vector is cached: with no embedding to overlap, a hand-over only costs).
        prefetched = None
        if text is not None and not query_cached(self.embedder, text):
            prefetched = self._hybrid.prefetch(backend, user_id, text)
        if isinstance(query, str):
            vector = self._embed([query], query=True)[0]
        else:
            vector = _check_vector(query, self.embedder.dim)
        if text is not None:
            pairs = self._hybrid.search(backend, user_id, text, vector, top_k, where, prefetched)
        else:
            hits = backend.search(user_id, vector, top_k, where)
            rows = backend.get_many(user_id, [memory_id for memory_id, _ in hits])
            pairs = [(rows[memory_id], score) for memory_id, score in hits if memory_id in rows]
        return [(m, float(s)) for m, s in pairs if min_score is None or s >= min_score]

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        """The live memory with this id, or None."""
        user_id = T.validate_user_id(user_id)
        return self._backend().get(user_id, str(memory_id))

    def get_all(
        self,
        user_id: str,
        category: str | Sequence[str] | None = None,
        *,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Memory]:
        """Every live memory of the user that passes the filters (as in ``search``), oldest
        first."""
        user_id = T.validate_user_id(user_id)
        return self._backend().memories(user_id, _filter(category, since, until, metadata))

    def history(self, user_id: str, memory_id: str) -> list[MemoryVersion]:
        """Every version of a memory, oldest first, including its deletion if deleted."""
        user_id = T.validate_user_id(user_id)
        return self._backend().history(user_id, str(memory_id))

    def users(self) -> list[str]:
        """Every user with at least one live memory."""
        return self._backend().users()

    def stats(self, user_id: str | None = None) -> dict[str, Any]:
        """Counts: ``total_chunks`` (live memories), per category, users and the embedding
        model. For the whole store (``user_id`` None) also its location, what opening it
        recovered from (``recovery``) and the backend's sizes (``store``); a user's stats say
        nothing of other users or of the store (they reach end users through the facade)."""
        backend = self._backend()
        users = [T.validate_user_id(user_id)] if user_id is not None else backend.users()
        per_category = dict.fromkeys(T.CATEGORIES, 0)
        total = 0
        for user in users:
            for memory in backend.memories(user):
                per_category[memory.category] += 1
                total += 1
        recorded = self.recorded_model()
        stats: dict[str, Any] = {
            "total_chunks": total,
            "total_memories": total,
            "categories": per_category,
            "users": len(users),
            "embedding_model": recorded["model"] if recorded else None,
        }
        if user_id is None:
            stats["path"] = self.path
            stats["recovery"] = asdict(backend.recovery())
            stats["store"] = backend.stats()
        return stats

    # --- background jobs ---------------------------------------------------------------------

    def enqueue(self, user_id: str, payload: dict[str, Any]) -> str:
        """Record a background job durably (per the sync mode) and return its id."""
        user_id = T.validate_user_id(user_id)
        job_id = uuid.uuid4().hex
        body = json.dumps(payload, ensure_ascii=False)
        now = T.to_timestamp_us(datetime.now().astimezone()) or 0
        self._backend().append([Entry.pending(user_id, job_id, body, now)])
        return job_id

    def complete(self, user_id: str, job_id: str) -> None:
        """Mark one of the user's background jobs done (another user's job is left alone)."""
        user_id = T.validate_user_id(user_id)
        backend = self._backend()
        if any(job.id == job_id for job in backend.pending(user_id)):
            backend.append([Entry.done(user_id, job_id)])

    def pending(self, user_id: str | None = None) -> list[Job]:
        """Open background jobs, oldest first (all users when ``user_id`` is None)."""
        return self._backend().pending(user_id)

    def claim(
        self,
        user_id: str | None = None,
        *,
        worker: str = "",
        lease_s: float = DEFAULT_LEASE_S,
        job_id: str | None = None,
    ) -> Claim | None:
        """Claim the oldest open job nobody holds (of one user, or any; only ``job_id`` when
        given) for ``lease_s`` seconds, or None. Complete it with ``apply(..., claim=)``
        or give it back with :meth:`release`; a claim left alone runs out after its lease."""
        if user_id is not None:
            user_id = T.validate_user_id(user_id)
        _check_lease(lease_s)
        return self._backend().claim(user_id, worker, float(lease_s), job_id)

    def renew(self, claim: Claim, lease_s: float = DEFAULT_LEASE_S) -> Claim:
        """Keep a claimed job held for ``lease_s`` more seconds from now (a worker whose call
        runs long renews before its lease runs out); JobLostError when no longer held."""
        _check_lease(lease_s)
        return self._backend().renew(claim, float(lease_s))

    def release(self, claim: Claim) -> None:
        """Give a claimed job back at once (nothing when the claim is no longer held)."""
        self._backend().release(claim)

    # --- export / import ---------------------------------------------------------------------

    def export(
        self, user_id: str | None = None, *, include_vectors: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every live memory (of one user, or all) in the export schema (docs/export.md)."""
        backend = self._backend()
        users = [T.validate_user_id(user_id)] if user_id is not None else backend.users()
        recorded = self.recorded_model()
        for user in users:
            vectors = backend.vectors(user) if include_vectors else {}
            for memory in backend.memories(user):
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
                    for v in backend.history(user, memory.id)[:-1]
                ]
                if memory.id in vectors and recorded is not None:
                    record["model"] = recorded["model"]
                    record["vector"] = [float(x) for x in vectors[memory.id]]
                yield record

    def import_(self, records: Iterable[dict[str, Any]]) -> int:
        """Import records of the export schema; ids, times, sources and history are reproduced.

        Every record is validated (and embedded) before anything is written: a bad record
        raises a typed error naming it (``record N``, counted from 1) and writes nothing.
        Records are then written in atomic batches of :data:`IMPORT_BATCH`; a crash in
        between leaves whole records, and importing the same file again completes it (a
        record whose id its user already has, live or soft-deleted, is skipped). Returns how
        many memories were imported. A backend with a ``bulk_load()`` block (PostgreSQL) gets
        the writes inside it: index builds wait for the end, statistics follow at once.
        """
        backend = self._backend()
        batches: list[list[Entry]] = []
        seen: set[tuple[str, str]] = set()
        chunk: list[tuple[int, Any]] = []
        for number, record in enumerate(records, start=1):
            chunk.append((number, record))
            if len(chunk) >= IMPORT_BATCH:
                self._import_chunk(backend, chunk, seen, batches)
                chunk = []
        self._import_chunk(backend, chunk, seen, batches)
        bulk = getattr(backend, "bulk_load", None)
        if bulk is None:
            return _write_batches(backend, batches)
        with bulk():
            return _write_batches(backend, batches)

    def _import_chunk(
        self,
        backend: Backend,
        chunk: Sequence[tuple[int, Any]],
        seen: set[tuple[str, str]],
        batches: list[list[Entry]],
    ) -> None:
        """Validate and embed the numbered records of ``chunk``, adding their entries to
        ``batches`` (each up to about IMPORT_BATCH entries); a record whose id its user
        already has (in the store, or earlier in the import) adds none. Which ids the store
        has is asked once per user of the chunk (:func:`_known_ids`), not once per record."""
        keys = []
        for number, record in chunk:
            try:
                keys.append(_import_key(record))
            except InvalidInputError as exc:
                raise type(exc)(f"record {number}: {exc}") from None
        known = _known_ids(backend, keys)
        for (number, record), key in zip(chunk, keys, strict=True):
            if key in seen or key in known:
                continue
            seen.add(key)
            try:
                entries = self._import_entries(record, *key)
            except InvalidInputError as exc:
                raise type(exc)(f"record {number}: {exc}") from None
            if not batches or len(batches[-1]) >= IMPORT_BATCH:
                batches.append([])
            batches[-1].extend(entries)

    def _import_entries(
        self, record: Mapping[str, Any], user_id: str, memory_id: str
    ) -> list[Entry]:
        """The ADD and UPDATE entries that reproduce one exported memory under ``memory_id``.
        Raises InvalidInputError subclasses for bad fields."""
        history = record.get("history", [])
        if not isinstance(history, list) or not all(isinstance(v, Mapping) for v in history):
            raise InvalidInputError("history must be a list of objects")
        versions = [*history, {**record, "at": record.get("updated_at")}]
        texts = [T.validate_text(v.get("text")) for v in versions]
        model = self.embedder.model_id
        vectors = self._embed(texts)
        if record.get("vector") is not None and record.get("model") == model:
            try:
                given = np.asarray(record["vector"], np.float32)
            except (TypeError, ValueError):
                raise InvalidVectorError("vector must be a list of numbers") from None
            vectors[-1] = _check_vector(given, self.embedder.dim)
        now = T.to_timestamp_us(datetime.now().astimezone()) or 0
        created = T.to_timestamp_us(_parse_time(record.get("created_at")))
        entries = []
        for i, (version, text, vector) in enumerate(zip(versions, texts, vectors, strict=True)):
            # A version without a time (a hand-written record) is dated now, never 1970.
            at = T.to_timestamp_us(_parse_time(version.get("at"))) or now
            category = T.validate_category(version.get("category", "fact"))
            metadata = T.validate_metadata(version.get("metadata"))
            source = T.validate_source(version.get("source") or "import")
            if i == 0:
                entries.append(
                    Entry.add(
                        user_id, memory_id, text, category=category, source=source,
                        created_at_us=created or at, metadata=metadata, model=model,
                        vector=vector, at_us=at,
                    )
                )  # fmt: skip
            else:
                entries.append(
                    Entry.update(
                        user_id, memory_id, text, model=model, vector=vector,
                        category=category, source=source, metadata=metadata, at_us=at,
                    )
                )  # fmt: skip
        return entries

    # --- maintenance -------------------------------------------------------------------------

    def compact(self) -> dict[str, int]:
        """Reclaim dead data (purges soft-deleted bytes)."""
        with self._lock:
            return self._backend().compact()

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the stored data and derived state (see ``Backend.verify``)."""
        with self._lock:
            return self._backend().verify(repair=repair)

    def reembed(self, embedder: Embedder, *, batch_size: int = 256) -> int:
        """Migrate the store to another embedding model: every live memory gets a vector of
        ``embedder`` (history versions keep theirs; they are never searched). Returns how many
        memories were re-embedded. The store is then bound to the new model."""
        with self._lock:
            backend = self._backend()
            count = 0
            for user in backend.users():
                memories = backend.memories(user)
                for start in range(0, len(memories), batch_size):
                    chunk = memories[start : start + batch_size]
                    vectors = np.ascontiguousarray(
                        embedder.embed([m.text for m in chunk]), dtype=np.float32
                    )
                    backend.append(
                        [
                            Entry.revector(user, m.id, embedder.model_id, vector)
                            for m, vector in zip(chunk, vectors, strict=True)
                        ]
                    )
                    count += len(chunk)
            wanted = {"model": embedder.model_id, "dim": int(embedder.dim)}
            backend.append([Entry.config(_CONFIG_EMBEDDING, json.dumps(wanted))])
            self._embedder = embedder
        return count

    def flush(self) -> None:
        """Make every acknowledged write durable now (fsync), whatever the sync mode."""
        self._backend().flush()

    def close(self) -> None:
        """Save what is worth keeping and release the backend. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.backend.close()
        key = _registry_key(self.location)
        with _REGISTRY_LOCK:
            if _REGISTRY.get(key) is self:
                del _REGISTRY[key]

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ----------------------------------------------------------------------------------


def _check_lease(lease_s: Any) -> None:
    if isinstance(lease_s, bool) or not (
        isinstance(lease_s, (int, float)) and math.isfinite(lease_s) and lease_s > 0
    ):
        raise InvalidInputError(f"lease_s must be a positive number of seconds; got {lease_s!r}")


def _normalise_new(item: NewMemory) -> NewMemory:
    """The item with its text stripped and its metadata and time validated."""
    if not isinstance(item, NewMemory):
        raise InvalidTypeError(f"adds must be NewMemory items; got {type(item).__name__}")
    metadata = T.validate_metadata(item.metadata)
    T.to_timestamp_us(item.created_at)
    return NewMemory(T.validate_text(item.text), item.category, metadata, item.created_at)


def _normalise_update(item: MemoryUpdate) -> MemoryUpdate:
    if not isinstance(item, MemoryUpdate):
        raise InvalidTypeError(f"updates must be MemoryUpdate items; got {type(item).__name__}")
    return MemoryUpdate(str(item.id), T.validate_text(item.text), item.category)


def _norm_text(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def _filter(
    category: str | Sequence[str] | None,
    since: datetime | float | None,
    until: datetime | float | None,
    metadata: Mapping[str, Any] | None,
) -> Filter:
    return Filter.build(category, T.to_timestamp_us(since), T.to_timestamp_us(until), metadata)


def _check_vector(vector: Any, dim: int) -> npt.NDArray[np.float32]:
    array = np.asarray(vector)
    if array.dtype != np.float32:
        raise InvalidVectorError(f"a query vector must be float32; got {array.dtype}")
    if array.ndim != 1 or array.shape[0] != dim:
        raise InvalidVectorError(f"a query vector must have shape ({dim},); got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidVectorError("a query vector must not hold NaN or infinite values")
    return np.ascontiguousarray(array)


def _import_key(record: Any) -> tuple[str, str]:
    """The user and memory id a record imports to (a new random id when it has none).
    Raises InvalidInputError subclasses for a record that is no object or a bad id."""
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"a record must be a JSON object; got {type(record).__name__}")
    user_id = T.validate_user_id(record.get("user_id"))
    given = record.get("id")
    memory_id = uuid.uuid4().hex if given in (None, "") else T.validate_memory_id(given)
    return user_id, memory_id


def _known_ids(backend: Backend, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """The ``(user, id)`` pairs of ``keys`` the store has, live or soft-deleted (until
    purged): one ``known_ids`` read per user on a backend that has it (PostgreSQL), else
    ``get_many`` per user and ``history`` of each id not live."""
    by_user: dict[str, list[str]] = {}
    for user_id, memory_id in keys:
        by_user.setdefault(user_id, []).append(memory_id)
    batch_read = getattr(backend, "known_ids", None)
    known: set[tuple[str, str]] = set()
    for user_id, ids in by_user.items():
        if batch_read is not None:
            found = set(batch_read(user_id, ids))
        else:
            found = set(backend.get_many(user_id, ids))
            found.update(i for i in ids if i not in found and backend.history(user_id, i))
        known.update((user_id, i) for i in found)
    return known


def _write_batches(backend: Backend, batches: Sequence[Sequence[Entry]]) -> int:
    """Append ``batches`` in order (one atomic append each); returns how many ADDs."""
    count = 0
    for batch in batches:
        backend.append(batch)
        count += sum(1 for e in batch if e.op.name == "ADD")
    return count


def _parse_time(value: Any) -> datetime | float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTimeError(f"not an ISO 8601 time: {value!r}") from None
    raise InvalidTimeError(f"not a time: {value!r}")
