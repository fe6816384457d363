"""Message pricing written from docs/transforms.md ("How a message is priced"), as an oracle
for the token counting the rolling window uses (test_oracles_transforms.py checks the code
against it; test_transforms_properties.py prices with it).

The recipe: 3 tokens per message, plus the tokens of every string field, plus 1 for a
``name``; 3 more for the whole list. Content parts: ``text`` parts cost their text, an
``image_url`` part 765 (85 with ``detail="low"``). Each tool call costs 3 plus its id, function
name and arguments; a legacy ``function_call`` its name and arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Message = dict[str, Any]
TextFn = Callable[[str], int]


def price_content(content: Any, fn: TextFn) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return fn(content)
    total = 0
    for part in content:
        if part["type"] == "text":
            total += fn(part["text"])
        elif part["type"] == "image_url":
            total += 85 if part["image_url"].get("detail") == "low" else 765
        else:  # the generated conversations hold no other part
            raise AssertionError(f"unexpected part {part}")
    return total


def price_message(message: Message, fn: TextFn) -> int:
    total = 3
    for key, value in message.items():
        if key == "content":
            total += price_content(value, fn)
        elif key == "tool_calls":
            for call in value:
                function = call["function"]
                total += 3 + fn(call["id"]) + fn(function["name"]) + fn(function["arguments"])
        elif key == "function_call":
            total += fn(value["name"]) + fn(value["arguments"])
        elif isinstance(value, str):
            total += fn(value) + (1 if key == "name" else 0)
    return total


def price_messages(messages: list[Message], fn: TextFn) -> int:
    # An empty list costs 0, not the 3 of the reply's header: the doc does not say so, the
    # code does (no request, nothing to prime).
    if not messages:
        return 0
    return 3 + sum(price_message(m, fn) for m in messages)
