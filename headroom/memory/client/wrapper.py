"""with_fast_memory / with_memory: an OpenAI-compatible client with persistent memory.

The wrapped client is used exactly like the original. ``chat.completions.create`` / ``parse``
/ ``stream`` and ``responses.create`` / ``parse`` / ``stream`` are memory-aware (the Responses
API: ``protocol/responses.py``); every other attribute (embeddings, files,
``with_raw_response``, ...) is the wrapped client's own. The caller's client is never
modified: the wrapper holds ``client.copy()`` (which shares the connection pool), so one
client can be wrapped for many users. ``copy()`` and ``with_options()`` return wrapped
copies with the same memory.

Two modes:
- inline (``with_fast_memory``): inject -> instruct -> call -> parse -> store -> return
  (``pipeline.py``); the answer's ``<memory>`` block is removed from every choice and
  choice 0's operations are stored on a background writer after the response returns.
  With ``response_format`` JSON mode no block can be appended, so that call's extraction
  goes to the background queue instead.
- background (``with_memory``): inject, call, return the response untouched; the turn is
  recorded durably as an extraction job before the response returns, and a worker thread
  extracts with a separate LLM call (``background.py``).

Per call, ``memory="off" | "read" | "write"`` (default ``"on"``) is consumed before the
request is forwarded. Failure policy: an error inside the memory layer is logged (logger
``headroom.memory``) and the call goes on without memory; errors of the provider reach the
caller unchanged.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..embedders.base import Embedder
from ..errors import InvalidInputError
from ..protocol import responses as rsp
from ..protocol.budget import PromptBudget
from ..protocol.pipeline import Mode, Settings, check_mode, is_json_mode
from ..store.store import MemoryStore
from ..types import validate_user_id
from .background import is_async_client
from .core import Core
from .facade import AsyncMemoryFacade, MemoryFacade
from .stream import ResponsesCleaner, wrap_async_stream, wrap_stream
from .writer import Writer

DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"

_OPTIONS = frozenset(
    {
        "min_score",
        "max_tokens",
        "max_prompt_tokens",
        "token_counter",
        "role",
        "observer",
        "embedder",
        "sync",
        "retry_base",
        "retry_max",
        "lease_s",
        "poll_s",
    }
)


def _pop_mode(kwargs: dict[str, Any]) -> Mode:
    return check_mode(kwargs.pop("memory", None))


def _omitted(value: object) -> bool:
    """The SDK's markers of an argument not given (``omit``, ``NOT_GIVEN``)."""
    return type(value).__name__ in ("Omit", "NotGiven")


def _given(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the arguments marked as not given (the SDK's helpers pass them)."""
    return {k: v for k, v in kwargs.items() if not _omitted(v)}


def _structured(response_format: object) -> bool:
    """True for a ``response_format`` under which no block can be appended (JSON, a type)."""
    return isinstance(response_format, type) or is_json_mode(response_format)


class _Bound:
    """A resource whose ``create`` carries a ``memory=`` mode.

    The SDK's stream helpers (``chat.completions.stream``, ``responses.stream``) make their
    request through ``resource.create``; they are run with this object as the resource, so
    the request goes through the memory-aware ``create`` and their events are built from the
    cleaned stream. Every other attribute is the resource's own.
    """

    def __init__(self, resource: Any, mode: Mode) -> None:
        self._resource = resource
        self._mode = mode

    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._resource.create(*args, memory=self._mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resource, name)


class _Completions:
    """``client.chat.completions`` with a memory-aware ``create``; all else passes through."""

    def __init__(self, inner: Any, owner: MemoryClient) -> None:
        self._inner = inner
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def create(self, *args: Any, **kwargs: Any) -> Any:
        """``create`` of the SDK, with memory; ``memory=`` selects the mode for this call."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "messages" not in kwargs:
            return self._inner.create(*args, **kwargs)
        core, client = self._owner._core, self._owner._client
        prepared = core.prepare(kwargs, mode)
        request = dict(kwargs)
        kwargs["messages"] = prepared.messages
        result = self._inner.create(**kwargs)
        if kwargs.get("stream"):
            return wrap_stream(
                result,
                lambda raw, complete: core.finish_stream(client, prepared, request, raw, complete),
                clean=not core.background,
            )
        core.finish(client, prepared, request, result)
        return result

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        """``parse`` of the SDK (structured outputs), with memory.

        No block can be appended to a JSON answer: memories are injected and the turn is
        queued for background extraction, as JSON mode is on ``create``.
        """
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "messages" not in kwargs:
            return self._inner.parse(*args, **kwargs)
        core, client = self._owner._core, self._owner._client
        structured = _structured(kwargs.get("response_format"))
        prepared = core.prepare(kwargs, mode, json_mode=structured)
        request = dict(kwargs)
        kwargs["messages"] = prepared.messages
        result = self._inner.parse(**kwargs)
        core.finish(client, prepared, request, result)
        return result

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        """``stream`` of the SDK (the stream helper), with memory: its request goes through
        :meth:`create`, so its events and ``get_final_completion()`` never show the block."""
        mode = _pop_mode(kwargs)
        if mode == "off":
            return self._inner.stream(*args, **kwargs)
        return type(self._inner).stream(_Bound(self, mode), *args, **kwargs)


class _AsyncCompletions(_Completions):
    """The async twin: the store work runs in a thread so the event loop never blocks."""

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        """``create`` of the SDK, with memory; ``memory=`` selects the mode for this call."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "messages" not in kwargs:
            return await self._inner.create(*args, **kwargs)
        core, client = self._owner._core, self._owner._client
        if mode == "write" and not core.background:
            prepared = core.prepare(kwargs, mode)  # no search: nothing to wait for
        else:
            prepared = await asyncio.to_thread(core.prepare, kwargs, mode)
        request = dict(kwargs)
        kwargs["messages"] = prepared.messages
        result = await self._inner.create(**kwargs)
        if kwargs.get("stream"):
            return wrap_async_stream(
                result,
                lambda raw, complete: core.finish_stream(client, prepared, request, raw, complete),
                clean=not core.background,
            )
        if prepared.background:
            await asyncio.to_thread(core.finish, client, prepared, request, result)
        else:
            core.finish(client, prepared, request, result)
        return result

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        """``parse`` of the SDK, with memory; see :meth:`_Completions.parse`."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "messages" not in kwargs:
            return await self._inner.parse(*args, **kwargs)
        core, client = self._owner._core, self._owner._client
        structured = _structured(kwargs.get("response_format"))
        prepared = await asyncio.to_thread(core.prepare, kwargs, mode, json_mode=structured)
        request = dict(kwargs)
        kwargs["messages"] = prepared.messages
        result = await self._inner.parse(**kwargs)
        await asyncio.to_thread(core.finish, client, prepared, request, result)
        return result


class _Responses:
    """``client.responses`` with memory-aware ``create``, ``parse`` and ``stream``.

    Memories go in an input item just before the last user item and the instruction at the
    end of ``instructions`` (``protocol/responses.py`` says why); the block is removed from
    the response's output messages (so from ``output_text``) and, streamed, from every event.
    Structured outputs (``text.format`` JSON, ``parse`` with ``text_format``) get memories
    injected and their turn queued for background extraction, with no block asked for.
    """

    def __init__(self, inner: Any, owner: MemoryClient) -> None:
        self._inner = inner
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _start(
        self, kwargs: dict[str, Any], mode: Mode, structured: bool
    ) -> tuple[dict[str, Any], rsp.PreparedInput]:
        """(the arguments to send, the preparation) of a call."""
        prepared = self._owner._core.prepare_input(kwargs, mode, json_mode=structured)
        return self._arguments(kwargs, prepared), prepared

    @staticmethod
    def _arguments(kwargs: dict[str, Any], prepared: rsp.PreparedInput) -> dict[str, Any]:
        call = dict(kwargs)
        call["input"] = prepared.input
        if prepared.instructions is not kwargs.get("instructions"):
            call["instructions"] = prepared.instructions
        return call

    def _wrap(
        self, result: Any, prepared: rsp.PreparedInput, request: dict[str, Any], is_async: bool
    ) -> Any:
        core, client = self._owner._core, self._owner._client

        def on_end(raw: Mapping[int, str], complete: bool) -> None:
            core.finish_stream(client, prepared.prepared, request, raw, complete)

        clean = not core.background and not prepared.prepared.background
        instructions = (prepared.instructions, request.get("instructions"))
        cleaner = ResponsesCleaner(on_end, clean, instructions)
        if is_async:
            return wrap_async_stream(result, on_end, cleaner=cleaner)
        return wrap_stream(result, on_end, cleaner=cleaner)

    @staticmethod
    def _is_structured(kwargs: Mapping[str, Any]) -> bool:
        return "text_format" in kwargs or rsp.is_json_text_format(kwargs.get("text"))

    def _finish(self, prepared: rsp.PreparedInput, request: dict[str, Any], result: Any) -> None:
        core, client = self._owner._core, self._owner._client
        core.finish_response(client, prepared.prepared, request, result, prepared.instructions)

    def create(self, *args: Any, **kwargs: Any) -> Any:
        """``create`` of the SDK, with memory; ``memory=`` selects the mode for this call."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "input" not in kwargs:
            return self._inner.create(*args, **kwargs)
        kwargs = _given(kwargs)
        call, prepared = self._start(kwargs, mode, self._is_structured(kwargs))
        result = self._inner.create(**call)
        if call.get("stream"):
            return self._wrap(result, prepared, kwargs, False)
        self._finish(prepared, kwargs, result)
        return result

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        """``parse`` of the SDK, with memory (structured: inject, then background extraction)."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "input" not in kwargs:
            return self._inner.parse(*args, **kwargs)
        kwargs = _given(kwargs)
        call, prepared = self._start(kwargs, mode, self._is_structured(kwargs))
        result = self._inner.parse(**call)
        if call.get("stream"):
            return self._wrap(result, prepared, kwargs, False)
        self._finish(prepared, kwargs, result)
        return result

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        """``stream`` of the SDK (the stream helper), with memory: its request goes through
        :meth:`create`, so its events and ``get_final_response()`` never show the block."""
        mode = _pop_mode(kwargs)
        if mode == "off" or "input" not in kwargs:
            return self._inner.stream(*args, **kwargs)
        return type(self._inner).stream(_Bound(self, mode), *args, **kwargs)


class _AsyncResponses(_Responses):
    """The async twin: the store work runs in a thread so the event loop never blocks."""

    async def _astart(
        self, kwargs: dict[str, Any], mode: Mode, structured: bool
    ) -> tuple[dict[str, Any], rsp.PreparedInput]:
        core = self._owner._core
        if mode == "write" and not core.background:
            prepared = core.prepare_input(kwargs, mode, json_mode=structured)  # no search
        else:
            prepared = await asyncio.to_thread(
                core.prepare_input, kwargs, mode, json_mode=structured
            )
        return self._arguments(kwargs, prepared), prepared

    async def _afinish(
        self, prepared: rsp.PreparedInput, request: dict[str, Any], result: Any
    ) -> None:
        if prepared.prepared.background:
            await asyncio.to_thread(self._finish, prepared, request, result)
        else:
            self._finish(prepared, request, result)

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        """``create`` of the SDK, with memory; ``memory=`` selects the mode for this call."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "input" not in kwargs:
            return await self._inner.create(*args, **kwargs)
        kwargs = _given(kwargs)
        call, prepared = await self._astart(kwargs, mode, self._is_structured(kwargs))
        result = await self._inner.create(**call)
        if call.get("stream"):
            return self._wrap(result, prepared, kwargs, True)
        await self._afinish(prepared, kwargs, result)
        return result

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        """``parse`` of the SDK, with memory; see :meth:`_Responses.parse`."""
        mode = _pop_mode(kwargs)
        if mode == "off" or args or "input" not in kwargs:
            return await self._inner.parse(*args, **kwargs)
        kwargs = _given(kwargs)
        call, prepared = await self._astart(kwargs, mode, self._is_structured(kwargs))
        result = await self._inner.parse(**call)
        if call.get("stream"):
            return self._wrap(result, prepared, kwargs, True)
        await self._afinish(prepared, kwargs, result)
        return result


class _Chat:
    """``client.chat`` with memory-aware ``completions``."""

    def __init__(self, inner: Any, completions: _Completions) -> None:
        self._inner = inner
        self.completions = completions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class MemoryClient:
    """A sync OpenAI-compatible client with memory; see the module docstring."""

    _facade_class: type[Any] = MemoryFacade
    _completions_class: type[_Completions] = _Completions
    _responses_class: type[_Responses] = _Responses

    def __init__(self, client: Any, core: Core) -> None:
        self._client = client
        self._core = core
        self.memory = self._facade_class(core.store, core.settings.user_id, core.writer.flush)
        self.chat = _Chat(client.chat, self._completions_class(client.chat.completions, self))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_client", "_core"):
            raise AttributeError(name)
        if name == "responses":  # made on first use (wrapping stays cheap), then kept
            responses = self._responses_class(self._client.responses, self)
            self.__dict__["responses"] = responses
            return responses
        return getattr(self._client, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:
        """The SDK client's class, so ``isinstance(wrapped, OpenAI)`` holds as it did.

        ``type(wrapped)`` is still this class, and ``isinstance(wrapped, MemoryClient)`` too.
        """
        return type(self._client)

    @property
    def user_id(self) -> str:
        """The user whose memory this client uses."""
        return self._core.settings.user_id

    @property
    def wrapped(self) -> Any:
        """The SDK client (a copy of the caller's) that requests go through."""
        return self._client

    def copy(self, **options: Any) -> Any:
        """``client.copy(**options)`` of the SDK, still carrying this memory."""
        return type(self)(self._client.copy(**options), self._core)

    def with_options(self, **options: Any) -> Any:
        """``client.with_options(**options)`` of the SDK, still carrying this memory."""
        return type(self)(self._client.with_options(**options), self._core)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for pending memory writes and extractions; True when none is left."""
        return self._core.flush(timeout)

    def close(self) -> None:
        """Flush memory work. The HTTP pool is shared with the caller's client and stays open."""
        self._core.flush()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "with_memory" if self._core.background else "with_fast_memory"
        return f"<{mode} user_id={self.user_id!r} client={self._client!r}>"


class AsyncMemoryClient(MemoryClient):
    """The async twin of :class:`MemoryClient`: ``.memory`` methods are coroutines."""

    _facade_class = AsyncMemoryFacade
    _completions_class = _AsyncCompletions
    _responses_class = _AsyncResponses

    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` without blocking the event loop."""
        return await asyncio.to_thread(self._core.flush, timeout)

    async def close(self) -> None:  # type: ignore[override]
        """Flush memory work without blocking the loop (awaitable, as the SDK's ``close``).

        The HTTP pool is shared with the caller's client and stays open.
        """
        await self.aflush()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aflush()


# --- construction ---------------------------------------------------------------------------

_WRITERS: dict[int, tuple[MemoryStore, Writer]] = {}
_EMBEDDERS: dict[tuple[Any, ...], Embedder] = {}
_LOCK = threading.Lock()


def _writer_for(store: MemoryStore) -> Writer:
    with _LOCK:
        entry = _WRITERS.get(id(store))
        if entry is None or entry[0] is not store:
            entry = (store, Writer())
            _WRITERS[id(store)] = entry
        return entry[1]


def _embedding_client(client: Any) -> Any:
    """A sync client for API embeddings: ``client`` itself, or a sync twin of an async one."""
    if not is_async_client(client):
        return client
    import openai

    return openai.OpenAI(
        api_key=client.api_key,
        organization=getattr(client, "organization", None),
        project=getattr(client, "project", None),
        base_url=client.base_url,
        timeout=client.timeout,
        max_retries=client.max_retries,
    )


def _embedder(client: Any, use_local: bool, model: str) -> Embedder:
    """The embedder the wrap names (the store refuses it when it holds another model's
    vectors: EmbeddingModelMismatchError). Nothing is loaded here.

    Embedders are shared per process (API ones per model, endpoint and key), so wrapping per
    request creates one embedder per process, not one per wrap.
    """
    from ..embedders import get_embedder
    from ..embedders.factory import LOCAL_MODELS

    if use_local:
        if model not in LOCAL_MODELS:
            raise InvalidInputError(
                f"unknown local embedding_model {model!r}; the local model is "
                f"{DEFAULT_LOCAL_MODEL} (use_local_embeddings=False with embedding_model=... "
                "selects an API model)"
            )
        return get_embedder(use_local=True, model=model)
    key = (model, str(getattr(client, "base_url", "")), hash(str(getattr(client, "api_key", ""))))
    with _LOCK:
        found = _EMBEDDERS.get(key)
    if found is None:
        made = get_embedder(use_local=False, model=model, client=_embedding_client(client))
        with _LOCK:
            found = _EMBEDDERS.setdefault(key, made)
    return found


def _number(options: Mapping[str, Any], name: str, default: float, low: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise InvalidInputError(f"{name} must be a number >= {low}; got {value!r}")
    if value == float("inf"):
        raise InvalidInputError(f"{name} must be finite")
    return float(value)


def _check_options(user_id: str, top_k: object, options: Mapping[str, Any]) -> Settings:
    """Validate the wrap-time options (typed errors, before anything is opened)."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTIONS))}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise InvalidInputError(f"top_k must be a non-negative int; got {top_k!r}")
    max_tokens = options.get("max_tokens", Settings.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidInputError(f"max_tokens must be a non-negative int; got {max_tokens!r}")
    role = options.get("role", Settings.role)
    if not isinstance(role, str) or not role.strip():
        raise InvalidInputError(f"role must be a non-empty str; got {role!r}")
    observer = options.get("observer")
    if observer is not None and not callable(observer):
        raise InvalidInputError("observer must be callable")
    embedder = options.get("embedder")
    if embedder is not None and not isinstance(embedder, Embedder):
        raise InvalidInputError("embedder must implement the Embedder protocol")
    if options.get("sync", "interval") not in ("always", "interval", "off"):
        raise InvalidInputError(f"sync must be always, interval or off; got {options['sync']!r}")
    _number(options, "retry_base", 1.0, 0.0)
    _number(options, "retry_max", 300.0, 0.0)
    for name in ("lease_s", "poll_s"):
        if name in options and not _number(options, name, 1.0, 0.0) > 0:
            raise InvalidInputError(f"{name} must be a number > 0; got {options[name]!r}")
    return Settings(
        user_id=user_id,
        top_k=top_k,
        min_score=(
            None
            if options.get("min_score") is None
            else _number(options, "min_score", 0.0, float("-inf"))
        ),
        max_tokens=max_tokens,
        role=role,
    )


def _budget(options: Mapping[str, Any]) -> PromptBudget | None:
    """The prompt budget of ``max_prompt_tokens`` / ``token_counter`` (None without one)."""
    max_prompt_tokens = options.get("max_prompt_tokens")
    if max_prompt_tokens is None:
        if options.get("token_counter") is not None:
            raise InvalidInputError("token_counter counts for max_prompt_tokens; set both")
        return None
    return PromptBudget.of(max_prompt_tokens, options.get("token_counter"))


def _build(
    client: Any,
    user_id: str,
    db_path: str | os.PathLike[str],
    top_k: int,
    use_local_embeddings: bool,
    embedding_model: str,
    background: bool,
    extraction_model: str | None,
    options: Mapping[str, Any],
) -> Any:
    settings = _check_options(validate_user_id(user_id), top_k, options)
    budget = _budget(options)
    if not isinstance(db_path, (str, os.PathLike)):
        raise InvalidInputError(f"db_path must be a path; got {type(db_path).__name__}")
    if extraction_model is not None and not isinstance(extraction_model, str):
        raise InvalidInputError(f"extraction_model must be a str; got {extraction_model!r}")
    if isinstance(client, MemoryClient):  # re-wrapping: wrap the SDK client, not the wrapper
        client = client.wrapped
    chat = getattr(getattr(client, "chat", None), "completions", None)
    if chat is None or not hasattr(client, "copy"):
        raise InvalidInputError(
            "client must be an OpenAI-compatible client (chat.completions.create and copy())"
        )
    embedder = options.get("embedder")
    if embedder is None:
        embedder = _embedder(client, use_local_embeddings, embedding_model)
    store = MemoryStore.open(db_path, embedder=embedder, sync=options.get("sync", "interval"))
    worker_options = {
        k: float(options[k])
        for k in ("retry_base", "retry_max", "lease_s", "poll_s")
        if k in options
    }
    core = Core(
        store=store,
        settings=settings,
        background=background,
        extraction_model=extraction_model,
        observer=options.get("observer"),
        writer=_writer_for(store),
        worker_options=worker_options,
        budget=budget,
    )
    own = client.copy()
    if background:
        core.get_worker(own)  # resumes jobs left pending by an earlier process
    if is_async_client(client):
        return AsyncMemoryClient(own, core)
    return MemoryClient(own, core)


def with_fast_memory(
    client: Any,
    user_id: str,
    db_path: str | os.PathLike[str] = "memory.db",
    top_k: int = 5,
    use_local_embeddings: bool = True,
    embedding_model: str = DEFAULT_LOCAL_MODEL,
    **options: Any,
) -> Any:
    """Wrap ``client`` with inline memory for ``user_id`` (one extra block per answer).

    Options: ``min_score`` (a fixed relevance floor; default None: the relevance decision of
    ``protocol.relevance``), ``max_tokens`` (budget of the injected memories, default
    300), ``role`` (of the injected message, default "system"),
    ``observer`` (callable receiving a :class:`~headroom.memory.protocol.pipeline.MemoryEvent` per
    call), ``embedder`` (an Embedder instance instead of the named model), ``sync`` (store
    durability: "always" | "interval" | "off"), ``retry_base`` / ``retry_max`` (backoff of
    background extractions, used by JSON-mode calls), ``lease_s`` / ``poll_s`` (the
    extraction worker's claim on a job, renewed every third of it while its call runs, default
    60 s; how often an idle worker looks for jobs other processes left, default 10 s; the
    store's worker is one per process: the last wrap that sets them wins). Unknown options raise
    InvalidInputError. Returns a client used exactly like ``client``; sync or async as it is.

    ``max_prompt_tokens=N`` makes the whole prompt sent (the caller's messages, or
    ``instructions`` and ``input``, plus the instruction and the memories) fit N tokens,
    counted with ``token_counter`` (default: tiktoken when available offline, else the
    estimate; a TokenCounter or a ``text -> int`` callable). The oldest turns go first, then
    memories, then the instruction (that turn is then extracted in the background); the
    system prompt and the last user turn are always sent (``protocol/budget.py``).
    """
    return _build(
        client, user_id, db_path, top_k, use_local_embeddings, embedding_model, False, None, options
    )


def with_memory(
    client: Any,
    user_id: str,
    db_path: str | os.PathLike[str] = "memory.db",
    extraction_model: str | None = None,
    top_k: int = 5,
    use_local_embeddings: bool = True,
    embedding_model: str = DEFAULT_LOCAL_MODEL,
    **options: Any,
) -> Any:
    """Wrap ``client`` with background memory for ``user_id``: the response is untouched.

    Relevant memories are injected; each turn becomes a durable extraction job that a worker
    thread runs with a separate LLM call through this client, using ``extraction_model``
    (default: the model of the call). Jobs left pending by an earlier process resume now.
    Options as :func:`with_fast_memory`.
    """
    return _build(
        client,
        user_id,
        db_path,
        top_k,
        use_local_embeddings,
        embedding_model,
        True,
        extraction_model,
        options,
    )
