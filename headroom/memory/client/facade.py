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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    ) -> list[tuple[Memory, float]]:
        """Up to ``top_k`` ``(memory, score)`` pairs most similar to ``query``, best first."""
        return self._ready().search(
            self.user_id,
            query,
            top_k=top_k,
            category=category,
            since=since,
            until=until,
            min_score=min_score,
        )

    def add(
        self,
        text: str,
        category: str = "fact",
        metadata: Mapping[str, Any] | None = None,
        created_at: TimeLike = None,
    ) -> Memory:
        """Store one memory and return it."""
        return self._ready().add(
            self.user_id,
            text,
            category=category,
            metadata=None if metadata is None else validate_metadata(metadata),
            created_at=created_at,
        )

    def get_all(self, category: str | None = None) -> list[Memory]:
        """Every live memory of the user, oldest first (optionally of one category)."""
        return self._ready().get_all(self.user_id, category=category)

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


class AsyncMemoryFacade:
    """The same operations as :class:`MemoryFacade`, as coroutines (run in a thread)."""

    def __init__(
        self, store: MemoryStore, user_id: str, settle: Callable[[], object] | None = None
    ) -> None:
        self.sync = MemoryFacade(store, user_id, settle)
        self.user_id = self.sync.user_id

    async def search(
        self,
        query: str,
        top_k: int = 5,
        category: str | None = None,
        since: TimeLike = None,
        until: TimeLike = None,
        min_score: float | None = None,
    ) -> list[tuple[Memory, float]]:
        """See :meth:`MemoryFacade.search`."""
        return await asyncio.to_thread(
            self.sync.search, query, top_k, category, since, until, min_score
        )

    async def add(
        self,
        text: str,
        category: str = "fact",
        metadata: Mapping[str, Any] | None = None,
        created_at: TimeLike = None,
    ) -> Memory:
        """See :meth:`MemoryFacade.add`."""
        return await asyncio.to_thread(self.sync.add, text, category, metadata, created_at)

    async def get_all(self, category: str | None = None) -> list[Memory]:
        """See :meth:`MemoryFacade.get_all`."""
        return await asyncio.to_thread(self.sync.get_all, category)

    async def get(self, memory_id: str) -> Memory | None:
        """See :meth:`MemoryFacade.get`."""
        return await asyncio.to_thread(self.sync.get, memory_id)

    async def update(
        self,
        memory_id: str,
        text: str,
        category: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Memory:
        """See :meth:`MemoryFacade.update`."""
        return await asyncio.to_thread(self.sync.update, memory_id, text, category, metadata)

    async def delete(self, memory_id: str) -> None:
        """See :meth:`MemoryFacade.delete`."""
        await asyncio.to_thread(self.sync.delete, memory_id)

    async def clear(self, hard: bool = False) -> int:
        """See :meth:`MemoryFacade.clear`."""
        return await asyncio.to_thread(self.sync.clear, hard)

    async def forget(self, memory_ids: Sequence[str] | None = None) -> int:
        """See :meth:`MemoryFacade.forget`."""
        return await asyncio.to_thread(self.sync.forget, memory_ids)

    async def prune(
        self,
        older_than: TimeLike = None,
        category: str | None = None,
        keep_last: int | None = None,
        hard: bool = False,
    ) -> int:
        """See :meth:`MemoryFacade.prune`."""
        return await asyncio.to_thread(self.sync.prune, older_than, category, keep_last, hard)

    async def history(self, memory_id: str) -> list[MemoryVersion]:
        """See :meth:`MemoryFacade.history`."""
        return await asyncio.to_thread(self.sync.history, memory_id)

    async def stats(self) -> dict[str, Any]:
        """See :meth:`MemoryFacade.stats`."""
        return await asyncio.to_thread(self.sync.stats)

    async def export(self, include_vectors: bool = False) -> list[dict[str, Any]]:
        """See :meth:`MemoryFacade.export`."""
        return await asyncio.to_thread(self.sync.export, include_vectors)

    async def import_(self, records: Iterable[Mapping[str, Any]]) -> int:
        """See :meth:`MemoryFacade.import_`."""
        return await asyncio.to_thread(self.sync.import_, list(records))
