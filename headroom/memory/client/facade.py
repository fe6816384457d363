"""The ``.memory`` API of a wrapped client: the store's operations bound to one user_id.

:class:`MemoryFacade` (sync clients) calls the store directly. :class:`AsyncMemoryFacade`
(async clients) has the same methods as coroutines that run the store call in a worker thread
(``asyncio.to_thread``), so nothing blocks the event loop. Both only ever touch their own
user's memories: every call passes the bound ``user_id`` first. Each call first waits for
the wrapper's pending inline writes (``settle``), so it sees the memories of every call that
returned before it, and a delete or forget is never undone by a write queued earlier.

Semantics are the store's (docs/architecture.md): ``delete`` and ``clear()`` are soft,
``forget`` and ``clear(hard=True)`` are hard deletes. Bad input raises the typed errors of
``headroom.memory.errors``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..types import Memory, MemoryVersion, validate_metadata, validate_user_id

if TYPE_CHECKING:
    from ..store.store import MemoryStore

TimeLike = datetime | float | int | None


def _own_records(user_id: str, records: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Records bound to ``user_id``; a record of another user is an InvalidInputError."""
    for record in records:
        if not isinstance(record, Mapping):
            raise InvalidInputError(
                f"an import record must be a mapping; got {type(record).__name__}"
            )
        owner = record.get("user_id")
        if owner not in (None, "", user_id):
            raise InvalidInputError(
                f"import record {record.get('id')!r} belongs to user {owner!r}, not {user_id!r}"
            )
        yield {**record, "user_id": user_id}


class MemoryFacade:
    """The store's operations for one user (sync)."""

    def __init__(
        self, store: MemoryStore, user_id: str, settle: Callable[[], object] | None = None
    ) -> None:
        self._store = store
        self._settle = settle
        self.user_id = validate_user_id(user_id)

    def _ready(self) -> MemoryStore:
        """The store, once the wrapper's pending inline writes have landed (read your writes;
        and a delete or forget is never undone by a write queued before it)."""
        if self._settle is not None:
            self._settle()
        return self._store

    def search(
        self,
        query: str,
        top_k: int = 5,
        category: str | None = None,
        since: TimeLike = None,
        until: TimeLike = None,
        min_score: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[tuple[Memory, float]]:
        """Up to ``top_k`` ``(memory, score)`` pairs most relevant to ``query``, best first;
        filters as ``MemoryStore.search`` (category, created_at range, metadata)."""
        return self._ready().search(
            self.user_id,
            query,
            top_k=top_k,
            category=category,
            since=since,
            until=until,
            min_score=min_score,
            metadata=metadata,
        )

    def add(
        self,
        text: str,
        category: str = "fact",
        metadata: Mapping[str, Any] | None = None,
        created_at: TimeLike = None,
        *,
        dedup: bool = False,
    ) -> Memory:
        """Store one memory and return it; with ``dedup=True``, return the stored memory this
        text duplicates (unchanged) or nearly duplicates (updated to this text) instead of
        adding a copy. The default keeps every explicit add (``MemoryStore.add`` says why)."""
        return self._ready().add(
            self.user_id,
            text,
            category=category,
            metadata=None if metadata is None else validate_metadata(metadata),
            created_at=created_at,
            dedup=dedup,
        )

    def get_all(
        self,
        category: str | None = None,
        since: TimeLike = None,
        until: TimeLike = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Memory]:
        """Every live memory of the user that passes the filters, oldest first."""
        return self._ready().get_all(
            self.user_id, category, since=since, until=until, metadata=metadata
        )

    def get(self, memory_id: str) -> Memory | None:
        """The memory with this id, or None."""
        return self._ready().get(self.user_id, memory_id)

    def update(
        self,
        memory_id: str,
        text: str,
        category: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Memory:
        """Write a new version of a memory (the old one goes to its history)."""
        return self._ready().update(
            self.user_id,
            memory_id,
            text,
            category=category,
            metadata=None if metadata is None else validate_metadata(metadata),
        )

    def delete(self, memory_id: str) -> None:
        """Soft delete: hidden at once, purged at the next compaction."""
        self._ready().delete(self.user_id, memory_id)

    def clear(self, hard: bool = False) -> int:
        """Delete every memory of the user (soft unless ``hard``); returns how many."""
        return self._ready().clear(self.user_id, hard=hard)

    def forget(self, memory_ids: Sequence[str] | None = None) -> int:
        """Hard delete (every version, then compaction); None means all of the user's."""
        return self._ready().forget(self.user_id, memory_ids)

    def prune(
        self,
        older_than: TimeLike = None,
        category: str | None = None,
        keep_last: int | None = None,
        hard: bool = False,
    ) -> int:
        """Delete by age (created before ``older_than``), category and/or beyond the newest
        ``keep_last``; criteria combine with AND. Soft unless ``hard``. Returns how many."""
        return self._ready().prune(
            self.user_id,
            older_than=older_than,
            category=category,
            keep_last=keep_last,
            hard=hard,
        )

    def history(self, memory_id: str) -> list[MemoryVersion]:
        """Every version of a memory, oldest first."""
        return self._ready().history(self.user_id, memory_id)

    def stats(self) -> dict[str, Any]:
        """Counts for the user: ``total_chunks``, ``categories`` (count per category), sizes."""
        return self._ready().stats(self.user_id)

    def export(self, include_vectors: bool = False) -> list[dict[str, Any]]:
        """The user's memories in the one JSONL schema (one dict per line)."""
        return list(self._ready().export(self.user_id, include_vectors=include_vectors))

    def import_(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Import records of an export into this user; returns how many memories."""
        return self._ready().import_(list(_own_records(self.user_id, records)))


#: The operations of the ``.memory`` API (MemoryFacade's public methods).
OPERATIONS: tuple[str, ...] = tuple(
    name
    for name, value in vars(MemoryFacade).items()
    if callable(value) and (not name.startswith("_") or name == "import_")
)


def _in_thread(name: str) -> Callable[..., Awaitable[Any]]:
    """The coroutine twin of ``MemoryFacade.<name>``: the same call, run in a worker thread."""
    method = getattr(MemoryFacade, name)

    @functools.wraps(method)
    async def call(self: AsyncMemoryFacade, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    return call


class AsyncMemoryFacade:
    """The operations of :class:`MemoryFacade` as coroutines, each run in a worker thread
    (``asyncio.to_thread``) so nothing blocks the event loop; derived from the sync class, so
    the two never drift apart."""

    def __init__(
        self, store: MemoryStore, user_id: str, settle: Callable[[], object] | None = None
    ) -> None:
        self.sync = MemoryFacade(store, user_id, settle)
        self.user_id = self.sync.user_id

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]: ...


for _name in OPERATIONS:
    setattr(AsyncMemoryFacade, _name, _in_thread(_name))
