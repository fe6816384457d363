"""Property tests of the prompt budget (``protocol/budget.py``) over generated conversations,
memories and budgets: what would be sent fits whenever the caller's must-keep messages do,
the last user message and the system prompt are always there, nothing is invented, the
priorities hold (instruction before memories before older turns), and a budget that is not
binding changes nothing."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_transforms_properties import conversations, must_keep, text

from headroom.memory.protocol.block import MEMORY_INSTRUCTION
from headroom.memory.protocol.budget import (
    PromptBudget,
    chat_prompt_tokens,
    fit_input,
    fit_messages,
    responses_prompt_tokens,
)
from headroom.memory.protocol.injection import InjectedContext, build_injection
from headroom.memory.protocol.pipeline import INSTRUCTION_MESSAGE, instruct, last_user_index
from headroom.memory.protocol.responses import with_instruction
from headroom.memory.types import Memory
from headroom.transforms import TokenCounter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTERS = [TokenCounter.estimate(), TokenCounter.from_text_fn(len, name="chars")]
WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)


@st.composite
def contexts(draw: st.DrawFn) -> InjectedContext | None:
    texts = draw(st.lists(text.filter(str.strip), max_size=8))
    memories = [
        (Memory(f"id{i}", t, "fact", WHEN, WHEN), 1.0 - i / 10) for i, t in enumerate(texts)
    ]
    context = build_injection(memories, max_tokens=draw(st.integers(0, 400)))
    return context if context.message is not None else None


def _unbudgeted(
    messages: list[Any], instructed: bool, context: InjectedContext | None
) -> list[Any]:
    """What the wrapper sends without a budget (pipeline.prepare's placement)."""
    out = instruct(messages) if instructed else list(messages)
    index = last_user_index(out)
    if context is not None and context.message is not None and index is not None:
        out.insert(index, context.message)
    return out


@SETTINGS
@given(
    messages=conversations(),
    context=contexts(),
    instructed=st.booleans(),
    budget=st.integers(1, 1500),
    counter=st.sampled_from(COUNTERS),
)
def test_chat_prompt_fits_and_keeps_what_it_must(
    messages: list[dict[str, Any]],
    context: InjectedContext | None,
    instructed: bool,
    budget: int,
    counter: TokenCounter,
) -> None:
    before = copy.deepcopy(messages)
    fitted = fit_messages(
        messages, instructed=instructed, context=context, budget=PromptBudget(budget, counter)
    )
    out = fitted.messages
    assert messages == before  # the caller's list is untouched
    keep = sorted(must_keep(messages, 1))
    floor = counter.count_messages([messages[i] for i in keep])  # 0 for no messages
    instruction = counter.count_message(INSTRUCTION_MESSAGE)
    # what is sent: the caller's messages (a subsequence, the same objects), plus the
    # instruction when it is in and the memories when they are in
    added = [m for m in out if not any(m is c for c in messages)]
    expected_added = int(fitted.instructed) + int(fitted.context is not None)
    assert len(added) == expected_added
    assert fitted.instructed == any(m == INSTRUCTION_MESSAGE for m in added)
    own = [m for m in out if any(m is c for c in messages)]
    positions = [next(i for i, c in enumerate(messages) if c is m) for m in own]
    assert positions == sorted(positions)
    assert set(keep) <= set(positions)  # system prompt, last turn: always sent
    assert fitted.tokens == chat_prompt_tokens(out, counter)
    if floor <= budget:
        assert fitted.tokens <= budget and not fitted.over_budget
    else:
        assert fitted.over_budget and positions == keep and added == []
    # priorities: the instruction goes in whenever it fits beside the floor
    assert fitted.instructed == (instructed and max(floor, 3) + instruction <= budget)
    if fitted.context is not None:
        assert context is not None
        offered = {m.id for _, m, _ in context.shown}
        assert {m.id for _, m, _ in fitted.context.shown} <= offered
    # memories come before older turns: they are cut only when all of them would not fit
    # beside the floor and the instruction, whatever older turns were dropped
    if context is not None and last_user_index(messages) is not None and floor <= budget:
        kept = len(fitted.context.shown) if fitted.context is not None else 0
        if kept < len(context.shown):
            room = budget - max(floor, 3) - (instruction if fitted.instructed else 0)
            assert context.message is not None
            assert counter.count_message(context.message) > room
    # a budget that is not binding changes nothing
    unbudgeted = _unbudgeted(messages, instructed, context)
    if chat_prompt_tokens(unbudgeted, counter) <= budget:
        assert out == unbudgeted and fitted.context is (
            context if last_user_index(messages) is not None else None
        )


@st.composite
def responses_inputs(draw: st.DrawFn) -> tuple[Any, Any]:
    """(instructions, input): chat-shaped items plus function call items, or a string."""
    instructions = draw(st.one_of(st.none(), text))
    if draw(st.integers(0, 4)) == 0:
        return instructions, draw(text)
    items: list[Any] = []
    for i in range(draw(st.integers(1, 6))):
        items.append({"role": "user", "content": [{"type": "input_text", "text": draw(text)}]})
        for _ in range(draw(st.integers(0, 2))):
            if draw(st.booleans()):
                items.append({"role": "assistant", "content": draw(text)})
            else:
                call = f"call_{i}_{len(items)}"
                items.append(
                    {"type": "function_call", "call_id": call, "name": "f", "arguments": draw(text)}
                )
                items.append(
                    {"type": "function_call_output", "call_id": call, "output": draw(text)}
                )
    return instructions, items


@SETTINGS
@given(
    request=responses_inputs(),
    context=contexts(),
    instructed=st.booleans(),
    budget=st.integers(1, 1500),
    counter=st.sampled_from(COUNTERS),
)
def test_responses_prompt_fits_and_keeps_the_last_turn(
    request: tuple[Any, Any],
    context: InjectedContext | None,
    instructed: bool,
    budget: int,
    counter: TokenCounter,
) -> None:
    instructions, source = request
    before = copy.deepcopy(source)
    fitted = fit_input(
        source,
        instructions,
        instructed=instructed,
        context=context,
        budget=PromptBudget(budget, counter),
    )
    assert source == before
    items = [{"role": "user", "content": source}] if isinstance(source, str) else source
    last_user = max(i for i, item in enumerate(items) if item.get("role") == "user")
    last_turn = items[last_user:]
    sent = [{"role": "user", "content": source}] if isinstance(fitted.input, str) else fitted.input
    assert isinstance(sent, list) and sent[-len(last_turn) :] == last_turn
    floor = max(responses_prompt_tokens(instructions, last_turn, counter), 3)
    assert fitted.tokens == responses_prompt_tokens(fitted.instructions, fitted.input, counter)
    if floor <= budget:
        assert fitted.tokens <= budget
    else:
        assert fitted.over_budget and sent == last_turn and fitted.instructions == instructions
    assert (fitted.instructions == with_instruction(instructions)) == fitted.instructed
    own = counter.count_message({"role": "system", "content": instructions}) if instructions else 0
    appended = counter.count_message({"role": "system", "content": with_instruction(instructions)})
    assert fitted.instructed == (instructed and floor + appended - own <= budget)
    assert MEMORY_INSTRUCTION in str(fitted.instructions) or not fitted.instructed
