"""Streams that hide the memory block as it streams, and finalise exactly once.

:func:`wrap_stream` / :func:`wrap_async_stream` take the SDK's own ``Stream`` /
``AsyncStream`` and return the same object, still an instance of its class (a subclass made
once per class adds the finalising ``close``), iterating over cleaned chunks:

- each choice's ``delta.content`` goes through its own ``BlockStreamFilter``: text that could
  still be the start of a block is held back, block text is never yielded, and the held-back
  tail is released on the chunk that carries the choice's ``finish_reason`` (or in one extra
  chunk when the stream ends without one). Chunks keep everything else (tool calls, usage,
  roles, ids) untouched; a chunk whose text was held back keeps ``content=""``.
- ``on_end(raw_texts, complete)`` runs exactly once, with the raw text of every choice,
  however the stream ends: exhausted (``complete=True``), closed early or garbage collected
  (``complete=False``), or raising (``complete=False``; the exception reaches the caller).
  ``on_end`` must not raise (the caller's iteration would see it); the wrapper's does not.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

from ..protocol.stream_filter import BlockStreamFilter

OnEnd = Callable[[dict[int, str], bool], None]


class _Cleaner:
    """Per-stream state: one filter per choice, and the once-only end."""

    def __init__(self, on_end: OnEnd, clean: bool = True) -> None:
        self._clean = clean
        self._raw: dict[int, list[str]] = {}
        self._filters: dict[int, BlockStreamFilter] = {}
        self._finished: set[int] = set()
        self._on_end = on_end
        self._ended = False
        self._lock = threading.Lock()
        self.last_chunk: Any = None

    def _filter(self, index: int) -> BlockStreamFilter:
        found = self._filters.get(index)
        if found is None:
            found = self._filters[index] = BlockStreamFilter()
        return found

    def clean(self, chunk: Any) -> None:
        """Replace each choice's delta content by what may be shown now (in place)."""
        if getattr(chunk, "choices", None):
            self.last_chunk = chunk  # the template of a tail chunk (a usage chunk has no choices)
        for choice in getattr(chunk, "choices", None) or ():
            index = getattr(choice, "index", 0) or 0
            delta = getattr(choice, "delta", None)
            content = getattr(delta, "content", None)
            if not self._clean:
                if isinstance(content, str):
                    self._raw.setdefault(index, []).append(content)
                continue
            if index in self._finished:
                continue
            shown = self._filter(index).feed(content) if isinstance(content, str) else ""
            if getattr(choice, "finish_reason", None) is not None:
                shown += self._filter(index).finish()
                self._finished.add(index)
            if delta is not None and (isinstance(content, str) or shown):
                delta.content = shown

    def tail(self) -> Any | None:
        """A final chunk with the held-back text of choices that never finished, or None."""
        pieces = []
        for index, flt in sorted(self._filters.items()):
            if index in self._finished:
                continue
            self._finished.add(index)
            text = flt.finish()
            if text:
                pieces.append((index, text))
        chunk = self.last_chunk
        if not pieces or chunk is None or not getattr(chunk, "choices", None):
            return None
        template = chunk.choices[0]
        choices = [
            template.model_copy(
                update={
                    "index": index,
                    "finish_reason": None,
                    "delta": template.delta.model_copy(update={"content": text}),
                },
                deep=True,
            )
            for index, text in pieces
        ]
        return chunk.model_copy(update={"choices": choices})

    def end(self, complete: bool) -> None:
        """Run ``on_end`` once."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        raw = {index: flt.raw_text for index, flt in self._filters.items()}
        raw.update({index: "".join(parts) for index, parts in self._raw.items()})
        self._on_end(raw, complete)


def _sync_gen(source: Iterator[Any], cleaner: _Cleaner) -> Generator[Any, None, None]:
    complete = False
    try:
        for chunk in source:
            cleaner.clean(chunk)
            yield chunk
        extra = cleaner.tail()
        if extra is not None:
            yield extra
        complete = True
    finally:
        cleaner.end(complete)


async def _async_gen(source: AsyncIterator[Any], cleaner: _Cleaner) -> AsyncGenerator[Any, None]:
    complete = False
    try:
        async for chunk in source:
            cleaner.clean(chunk)
            yield chunk
        extra = cleaner.tail()
        if extra is not None:
            yield extra
        complete = True
    finally:
        cleaner.end(complete)


_SYNC_CLASSES: dict[type, type] = {}
_ASYNC_CLASSES: dict[type, type] = {}


def _sync_class(base: type) -> type:
    found = _SYNC_CLASSES.get(base)
    if found is None:
        base_close: Callable[[Any], None] = getattr(base, "close")  # noqa: B009

        def close(self: Any) -> None:
            self._iterator.close()
            self._memory_cleaner.end(False)
            base_close(self)

        found = type(base.__name__, (base,), {"close": close, "__module__": base.__module__})
        _SYNC_CLASSES[base] = found
    return found


def _async_class(base: type) -> type:
    found = _ASYNC_CLASSES.get(base)
    if found is None:
        base_close: Callable[[Any], Awaitable[None]] = getattr(base, "close")  # noqa: B009

        async def close(self: Any) -> None:
            await self._iterator.aclose()
            self._memory_cleaner.end(False)
            await base_close(self)

        found = type(base.__name__, (base,), {"close": close, "__module__": base.__module__})
        _ASYNC_CLASSES[base] = found
    return found


class _ProxyStream:
    """Fallback for a sync stream without the SDK's ``_iterator`` slot: an iterator proxy.

    Iterates the cleaned chunks; ``close()`` and ``with`` finalise, then close the stream;
    every other attribute is the stream's own.
    """

    def __init__(self, stream: Any, gen: Generator[Any, None, None], cleaner: _Cleaner) -> None:
        self._stream = stream
        self._gen = gen
        self._memory_cleaner = cleaner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[Any]:
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Finalise (once) and close the underlying stream."""
        self._gen.close()
        self._memory_cleaner.end(False)
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncProxyStream:
    """The async twin of :class:`_ProxyStream`."""

    def __init__(self, stream: Any, gen: AsyncGenerator[Any, None], cleaner: _Cleaner) -> None:
        self._stream = stream
        self._gen = gen
        self._memory_cleaner = cleaner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    async def __anext__(self) -> Any:
        return await self._gen.__anext__()

    async def close(self) -> None:
        """Finalise (once) and close the underlying stream."""
        await self._gen.aclose()
        self._memory_cleaner.end(False)
        close = getattr(self._stream, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def wrap_stream(stream: Any, on_end: OnEnd, *, clean: bool = True) -> Any:
    """Clean a sync stream in place and return it; see the module docstring.

    With ``clean=False`` the chunks pass unchanged and only ``on_end`` is added.
    """
    cleaner = _Cleaner(on_end, clean)
    if not hasattr(stream, "_iterator"):
        return _ProxyStream(stream, _sync_gen(iter(stream), cleaner), cleaner)
    stream._iterator = _sync_gen(stream._iterator, cleaner)
    stream._memory_cleaner = cleaner
    stream.__class__ = _sync_class(type(stream))
    return stream


def wrap_async_stream(stream: Any, on_end: OnEnd, *, clean: bool = True) -> Any:
    """Clean an async stream in place and return it; see :func:`wrap_stream`."""
    cleaner = _Cleaner(on_end, clean)
    if not hasattr(stream, "_iterator"):
        return _AsyncProxyStream(stream, _async_gen(stream.__aiter__(), cleaner), cleaner)
    stream._iterator = _async_gen(stream._iterator, cleaner)
    stream._memory_cleaner = cleaner
    stream.__class__ = _async_class(type(stream))
    return stream
