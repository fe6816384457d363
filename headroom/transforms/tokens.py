"""Token counting for OpenAI chat-completions messages.

A :class:`TokenCounter` turns text into a token count (exactly with tiktoken when its encoding
is available offline, else with :func:`~headroom.transforms.estimate.estimate_text_tokens`)
and prices whole messages the way the chat format does:

- every message costs :data:`MESSAGE_OVERHEAD` (3) tokens plus the tokens of each of its string
  fields (``role``, ``content``, ``tool_call_id``, ``refusal``, ...); a ``name`` costs one
  more token (:data:`NAME_OVERHEAD`), as in OpenAI's published counting recipe;
- ``content`` may be a string, None, or a list of content parts: ``text`` and ``refusal`` parts
  (and the Responses API's ``input_text`` and ``output_text``) cost their text; an
  ``image_url`` or ``input_image`` part costs a fixed :data:`IMAGE_TOKENS` (765, what GPT-4o
  charges for a 1024x1024 image at high detail) or :data:`IMAGE_TOKENS_LOW` (85) with
  ``detail="low"``; ``input_audio`` and ``file`` / ``input_file`` parts cost a fixed
  :data:`AUDIO_TOKENS` and :data:`FILE_TOKENS`; any other part costs the text of its JSON form;
- each tool call costs :data:`TOOL_CALL_OVERHEAD` plus its id, function name and arguments (or a
  custom tool's name and input); a legacy ``function_call`` costs its name and arguments;
- a list of messages costs the sum plus :data:`REPLY_PRIMING` (3) for the reply's header.

Fixed costs are estimates by design (an image's real cost depends on its size, which we do not
fetch); a counter built with :meth:`TokenCounter.from_message_fn` replaces all of this.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.transforms.estimate import estimate_text_tokens
from headroom.transforms.tiktoken_local import load_local_encoding

__all__ = [
    "AUDIO_TOKENS",
    "CACHE_MAX_CHARS",
    "CACHE_SIZE",
    "DEFAULT_ENCODINGS",
    "FILE_TOKENS",
    "IMAGE_TOKENS",
    "IMAGE_TOKENS_LOW",
    "MESSAGE_OVERHEAD",
    "NAME_OVERHEAD",
    "REPLY_PRIMING",
    "TOOL_CALL_OVERHEAD",
    "TokenCounter",
    "TokenCounterLike",
    "count_message_tokens",
    "count_messages_tokens",
    "default_counter",
    "estimate_text_tokens",
    "resolve_counter",
]

MESSAGE_OVERHEAD = 3
NAME_OVERHEAD = 1
REPLY_PRIMING = 3
TOOL_CALL_OVERHEAD = 3
IMAGE_TOKENS = 765
IMAGE_TOKENS_LOW = 85
AUDIO_TOKENS = 500
FILE_TOKENS = 1000

#: Encodings tried, in order, by :func:`default_counter` (GPT-4o and later, then GPT-4/3.5).
DEFAULT_ENCODINGS = ("o200k_base", "cl100k_base")

#: The built-in counters remember the counts of this many recent strings of at most
#: :data:`CACHE_MAX_CHARS` characters: a chat history is re-sent with every request, so its
#: messages are counted once (at most ~32 MB of strings kept alive, usually far less).
CACHE_SIZE = 4096
CACHE_MAX_CHARS = 8192

Message = Mapping[str, Any]

#: Content part types that carry their text in ``text`` (chat, and the Responses API's input and
#: output parts).
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _cached(count: Callable[[str], int]) -> Callable[[str], int]:
    """``count`` with an LRU cache for short strings (only for pure, built-in counters)."""
    remembered = functools.lru_cache(maxsize=CACHE_SIZE)(count)

    def cached_count(text: str) -> int:
        return remembered(text) if len(text) <= CACHE_MAX_CHARS else count(text)

    return cached_count


_cached_estimate = _cached(estimate_text_tokens)


def _checked_count(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{source} must return an int >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of texts and chat messages; immutable and safe to share between threads.

    ``text`` counts one string. ``message``, when given, prices a whole message and replaces
    the built-in accounting described in the module docstring. ``name`` says which counter this
    is (``"tiktoken:o200k_base"``, ``"estimate"``, ``"custom"``), for reports and logs.
    """

    text: Callable[[str], int]
    name: str
    message: Callable[[Message], int] | None = None

    @classmethod
    def estimate(cls) -> TokenCounter:
        """The tokenizer-free estimate (see :mod:`headroom.transforms.estimate`)."""
        return cls(text=_cached_estimate, name="estimate")

    @classmethod
    def tiktoken(cls, encoding: str) -> TokenCounter | None:
        """Exact counts with tiktoken's ``encoding``, or None if it is not available offline."""
        count = load_local_encoding(encoding)
        return None if count is None else cls(text=_cached(count), name=f"tiktoken:{encoding}")

    @classmethod
    def from_text_fn(cls, fn: Callable[[str], int], name: str = "custom") -> TokenCounter:
        """Wrap a user's ``text -> int`` function; message overheads are added as documented."""
        if not callable(fn):
            raise InvalidTypeError(f"token counter must be callable, not {type(fn).__name__}")
        return cls(text=fn, name=name)

    @classmethod
    def from_message_fn(cls, fn: Callable[[Message], int], name: str = "custom") -> TokenCounter:
        """Wrap a user's ``message -> int`` function; it prices each whole message itself.

        Texts outside messages (:meth:`count_text`) are then estimated.
        """
        if not callable(fn):
            raise InvalidTypeError(f"token counter must be callable, not {type(fn).__name__}")
        return cls(text=_cached_estimate, name=name, message=fn)

    def count_text(self, text: str) -> int:
        """Tokens of one string. Raises InvalidTypeError for a non-string."""
        if not isinstance(text, str):
            raise InvalidTypeError(f"text must be a str, not {type(text).__name__}")
        return _checked_count(self.text(text), f"token counter {self.name!r}")

    def count_message(self, message: Message) -> int:
        """Tokens of one chat message (a mapping; the SDK's TypedDicts are plain dicts).

        Raises InvalidTypeError for a non-mapping and InvalidInputError for a field of the wrong
        shape (e.g. ``content`` that is a number).
        """
        if not isinstance(message, Mapping):
            raise InvalidTypeError(f"a message must be a mapping, not {type(message).__name__}")
        if self.message is not None:
            return _checked_count(self.message(message), f"token counter {self.name!r}")
        total = MESSAGE_OVERHEAD
        for key, value in message.items():
            if key == "content":
                total += self._content(value)
            elif key == "tool_calls":
                total += self._tool_calls(value)
            elif key == "function_call":
                total += self._function_call(value)
            elif isinstance(value, str):
                total += self.count_text(value)
                if key == "name":
                    total += NAME_OVERHEAD
        return total

    def count_messages(self, messages: Sequence[Message]) -> int:
        """Tokens of a list of messages: the sum plus the reply priming (0 for no messages)."""
        if not messages:
            return 0
        return REPLY_PRIMING + sum(self.count_message(m) for m in messages)

    # --- the parts of a message ------------------------------------------------------------

    def _content(self, content: object) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.count_text(content)
        if isinstance(content, (list, tuple)):
            return sum(self._part(part) for part in content)
        raise InvalidInputError(
            f"message content must be a string, None or a list of parts, "
            f"not {type(content).__name__}"
        )

    def _part(self, part: object) -> int:
        if isinstance(part, str):
            return self.count_text(part)
        if not isinstance(part, Mapping):
            raise InvalidInputError(f"a content part must be a mapping, not {type(part).__name__}")
        kind = part.get("type")
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            return self.count_text(part["text"])
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            return self.count_text(part["refusal"])
        if kind == "image_url":
            image = part.get("image_url")
            low = isinstance(image, Mapping) and image.get("detail") == "low"
            return IMAGE_TOKENS_LOW if low else IMAGE_TOKENS
        if kind == "input_image":
            return IMAGE_TOKENS_LOW if part.get("detail") == "low" else IMAGE_TOKENS
        if kind == "input_audio":
            return AUDIO_TOKENS
        if kind in ("file", "input_file"):
            return FILE_TOKENS
        return self.count_text(json.dumps(part, ensure_ascii=False, default=str))

    def _tool_calls(self, calls: object) -> int:
        if calls is None:
            return 0
        if not isinstance(calls, (list, tuple)):
            raise InvalidInputError(f"tool_calls must be a list, not {type(calls).__name__}")
        total = 0
        for call in calls:
            if not isinstance(call, Mapping):
                raise InvalidInputError(f"a tool call must be a mapping, not {type(call).__name__}")
            total += TOOL_CALL_OVERHEAD
            if isinstance(call.get("id"), str):
                total += self.count_text(call["id"])
            body = call.get("function", call.get("custom"))
            if isinstance(body, Mapping):
                for field in ("name", "arguments", "input"):
                    if isinstance(body.get(field), str):
                        total += self.count_text(body[field])
        return total

    def _function_call(self, call: object) -> int:
        if call is None:
            return 0
        if not isinstance(call, Mapping):
            raise InvalidInputError(f"function_call must be a mapping, not {type(call).__name__}")
        return sum(
            self.count_text(call[field])
            for field in ("name", "arguments")
            if isinstance(call.get(field), str)
        )


@functools.cache
def default_counter() -> TokenCounter:
    """tiktoken with the first of :data:`DEFAULT_ENCODINGS` available offline, else the estimate.

    Decided once per process (cached); ``default_counter.cache_clear()`` decides again.
    """
    for encoding in DEFAULT_ENCODINGS:
        counter = TokenCounter.tiktoken(encoding)
        if counter is not None:
            return counter
    return TokenCounter.estimate()


#: What a ``token_counter=`` argument may be: None (the default counter), a TokenCounter, or a
#: ``text -> int`` callable. Wrap a ``message -> int`` callable with
#: :meth:`TokenCounter.from_message_fn`.
TokenCounterLike = TokenCounter | Callable[[str], int] | None


def resolve_counter(token_counter: TokenCounterLike) -> TokenCounter:
    """Turn a ``token_counter=`` argument into a :class:`TokenCounter` (see TokenCounterLike)."""
    if token_counter is None:
        return default_counter()
    if isinstance(token_counter, TokenCounter):
        return token_counter
    return TokenCounter.from_text_fn(token_counter)


def count_message_tokens(message: Message, token_counter: TokenCounterLike = None) -> int:
    """Tokens of one chat message with ``token_counter`` (default: :func:`default_counter`)."""
    return resolve_counter(token_counter).count_message(message)


def count_messages_tokens(
    messages: Sequence[Message], token_counter: TokenCounterLike = None
) -> int:
    """Tokens of a message list, reply priming included (0 for an empty list)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidTypeError(f"messages must be a list, not {type(messages).__name__}")
    return resolve_counter(token_counter).count_messages(messages)
