"""Property tests of RollingWindowTransform over generated, realistic conversations.

A conversation: optional system/developer messages, sometimes an assistant greeting, then turns
of a user message (text or content parts with images) followed by assistant answers, tool
exchanges (1-3 calls answered in any order) or legacy function calls; now and then a system
message mid-way or two user messages in a row. For every such conversation and budget the
output must be a valid conversation, a subsequence of the input, within budget whenever the
messages that must stay fit, and the input must be untouched.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transforms_oracle import price_messages

from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.transforms import RollingWindowTransform, TokenCounter
from headroom.transforms.conversation import parse_conversation
from headroom.transforms.tokens import estimate_text_tokens

Message = dict[str, Any]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTERS = [TokenCounter.estimate(), TokenCounter.from_text_fn(len, name="chars")]

WORDS = ["memory", "python", "the", "user", "prefers", "tea", "Paris", "42", "é", "日本", "🙂"]
text = st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join)


@st.composite
def user_message(draw: st.DrawFn) -> Message:
    if draw(st.booleans()):
        return {"role": "user", "content": draw(text)}
    parts: list[dict[str, Any]] = [{"type": "text", "text": draw(text)}]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        detail = draw(st.sampled_from(["low", "high", "auto"]))
        parts.append(
            {"type": "image_url", "image_url": {"url": "https://e/x.png", "detail": detail}}
        )
    return {"role": "user", "content": parts, **({"name": "alice"} if draw(st.booleans()) else {})}


@st.composite
def tool_exchange(draw: st.DrawFn, ids: itertools.count[int]) -> list[Message]:
    call_ids = [f"call_{next(ids)}" for _ in range(draw(st.integers(1, 3)))]
    calls = [
        {"id": i, "type": "function", "function": {"name": "search", "arguments": draw(text)}}
        for i in call_ids
    ]
    content = draw(st.one_of(st.none(), text))
    results = [{"role": "tool", "tool_call_id": i, "content": draw(text)} for i in call_ids]
    results = draw(st.permutations(results))
    return [{"role": "assistant", "content": content, "tool_calls": calls}, *results]


@st.composite
def function_exchange(draw: st.DrawFn) -> list[Message]:
    call = {"name": "lookup", "arguments": draw(text)}
    return [
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "lookup", "content": draw(text)},
    ]


@st.composite
def conversations(draw: st.DrawFn, agent_loop: bool = False) -> list[Message]:
    """A conversation; with ``agent_loop`` its last turn is a user message followed by 2-6
    tool exchanges and answers (and maybe a final answer)."""
    ids = itertools.count()
    messages: list[Message] = []
    for _ in range(draw(st.integers(0, 2))):
        role = draw(st.sampled_from(["system", "developer"]))
        messages.append({"role": role, "content": draw(text)})
    if draw(st.integers(0, 9)) == 0:
        messages.append({"role": "assistant", "content": "Hi! How can I help?"})
    for _ in range(draw(st.integers(0, 7))):
        if draw(st.integers(0, 9)) == 0:
            messages.append({"role": "system", "content": draw(text)})
        messages.append(draw(user_message()))
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["answer", "answer", "tools", "tools", "function"]))
            if kind == "answer":
                messages.append({"role": "assistant", "content": draw(text)})
            elif kind == "tools":
                messages.extend(draw(tool_exchange(ids)))
            else:
                messages.extend(draw(function_exchange()))
    if agent_loop:
        messages.append(draw(user_message()))
        for _ in range(draw(st.integers(2, 6))):
            messages.extend(draw(tool_exchange(ids)))
            if draw(st.integers(0, 3)) == 0:
                messages.append({"role": "assistant", "content": draw(text)})
    return messages


# --- an independent statement of what must be kept ----------------------------------------


def _is_pinned(message: Message) -> bool:
    return message["role"] in ("system", "developer")


def _group_start(messages: list[Message], index: int) -> int:
    """Index of the assistant message that opens the tool exchange containing ``index``."""
    while messages[index]["role"] in ("tool", "function"):
        index -= 1
    return index


def must_keep(messages: list[Message], keep_last_turns: int) -> set[int]:
    """System messages, the last N turns (N >= 1 counts the last user message's turn, or the
    preamble when there is no user message), the last user message and the final exchange."""
    keep = {i for i, m in enumerate(messages) if _is_pinned(m)}
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    others = [i for i, m in enumerate(messages) if not _is_pinned(m)]
    if not others:
        return keep
    if keep_last_turns >= 1:
        turn_starts = ([others[0]] if others[0] not in users else []) + users
        keep.update(range(turn_starts[-keep_last_turns:][0], len(messages)))
        return keep
    if users:
        keep.add(users[-1])
    keep.update(range(_group_start(messages, others[-1]), others[-1] + 1))
    return keep


#: The text counters of COUNTERS (and the default estimate), by name, for the pricing oracle.
TEXT_FNS: dict[str, Callable[[str], int]] = {"estimate": estimate_text_tokens, "chars": len}


def priced(messages: list[Message], counter: TokenCounter) -> int:
    """Tokens of ``messages`` by the recipe of docs/transforms.md (transforms_oracle.py), not
    by the code under test."""
    return price_messages(messages, TEXT_FNS[counter.name])


def cost(messages: list[Message], indices: set[int], counter: TokenCounter) -> int:
    return priced([messages[i] for i in sorted(indices)], counter)


# --- properties ----------------------------------------------------------------------------


def check_valid_window(
    messages: list[Message], window: RollingWindowTransform, out: list[Message]
) -> None:
    report = window.last_report
    assert report is not None
    kept = report.kept
    # a subsequence of new dicts equal to the input's
    assert list(kept) == sorted(set(kept))
    assert out == [messages[i] for i in kept]
    assert all(o is not messages[i] for o, i in zip(out, kept, strict=True))
    assert sorted(kept + report.dropped) == list(range(len(messages)))
    assert list(report.dropped_messages) == [messages[i] for i in report.dropped]
    # the output is itself a valid conversation, and exchanges were kept or dropped whole
    parse_conversation(out)
    whole = parse_conversation(messages)
    kept_set = set(kept)
    for atom in [*whole.pinned, *(a for t in whole.turns for a in t.atoms)]:
        flags = {i in kept_set for i in range(atom.start, atom.stop)}
        assert len(flags) == 1, f"exchange {atom} was split"
    # roles: no new first assistant/tool message, no new pair of adjacent user messages
    first_in = next((m for m in messages if not _is_pinned(m)), None)
    first_out = next((m for m in out if not _is_pinned(m)), None)
    if first_in is not None and first_in["role"] == "user":
        assert first_out is not None and first_out["role"] == "user"
    non_pinned_in = [i for i in range(len(messages)) if not _is_pinned(messages[i])]
    position = {index: rank for rank, index in enumerate(non_pinned_in)}
    non_pinned_out = [i for i in kept if not _is_pinned(messages[i])]
    for a, b in itertools.pairwise(non_pinned_out):
        if messages[a]["role"] == "user" and messages[b]["role"] == "user":
            assert position[b] == position[a] + 1, "two user messages made adjacent"
    # what must stay, stays; the budget holds whenever it can
    required = must_keep(messages, window.keep_last_turns)
    assert required <= kept_set
    assert report.tokens_after == priced(out, window.counter)
    assert report.tokens_before == priced(messages, window.counter)
    limit = window.max_tokens
    assert limit is not None
    if cost(messages, required, window.counter) <= limit:
        assert report.tokens_after <= limit
        assert not report.over_budget
    else:
        assert report.over_budget
        assert kept_set == required  # everything optional was dropped
    if report.tokens_before <= limit:
        assert report.dropped == ()


@given(
    conversations(),
    st.one_of(st.integers(1, 600), st.floats(0.05, 1.2)),
    st.integers(0, 3),
    st.sampled_from(COUNTERS),
)
@SETTINGS
def test_window_output_is_a_valid_budgeted_subsequence(
    messages: list[Message], budget: int | float, keep_last_turns: int, counter: TokenCounter
) -> None:
    """``budget``: tokens, or (a float) a share of what the whole conversation costs."""
    if isinstance(budget, float):
        max_tokens = max(1, int(budget * counter.count_messages(messages)))
    else:
        max_tokens = budget
    before = copy.deepcopy(messages)
    window = RollingWindowTransform(
        max_tokens=max_tokens, keep_last_turns=keep_last_turns, token_counter=counter
    )
    out = window.apply(messages)
    assert messages == before
    check_valid_window(messages, window, out)


@given(conversations(agent_loop=True), st.floats(0.05, 1.0))
@SETTINGS
def test_agent_loops_lose_their_oldest_exchanges_first(
    messages: list[Message], share: float
) -> None:
    counter = TokenCounter.estimate()
    max_tokens = max(1, int(share * counter.count_messages(messages)))
    window = RollingWindowTransform(max_tokens=max_tokens, keep_last_turns=0, token_counter=counter)
    out = window.apply(messages)
    check_valid_window(messages, window, out)
    report = window.last_report
    assert report is not None
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    inside = [i for i in report.dropped if i > last_user]
    if inside:  # the loop was cut: every older turn went first, and the oldest exchanges
        assert all(i in report.dropped for i in range(last_user) if not _is_pinned(messages[i]))
        assert inside == list(range(last_user + 1, last_user + 1 + len(inside)))


@given(conversations(), st.integers(1, 400), st.integers(0, 400), st.integers(0, 2))
@SETTINGS
def test_a_larger_budget_keeps_a_superset(
    messages: list[Message], budget: int, extra: int, keep_last_turns: int
) -> None:
    small = RollingWindowTransform(max_tokens=budget, keep_last_turns=keep_last_turns)
    large = RollingWindowTransform(max_tokens=budget + extra, keep_last_turns=keep_last_turns)
    small_report = small.apply_with_report(messages)[1]
    large_report = large.apply_with_report(messages)[1]
    assert set(small_report.kept) <= set(large_report.kept)


@given(conversations())
@SETTINGS
def test_windowing_twice_changes_nothing_more(messages: list[Message]) -> None:
    window = RollingWindowTransform(max_tokens=200, keep_last_turns=0)
    once = window.apply(messages)
    assert window.apply(once) == once


# --- invalid input -------------------------------------------------------------------------


def _orphan_a_tool_result(messages: list[Message]) -> list[Message] | None:
    """Remove the assistant message of one tool exchange, leaving its results orphaned."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            return messages[:i] + messages[i + 1 :]
    return None


def _drop_a_role(messages: list[Message]) -> list[Message] | None:
    if not messages:
        return None
    broken = copy.deepcopy(messages)
    del broken[len(broken) // 2]["role"]
    return broken


def _unknown_role(messages: list[Message]) -> list[Message] | None:
    if not messages:
        return None
    broken = copy.deepcopy(messages)
    broken[-1]["role"] = "narrator"
    return broken


def _not_a_mapping(messages: list[Message]) -> list[Message] | None:
    if not messages:
        return None
    return [*messages[:-1], messages[-1]["role"]]  # type: ignore[list-item]


CORRUPTIONS: list[tuple[Callable[[list[Message]], list[Message] | None], type[Exception]]] = [
    (_orphan_a_tool_result, InvalidInputError),
    (_drop_a_role, InvalidInputError),
    (_unknown_role, InvalidInputError),
    (_not_a_mapping, InvalidTypeError),
]


@pytest.mark.parametrize(("corrupt", "error"), CORRUPTIONS)
@given(messages=conversations(), max_tokens=st.integers(1, 600))
@settings(SETTINGS, max_examples=60)
def test_invalid_conversations_get_the_documented_error(
    corrupt: Callable[[list[Message]], list[Message] | None],
    error: type[Exception],
    messages: list[Message],
    max_tokens: int,
) -> None:
    broken = corrupt(messages)
    if broken is None:
        return
    before = copy.deepcopy(broken)
    with pytest.raises(error):
        RollingWindowTransform(max_tokens=max_tokens).apply(broken)
    assert broken == before


@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.text())))
@SETTINGS
def test_non_lists_are_refused(value: object) -> None:
    with pytest.raises(InvalidTypeError):
        RollingWindowTransform(max_tokens=100).apply(value)  # type: ignore[arg-type]
