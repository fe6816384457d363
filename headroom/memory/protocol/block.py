"""The ``<memory>`` block: the instruction, the grammar, the renderer and the parser.

The model ends each answer with one block that says what to remember::

    <memory>{"add": [{"text": "User prefers Python", "category": "preference"}],
             "update": [{"id": "m1", "text": "User lives in Berlin"}], "delete": ["m2"]}</memory>

This module is pure: it knows nothing of files, stores or HTTP. The format is specified in
``docs/memory-block.md``; the contracts that bind the rest of the package are:

* :func:`parse_answer` never raises, whatever it is given. Its ``text`` never contains any part
  of a memory element (nor the string ``<memory`` in any letter case), whether the block is
  well formed, broken, repeated, nested or cut off by ``max_tokens``.
* :func:`clean_text` equals ``parse_answer(text).text``; the streaming filter
  (:mod:`headroom.memory.protocol.stream_filter`) produces exactly the same text for any chunking.
* ``parse_answer(answer + render_block(ops)).ops == validate_ops(ops, ...)[0]`` for any answer
  free of memory tags: rendering and parsing round-trip every op that survives validation.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, cast

from ..errors import InvalidInputError, InvalidTypeError
from ..types import CATEGORIES, MAX_TEXT_BYTES, Category, MemoryUpdate, NewMemory

__all__ = [
    "MAX_BLOCK_CHARS",
    "MEMORY_INSTRUCTION",
    "WHITESPACE",
    "MemoryOps",
    "MemoryUpdate",
    "NewMemory",
    "ParsedAnswer",
    "clean_text",
    "closes_fence",
    "ends_with_fragment",
    "fence_opener_start",
    "parse_answer",
    "render_block",
    "strip_debris",
    "validate_ops",
]

# --- the ops -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryOps:
    """What one answer asks to change: memories to add, update and delete (by id).

    Lists are accepted and stored as tuples. Raises InvalidTypeError for an element of the
    wrong type.
    """

    add: tuple[NewMemory, ...] = ()
    update: tuple[MemoryUpdate, ...] = ()
    delete: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (("add", NewMemory), ("update", MemoryUpdate), ("delete", str)):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise InvalidTypeError(f"MemoryOps.{name} must be a sequence of {kind.__name__}")
            items = tuple(value)
            for item in items:
                if not isinstance(item, kind):
                    raise InvalidTypeError(
                        f"MemoryOps.{name} holds a {type(item).__name__}; expected {kind.__name__}"
                    )
            object.__setattr__(self, name, items)

    def is_empty(self) -> bool:
        """True when there is nothing to add, update or delete."""
        return not (self.add or self.update or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.update) + len(self.delete)


# --- the instruction -----------------------------------------------------------------------

#: The static system instruction. Byte-identical on every call, so that the provider's prompt
#: cache keeps the prefix of the conversation.
MEMORY_INSTRUCTION = (
    "Memory: end every answer with exactly one memory block, after all other text, e.g.\n"
    '<memory>{"add": [{"text": "User prefers Python for backend work", '
    '"category": "preference"}], "update": [{"id": "m1", "text": "User lives in Berlin"}], '
    '"delete": ["m2"]}</memory>\n'
    "- Remember only durable things about the user: preferences (likes, dislikes, preferred "
    "approaches), facts (identity, role, constraints), context (current goals, ongoing tasks). "
    "Not greetings or small talk, nor anything you said yourself.\n"
    '- One short sentence per memory, in the third person ("User prefers ...").\n'
    "- If the user contradicts or changes a memory shown to you, update that memory by its id "
    "instead of adding a new one; delete one only when it is no longer true. Use only ids "
    "shown to you.\n"
    "- Nothing worth remembering: <memory>{}</memory>\n"
    "- Never write the memory tag anywhere else. The user never sees the block."
)

# --- rendering -----------------------------------------------------------------------------


def render_block(ops: MemoryOps) -> str:
    """The block for ``ops``: ``<memory>{...}</memory>`` with compact JSON inside.

    Empty sections are left out (``<memory>{}</memory>`` means nothing to remember). Every
    ``<`` and ``>`` inside strings is written as a JSON escape, so no text can end the block
    early. Raises InvalidTypeError if ``ops`` is not a MemoryOps.
    """
    if not isinstance(ops, MemoryOps):
        raise InvalidTypeError(f"render_block takes MemoryOps; got {type(ops).__name__}")
    body: dict[str, Any] = {}
    if ops.add:
        body["add"] = [{"text": m.text, "category": m.category} for m in ops.add]
    if ops.update:
        updates: list[dict[str, str]] = []
        for u in ops.update:
            item = {"id": u.id, "text": u.text}
            if u.category is not None:
                item["category"] = u.category
            updates.append(item)
        body["update"] = updates
    if ops.delete:
        body["delete"] = list(ops.delete)
    encoded = json.dumps(body, ensure_ascii=False)
    encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e")
    return f"<memory>{encoded}</memory>"


# --- the tag grammar -----------------------------------------------------------------------

#: White space that may surround a tag (ASCII only, the same set everywhere in this package).
WHITESPACE = " \t\n\r\f\v"

#: Longest element body that is decoded; anything longer is dropped as a problem.
MAX_BLOCK_CHARS = 64 * 1024

_FLAGS = re.IGNORECASE | re.DOTALL | re.ASCII
# An element starts at every "<memory" (any case). It is self-closing ("<memory/>"), or runs
# to the first "</memory>" after its start, or, cut off, to the end of the text. A "</memory>"
# outside an element is a stray closing tag. Both kinds of token are removed from the text.
_TOKEN = re.compile(
    r"(?P<element><memory(?:\s*/>|(?P<body>.*?)(?:(?P<close></memory\s*>)|\Z)))"
    r"|(?P<stray></memory\s*>)",
    _FLAGS,
)
_OPEN_REST = re.compile(r"[^>{]*>", _FLAGS)  # the rest of an opening tag: "<memory ...>"
_FENCE_OPEN = re.compile(r"```[A-Za-z0-9_-]*", _FLAGS)


# What a tag leaves behind when it is cut short: "<", "<m" ... "<memor", "</" ... "</memory".
_FRAGMENT = re.compile(
    r"<(?:/(?:m(?:e(?:m(?:o(?:r(?:y)?)?)?)?)?)?|m(?:e(?:m(?:o(?:r)?)?)?)?)?", _FLAGS
)


def strip_debris(text: str) -> str:
    """``text`` without its trailing run of white space and tag fragments (``<``, ``<mem``,
    ``</memory`` ...), the part that removing a token right after it must take along: else
    joining the text on both sides of a removed element could spell a tag again."""
    end = len(text.rstrip(WHITESPACE))
    while True:
        at = text.rfind("<", 0, end)
        if at < 0 or _FRAGMENT.fullmatch(text, at, end) is None:
            return text[:end]
        end = at
        while end > 0 and text[end - 1] in WHITESPACE:
            end -= 1


def ends_with_fragment(text: str) -> bool:
    """Whether ``text`` ends with a tag cut short (``<``, ``<mem``, ``</memo`` ...): at the
    end of an answer that is what ``max_tokens`` left of a block, and it is removed."""
    at = text.rfind("<")
    return at >= 0 and _FRAGMENT.fullmatch(text, at) is not None


_CLOSING_FENCE = re.compile(r"\s*```\s*", _FLAGS)
_INFO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.-")


def fence_opener_start(text: str, *, partial: bool = False, line_start_at_0: bool = True) -> int:
    """Where a Markdown fence opener that ends ``text`` starts, else -1.

    An opener is three backticks and an optional info string (``json``) at the start of a
    line, after at most three spaces. With ``partial``, one or two backticks at the very end
    count too (they may still grow into an opener). ``line_start_at_0`` says whether the start
    of ``text`` is the start of a line.
    """
    info = len(text)
    while info > 0 and text[info - 1] in _INFO_CHARS:
        info -= 1
    ticks = info
    while ticks > 0 and text[ticks - 1] == "`":
        ticks -= 1
    count = info - ticks
    if not (count == 3 or (partial and count in (1, 2) and info == len(text))):
        return -1
    line = ticks
    while line > 0 and text[line - 1] == " " and ticks - line < 3:
        line -= 1
    if line == 0:
        return ticks if line_start_at_0 else -1
    return ticks if text[line - 1] == "\n" else -1


def closes_fence(text: str, pos: int = 0) -> bool:
    """Whether ``text[pos:]`` is only a closing fence (three backticks) and white space."""
    return _CLOSING_FENCE.fullmatch(text, pos) is not None


def _tokens(text: str) -> list[re.Match[str]]:
    return list(_TOKEN.finditer(text))


def _visible(text: str, tokens: list[re.Match[str]]) -> str:
    """The text with every token removed, together with the white space and tag fragments
    right before each token (:func:`strip_debris`), the white space after the last token when
    only white space follows it, and white space after a token when no visible text precedes
    it. A Markdown code fence around the last block (an opener line right before it, only a
    closing fence after it) is removed with it."""
    out: list[str] = []
    emitted = False
    pos = 0
    for i, token in enumerate(tokens):
        segment = strip_debris(text[pos : token.start()])
        if i > 0 and not emitted:
            segment = segment.lstrip(WHITESPACE)
        if (
            i == len(tokens) - 1
            and token.group("element") is not None
            and closes_fence(text, token.end())
        ):  # a code fence around the final block goes with it
            opener = fence_opener_start(segment)
            if opener >= 0:
                out.append(strip_debris(segment[:opener]))
                return "".join(out)
        if segment:
            out.append(segment)
            emitted = True
        pos = token.end()
    tail = text[pos:]
    if ends_with_fragment(tail):
        tail = strip_debris(tail)
    if tokens:
        if not tail.strip(WHITESPACE):
            tail = ""
        elif not emitted:
            tail = tail.lstrip(WHITESPACE)
    out.append(tail)
    return "".join(out)


def _safe_prefix(text: str) -> str:
    """Last-resort visible text: everything before the first tag-like fragment."""
    lowered = text.lower()
    cut = len(text)
    for needle in ("<memory", "</memory"):
        at = lowered.find(needle)
        if at >= 0:
            cut = min(cut, at)
    return text[:cut]


def clean_text(text: str) -> str:
    """The visible text of an answer: every memory element and stray closing tag removed.

    Equals ``parse_answer(text).text`` without decoding the block. Never raises; a non-string
    gives "".
    """
    if not isinstance(text, str):
        return ""
    try:
        return _visible(text, _tokens(text))
    except Exception:  # pragma: no cover - defensive: regex engines do not fail on str
        return _safe_prefix(text)


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer split into what the user sees and what the model asked to remember.

    ``found_block`` is True when the answer ended its memory elements with a complete block
    (closed, or self-closing ``<memory/>``), even an empty or an unusable one; a block cut off
    by ``max_tokens``, or no block at all, gives False. ``problems`` are human-readable reasons
    for anything dropped, for logging.
    """

    text: str
    ops: MemoryOps
    found_block: bool
    problems: tuple[str, ...] = ()


_EMPTY = MemoryOps()


def parse_answer(
    text: str,
    *,
    allowed_ids: Collection[str] = (),
    max_ops: int = 20,
    max_text_chars: int = 500,
) -> ParsedAnswer:
    """Split a model answer into its visible text and its validated memory ops.

    The block is the last ``<memory>`` element; every other memory element is removed from
    the text too and contributes no ops. Updates and deletes survive only for ids in
    ``allowed_ids`` (a mapping works: its keys are the ids). See :func:`validate_ops` for the
    rules of meaning. Never raises: anything wrong is reported in ``problems``.
    """
    if not isinstance(text, str):
        return ParsedAnswer("", _EMPTY, False, (f"answer is a {type(text).__name__}, not text",))
    try:
        tokens = _tokens(text)
        visible = _visible(text, tokens)
    except Exception as exc:  # pragma: no cover - defensive
        return ParsedAnswer(_safe_prefix(text), _EMPTY, False, (f"scan failed: {exc!r}",))
    try:
        return _parse_block(visible, tokens, allowed_ids, max_ops, max_text_chars)
    except Exception as exc:  # never let a strange block reach the caller
        return ParsedAnswer(visible, _EMPTY, False, (f"block could not be read: {exc!r}",))


def _parse_block(
    visible: str,
    tokens: list[re.Match[str]],
    allowed_ids: Collection[str],
    max_ops: int,
    max_text_chars: int,
) -> ParsedAnswer:
    elements = [t for t in tokens if t.group("element") is not None]
    problems: list[str] = []
    if not elements:
        return ParsedAnswer(visible, _EMPTY, False, ())
    if len(elements) > 1:
        problems.append(f"{len(elements) - 1} earlier memory element(s) removed and ignored")
    block = elements[-1]
    body = block.group("body")
    if body is None:  # <memory/>
        return ParsedAnswer(visible, _EMPTY, True, tuple(problems))
    if block.group("close") is None:
        problems.append("memory block cut off (no closing tag): removed, nothing stored")
        return ParsedAnswer(visible, _EMPTY, False, tuple(problems))
    raw = _block_json(body, problems)
    if raw is None:
        return ParsedAnswer(visible, _EMPTY, True, tuple(problems))
    ops = _ops_from_json(raw, problems)
    valid, more = validate_ops(
        ops, allowed_ids=allowed_ids, max_ops=max_ops, max_text_chars=max_text_chars
    )
    problems.extend(more)
    return ParsedAnswer(visible, valid, True, tuple(problems))


def _unfence(text: str) -> str:
    """``text`` trimmed, without a Markdown code fence around it (string operations only:
    a regex with white space on both sides of a fence backtracks quadratically)."""
    text = text.strip(WHITESPACE)
    opened = _FENCE_OPEN.match(text)
    if opened:
        text = text[opened.end() :]
    if text.endswith("```"):
        text = text[:-3]
    return text.strip(WHITESPACE)


def _block_json(body: str, problems: list[str]) -> object | None:
    """Decode the JSON object of a block body; None (with a problem) when there is none.

    An empty body, or one holding only ``{}``, decodes to an empty object without problems.
    """
    opened = _OPEN_REST.match(body)
    inner = body[opened.end() :] if opened else body
    inner = _unfence(inner)
    if not inner:
        return {}
    if len(inner) > MAX_BLOCK_CHARS:
        problems.append(f"memory block is {len(inner)} chars; the limit is {MAX_BLOCK_CHARS}")
        return None
    start, end = inner.find("{"), inner.rfind("}")
    if start < 0 or end < start:
        problems.append("memory block holds no JSON object")
        return None
    candidate = inner[start : end + 1]
    try:
        return cast(object, json.loads(candidate))
    except (ValueError, RecursionError) as exc:
        strict_error = str(exc)
    value = _literal(candidate)
    if value is _INVALID:
        problems.append(f"memory block is not valid JSON: {strict_error}")
        return None
    return value


_INVALID = object()
_NAMES: dict[str, object] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}


def _literal(source: str) -> object:
    """Lenient decoding for what strict JSON rejects (single quotes, trailing commas,
    Python-style ``True``/``None``): Python's own parser builds the syntax tree and only
    literals are accepted from it. Returns ``_INVALID`` when that fails too."""
    try:
        tree = ast.parse(_ESCAPE.sub(_python_escape, source), mode="eval")
        return _from_node(tree.body)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return _INVALID


_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_PYTHON_ESCAPES = frozenset("\n\\'\"abfnrtv01234567xNuU")


def _python_escape(match: re.Match[str]) -> str:
    """Keep escapes Python knows; JSON's ``\\/`` is ``/``; any other backslash is a literal
    backslash (what Python does anyway, minus its warning about it)."""
    char = match.group(1)
    if char in _PYTHON_ESCAPES:
        return match.group(0)
    return "/" if char == "/" else "\\\\" + char


def _from_node(node: ast.AST) -> object:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
        return node.value
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_from_node(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[object, object] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                raise ValueError("** in a literal")
            out[_hashable(_from_node(key))] = _from_node(value)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _from_node(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    raise ValueError(f"not a literal: {type(node).__name__}")


def _hashable(key: object) -> object:
    if isinstance(key, (list, dict)):
        raise ValueError("unhashable key")
    return key


def _brief(value: object) -> str:
    """``repr(value)`` cut to 60 characters: problems are logged, model output can be huge."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- from decoded JSON to ops --------------------------------------------------------------

_TEXT_KEYS = ("text", "content", "memory")
_SECTIONS = ("add", "memories", "update", "delete")


def _ops_from_json(raw: object, problems: list[str]) -> MemoryOps:
    """Ops as the block states them (shape only; :func:`validate_ops` judges the meaning)."""
    if not isinstance(raw, dict):
        problems.append(f"memory block JSON is a {type(raw).__name__}, not an object")
        return _EMPTY
    sections: dict[str, list[object]] = {}
    for key, value in raw.items():
        name = key.strip().lower() if isinstance(key, str) else None
        if name not in _SECTIONS:
            problems.append(f"unknown key {_brief(key)} in memory block ignored")
            continue
        if value is None:
            continue
        items = [_fold_keys(i) for i in (value if isinstance(value, list) else [value])]
        sections.setdefault("add" if name == "memories" else name, []).extend(items)
    adds = [m for m in (_new_memory(i, problems) for i in sections.get("add", [])) if m]
    updates = [u for u in (_update(i, problems) for i in sections.get("update", [])) if u]
    deletes: list[str] = []
    for item in sections.get("delete", []):
        ident = item.get("id") if isinstance(item, dict) else item
        if isinstance(ident, str) and ident.strip():
            deletes.append(ident)
        else:
            problems.append(f"delete of {_brief(item)} dropped: not an id")
    return MemoryOps(tuple(adds), tuple(updates), tuple(deletes))


def _fold_keys(item: object) -> object:
    """An item object with its keys matched ignoring case and surrounding white space (the
    first spelling of a key wins); anything else as it is."""
    if not isinstance(item, dict):
        return item
    folded: dict[object, object] = {}
    for key, value in item.items():
        folded.setdefault(key.strip().lower() if isinstance(key, str) else key, value)
    return folded


def _item_text(item: object) -> object:
    if isinstance(item, dict):
        for key in _TEXT_KEYS:
            if key in item:
                return item[key]
        return None
    return item


def _usable(text: object) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _category(value: object, default: Category | None, problems: list[str]) -> Category | None:
    """A known category, or ``default`` for a missing or unknown one (reported)."""
    if value is None:
        return default
    if isinstance(value, str):
        name = value.strip().lower()
        if name.endswith("s") and name[:-1] in CATEGORIES:
            name = name[:-1]
        if name in CATEGORIES:
            return name
    problems.append(f"unknown category {_brief(value)} replaced by {_brief(default)}")
    return default


def _new_memory(item: object, problems: list[str]) -> NewMemory | None:
    text = _item_text(item)
    if not _usable(text) or not isinstance(text, str):
        problems.append(f"add of {_brief(item)} dropped: no text")
        return None
    raw_category = item.get("category") if isinstance(item, dict) else None
    category = _category(raw_category, "fact", problems) or "fact"
    try:
        return NewMemory(text, category)
    except InvalidInputError as exc:
        problems.append(f"add dropped: {exc}")
        return None


def _update(item: object, problems: list[str]) -> MemoryUpdate | None:
    if not isinstance(item, dict):
        problems.append(f"update of {_brief(item)} dropped: not an object")
        return None
    ident, text = item.get("id"), _item_text(item)
    if not isinstance(ident, str) or not ident.strip():
        problems.append(f"update of {_brief(item)} dropped: no id")
        return None
    if not _usable(text) or not isinstance(text, str):
        problems.append(f"update of {_brief(ident)} dropped: no text")
        return None
    category = _category(item.get("category"), None, problems)
    try:
        return MemoryUpdate(ident, text, category)
    except InvalidInputError as exc:
        problems.append(f"update dropped: {exc}")
        return None


# --- validation ----------------------------------------------------------------------------


def validate_ops(
    ops: MemoryOps,
    *,
    allowed_ids: Collection[str] = (),
    max_ops: int = 20,
    max_text_chars: int = 500,
) -> tuple[MemoryOps, tuple[str, ...]]:
    """The ops that may be applied, and the reasons for every op dropped.

    Rules (idempotent: validating the result again changes nothing):

    * texts are normalised (runs of white space become one space, ends trimmed); a text that
      is then empty, longer than ``max_text_chars`` characters, or holds control characters
      or unpaired surrogates is dropped;
    * update and delete ids are matched against ``allowed_ids`` exactly, then ignoring case
      and surrounding white space (the op is rewritten to the allowed spelling); others are
      dropped;
    * duplicates collapse, the first one wins: adds with the same text (ignoring case),
      updates of the same id, repeated deletes; a delete of an id that is also updated is
      dropped (the update wins) and so is an add whose text equals an update's text;
    * at most ``max_ops`` ops survive, counted in the order updates, deletes, adds.

    Raises InvalidTypeError / InvalidInputError for arguments of the wrong kind.
    """
    if not isinstance(ops, MemoryOps):
        raise InvalidTypeError(f"validate_ops takes MemoryOps; got {type(ops).__name__}")
    for name, limit in (("max_ops", max_ops), ("max_text_chars", max_text_chars)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInputError(f"{name} must be an int >= 0; got {limit!r}")
    problems: list[str] = []
    resolve = _id_resolver(allowed_ids)
    updates = _valid_updates(ops.update, resolve, max_text_chars, problems)
    deletes = _valid_deletes(ops.delete, resolve, updates, problems)
    adds = _valid_adds(ops.add, {u.text.casefold() for u in updates}, max_text_chars, problems)
    return _cap(adds, updates, deletes, max_ops, problems), tuple(problems)


def _valid_updates(
    items: Iterable[MemoryUpdate],
    resolve: Callable[[str], str | None],
    max_text_chars: int,
    problems: list[str],
) -> list[MemoryUpdate]:
    """Updates of allowed ids with valid texts, the first per id."""
    updates: dict[str, MemoryUpdate] = {}
    for u in items:
        ident = resolve(u.id)
        text = _normalise(u.text, max_text_chars, problems)
        if ident is None:
            problems.append(f"update of unknown id {_brief(u.id)} dropped")
        elif text is not None:
            if ident in updates:
                problems.append(f"second update of {_brief(ident)} dropped")
            else:
                updates[ident] = MemoryUpdate(ident, text, u.category)
    return list(updates.values())


def _valid_deletes(
    ids: Iterable[str],
    resolve: Callable[[str], str | None],
    updates: list[MemoryUpdate],
    problems: list[str],
) -> list[str]:
    """Deletes of allowed ids that the block does not also update, each once."""
    updated = {u.id for u in updates}
    deletes: dict[str, None] = {}
    for raw_id in ids:
        ident = resolve(raw_id)
        if ident is None:
            problems.append(f"delete of unknown id {_brief(raw_id)} dropped")
        elif ident in updated:
            problems.append(f"delete of {_brief(ident)} dropped: the same block updates it")
        elif ident not in deletes:
            deletes[ident] = None
    return list(deletes)


def _valid_adds(
    items: Iterable[NewMemory], seen: set[str], max_text_chars: int, problems: list[str]
) -> list[NewMemory]:
    """Adds with valid texts that repeat no earlier add or update (ignoring case)."""
    adds: list[NewMemory] = []
    for m in items:
        text = _normalise(m.text, max_text_chars, problems)
        if text is None:
            continue
        if text.casefold() in seen:
            problems.append(f"duplicate add {_brief(text)} dropped")
            continue
        seen.add(text.casefold())
        adds.append(NewMemory(text, m.category))
    return adds


def _cap(
    adds: list[NewMemory],
    updates: list[MemoryUpdate],
    deletes: list[str],
    max_ops: int,
    problems: list[str],
) -> MemoryOps:
    """At most ``max_ops`` ops, counted in the order updates, deletes, adds."""
    kept_updates = updates[:max_ops]
    kept_deletes = deletes[: max_ops - len(kept_updates)]
    kept_adds = adds[: max_ops - len(kept_updates) - len(kept_deletes)]
    dropped = len(updates) + len(deletes) + len(adds) - max_ops
    if dropped > 0:
        problems.append(f"{dropped} op(s) over the limit of {max_ops} dropped")
    return MemoryOps(tuple(kept_adds), tuple(kept_updates), tuple(kept_deletes))


def _id_resolver(allowed_ids: Collection[str]) -> Callable[[str], str | None]:
    if isinstance(allowed_ids, str):
        raise InvalidTypeError("allowed_ids must be a collection of ids, not one str")
    exact = {i for i in allowed_ids if isinstance(i, str)}
    folded = {i.strip().casefold(): i for i in sorted(exact, reverse=True)}

    def resolve(ident: str) -> str | None:
        if ident in exact:
            return ident
        return folded.get(ident.strip().casefold())

    return resolve


def _normalise(text: str, max_chars: int, problems: list[str]) -> str | None:
    norm = " ".join(text.split())
    if not norm:
        problems.append("memory with empty text dropped")
        return None
    if len(norm) > max_chars:
        problems.append(f"memory of {len(norm)} chars dropped (limit {max_chars})")
        return None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in norm):
        problems.append(f"memory {norm[:40]!r} dropped: control characters")
        return None
    if len(norm.encode("utf-8")) > MAX_TEXT_BYTES:
        problems.append(f"memory of {len(norm.encode('utf-8'))} bytes dropped")
        return None
    return norm
