"""Context transforms for chat-completions message lists.

:class:`RollingWindowTransform` keeps a conversation within a token budget by dropping its
oldest turns (tool calls and their results together); the token counting it uses is exported
for other modules (memory injection budgets with :func:`estimate_text_tokens`).
"""

from __future__ import annotations

from headroom.transforms.estimate import estimate_text_tokens
from headroom.transforms.rolling_window import RollingWindowTransform, WindowReport
from headroom.transforms.tokens import (
    TokenCounter,
    TokenCounterLike,
    count_message_tokens,
    count_messages_tokens,
    default_counter,
)

__all__ = [
    "RollingWindowTransform",
    "TokenCounter",
    "TokenCounterLike",
    "WindowReport",
    "count_message_tokens",
    "count_messages_tokens",
    "default_counter",
    "estimate_text_tokens",
]
