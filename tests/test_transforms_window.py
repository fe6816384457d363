"""RollingWindowTransform: the documented rules and edge cases, one example each."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)

from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.transforms import RollingWindowTransform, TokenCounter, count_messages_tokens

FLAT = TokenCounter.from_message_fn(lambda _message: 10, name="flat")  # every message costs 10
PRIMING = 3


def system(text: str = "You are helpful.") -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def call(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            for i in ids
        ],
    }


def result(call_id: str, text: str = "ok") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def contents(messages: list[dict[str, Any]]) -> list[Any]:
    return [m.get("content") or m.get("tool_call_id") or m["role"] for m in messages]


def test_drops_oldest_turns_first_and_keeps_system_messages() -> None:
    messages = [system(), user("u1"), bot("a1"), user("u2"), bot("a2"), user("u3")]
    window = RollingWindowTransform(max_tokens=PRIMING + 40, token_counter=FLAT)
    out, report = window.apply_with_report(messages)
    assert contents(out) == ["You are helpful.", "u2", "a2", "u3"]
    assert report.dropped == (1, 2)
    assert report.dropped_turns == 1
    assert [m["content"] for m in report.dropped_messages] == ["u1", "a1"]
    assert report.tokens_before == PRIMING + 60
    assert report.tokens_after == PRIMING + 40 == count_messages_tokens(out, FLAT)
    assert not report.over_budget
    assert window.last_report == report


def test_fits_without_dropping_returns_an_equal_copy() -> None:
    messages = [system(), user("u1"), bot("a1")]
    out = RollingWindowTransform(max_tokens=1000, token_counter=FLAT).apply(messages)
    assert out == messages
    assert all(a is not b for a, b in zip(out, messages, strict=True))
    assert RollingWindowTransform(token_counter=FLAT).apply(messages) == messages  # no limit


def test_input_is_never_mutated_and_output_is_independent() -> None:
    messages = [system(), user("u1"), call("c1"), result("c1"), bot("a1"), user("u2")]
    before = copy.deepcopy(messages)
    out = RollingWindowTransform(max_tokens=PRIMING + 20, token_counter=FLAT).apply(messages)
    assert messages == before
    out[0]["content"] = "changed"
    out.append(user("extra"))
    assert messages == before


def test_tool_call_and_its_results_go_together() -> None:
    messages = [
        user("u1"),
        call("c1", "c2"),
        result("c2"),
        result("c1"),
        bot("a1"),
        user("u2"),
        call("c3"),
        result("c3"),
    ]
    # the last turn (u2, call c3, result) costs 30; u1's turn is dropped whole
    out = RollingWindowTransform(max_tokens=PRIMING + 30, token_counter=FLAT).apply(messages)
    assert contents(out) == ["u2", "assistant", "ok"]
    assert out[1]["tool_calls"][0]["id"] == out[2]["tool_call_id"] == "c3"
    # one message over budget inside an agent loop still drops the whole exchange
    loop = [user("u"), call("a", "b"), result("a"), result("b"), call("c"), result("c")]
    window = RollingWindowTransform(max_tokens=PRIMING + 50, keep_last_turns=0, token_counter=FLAT)
    out, report = window.apply_with_report(loop)
    assert out == [loop[0], loop[4], loop[5]]
    assert report.dropped == (1, 2, 3)
    assert report.tokens_after == PRIMING + 30


def test_trailing_tool_exchange_is_kept_even_when_turns_are_not() -> None:
    loop = [user("do it"), call("a"), result("a"), call("b"), result("b"), call("c"), result("c")]
    messages = [system(), user("old"), bot("old answer"), *loop]
    window = RollingWindowTransform(max_tokens=PRIMING + 40, keep_last_turns=0, token_counter=FLAT)
    out, report = window.apply_with_report(messages)
    # system, last user, and the final exchange are kept; middle exchanges go oldest first
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool"]
    assert out[1]["content"] == "do it"
    assert out[3]["tool_call_id"] == "c"
    assert report.dropped_turns == 1
    assert not report.over_budget
    # with the default keep_last_turns=1 the whole last turn stays, over budget
    out_default = RollingWindowTransform(max_tokens=PRIMING + 40, token_counter=FLAT).apply(
        messages
    )
    assert out_default == [system(), *loop]


def test_legacy_function_call_and_result_go_together() -> None:
    messages = [
        user("u1"),
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "42"},
        user("u2"),
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "43"},
        bot("done"),
        user("u3"),
    ]
    window = RollingWindowTransform(max_tokens=PRIMING + 10, keep_last_turns=0, token_counter=FLAT)
    assert window.apply(messages) == [user("u3")]
    window = RollingWindowTransform(max_tokens=PRIMING + 50, token_counter=FLAT)
    assert window.apply(messages) == messages[3:]


def test_never_starts_with_assistant_or_creates_adjacent_users() -> None:
    # a greeting before the first user message is a preamble turn and goes first
    messages = [system(), bot("Hi! How can I help?"), user("u1"), bot("a1"), user("u2")]
    out = RollingWindowTransform(max_tokens=PRIMING + 40, token_counter=FLAT).apply(messages)
    assert contents(out) == ["You are helpful.", "u1", "a1", "u2"]
    out = RollingWindowTransform(max_tokens=PRIMING + 35, token_counter=FLAT).apply(messages)
    assert contents(out) == ["You are helpful.", "u2"]  # never [system, a1, u2]


def test_consecutive_user_messages_in_the_input_are_allowed() -> None:
    messages = [user("u1"), user("u1 again"), bot("a1"), user("u2")]
    out = RollingWindowTransform(max_tokens=PRIMING + 30, token_counter=FLAT).apply(messages)
    assert contents(out) == ["u1 again", "a1", "u2"]


def test_mid_conversation_system_messages_stay_in_place() -> None:
    messages = [user("u1"), bot("a1"), system("note"), user("u2"), bot("a2"), user("u3")]
    out = RollingWindowTransform(max_tokens=PRIMING + 30, token_counter=FLAT).apply(messages)
    assert contents(out) == ["note", "u3"]
    out = RollingWindowTransform(max_tokens=PRIMING + 40, token_counter=FLAT).apply(messages)
    assert contents(out) == ["note", "u2", "a2", "u3"]


def test_keep_last_turns_protects_recent_turns() -> None:
    messages = [user("u1"), bot("a1"), user("u2"), bot("a2"), user("u3"), bot("a3")]
    window = RollingWindowTransform(max_tokens=PRIMING + 10, keep_last_turns=2, token_counter=FLAT)
    out, report = window.apply_with_report(messages)
    assert contents(out) == ["u2", "a2", "u3", "a3"]
    assert report.over_budget


def test_a_message_too_large_alone_is_kept_and_flagged(caplog: pytest.LogCaptureFixture) -> None:
    huge = "word " * 5000
    messages = [system("short"), user("old"), bot("old answer"), user(huge)]
    window = RollingWindowTransform(max_tokens=500, token_counter=TokenCounter.estimate())
    with caplog.at_level(logging.WARNING, logger="headroom.transforms"):
        out, report = window.apply_with_report(messages)
    assert out == [system("short"), user(huge)]
    assert report.over_budget
    assert report.oversized == (3,)
    assert report.tokens_after > 500
    assert "exceed max_tokens=500" in caplog.text


def test_oversized_tool_group_is_flagged_whole() -> None:
    messages = [user("u"), call("c1"), result("c1", "data " * 4000)]
    window = RollingWindowTransform(max_tokens=200, token_counter=TokenCounter.estimate())
    out, report = window.apply_with_report(messages)
    assert out == messages
    assert report.oversized == (1, 2)


def test_sdk_typed_dicts_are_accepted() -> None:
    messages: list[ChatCompletionMessageParam] = [
        ChatCompletionSystemMessageParam(role="system", content="be brief"),
        ChatCompletionUserMessageParam(role="user", content="u1"),
        ChatCompletionAssistantMessageParam(
            role="assistant",
            tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        ),
        ChatCompletionToolMessageParam(role="tool", tool_call_id="c1", content="r"),
        ChatCompletionUserMessageParam(role="user", content="u2"),
    ]
    out = RollingWindowTransform(max_tokens=PRIMING + 20, token_counter=FLAT).apply(messages)
    assert out == [messages[0], messages[4]]


def test_empty_conversation() -> None:
    out, report = RollingWindowTransform(max_tokens=10).apply_with_report([])
    assert out == []
    assert report.kept == report.dropped == ()
    assert report.tokens_after == 0


def test_default_counter_and_plain_callable_counter() -> None:
    messages = [user("hello " * 50), bot("fine"), user("again")]
    window = RollingWindowTransform(max_tokens=60, token_counter=len)  # counts characters
    assert window.counter.name == "custom"
    assert window.apply(messages) == [user("again")]
    assert RollingWindowTransform(max_tokens=4000).apply(messages) == messages


# --- invalid input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ("hello", InvalidTypeError, "list of message dicts"),
        ({"role": "user", "content": "x"}, InvalidTypeError, "list of message dicts"),
        (None, InvalidTypeError, "list of message dicts"),
        ([user("u"), "bot"], InvalidTypeError, r"messages\[1\] must be a mapping"),
        ([{"content": "no role"}], InvalidInputError, r"messages\[0\] has no string 'role'"),
        ([{"role": "robot", "content": "x"}], InvalidInputError, "unknown role 'robot'"),
        ([user("u"), result("c1")], InvalidInputError, "orphan tool"),
        ([user("u"), call("c1"), result("c2")], InvalidInputError, "not an unanswered call"),
        (
            [user("u"), call("c1"), result("c1"), result("c1")],
            InvalidInputError,
            "not an unanswered call",
        ),
        ([user("u"), call("c1"), user("v"), result("c1")], InvalidInputError, "orphan tool"),
        ([user("u"), call("c1", "c1")], InvalidInputError, "twice"),
        (
            [user("u"), {"role": "assistant", "tool_calls": [{"type": "function"}]}],
            InvalidInputError,
            "no string 'id'",
        ),
        (
            [user("u"), {"role": "function", "name": "f", "content": "1"}],
            InvalidInputError,
            "orphan",
        ),
        (
            [
                user("u"),
                {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "g", "content": "1"},
            ],
            InvalidInputError,
            "called 'f'",
        ),
        ([user("u"), {"role": "user", "content": 5}], InvalidInputError, "content"),
    ],
)
def test_invalid_input_gets_a_typed_error(
    messages: Any, error: type[Exception], match: str
) -> None:
    before = copy.deepcopy(messages)
    with pytest.raises(error, match=match):
        RollingWindowTransform(max_tokens=100).apply(messages)
    assert messages == before


def test_missing_tool_results_are_passed_through_as_one_group() -> None:
    messages = [user("u1"), call("c1", "c2"), result("c1"), user("u2")]
    window = RollingWindowTransform(max_tokens=PRIMING + 10, token_counter=FLAT)
    assert window.apply(messages) == [user("u2")]
    assert RollingWindowTransform(token_counter=FLAT).apply(messages) == messages


def test_sdk_response_objects_are_refused_with_a_hint() -> None:
    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage(role="assistant", content="hi")
    with pytest.raises(InvalidTypeError, match="mapping"):
        RollingWindowTransform().apply([user("u"), message])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_tokens": 1.5},
        {"max_tokens": True},
        {"max_tokens": "4000"},
        {"keep_last_turns": -1},
        {"keep_last_turns": None},
        {"keep_last_turns": 2.0},
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        RollingWindowTransform(**kwargs)


def test_warn_false_leaves_out_the_warning_and_keeps_the_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    messages = [user("u" * 50), bot("a"), user("v" * 50)]
    window = RollingWindowTransform(max_tokens=PRIMING + 5, token_counter=FLAT)
    with caplog.at_level(logging.WARNING, logger="headroom.transforms"):
        quiet, quiet_report = window.apply_with_report(messages, warn=False)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="headroom.transforms"):
        loud, loud_report = window.apply_with_report(messages)
    assert len(caplog.records) == 1 and quiet == loud and quiet_report == loud_report
    # over budget, everything droppable is gone: tokens_after is what must stay
    assert quiet_report.over_budget and quiet_report.kept == (2,)
    assert quiet_report.tokens_after == PRIMING + FLAT.count_message(messages[2])
