"""BlockStreamFilter: streamed text equals clean_text of the whole, for every chunking."""

from __future__ import annotations

import itertools

import pytest
from block_fragments import PIECES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.memory.protocol.block import (
    MemoryOps,
    NewMemory,
    clean_text,
    parse_answer,
    render_block,
)
from headroom.memory.protocol.stream_filter import BlockStreamFilter

texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=3)), max_size=30).map("".join)


def stream(text: str, cuts: list[int]) -> tuple[str, list[str], BlockStreamFilter]:
    """Feed ``text`` split at ``cuts``; return the joined output, each piece, the filter."""
    flt = BlockStreamFilter()
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [flt.feed(text[a:b]) for a, b in itertools.pairwise(bounds)]
    pieces.append(flt.finish())
    return "".join(pieces), pieces, flt


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_equals_clean_text(text: str, cuts: list[int]) -> None:
    shown, _, flt = stream(text, cuts)
    assert shown == clean_text(text)
    assert shown == parse_answer(flt.raw_text).text
    assert flt.raw_text == text
    assert "<memory" not in shown.lower()


@settings(max_examples=200, deadline=None)
@given(answer=st.text(max_size=80), texts_=st.lists(st.text(min_size=1, max_size=20), max_size=3))
def test_streamed_answer_with_a_real_block(answer: str, texts_: list[str]) -> None:
    adds = tuple(
        NewMemory(t) for t in texts_ if t.strip() and not _has_surrogate(t) and "\x00" not in t
    )
    full = answer + "\n\n" + render_block(MemoryOps(add=adds))
    for size in (1, 2, 3, 7, 64):
        shown, _, _ = stream(full, list(range(0, len(full), size)))
        assert shown == clean_text(full) == parse_answer(full).text


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) < 0xE000 for c in text)


def test_releases_text_at_once_and_holds_only_what_could_be_a_tag() -> None:
    flt = BlockStreamFilter()
    assert flt.feed("Hello") == "Hello"
    assert flt.feed(" world ") == " world"  # trailing space: a block might follow
    assert flt.feed("<me") == ""  # could be "<memory"
    assert flt.feed("ow!") == " <meow!"
    assert flt.feed(" a <3") == " a <3"
    assert flt.finish() == ""


def test_block_is_swallowed_and_text_after_it_released() -> None:
    flt = BlockStreamFilter()
    out = [flt.feed(c) for c in ["Sure.", "\n\n<mem", 'ory>{"add": [', "]}</mem", "ory>"]]
    assert "".join(out) == "Sure."
    assert flt.feed(" More") == " More"
    assert flt.finish() == ""


def test_cut_off_block_is_dropped_at_finish() -> None:
    flt = BlockStreamFilter()
    assert flt.feed('Done.\n<memory>{"add": [{"text": "User li') == "Done."
    assert flt.finish() == ""
    assert parse_answer(flt.raw_text).ops.is_empty()


def test_tag_cut_at_the_end_of_the_stream_is_dropped() -> None:
    flt = BlockStreamFilter()
    assert flt.feed("Done. <memo") == "Done."
    assert flt.finish() == ""


def test_buffer_stays_small_inside_a_long_element() -> None:
    flt = BlockStreamFilter()
    flt.feed("<memory>")
    for _ in range(1000):
        assert flt.feed("x" * 100 + "<") == ""
        assert len(flt._buffer) <= 1
    assert flt.feed("/memory>after") == "after"


@pytest.mark.parametrize(
    "text",
    [
        'Sure.\n\n```json\n<memory>{"add": []}</memory>\n```\n',
        "Code:\n```py\nx = 1\n```\n<memory>{}</memory>",
        "```\n<memory>{}</memory>\n```\nMore after it",
        "A\n```\n<memory/>\n```\n<memory>{}</memory>\n```",
        "A\n```\n<memory>{}",
    ],
)
def test_fenced_blocks_stream_like_they_parse(text: str) -> None:
    for size in range(1, len(text) + 1):
        shown, _, _ = stream(text, list(range(0, len(text), size)))
        assert shown == clean_text(text), size


def test_fence_opener_is_held_only_until_it_cannot_wrap_a_block() -> None:
    flt = BlockStreamFilter()
    assert flt.feed("Code:\n```py") == "Code:"
    assert flt.feed("\nx = 1") == "\n```py\nx = 1"
    assert flt.finish() == ""


def test_none_and_empty_chunks() -> None:
    flt = BlockStreamFilter()
    assert flt.feed(None) == ""
    assert flt.feed("") == ""
    assert flt.feed("a") == "a"
    assert flt.raw_text == "a"


def test_misuse_raises_typed_errors() -> None:
    flt = BlockStreamFilter()
    with pytest.raises(InvalidTypeError):
        flt.feed(b"bytes")  # type: ignore[arg-type]
    assert flt.finish() == ""
    assert flt.finished
    assert flt.finish() == ""  # idempotent
    with pytest.raises(InvalidInputError):
        flt.feed("late")
