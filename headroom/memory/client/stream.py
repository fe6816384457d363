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

Responses API streams go through the same machinery with a :class:`ResponsesCleaner` (one
filter per text part; see its docstring).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, Protocol

from ..protocol import responses as rsp
from ..protocol.block import clean_text
from ..protocol.stream_filter import BlockStreamFilter

OnEnd = Callable[[dict[int, str], bool], None]


class Cleaner(Protocol):
    """What the stream generators drive: per-stream state and the once-only end."""

    def process(self, chunk: Any) -> list[Any]:
        """The items to yield for one item of the source (cleaned in place, or more)."""
        ...

    def closing(self) -> list[Any]:
        """The items to yield after the source is exhausted."""
        ...

    def end(self, complete: bool) -> None:
        """Run the end hook (once, however often called)."""
        ...


class _Cleaner:
    """Per-stream state of a chat completion stream: one filter per choice, and the
    once-only end."""

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

    def process(self, chunk: Any) -> list[Any]:
        """The chunks to yield for one chunk of the source: itself, cleaned."""
        self.clean(chunk)
        return [chunk]

    def closing(self) -> list[Any]:
        """The chunks to yield after the source is exhausted."""
        extra = self.tail()
        return [] if extra is None else [extra]

    def end(self, complete: bool) -> None:
        """Run ``on_end`` once."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        raw = {index: flt.raw_text for index, flt in self._filters.items()}
        raw.update({index: "".join(parts) for index, parts in self._raw.items()})
        self._on_end(raw, complete)


def _sync_gen(source: Iterator[Any], cleaner: Cleaner) -> Generator[Any, None, None]:
    complete = False
    try:
        for chunk in source:
            yield from cleaner.process(chunk)
        yield from cleaner.closing()
        complete = True
    finally:
        cleaner.end(complete)


async def _async_gen(source: AsyncIterator[Any], cleaner: Cleaner) -> AsyncGenerator[Any, None]:
    complete = False
    try:
        async for chunk in source:
            for item in cleaner.process(chunk):
                yield item
        for item in cleaner.closing():
            yield item
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

    def __init__(self, stream: Any, gen: Generator[Any, None, None], cleaner: Cleaner) -> None:
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

    def __init__(self, stream: Any, gen: AsyncGenerator[Any, None], cleaner: Cleaner) -> None:
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


def wrap_stream(
    stream: Any, on_end: OnEnd, *, clean: bool = True, cleaner: Cleaner | None = None
) -> Any:
    """Clean a sync stream in place and return it; see the module docstring.

    With ``clean=False`` the chunks pass unchanged and only ``on_end`` is added. ``cleaner``
    replaces the chat-completion cleaner (a Responses stream: :func:`responses_cleaner`).
    """
    if cleaner is None:
        cleaner = _Cleaner(on_end, clean)
    if not hasattr(stream, "_iterator"):
        return _ProxyStream(stream, _sync_gen(iter(stream), cleaner), cleaner)
    stream._iterator = _sync_gen(stream._iterator, cleaner)
    stream._memory_cleaner = cleaner
    stream.__class__ = _sync_class(type(stream))
    return stream


def wrap_async_stream(
    stream: Any, on_end: OnEnd, *, clean: bool = True, cleaner: Cleaner | None = None
) -> Any:
    """Clean an async stream in place and return it; see :func:`wrap_stream`."""
    if cleaner is None:
        cleaner = _Cleaner(on_end, clean)
    if not hasattr(stream, "_iterator"):
        return _AsyncProxyStream(stream, _async_gen(stream.__aiter__(), cleaner), cleaner)
    stream._iterator = _async_gen(stream._iterator, cleaner)
    stream._memory_cleaner = cleaner
    stream.__class__ = _async_class(type(stream))
    return stream


# --- the Responses API --------------------------------------------------------------------------

#: Events that carry the whole response object (``event.response``).
_RESPONSE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
#: Events that end a response: their response's text is the whole answer.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_PART_EVENTS = frozenset({"response.content_part.added", "response.content_part.done"})
_ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done"})

PartKey = tuple[int, int]


def _index(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ResponsesCleaner:
    """Per-stream state of a Responses stream (``client.responses.create(stream=True)``).

    Each text part (``output_index``, ``content_index``) has its own ``BlockStreamFilter``:

    - ``response.output_text.delta``: ``delta`` becomes what may be shown now ("" while held
      back: the number of delta events never shrinks);
    - ``response.output_text.done``: the held-back tail of that part, if any, goes out first
      in one more delta event (a copy of the part's last delta), then the done event with its
      ``text`` cleaned. Every later event's ``sequence_number`` moves up by the events added,
      so the numbers stay strictly increasing;
    - ``response.content_part.*``, ``response.output_item.*``: their ``output_text`` parts
      cleaned; events carrying the response (``response.completed`` ...): every output message
      cleaned, so ``event.response.output_text`` is the clean answer.

    ``on_end({0: raw}, complete)`` runs once with the whole raw answer (the completed
    response's text, else the parts' texts). ``instructions=(sent, caller's)``: responses
    echoing the instructions sent get the caller's back. With ``clean=False`` events pass
    unchanged.
    """

    def __init__(
        self,
        on_end: OnEnd,
        clean: bool = True,
        instructions: tuple[object, object] | None = None,
    ) -> None:
        self._clean = clean
        self._on_end = on_end
        self._instructions = instructions
        self._filters: dict[PartKey, BlockStreamFilter] = {}
        self._raw: dict[PartKey, list[str]] = {}
        self._done_text: dict[PartKey, str] = {}
        self._final_raw: str | None = None
        self._last_delta: dict[PartKey, Any] = {}
        self._finished: set[PartKey] = set()
        self._shift = 0
        self._last_number = -1
        self._ended = False
        self._lock = threading.Lock()

    @staticmethod
    def _key(event: Any) -> PartKey:
        return (
            _index(getattr(event, "output_index", 0)),
            _index(getattr(event, "content_index", 0)),
        )

    def _number(self, event: Any) -> None:
        """Shift the event's sequence number by the events added so far; remember the last."""
        number = getattr(event, "sequence_number", None)
        if not isinstance(number, int) or isinstance(number, bool):
            return
        if self._shift:
            number += self._shift
            event.sequence_number = number
        self._last_number = max(self._last_number, number)

    def _extra_delta(self, key: PartKey, text: str, number: int | None) -> Any | None:
        """A copy of the part's last delta event carrying ``text`` (None without one)."""
        template = self._last_delta.get(key)
        if template is None:
            return None
        update: dict[str, Any] = {"delta": text}
        if number is not None:
            update["sequence_number"] = number
        if hasattr(template, "model_copy"):
            return template.model_copy(update=update)
        extra = copy.copy(template)
        for name, value in update.items():
            setattr(extra, name, value)
        return extra

    def process(self, event: Any) -> list[Any]:
        """The events to yield for one event of the source (cleaned in place, or more)."""
        kind = getattr(event, "type", None)
        if self._clean:
            self._number(event)
        if kind == "response.output_text.delta":
            return self._delta(event)
        if kind == "response.output_text.done":
            return self._text_done(event)
        response = getattr(event, "response", None) if kind in _RESPONSE_EVENTS else None
        if kind in _FINAL_EVENTS and response is not None:
            self._final_raw = rsp.response_text(response)
        if not self._clean:
            return [event]
        if kind in _PART_EVENTS:
            rsp.clean_part(getattr(event, "part", None))
        elif kind in _ITEM_EVENTS:
            rsp.clean_output_item(getattr(event, "item", None))
        elif response is not None:
            if self._instructions is not None:
                rsp.restore_instructions(response, *self._instructions)
            for item in getattr(response, "output", None) or ():
                rsp.clean_output_item(item)
        return [event]

    def _delta(self, event: Any) -> list[Any]:
        key = self._key(event)
        delta = getattr(event, "delta", None)
        if not self._clean:
            if isinstance(delta, str):
                self._raw.setdefault(key, []).append(delta)
            return [event]
        if key in self._finished or not isinstance(delta, str):
            return [event]
        flt = self._filters.get(key)
        if flt is None:
            flt = self._filters[key] = BlockStreamFilter()
        event.delta = flt.feed(delta)
        self._last_delta[key] = event
        return [event]

    def _text_done(self, event: Any) -> list[Any]:
        key = self._key(event)
        text = getattr(event, "text", None)
        if isinstance(text, str):
            self._done_text[key] = text
        if not self._clean:
            return [event]
        out: list[Any] = []
        flt = self._filters.get(key)
        if flt is not None and key not in self._finished:
            self._finished.add(key)
            tail = flt.finish()
            number = getattr(event, "sequence_number", None)
            number = number if isinstance(number, int) else None
            extra = self._extra_delta(key, tail, number) if tail else None
            if extra is not None:
                out.append(extra)
                if number is not None:
                    event.sequence_number = number + 1
                    self._last_number = max(self._last_number, number + 1)
                self._shift += 1
        if isinstance(text, str):
            event.text = clean_text(text)
        out.append(event)
        return out

    def closing(self) -> list[Any]:
        """Held-back text of parts that never got their done event, as extra delta events."""
        out = []
        for key, flt in sorted(self._filters.items()):
            if key in self._finished:
                continue
            self._finished.add(key)
            tail = flt.finish()
            if tail:
                extra = self._extra_delta(key, tail, self._last_number + 1)
                if extra is not None:
                    self._last_number += 1
                    out.append(extra)
        return out

    def raw_text(self) -> str:
        """The whole raw answer seen so far, memory block included."""
        if self._final_raw is not None:
            return self._final_raw
        if self._done_text:
            return "".join(text for _, text in sorted(self._done_text.items()))
        if self._raw:
            return "".join("".join(parts) for _, parts in sorted(self._raw.items()))
        return "".join(flt.raw_text for _, flt in sorted(self._filters.items()))

    def end(self, complete: bool) -> None:
        """Run ``on_end`` once."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._on_end({0: self.raw_text()}, complete)
