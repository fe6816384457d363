"""Property tests of the <memory> block: round-trip, and no block text ever visible."""

from __future__ import annotations

from block_fragments import PIECES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_oracles_memory_block import _plain, oracle_ops

from headroom.memory.protocol.block import (
    WHITESPACE,
    MemoryOps,
    MemoryUpdate,
    NewMemory,
    clean_text,
    parse_answer,
    render_block,
    validate_ops,
)
from headroom.memory.types import CATEGORIES

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SENTINEL = "\u00a7"  # only ever inside memory texts, never in the visible part

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=60,
).filter(lambda t: bool(t.strip()))
short_ids = st.sampled_from([f"m{i}" for i in range(1, 8)])
ids = st.one_of(short_ids, st.text(min_size=1, max_size=6).filter(lambda t: bool(t.strip())))
categories = st.sampled_from(CATEGORIES)
ops_strategy = st.builds(
    MemoryOps,
    add=st.lists(st.builds(NewMemory, texts, categories), max_size=6),
    update=st.lists(st.builds(MemoryUpdate, ids, texts, st.none() | categories), max_size=4),
    delete=st.lists(ids, max_size=4),
)
# Visible answers for the round-trip: anything without a "<" (tags are covered below).
answers = st.text(alphabet=st.characters(blacklist_characters="<", blacklist_categories=("Cs",)))

# Pieces that model output is made of when it goes wrong: tags in any case, halves of tags,
# braces, quotes, white space, fences.
free_text = st.text(alphabet=st.characters(blacklist_characters=SENTINEL), max_size=4)
noise = st.lists(st.one_of(st.sampled_from(PIECES), free_text), max_size=25).map("".join)


def _no_tag(text: str) -> bool:
    lowered = text.lower()
    return "<memory" not in lowered and "</memory" not in lowered


@SETTINGS
@given(answer=answers, ops=ops_strategy, data=st.data())
def test_render_then_parse_round_trips(answer: str, ops: MemoryOps, data: st.DataObject) -> None:
    used = sorted({u.id for u in ops.update} | set(ops.delete))
    allowed = data.draw(st.lists(st.sampled_from(used), unique=True) if used else st.just([]))
    max_ops = data.draw(st.integers(0, 25))
    max_chars = data.draw(st.integers(1, 80))
    limits = {"allowed_ids": allowed, "max_ops": max_ops, "max_text_chars": max_chars}

    parsed = parse_answer(answer + render_block(ops), **limits)  # type: ignore[arg-type]

    # The expectation comes from the specification's oracle (test_oracles_memory_block.py),
    # not from validate_ops, the code under test.
    raw = {
        "add": [{"text": m.text, "category": m.category} for m in ops.add],
        "update": [
            {"id": u.id, "text": u.text, **({"category": u.category} if u.category else {})}
            for u in ops.update
        ],
        "delete": list(ops.delete),
    }
    want = oracle_ops(raw, max_ops, tuple(allowed), max_chars)
    expected, _ = validate_ops(ops, **limits)  # type: ignore[arg-type]
    assert _plain(parsed.ops) == want
    assert parsed.ops == expected
    assert parsed.text == answer.rstrip(WHITESPACE)
    assert parsed.found_block
    # Validated ops are a fixed point: they round-trip exactly.
    again = parse_answer(answer + "\n" + render_block(expected), **limits)  # type: ignore[arg-type]
    assert again.ops == expected
    assert validate_ops(expected, **limits)[0] == expected  # type: ignore[arg-type]


@SETTINGS
@given(before=noise, after=noise)
def test_any_output_never_shows_a_tag_and_never_raises(before: str, after: str) -> None:
    for text in (before, before + after, before + "<memory>" + after):
        parsed = parse_answer(text, allowed_ids=("m1",))
        assert "<memory" not in parsed.text.lower()
        assert parsed.text == clean_text(text)
        assert isinstance(parsed.ops, MemoryOps)


@SETTINGS
@given(visible=noise, ops=ops_strategy, cut=st.floats(0, 1), tail=noise)
def test_a_block_cut_at_any_point_is_never_visible(
    visible: str, ops: MemoryOps, cut: float, tail: str
) -> None:
    marked = MemoryOps(
        add=tuple(NewMemory(SENTINEL + m.text, m.category) for m in ops.add),
        update=tuple(MemoryUpdate(u.id, SENTINEL + u.text, u.category) for u in ops.update),
    )
    block = render_block(marked)
    at = int(cut * len(block))
    cut_block = block[:at]
    parsed = parse_answer(visible + cut_block, allowed_ids=("m1", "m2"))
    assert SENTINEL not in parsed.text
    assert "<memory" not in parsed.text.lower()
    if len("<memory") <= at < len(block):  # the last element is open: nothing is stored
        assert parsed.ops.is_empty()
        assert not parsed.found_block
    # A complete block followed by more noise: still nothing of the block is visible.
    assert SENTINEL not in parse_answer(visible + block + tail).text


@SETTINGS
@given(
    visible=noise,
    ops=ops_strategy.filter(lambda o: bool(o.add)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["", *PIECES])), max_size=6),
    closed=st.booleans(),
)
def test_broken_json_inside_a_block_is_never_visible(
    visible: str, ops: MemoryOps, edits: list[tuple[float, str]], closed: bool
) -> None:
    marked = MemoryOps(add=tuple(NewMemory(SENTINEL + m.text, m.category) for m in ops.add))
    body = render_block(marked)[len("<memory>") : -len("</memory>")]
    for where, piece in edits:  # replace one character by a piece: breaks the JSON
        at = int(where * len(body))
        body = body[:at] + piece + body[at + 1 :]
    text = visible + "<memory>" + body + ("</memory>" if closed else "")
    parsed = parse_answer(text)
    if _no_tag(body):
        assert SENTINEL not in parsed.text
    assert "<memory" not in parsed.text.lower()


@SETTINGS
@given(nested=st.lists(st.sampled_from(["<memory>", "</memory>", "{}", "x", " "]), max_size=12))
def test_nested_and_repeated_tags(nested: list[str]) -> None:
    text = "Answer " + "".join(nested) + " end"
    parsed = parse_answer(text)
    assert "<memory" not in parsed.text.lower()
    assert "</memory>" not in parsed.text.lower()
    assert parsed.text.startswith("Answer")
