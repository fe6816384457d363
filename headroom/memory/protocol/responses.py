"""The Responses API side of the pipeline, as plain functions: inject, instruct, clean.

Nothing here knows the SDK: requests are plain values (``input`` is a string or a list of
items given as dicts or as objects with attributes), responses and stream events are read and
changed through their attributes (``output`` items of type ``message`` holding ``output_text``
parts).

Where things go in a request (docs/wrapper.md, "The Responses API"):

- the relevant memories: one input item (``{"role": settings.role, "content": frame}``) just
  before the last user item of ``input``, as the chat path places its message before the last
  user message. Everything before it (``instructions``, the earlier items, and with
  ``previous_response_id`` / ``conversation`` the provider's stored turns) stays byte for byte
  the same from call to call, so provider prompt caching keeps working. A string ``input``
  becomes ``[memories, {"role": "user", "content": input}]`` (what the string means).
- the instruction: appended to ``instructions`` (after the caller's own, separated by a blank
  line; alone when there are none). Its bytes never change, so the prefix stays stable; and
  ``instructions`` are not carried over by ``previous_response_id``, so the instruction never
  piles up in a stored conversation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .block import MEMORY_INSTRUCTION, ParsedAnswer, clean_text
from .injection import InjectedContext
from .pipeline import JSON_FORMATS, Mode, Prepared, Settings, find_memories, parse_choice

if TYPE_CHECKING:
    from ..store.store import MemoryStore

__all__ = [
    "INSTRUCTION_SEPARATOR",
    "PreparedInput",
    "clean_output_item",
    "clean_part",
    "clean_response",
    "input_items",
    "is_json_text_format",
    "item_text",
    "last_user_input_text",
    "prepare_input",
    "response_text",
    "restore_instructions",
    "with_instruction",
]

#: What separates the caller's ``instructions`` from the memory instruction.
INSTRUCTION_SEPARATOR = "\n\n"

#: Content part types that carry text in input items.
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _field(value: object, name: str) -> object:
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def input_items(value: object) -> list[Any] | None:
    """``input`` as a new list of items: a string is one user item; None for anything else."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return list(value)
    return None


def item_text(item: object) -> str:
    """The text of an input item: its string content, or its text parts joined by newlines."""
    content = _field(item, "content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            text = _field(part, "text")
            if _field(part, "type") in _TEXT_PARTS and isinstance(text, str) and text:
                texts.append(text)
        return "\n".join(texts)
    return ""


def _is_user_item(item: object) -> bool:
    return _field(item, "role") == "user" and _field(item, "type") in (None, "message")


def last_user_index(items: Sequence[object]) -> int | None:
    """Index of the last user message item, or None."""
    for i in range(len(items) - 1, -1, -1):
        if _is_user_item(items[i]):
            return i
    return None


def last_user_input_text(value: object) -> str:
    """Text of the last user item of an ``input`` ("" when there is none)."""
    items = input_items(value) or []
    index = last_user_index(items)
    return "" if index is None else item_text(items[index]).strip()


def with_instruction(instructions: object) -> str:
    """``instructions`` with the memory instruction appended (alone when there are none)."""
    if isinstance(instructions, str) and instructions:
        return instructions + INSTRUCTION_SEPARATOR + MEMORY_INSTRUCTION
    return MEMORY_INSTRUCTION


def is_json_text_format(text: object) -> bool:
    """True when a ``text`` config asks for JSON output (``text.format`` json_schema/object)."""
    kind = _field(_field(text, "format"), "type")
    return kind in JSON_FORMATS


@dataclass(frozen=True)
class PreparedInput:
    """A Responses request after inject and instruct.

    ``input`` and ``instructions`` are what to send (the caller's own values when unchanged);
    ``prepared`` carries the injection, the mode and what to do with the answer
    (``prepared.messages`` is the new item list).
    """

    input: object
    instructions: object
    prepared: Prepared


def prepare_input(
    store: MemoryStore,
    settings: Settings,
    input: object,
    instructions: object,
    mode: Mode,
    *,
    json_mode: bool = False,
) -> PreparedInput:
    """Inject and instruct a Responses request according to ``mode`` (see the module doc).

    Only ``input`` is searched: with ``previous_response_id`` or ``conversation`` that is the
    new turn, which is what injection searches with anyway. In JSON mode nothing is
    instructed and the extraction is flagged for the background queue. The caller's values
    are never mutated. Raises whatever the store raises (the wrapper logs and falls back).
    """
    extract = mode in ("on", "write")
    background = extract and json_mode
    new_instructions = instructions
    if extract and not json_mode:
        new_instructions = with_instruction(instructions)
    new_input = input
    items = input_items(input)
    context: InjectedContext | None = None
    if mode in ("on", "read") and items is not None:
        index = last_user_index(items)
        if index is not None:
            context = find_memories(store, settings, item_text(items[index]).strip())
        if index is not None and context is not None and context.message is not None:
            items.insert(index, dict(context.message))
            new_input = items
        else:
            context = None
    prepared = Prepared(
        messages=items if items is not None else [],
        context=context,
        mode=mode,
        extract=extract,
        background=background,
    )
    return PreparedInput(input=new_input, instructions=new_instructions, prepared=prepared)


# --- the response side -------------------------------------------------------------------------


def _text_parts(item: object) -> list[Any]:
    """The ``output_text`` parts of an output item of type ``message`` (else none)."""
    if _field(item, "type") != "message":
        return []
    content = _field(item, "content")
    if not isinstance(content, Sequence) or isinstance(content, str):
        return []
    return [p for p in content if _field(p, "type") == "output_text"]


def response_text(response: object) -> str:
    """What ``response.output_text`` joins: every ``output_text`` part of every message item."""
    output = _field(response, "output")
    if not isinstance(output, Sequence):
        return ""
    texts = [_field(p, "text") for item in output for p in _text_parts(item)]
    return "".join(t for t in texts if isinstance(t, str))


def _set_text(part: object, text: str) -> None:
    if isinstance(part, dict):
        part["text"] = text
    else:
        part.text = text  # type: ignore[attr-defined]


def clean_part(part: object) -> None:
    """Remove memory elements from an ``output_text`` content part, in place."""
    if _field(part, "type") != "output_text":
        return
    text = _field(part, "text")
    if isinstance(text, str):
        cleaned = clean_text(text)
        if cleaned != text:
            _set_text(part, cleaned)


def clean_output_item(item: object) -> None:
    """Remove memory elements from every ``output_text`` part of a message item, in place."""
    for part in _text_parts(item):
        clean_part(part)


def restore_instructions(response: object, sent: object, original: object) -> None:
    """Give a response back the caller's ``instructions`` where it echoes the ones sent.

    The provider echoes the request's ``instructions`` in the response; when the memory
    instruction was appended, the caller gets their own value back (None when they gave none).
    """
    if sent is original or _field(response, "instructions") != sent:
        return
    if isinstance(response, dict):
        response["instructions"] = original
    else:
        response.instructions = original  # type: ignore[attr-defined]


def clean_response(response: object, id_map: Mapping[str, str]) -> ParsedAnswer:
    """Clean every output message of a Response in place; return the parse of its text.

    The operations come from the whole answer (``response_text`` before cleaning); each part
    is cleaned on its own, so ``response.output_text`` afterwards is the clean answer.
    """
    parsed = parse_choice(response_text(response), id_map)
    output = _field(response, "output")
    if isinstance(output, Sequence):
        for item in output:
            clean_output_item(item)
    return parsed
