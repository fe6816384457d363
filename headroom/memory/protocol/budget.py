"""The prompt budget: the whole prompt a wrapper sends fits ``max_prompt_tokens``.

A wrapper adds to the caller's prompt the memory instruction (when the answer is to carry a
memory block) and the relevant memories. With a :class:`PromptBudget`, what is sent is fitted
after both are added, counted with one :class:`~headroom.transforms.TokenCounter` (the same
one :func:`chat_prompt_tokens` / :func:`responses_prompt_tokens` check with):

1. Never dropped: the caller's system and developer messages (on the Responses API, the
   caller's ``instructions``) and the last turn (from the last user message on), as
   :class:`~headroom.transforms.RollingWindowTransform` keeps them; their cost is the floor.
2. Then the instruction, if floor + instruction fits. When it does not, it is left out and
   the turn's extraction goes to the background queue instead (as for JSON mode).
3. Then the memories, best first, as many as fit the room left (and the wrapper's own memory
   budget, ``max_tokens``); none when none fits.
4. Then the older conversation: whole turns, newest first, as many as fit what is left
   (the rolling window's rules: a tool call is never split from its results).

So the prompt fits whenever the floor fits. When the floor alone exceeds the budget (the
caller's own system prompt and last message are too long) it is sent as it is, without
instruction, memories or older turns, and the window logs a warning: the memory layer never
drops what the caller wrote last. Counts cover ``messages`` (chat) and ``instructions`` +
``input`` (Responses), not tool schemas or, with ``previous_response_id``, the turns the
provider stored.

Pure: nothing here reads the store or calls a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from headroom.transforms import (
    RollingWindowTransform,
    TokenCounter,
    TokenCounterLike,
    WindowReport,
)
from headroom.transforms.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, resolve_counter

from ..errors import InvalidInputError
from .injection import InjectedContext, build_injection
from .pipeline import INSTRUCTION_MESSAGE, instruct, last_user_index
from .responses import input_items, with_instruction
from .responses import last_user_index as last_user_item

__all__ = [
    "Fitted",
    "PromptBudget",
    "chat_prompt_tokens",
    "fit_input",
    "fit_messages",
    "responses_prompt_messages",
    "responses_prompt_tokens",
]


@dataclass(frozen=True)
class PromptBudget:
    """``max_tokens`` for the whole prompt, counted with ``counter``."""

    max_tokens: int
    counter: TokenCounter

    @classmethod
    def of(cls, max_tokens: object, token_counter: TokenCounterLike = None) -> PromptBudget:
        """Validate a ``max_prompt_tokens`` (an int >= 1) and a ``token_counter`` (None:
        tiktoken when available offline, else the estimate; a TokenCounter; a text -> int
        callable). Raises InvalidInputError / InvalidTypeError."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidInputError(f"max_prompt_tokens must be an int >= 1; got {max_tokens!r}")
        return cls(max_tokens, resolve_counter(token_counter))


@dataclass(frozen=True)
class Fitted:
    """What to send after fitting: ``messages`` (chat) or ``input`` and ``instructions``
    (Responses); the injection kept (None when no memory fit); whether the instruction is in;
    the prompt's ``tokens``; ``over_budget`` when even the floor does not fit."""

    context: InjectedContext | None
    instructed: bool
    tokens: int
    over_budget: bool
    messages: list[Any]
    input: object = None
    instructions: object = None


def _view(message: object) -> Mapping[str, Any]:
    """A message or input item as a mapping (SDK objects through ``model_dump``)."""
    if isinstance(message, Mapping):
        return message
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        value = dump(exclude_none=True)
        if isinstance(value, Mapping):
            return value
    raise InvalidInputError(f"cannot count a message of type {type(message).__name__}")


def chat_prompt_tokens(messages: Sequence[object], counter: TokenCounter) -> int:
    """Tokens of a chat-completions prompt: its messages, reply priming included."""
    return counter.count_messages([_view(m) for m in messages])


def _item_message(item: object) -> dict[str, Any]:
    """An input item as the message it is counted as: a role-bearing item as itself, any other
    item (a function call, its output, a reasoning item...) as an assistant message holding its
    JSON form."""
    view = _view(item)
    if isinstance(view.get("role"), str):
        return dict(view)
    return {"role": "assistant", "content": json.dumps(view, ensure_ascii=False, default=str)}


def responses_prompt_messages(instructions: object, input: object) -> list[dict[str, Any]]:
    """A Responses request's ``instructions`` and ``input`` as the messages they are counted as
    (the instructions as a leading system message)."""
    out: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    items = input_items(input) or []
    return out + [_item_message(item) for item in items]


def responses_prompt_tokens(instructions: object, input: object, counter: TokenCounter) -> int:
    """Tokens of a Responses prompt: ``instructions`` and ``input``, reply priming included."""
    return counter.count_messages(responses_prompt_messages(instructions, input))


def _shrink(
    context: InjectedContext | None, room: int, counter: TokenCounter
) -> InjectedContext | None:
    """``context``, or the best of its memories that fit ``room`` tokens, or None."""
    if context is None or context.message is None:
        return None
    if counter.count_message(context.message) <= room:
        return context
    role = str(context.message.get("role", "system"))
    content_room = room - MESSAGE_OVERHEAD - counter.count_text(role)
    if content_room <= 0:
        return None
    results = [(memory, score) for _, memory, score in context.shown]
    smaller = build_injection(
        results,
        min_score=-math.inf,
        max_tokens=content_room,
        role=role,
        count_tokens=counter.count_text,
    )
    return smaller if smaller.message is not None else None


def _shape_role(role: str) -> str:
    """The role an input item takes in the window: system, developer and user items as
    themselves, every other item as part of the assistant's side of its turn."""
    return role if role in ("system", "developer", "user") else "assistant"


@dataclass(frozen=True)
class _Plan:
    instructed: bool
    context: InjectedContext | None
    window_limit: int
    over_budget: bool


def _plan(
    budget: PromptBudget,
    floor: int,
    instruction_cost: int,
    instructed: bool,
    context: InjectedContext | None,
) -> _Plan:
    """Rules 2-4 of the module docstring, in numbers: what goes in, and what the caller's
    conversation may then cost. ``floor`` includes the reply priming (once per prompt)."""
    limit = budget.max_tokens
    over_budget = floor > limit
    floor = max(floor, REPLY_PRIMING)  # the priming is due as soon as anything is sent
    keep_instruction = instructed and floor + instruction_cost <= limit
    room = limit - floor - (instruction_cost if keep_instruction else 0)
    kept = _shrink(context, room, budget.counter) if room > 0 else None
    memory_cost = budget.counter.count_message(kept.message) if kept and kept.message else 0
    window = limit - (instruction_cost if keep_instruction else 0) - memory_cost
    return _Plan(keep_instruction, kept, max(window, 1), over_budget)


def _optimistic(
    budget: PromptBudget, instruction_cost: int, instructed: bool, context: InjectedContext | None
) -> _Plan:
    """The plan that adds the instruction and every memory of ``context``; its window limit
    may be below 1 (they alone exceed the budget)."""
    memory = context.message if context is not None else None
    memory_cost = budget.counter.count_message(memory) if memory is not None else 0
    limit = budget.max_tokens - (instruction_cost if instructed else 0) - memory_cost
    return _Plan(instructed, context if memory is not None else None, limit, False)


def _window(
    messages: Sequence[Mapping[str, Any]], limit: int, counter: TokenCounter, *, warn: bool
) -> WindowReport:
    """The report of the rolling window of ``messages`` at ``limit`` (at least 1) tokens."""
    transform = RollingWindowTransform(max_tokens=max(limit, 1), token_counter=counter)
    return transform.apply_with_report(messages, warn=warn)[1]


def fit_messages(
    messages: Sequence[object],
    *,
    instructed: bool,
    context: InjectedContext | None,
    budget: PromptBudget,
) -> Fitted:
    """Fit a chat request: the caller's ``messages``, plus the instruction when ``instructed``
    and the memories of ``context``, within ``budget`` (module docstring). The caller's list
    and messages are never mutated; kept messages are the caller's own objects."""
    view = [_view(m) for m in messages]
    counter = budget.counter
    instruction_cost = counter.count_message(INSTRUCTION_MESSAGE)
    # First try with everything added: one pass of the window when that fits (the usual case).
    plan = _optimistic(budget, instruction_cost, instructed, context)
    report = _window(view, plan.window_limit, counter, warn=False)
    if report.over_budget or plan.window_limit < 1 or not view:
        # Everything droppable was dropped: what is left is the floor. Plan from it.
        plan = _plan(budget, report.tokens_after, instruction_cost, instructed, context)
        report = _window(view, plan.window_limit, counter, warn=True)
    out = [messages[i] for i in report.kept]
    tokens = report.tokens_after  # counts add up: the added messages' costs go on top
    if plan.instructed:
        out = instruct(out)
        tokens += instruction_cost
    context = plan.context
    index = last_user_index(out)
    if context is None or context.message is None or index is None:
        context = None
    else:
        out.insert(index, context.message)
        tokens += counter.count_message(context.message)
    if not report.kept:
        tokens = chat_prompt_tokens(out, counter)  # no reply priming in tokens_after
    return Fitted(
        context=context,
        instructed=plan.instructed,
        tokens=tokens,
        over_budget=plan.over_budget,
        messages=out,
    )


def fit_input(
    input: object,
    instructions: object,
    *,
    instructed: bool,
    context: InjectedContext | None,
    budget: PromptBudget,
) -> Fitted:
    """Fit a Responses request: the caller's ``input`` and ``instructions``, plus the
    instruction (appended to ``instructions``) when ``instructed`` and the memories of
    ``context`` (an item before the last user item), within ``budget``.

    Input items are windowed as chat messages are: items with a role are messages (system and
    developer ones pinned), any other item (a function call, its output) belongs to the turn
    it is in. ``input`` comes back as it was when nothing is dropped or added to it."""
    counter = budget.counter
    items = input_items(input)
    if items is None:  # not a string or a list: nothing to fit around
        items = []
    costed = [_item_message(item) for item in items]
    shapes = [{"role": _shape_role(m["role"]), "cost": counter.count_message(m)} for m in costed]
    by_cost = TokenCounter.from_message_fn(lambda m: int(m["cost"]), name=counter.name)
    base = responses_prompt_messages(instructions, None)
    base_cost = counter.count_message(base[0]) if base else 0
    with_instr = {"role": "system", "content": with_instruction(instructions)}
    instruction_cost = counter.count_message(with_instr) - base_cost
    # As fit_messages: everything added first, the floor only when that does not fit. The
    # caller's instructions are part of the floor, outside the window.
    plan = _optimistic(budget, instruction_cost, instructed, context)
    report = _window(shapes, plan.window_limit - base_cost, by_cost, warn=False)
    if report.over_budget or plan.window_limit - base_cost < 1 or not report.kept:
        floor = base_cost + (report.tokens_after if report.kept else 0)
        plan = _plan(budget, floor, instruction_cost, instructed, context)
        report = _window(shapes, plan.window_limit - base_cost, by_cost, warn=True)
    kept = [items[i] for i in report.kept]
    context = plan.context
    index = last_user_item(kept)
    if context is None or context.message is None or index is None:
        context = None
    else:
        kept.insert(index, dict(context.message))
    new_input = kept if context is not None or len(kept) != len(items) else input
    new_instructions = with_instruction(instructions) if plan.instructed else instructions
    return Fitted(
        context=context,
        instructed=plan.instructed,
        tokens=responses_prompt_tokens(new_instructions, new_input, counter),
        over_budget=plan.over_budget,
        messages=kept,
        input=new_input,
        instructions=new_instructions,
    )
