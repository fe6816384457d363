"""The <memory> block: examples of the grammar, the rules of meaning, the instruction.

Property tests (round-trip, robustness against any model output) are in
test_protocol_properties.py.
"""

from __future__ import annotations

import json

import pytest

from headroom.memory.errors import (
    InvalidCategoryError,
    InvalidInputError,
    InvalidTextError,
    InvalidTypeError,
)
from headroom.memory.protocol.block import (
    MEMORY_INSTRUCTION,
    MemoryOps,
    MemoryUpdate,
    NewMemory,
    clean_text,
    parse_answer,
    render_block,
    validate_ops,
)

ADD = '{"add": [{"text": "User prefers Python", "category": "preference"}]}'
PY = NewMemory("User prefers Python", "preference")


def test_plain_block_is_parsed_and_removed() -> None:
    parsed = parse_answer(f"Use Python.\n\n<memory>{ADD}</memory>")
    assert parsed.text == "Use Python."
    assert parsed.ops == MemoryOps(add=(PY,))
    assert parsed.found_block
    assert parsed.problems == ()


def test_answer_without_block_is_unchanged() -> None:
    text = "Hello  there.\n\n  a < b > c & d  \n"
    parsed = parse_answer(text)
    assert parsed.text == text
    assert parsed.ops.is_empty()
    assert not parsed.found_block


@pytest.mark.parametrize(
    "block",
    [
        f"<MEMORY>{ADD}</Memory>",
        f"<memory >\n{ADD}\n</memory >",
        f"<memory>```json\n{ADD}\n```</memory>",
        f"<memory>\n```\n{ADD}\n```\n</memory>",
        f'<memory type="json">{ADD}</memory>',
        "<memory>{'add': [{'text': 'User prefers Python', 'category': 'preference'},],}</memory>",
        '<memory>{"add": [{"text": "User prefers Python", "category": "Preferences",}]}</memory>',
        "<memory>{'add': [{'text': 'User prefers Python', 'category': 'preference'}], "
        "'x': None}</memory>",
        '<memory>{"memories": [{"content": "User prefers Python", "category": "preference"}]}'
        "</memory>",
        f"<memory>Here it is: {ADD} done</memory>",
    ],
)
def test_lenient_syntax(block: str) -> None:
    parsed = parse_answer("Answer.\n" + block + "\n")
    assert parsed.text == "Answer."
    assert parsed.ops == MemoryOps(add=(PY,))
    assert parsed.found_block


def test_seed_form_and_new_form_merge() -> None:
    block = (
        '<memory>{"memories": [{"content": "User is a senior engineer", "category": "fact"}],'
        ' "add": [{"text": "User works on auth", "category": "context"}]}</memory>'
    )
    ops = parse_answer(block).ops
    assert {m.text for m in ops.add} == {"User is a senior engineer", "User works on auth"}


@pytest.mark.parametrize("body", ["{}", '{"add": []}', "", "  ", '{"add": null}', "```\n{}\n```"])
def test_empty_block_means_nothing(body: str) -> None:
    parsed = parse_answer(f"Hi.<memory>{body}</memory>")
    assert parsed.text == "Hi."
    assert parsed.ops.is_empty()
    assert parsed.found_block
    assert parsed.problems == ()


def test_self_closing_block() -> None:
    parsed = parse_answer("Hi. <memory/> and <memory />")
    assert parsed.text == "Hi. and"
    assert parsed.found_block
    assert parsed.ops.is_empty()


def test_cut_off_block_is_removed_and_yields_nothing() -> None:
    parsed = parse_answer('Sure thing.\n\n<memory>{"add": [{"text": "User likes te')
    assert parsed.text == "Sure thing."
    assert parsed.ops.is_empty()
    assert not parsed.found_block
    assert any("cut off" in p for p in parsed.problems)


@pytest.mark.parametrize("cut", ["<", "<m", "<MEMO", "<memor", "</", "</mem"])
def test_tag_cut_at_the_end_is_removed(cut: str) -> None:
    assert clean_text("Done.\n" + cut) == "Done."


def test_fragment_inside_text_stays() -> None:
    assert clean_text("if a <m and b> c") == "if a <m and b> c"
    assert clean_text("x <3 y") == "x <3 y"


def test_last_element_is_the_block_and_others_are_removed() -> None:
    text = (
        'A <memory>{"add": [{"text": "first"}]}</memory> B\n'
        '<memory>{"add": [{"text": "second"}]}</memory>'
    )
    parsed = parse_answer(text)
    assert parsed.text == "A B"
    assert [m.text for m in parsed.ops.add] == ["second"]
    assert any("earlier" in p for p in parsed.problems)


def test_last_element_cut_off_yields_nothing_even_after_a_good_one() -> None:
    text = f"A <memory>{ADD}</memory> B <memory>{{'add"
    parsed = parse_answer(text)
    assert parsed.text == "A B"
    assert parsed.ops.is_empty()
    assert not parsed.found_block


def test_stray_closing_tags_are_removed() -> None:
    assert clean_text("one </memory> two </MEMORY >") == "one two"


def test_removal_never_joins_fragments_into_a_tag() -> None:
    assert clean_text("<mem<memory/>ory") == "ory"
    assert clean_text("x <m <memory></memory>emory") == "xemory"
    assert "<memory" not in clean_text("<<memory/>memory").lower()


def test_white_space_around_blocks() -> None:
    assert clean_text("<memory>{}</memory>\n\nHello") == "Hello"
    assert clean_text("  Hello\n<memory>{}</memory>\n") == "  Hello"
    assert clean_text("A\n\n<memory>{}</memory>\n\nB") == "A\n\nB"


def test_code_fence_around_the_final_block_goes_with_it() -> None:
    fenced = f"Answer.\n\n```json\n<memory>{ADD}</memory>\n```\n"
    parsed = parse_answer(fenced)
    assert parsed.text == "Answer."
    assert parsed.ops == MemoryOps(add=(PY,))
    assert clean_text("```\n<memory>{}</memory>\n```") == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # a code block that closes right before the block keeps its fences
        ("See:\n```py\nx = 1\n```\n<memory>{}</memory>", "See:\n```py\nx = 1\n```"),
        # text after the closing fence: the fences are the model's text
        ("A\n```\n<memory>{}</memory>\n```\nB", "A\n```\n```\nB"),
        # not at the start of a line: not a fence
        ("x```\n<memory>{}</memory>\n```", "x```\n```"),
        # a cut-off block: its opener stays
        ("A\n```\n<memory>{", "A\n```"),
    ],
)
def test_fences_that_do_not_wrap_the_final_block_stay(text: str, shown: str) -> None:
    assert clean_text(text) == shown


def test_broken_json_is_reported_not_raised() -> None:
    parsed = parse_answer('Ok <memory>{"add": [{"text": "x"}}</memory>')
    assert parsed.text == "Ok"
    assert parsed.ops.is_empty()
    assert parsed.found_block
    assert any("not valid JSON" in p for p in parsed.problems)


@pytest.mark.parametrize(
    "body",
    ['["User likes tea"]', '"just a string"', "no json here", "{1: 2}", "{'add': __import__}"],
)
def test_wrong_shapes_give_no_ops(body: str) -> None:
    parsed = parse_answer(f"<memory>{body}</memory>")
    assert parsed.ops.is_empty()
    assert parsed.problems


def test_python_literals_are_never_evaluated() -> None:
    parsed = parse_answer("<memory>{'add': [{'text': (lambda: 1)()}]}</memory>")
    assert parsed.ops.is_empty()


def test_unknown_category_maps_to_fact_for_add_and_keeps_for_update() -> None:
    block = (
        '<memory>{"add": [{"text": "User has a cat", "category": "pets"}, '
        '{"text": "User is 30", "category": 7}],'
        ' "update": [{"id": "m1", "text": "User lives in Oslo", "category": "place"}]}</memory>'
    )
    parsed = parse_answer(block, allowed_ids=["m1"])
    assert [m.category for m in parsed.ops.add] == ["fact", "fact"]
    assert parsed.ops.update == (MemoryUpdate("m1", "User lives in Oslo", None),)
    assert sum("unknown category" in p for p in parsed.problems) == 3


def test_only_allowed_ids_survive() -> None:
    block = (
        '<memory>{"update": [{"id": "m1", "text": "a"}, {"id": "m7", "text": "b"},'
        ' {"id": "real-uuid", "text": "c"}], "delete": ["m2", "m9", {"id": " M3 "}]}</memory>'
    )
    parsed = parse_answer(block, allowed_ids={"m1": "x", "m2": "y", "m3": "z"})
    assert [u.id for u in parsed.ops.update] == ["m1"]
    assert parsed.ops.delete == ("m2", "m3")
    assert sum("unknown id" in p for p in parsed.problems) == 3
    assert parse_answer(block).ops.is_empty()


def test_duplicates_collapse() -> None:
    block = (
        '<memory>{"add": [{"text": "User likes tea"}, {"text": "user  likes TEA"},'
        ' {"text": "User runs"}],'
        ' "update": [{"id": "m1", "text": "User runs"}, {"id": "m1", "text": "other"}],'
        ' "delete": ["m1", "m2", "m2"]}</memory>'
    )
    ops = parse_answer(block, allowed_ids=("m1", "m2")).ops
    assert ops.add == (NewMemory("User likes tea"),)
    assert ops.update == (MemoryUpdate("m1", "User runs"),)
    assert ops.delete == ("m2",)


def test_caps_on_count_and_length() -> None:
    adds = [{"text": f"User fact number {i}"} for i in range(30)]
    adds.append({"text": "x" * 501})
    block = "<memory>" + json.dumps({"add": adds}) + "</memory>"
    parsed = parse_answer(block)
    assert len(parsed.ops.add) == 20
    assert any("limit of 20" in p for p in parsed.problems)
    assert any("501 chars" in p for p in parsed.problems)
    assert len(parse_answer(block, max_ops=3).ops) == 3
    assert parse_answer(block, max_ops=0).ops.is_empty()


def test_texts_are_normalised_and_control_characters_dropped() -> None:
    block = (
        '<memory>{"add": [{"text": "  User\\n likes\\t tea "}, {"text": "bad\\u0000x"}]}</memory>'
    )
    ops = parse_answer(block).ops
    assert ops.add == (NewMemory("User likes tea"),)


def test_oversized_block_is_refused() -> None:
    parsed = parse_answer("<memory>{" + " " * 70_000 + "}</memory>")
    assert parsed.ops.is_empty()
    assert any("limit" in p for p in parsed.problems)


def test_deep_nesting_does_not_raise() -> None:
    for body in ("[" * 5000 + "]" * 5000, "{'a': " * 3000 + "1" + "}" * 3000):
        parsed = parse_answer("ok<memory>{" + body + "}</memory>")
        assert parsed.text == "ok"
        assert parsed.ops.is_empty()


def test_large_garbage_never_raises() -> None:
    garbage = [
        "<" * 100_000 + "<memory/>x",
        "<memory" * 20_000,
        "</memory" + " " * 100_000,
        "<memory>" + "{" * 50_000 + "</memory>",
        ("<m \n" * 25_000) + "<memory>{}</memory>",
        "<memory>" + "'" * 100_000 + "</memory>",
    ]
    for text in garbage:
        parsed = parse_answer(text)
        assert "<memory" not in parsed.text.lower()
        assert parsed.ops.is_empty()


def test_non_text_input_never_raises() -> None:
    for value in (None, 3, b"<memory>{}</memory>", ["x"]):
        parsed = parse_answer(value)  # type: ignore[arg-type]
        assert parsed.text == ""
        assert parsed.ops.is_empty()
        assert clean_text(value) == ""  # type: ignore[arg-type]


def test_bad_limits_never_raise_from_parse() -> None:
    parsed = parse_answer(f"x<memory>{ADD}</memory>", max_ops=-1)
    assert parsed.text == "x"
    assert parsed.ops.is_empty()
    assert parsed.problems


def test_render_escapes_tags_and_round_trips() -> None:
    ops = MemoryOps(
        add=(NewMemory("User wrote </memory> and <memory>", "context"),),
        update=(MemoryUpdate("m1", "User moved > there", "fact"),),
        delete=("m2",),
    )
    block = render_block(ops)
    assert block.startswith("<memory>") and block.endswith("</memory>")
    assert block.count("<") == 2 and block.count(">") == 2
    assert parse_answer("Hi " + block, allowed_ids=("m1", "m2")).ops == ops
    assert render_block(MemoryOps()) == "<memory>{}</memory>"


def test_ops_validation_errors() -> None:
    with pytest.raises(InvalidTextError):
        NewMemory("  ")
    with pytest.raises(InvalidCategoryError):
        NewMemory("x", "hobby")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        MemoryUpdate("", "x")
    with pytest.raises(InvalidTypeError):
        MemoryOps(add=("text",))  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        MemoryOps(delete="m1")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        render_block({"add": []})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        validate_ops(MemoryOps(), max_ops=-1)
    with pytest.raises(InvalidTypeError):
        validate_ops(MemoryOps(), allowed_ids="m1")
    ops = MemoryOps(add=[PY], delete=["m1"])  # type: ignore[arg-type]
    assert ops.add == (PY,) and ops.delete == ("m1",) and len(ops) == 2


def test_instruction_is_static_short_and_complete() -> None:
    from headroom.memory.protocol import block as protocol

    assert protocol.MEMORY_INSTRUCTION is MEMORY_INSTRUCTION
    assert len(MEMORY_INSTRUCTION) < 1200  # about 250 tokens at most
    for needle in ("exactly one", "third person", "update", "ids", "Never write", "greetings"):
        assert needle in MEMORY_INSTRUCTION
    # The example block in the instruction is itself a valid block.
    start = MEMORY_INSTRUCTION.index("<memory>")
    end = MEMORY_INSTRUCTION.index("</memory>") + len("</memory>")
    example = parse_answer(MEMORY_INSTRUCTION[start:end], allowed_ids=("m1", "m2"))
    assert example.problems == ()
    assert len(example.ops) == 3
