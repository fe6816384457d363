"""The structure of a chat-completions message list: validation, atoms and turns.

An *atom* is a run of messages that must be kept or dropped together:

- an assistant message with ``tool_calls`` and the ``tool`` messages right after it that answer
  those calls (matched by ``tool_call_id``); or an assistant message with a legacy
  ``function_call`` and the ``function`` message right after it;
- any other single message.

A *turn* starts at each ``user`` message and runs to the next one; the atoms before the first
user message form a preamble turn. System and developer messages are *pinned*: they belong to no
turn and stay where they are.

Validation (:func:`parse_conversation`) raises a typed error naming the index of the first bad
message:

- :class:`~headroom.memory.errors.InvalidTypeError`: the list is not a sequence, or a message is
  not a mapping;
- :class:`~headroom.memory.errors.InvalidInputError`: a message has no ``role`` or an unknown one;
  a ``tool`` message does not answer a still-open call of the assistant message before it (an
  orphan, a duplicate answer, or one separated from its call by another message); a ``function``
  message that does not follow a ``function_call`` (or names another function); a tool call
  without a string id, or two calls with the same id in one message.

Tolerated and passed through as they are: an assistant tool call whose result is missing (the
group is simply shorter; the API will say so if it minds), consecutive user messages, an
assistant message before the first user message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from headroom.memory.errors import InvalidInputError, InvalidTypeError

__all__ = ["ROLES", "Atom", "Conversation", "Turn", "parse_conversation"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PINNED_ROLES = frozenset({"system", "developer"})

AtomKind = Literal["pinned", "user", "assistant", "tool_group"]


@dataclass(frozen=True)
class Atom:
    """Messages ``start <= i < stop`` of the input, kept or dropped as one."""

    start: int
    stop: int
    kind: AtomKind


@dataclass(frozen=True)
class Turn:
    """The non-pinned atoms of one turn, oldest first; ``atoms[0]`` is the user message unless
    this is the preamble."""

    atoms: tuple[Atom, ...]

    @property
    def is_preamble(self) -> bool:
        return self.atoms[0].kind != "user"


@dataclass(frozen=True)
class Conversation:
    """A validated message list split into pinned atoms and turns (see the module docstring)."""

    pinned: tuple[Atom, ...]
    turns: tuple[Turn, ...]


def _role(message: object, index: int) -> str:
    if not isinstance(message, Mapping):
        raise InvalidTypeError(
            f"messages[{index}] must be a mapping (a dict), not {type(message).__name__}; "
            "convert SDK objects with .model_dump(exclude_none=True)"
        )
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidInputError(f"messages[{index}] has no string 'role'")
    if role not in ROLES:
        raise InvalidInputError(
            f"messages[{index}] has unknown role {role!r}; expected one of {sorted(ROLES)}"
        )
    return role


def _tool_call_ids(message: Mapping[str, Any], index: int) -> list[str] | None:
    """The ids of the message's tool calls, or None when it makes no tool call."""
    calls = message.get("tool_calls")
    if calls is None or (isinstance(calls, (list, tuple)) and not calls):
        return None
    if not isinstance(calls, (list, tuple)):
        raise InvalidInputError(f"messages[{index}].tool_calls must be a list")
    ids: list[str] = []
    for position, call in enumerate(calls):
        call_id = call.get("id") if isinstance(call, Mapping) else None
        if not isinstance(call_id, str) or not call_id:
            raise InvalidInputError(f"messages[{index}].tool_calls[{position}] has no string 'id'")
        if call_id in ids:
            raise InvalidInputError(f"messages[{index}].tool_calls has the id {call_id!r} twice")
        ids.append(call_id)
    return ids


def _tool_group_end(messages: Sequence[Any], index: int, ids: list[str]) -> int:
    """Index after the tool messages that answer the assistant message at ``index``."""
    open_ids = set(ids)
    end = index + 1
    while end < len(messages) and _role(messages[end], end) == "tool":
        call_id = messages[end].get("tool_call_id")
        if call_id not in open_ids:
            raise InvalidInputError(
                f"messages[{end}] is a tool result for tool_call_id {call_id!r}, which is not an "
                f"unanswered call of the assistant message at messages[{index}]"
            )
        open_ids.discard(call_id)
        end += 1
    return end


def _function_group_end(messages: Sequence[Any], index: int) -> int:
    end = index + 1
    if end < len(messages) and _role(messages[end], end) == "function":
        called = messages[index]["function_call"]
        called_name = called.get("name") if isinstance(called, Mapping) else None
        name = messages[end].get("name")
        if isinstance(called_name, str) and isinstance(name, str) and name != called_name:
            raise InvalidInputError(
                f"messages[{end}] is the result of function {name!r}, but messages[{index}] "
                f"called {called_name!r}"
            )
        end += 1
    return end


def _atoms(messages: Sequence[Any]) -> list[Atom]:
    atoms: list[Atom] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        role = _role(message, index)
        if role in PINNED_ROLES:
            atoms.append(Atom(index, index + 1, "pinned"))
            index += 1
        elif role == "user":
            atoms.append(Atom(index, index + 1, "user"))
            index += 1
        elif role == "assistant":
            ids = _tool_call_ids(message, index)
            if ids is not None:
                end = _tool_group_end(messages, index, ids)
            elif message.get("function_call") is not None:
                end = _function_group_end(messages, index)
            else:
                end = index + 1
            atoms.append(Atom(index, end, "tool_group" if end > index + 1 or ids else "assistant"))
            index = end
        else:  # a tool or function result with no call right before it
            raise InvalidInputError(
                f"messages[{index}] is a {role!r} result that does not follow the assistant "
                f"message that called it (orphan {role} message)"
            )
    return atoms


def parse_conversation(messages: object) -> Conversation:
    """Validate ``messages`` and split it into atoms and turns; see the module docstring.

    Never mutates or copies the messages. Raises InvalidTypeError / InvalidInputError as listed
    above.
    """
    if isinstance(messages, (str, bytes, bytearray, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidTypeError(
            f"messages must be a list of message dicts, not {type(messages).__name__}"
        )
    pinned: list[Atom] = []
    turns: list[list[Atom]] = []
    for atom in _atoms(messages):
        if atom.kind == "pinned":
            pinned.append(atom)
        elif atom.kind == "user" or not turns:
            turns.append([atom])
        else:
            turns[-1].append(atom)
    return Conversation(tuple(pinned), tuple(Turn(tuple(t)) for t in turns))
