"""Message pricing against an oracle written from docs/transforms.md ("How a message is priced").

The recipe: 3 tokens per message, plus the tokens of every string field, plus 1 for a
``name``; 3 more for the whole list. Content parts: ``text`` parts cost their text, an
``image_url`` part 765 (85 with ``detail="low"``). Each tool call costs 3 plus its id, function
name and arguments; a legacy ``function_call`` its name and arguments. The text counter is a
parameter: ``len`` (a counter the oracle computes without our code) and the estimate (whose
per-text figures test_transforms_tokens.py checks against tiktoken).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_transforms_properties import SETTINGS, conversations
from transforms_oracle import Message, TextFn, price_message, price_messages

from headroom.transforms import TokenCounter, count_message_tokens, count_messages_tokens
from headroom.transforms.tokens import estimate_text_tokens

TEXT_FNS: list[tuple[TokenCounter, TextFn]] = [
    (TokenCounter.from_text_fn(len, name="chars"), len),
    (TokenCounter.estimate(), estimate_text_tokens),
]


@given(conversations(agent_loop=True), st.sampled_from(range(len(TEXT_FNS))))
@settings(SETTINGS, max_examples=100)
def test_messages_are_priced_by_the_documented_recipe(messages: list[Message], which: int) -> None:
    counter, fn = TEXT_FNS[which]
    for message in messages:
        assert count_message_tokens(message, counter) == price_message(message, fn), message
    assert count_messages_tokens(messages, counter) == price_messages(messages, fn)
    assert counter.count_messages(messages) == price_messages(messages, fn)


def test_the_oracle_on_a_hand_priced_conversation() -> None:
    messages: list[Message] = [
        {"role": "system", "content": "be brief"},  # 3 + 6 + 8
        {
            "role": "user",
            "name": "al",  # 2 + 1
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "u", "detail": "low"}},
            ],
        },  # 3 + 4 + 3 + 4 + 85
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },  # 3 + 9 + 3 + 2 + 1 + 2
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},  # 3 + 4 + 2 + 2
    ]
    want = 3 + (3 + 6 + 8) + (3 + 4 + 3 + 4 + 85) + (3 + 9 + 3 + 2 + 1 + 2) + (3 + 4 + 2 + 2)
    assert price_messages(messages, len) == want
    assert count_messages_tokens(messages, TokenCounter.from_text_fn(len)) == want
