"""The inline memory pipeline as plain functions: inject, instruct, parse, clean, store.

The wrapper (``wrapper.py``) calls these around the provider call; nothing here knows about
HTTP, SDK clients or threads. Every function takes and returns plain values:

- :func:`prepare` turns the caller's request messages into the messages to send: the
  relevant memories in a read-only message just before the last user message (inject) and
  the static ``MEMORY_INSTRUCTION`` in a system message (instruct). The caller's list and its
  dicts are never mutated.
- :func:`parse_choice` takes an answer text apart into the clean text and the operations of
  its ``<memory>`` block, with the short ids (m1..mk) shown in this request mapped to real
  memory ids; ids that were not shown are dropped.
- :func:`store_ops` applies operations to the store as one batch.

Modes (the per-call ``memory=`` keyword): ``"on"`` (default: inject, instruct, store),
``"read"`` (inject only; any block the model writes anyway is still removed), ``"write"``
(instruct and store, inject nothing), ``"off"`` (the call passes through untouched).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidInputError
from ..types import Memory
from . import relevance
from .block import (
    MEMORY_INSTRUCTION,
    MemoryOps,
    MemoryUpdate,
    ParsedAnswer,
    parse_answer,
)
from .injection import InjectedContext, build_injection

if TYPE_CHECKING:
    from ..store.store import AppliedOps, MemoryStore

logger = logging.getLogger("headroom.memory")

Mode = Literal["on", "off", "read", "write"]
MODES: tuple[Mode, ...] = ("on", "off", "read", "write")

#: The system message that carries the instruction. Built once: its bytes never change, so the
#: prompt prefix stays identical across calls and provider prompt caching keeps working.
INSTRUCTION_MESSAGE: Mapping[str, str] = {"role": "system", "content": MEMORY_INSTRUCTION}

#: Response formats under which no inline block can be appended to the answer.
JSON_FORMATS = frozenset({"json_object", "json_schema"})


@dataclass(frozen=True)
class Settings:
    """How one wrapper injects: fixed at wrap time.

    ``min_score`` None (the default) injects what the relevance decision of ``relevance.py``
    keeps (the user's own background, the message's genericness); a number is a fixed floor
    on the search score instead (the cosine similarity, centred for users of 100+ memories,
    plus the hybrid bonuses: ``MemoryStore.search``). ``max_tokens`` is the budget of the
    injected message; ``role`` the role of that message (``"system"`` by default).
    """

    user_id: str
    top_k: int = 5
    min_score: float | None = None
    max_tokens: int = 300
    role: str = "system"


@dataclass(frozen=True)
class MemoryEvent:
    """What the memory layer did for one call; handed to the wrapper's observer.

    ``injected`` lists ``(short_id, memory, score)`` as shown to the model; ``ops`` are the
    operations extracted (real ids), empty when nothing was extracted; ``kind`` is
    ``"inline"`` or ``"background"`` (a queued extraction); ``problems`` are the parser's
    complaints; ``error`` is the failure inside the memory layer, if any (the call itself
    still succeeded).
    """

    user_id: str
    mode: Mode
    kind: Literal["inline", "background"]
    injected: tuple[tuple[str, Memory, float], ...] = ()
    ops: MemoryOps = field(default_factory=MemoryOps)
    problems: tuple[str, ...] = ()
    streamed: bool = False
    error: BaseException | None = None


Observer = Callable[[MemoryEvent], None]


@dataclass(frozen=True)
class Prepared:
    """The request after inject and instruct.

    ``messages`` is what to send; ``context`` is the injection (None when nothing was
    injected); ``extract`` says whether the answer's block is to be stored; ``background``
    says the extraction must be queued instead (JSON mode: no inline block possible);
    ``error`` is the failure that made the wrapper go on without injection, if any.
    """

    messages: list[Any]
    context: InjectedContext | None
    mode: Mode
    extract: bool
    background: bool
    error: BaseException | None = None

    @property
    def id_map(self) -> Mapping[str, str]:
        """Short id -> real id of the memories shown in this request."""
        return self.context.id_map if self.context is not None else {}

    @property
    def shown(self) -> tuple[tuple[str, Memory, float], ...]:
        """What was injected, as ``(short_id, memory, score)``."""
        return tuple(self.context.shown) if self.context is not None else ()


def check_mode(mode: object) -> Mode:
    """Return ``mode`` as a Mode (None means "on"), or raise InvalidInputError."""
    if mode is None:
        return "on"
    if mode is True:
        return "on"
    if mode is False:
        return "off"
    if isinstance(mode, str) and mode in MODES:
        return mode
    raise InvalidInputError(f"memory= must be one of {', '.join(MODES)}; got {mode!r}")


def content_text(content: object) -> str:
    """The text of a message's content: a str, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        ]
        return "\n".join(p for p in parts if p)
    return ""


def _field(message: object, name: str) -> object:
    """A field of a message given as a dict or as an object with attributes."""
    if isinstance(message, Mapping):
        return message.get(name)
    return getattr(message, name, None)


def _role(message: object) -> str | None:
    role = _field(message, "role")
    return role if isinstance(role, str) else None


def _content(message: object) -> object:
    return _field(message, "content")


def last_user_index(messages: Sequence[object]) -> int | None:
    """Index of the last message with role ``user``, or None."""
    for i in range(len(messages) - 1, -1, -1):
        if _role(messages[i]) == "user":
            return i
    return None


def last_user_text(messages: Sequence[object]) -> str:
    """Text of the last user message ("" when there is none or it has no text)."""
    index = last_user_index(messages)
    return "" if index is None else content_text(_content(messages[index])).strip()


def is_json_mode(response_format: object) -> bool:
    """True when ``response_format`` asks for JSON output (no inline block possible)."""
    if isinstance(response_format, Mapping):
        return response_format.get("type") in JSON_FORMATS
    kind = getattr(response_format, "type", None)
    return kind in JSON_FORMATS


def notify(observer: Observer | None, event: MemoryEvent) -> None:
    """Hand ``event`` to the observer; an observer that raises is logged, never raised."""
    if observer is None:
        return
    try:
        observer(event)
    except Exception:
        logger.exception("headroom.memory: the observer raised; ignored")


def find_memories(store: MemoryStore, settings: Settings, query: str) -> InjectedContext | None:
    """The user's memories relevant to ``query``, rendered for injection (the one search every
    path injects with: inline, background extraction); None when nothing is relevant enough:
    below ``settings.min_score`` when it is set, else by :func:`relevance.relevant` (the
    user's background and the message's genericness)."""
    if not query:
        return None
    results = store.search(
        settings.user_id, query, top_k=settings.top_k, min_score=settings.min_score
    )
    floor = settings.min_score
    if floor is None:
        results, floor = relevance.relevant(store, settings.user_id, query, results), -math.inf
    if not results:
        return None
    context = build_injection(
        results, min_score=floor, max_tokens=settings.max_tokens, role=settings.role
    )
    return context if context.message is not None else None


def inject(
    store: MemoryStore, settings: Settings, messages: Sequence[object]
) -> tuple[list[Any], InjectedContext | None]:
    """Search with the last user message and place the memories just before it.

    Returns the new message list (the input is not mutated) and the injection, or the same
    messages and None when there is no user text or nothing relevant enough.
    """
    out = list(messages)
    index = last_user_index(out)
    context = find_memories(store, settings, last_user_text(out)) if index is not None else None
    if index is None or context is None or context.message is None:
        return out, None
    out.insert(index, context.message)
    return out, context


def instruct(messages: Sequence[object]) -> list[Any]:
    """Add the static instruction message after the caller's leading system messages.

    The caller's own system prompt stays first; the instruction follows it byte for byte the
    same on every call, so the prompt prefix is stable for provider caching.
    """
    out = list(messages)
    at = 0
    while at < len(out) and _role(out[at]) in ("system", "developer"):
        at += 1
    out.insert(at, dict(INSTRUCTION_MESSAGE))
    return out


def prepare(
    store: MemoryStore,
    settings: Settings,
    messages: Sequence[object],
    mode: Mode,
    *,
    json_mode: bool = False,
) -> Prepared:
    """Inject and instruct according to ``mode``; see the module docstring.

    In JSON mode nothing is instructed and the extraction is flagged for the background
    queue instead. Raises whatever the store raises (the wrapper logs and falls back).
    """
    context: InjectedContext | None = None
    out = list(messages)
    extract = mode in ("on", "write")
    background = extract and json_mode
    if extract and not json_mode:
        out = instruct(out)  # first: it must follow the caller's system prompt, not memories
    if mode in ("on", "read"):
        out, context = inject(store, settings, out)
    return Prepared(
        messages=out, context=context, mode=mode, extract=extract, background=background
    )


def map_ops(ops: MemoryOps, id_map: Mapping[str, str]) -> MemoryOps:
    """Replace the short ids of updates and deletes by real ids; drop ids not in ``id_map``."""
    updates = tuple(
        MemoryUpdate(id=id_map[u.id], text=u.text, category=u.category)
        for u in ops.update
        if u.id in id_map
    )
    deletes = tuple(id_map[d] for d in ops.delete if d in id_map)
    return MemoryOps(add=tuple(ops.add), update=updates, delete=deletes)


def parse_choice(text: str | None, id_map: Mapping[str, str]) -> ParsedAnswer:
    """Parse an answer: clean text plus the block's operations with real ids. Never raises."""
    parsed = parse_answer(text or "", allowed_ids=tuple(id_map))
    return ParsedAnswer(
        text=parsed.text,
        ops=map_ops(parsed.ops, id_map),
        found_block=parsed.found_block,
        problems=parsed.problems,
    )


def clean_completion(completion: Any, id_map: Mapping[str, str]) -> ParsedAnswer | None:
    """Remove the block from every choice of a ChatCompletion, in place.

    Returns choice 0's parse (whose ops are to be stored), or None when there are no choices.
    Choices whose content is None (tool calls) are left exactly as they are.
    """
    first: ParsedAnswer | None = None
    for choice in getattr(completion, "choices", None) or ():
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            if first is None and getattr(choice, "index", 0) == 0:
                first = ParsedAnswer(text="", ops=MemoryOps(), found_block=False, problems=())
            continue
        parsed = parse_choice(content, id_map)
        message.content = parsed.text  # type: ignore[union-attr]
        if getattr(choice, "index", 0) == 0 and first is None:
            first = parsed
    return first


def store_ops(
    store: MemoryStore, user_id: str, ops: MemoryOps, source: str = "inline"
) -> AppliedOps | None:
    """Apply ``ops`` (real ids) for ``user_id`` as one batch: one batch embed, one write.

    Near-duplicate adds supersede what is stored (the store's dedup); updates and deletes of
    ids no longer live are dropped. Returns None when there was nothing to apply.
    """
    if ops.is_empty():
        return None
    return store.apply(
        user_id,
        adds=tuple(ops.add),
        updates=tuple(ops.update),
        deletes=tuple(ops.delete),
        source=source,
    )
