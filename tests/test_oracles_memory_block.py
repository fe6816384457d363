"""The ``<memory>`` block parser against an oracle written from docs/memory-block.md alone.

The oracle below was written from the specification (docs/memory-block.md: "Where the block is,
and what the user sees", "Decoding: lenient syntax", "Validation: strict meaning"), not from
protocol/block.py. It covers the answers the strategy generates: visible text without ``<``
or backticks (so the tag-fragment and code-fence rules around the block do not arise), any
number of elements (closed, self-closing, one cut off at the end), stray closing tags, tags in
any case, white space of the ASCII set around everything; bodies as strict JSON or Python
literals, in a code fence or a sentence, with keys in any case, single items instead of lists,
bare-string adds, the ``text``/``content``/``memory`` aliases, ``{"id": ...}`` deletes and the
seed-era ``memories`` form; texts that collapse, are empty, too long or hold control
characters; categories in any case, plural, unknown or not strings; ids allowed, allowed after
case and white space, or not; duplicates of every kind; more ops than ``max_ops``.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headroom.memory.protocol.block import clean_text, parse_answer
from headroom.memory.protocol.stream_filter import BlockStreamFilter

WS = " \t\r\n\f\v"
CATEGORIES = ("preference", "fact", "context")
ALLOWED = ("m1", "m2", "m3")

# --- the oracle ------------------------------------------------------------------------------

_OPEN = re.compile(r"<memory", re.IGNORECASE)
_CLOSE = re.compile(r"</memory\s*>", re.IGNORECASE)
_SELF_CLOSING = re.compile(r"\s?/>")


@dataclass
class Element:
    body: str | None  # None: self-closing
    complete: bool


def oracle_spans(answer: str) -> list[tuple[int, int, Element | None]]:
    """Every element and stray closing tag, in order: (start, end, element or None)."""
    spans: list[tuple[int, int, Element | None]] = []
    i = 0
    while True:
        opening = _OPEN.search(answer, i)
        closing = _CLOSE.search(answer, i)
        if closing and (not opening or closing.start() < opening.start()):
            spans.append((closing.start(), closing.end(), None))  # a stray closing tag
            i = closing.end()
            continue
        if not opening:
            return spans
        after = opening.end()
        selfclose = _SELF_CLOSING.match(answer, after)
        if selfclose:
            spans.append((opening.start(), selfclose.end(), Element(None, True)))
            i = selfclose.end()
            continue
        end_tag = _CLOSE.search(answer, after)
        gt = answer.find(">", after)
        if end_tag is None:  # cut off: runs to the end of the answer
            body = answer[gt + 1 :] if gt != -1 else ""
            spans.append((opening.start(), len(answer), Element(body, False)))
            return spans
        body = answer[gt + 1 : end_tag.start()] if gt != -1 and gt < end_tag.start() else ""
        spans.append((opening.start(), end_tag.end(), Element(body, True)))
        i = end_tag.end()


def oracle_text(answer: str) -> str:
    spans = oracle_spans(answer)
    if not spans:
        return answer
    out = ""
    pos = 0
    for start, end, _ in spans:
        piece = answer[pos:start].rstrip(WS)  # white space before a removed tag goes with it
        if not out:
            piece = piece if pos == 0 else piece.lstrip(WS)  # nothing visible precedes
        out += piece
        pos = end
    tail = answer[pos:]
    if tail.strip(WS):
        out += tail.lstrip(WS) if not out else tail
    return out


def _decode(body: str) -> Any:
    body = body.strip(WS)
    fence = re.fullmatch(r"```[A-Za-z]*\s*(.*?)\s*```", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    first, last = body.find("{"), body.rfind("}")
    if first == -1 or last < first:
        return None
    source = body[first : last + 1]
    try:
        return json.loads(source)
    except ValueError:
        try:
            return ast.literal_eval(source)
        except (ValueError, SyntaxError):
            return None


def _get(mapping: dict[str, Any], *names: str) -> Any:
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() in names:
            return value
    return None


def _items(section: Any) -> list[Any]:
    if section is None:
        return []
    return list(section) if isinstance(section, list) else [section]


def _text(value: Any, max_chars: int = 500) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text or len(text) > max_chars or len(text.encode("utf-8")) > 16 * 1024:
        return None
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text):
        return None
    return text


def _category(value: Any) -> str | None:
    if isinstance(value, str):
        name = value.strip().lower()
        for known in CATEGORIES:
            if name in (known, known + "s"):
                return known
    return None


def _resolve(ident: Any, allowed_ids: tuple[str, ...] = ALLOWED) -> str | None:
    if not isinstance(ident, str):
        return None
    if ident in allowed_ids:
        return ident
    for allowed in allowed_ids:
        if ident.strip().lower() == allowed.lower():
            return allowed
    return None


Ops = tuple[list[tuple[str, str]], list[tuple[str, str, str | None]], list[str]]


def oracle_ops(
    raw: Any, max_ops: int, allowed_ids: tuple[str, ...] = ALLOWED, max_chars: int = 500
) -> Ops:
    """What validation keeps of a decoded block body (docs: "Validation: strict meaning")."""
    if not isinstance(raw, dict):
        return [], [], []
    adds: list[tuple[str, str]] = []
    for item in _items(_get(raw, "add")) + _items(_get(raw, "memories")):
        if isinstance(item, str):
            text, category = _text(item, max_chars), "fact"
        elif isinstance(item, dict):
            text = _text(_get(item, "text", "content", "memory"), max_chars)
            category = _category(_get(item, "category")) or "fact"
        else:
            continue
        if text is not None:
            adds.append((text, category))
    updates: list[tuple[str, str, str | None]] = []
    for item in _items(_get(raw, "update")):
        if not isinstance(item, dict):
            continue
        text = _text(_get(item, "text", "content", "memory"), max_chars)
        ident = _resolve(_get(item, "id"), allowed_ids)
        if text is not None and ident is not None:
            updates.append((ident, text, _category(_get(item, "category"))))
    deletes: list[str] = []
    for item in _items(_get(raw, "delete")):
        ident = _resolve(_get(item, "id") if isinstance(item, dict) else item, allowed_ids)
        if ident is not None:
            deletes.append(ident)
    # Duplicates collapse, the first wins.
    seen_ids: set[str] = set()
    updates = [u for u in updates if not (u[0] in seen_ids or seen_ids.add(u[0]))]  # type: ignore[func-returns-value]
    updated = {u[0] for u in updates}
    deletes = [d for d in dict.fromkeys(deletes) if d not in updated]
    update_texts = {u[1].lower() for u in updates}
    seen_texts: set[str] = set()
    kept_adds = []
    for text, category in adds:
        if text.lower() in seen_texts or text.lower() in update_texts:
            continue
        seen_texts.add(text.lower())
        kept_adds.append((text, category))
    # Count: updates first, then deletes, then adds.
    updates = updates[:max_ops]
    deletes = deletes[: max_ops - len(updates)]
    kept_adds = kept_adds[: max_ops - len(updates) - len(deletes)]
    return kept_adds, updates, deletes


def oracle_parse(answer: str, max_ops: int) -> tuple[str, Ops, bool]:
    elements = [e for _, _, e in oracle_spans(answer) if e is not None]
    text = oracle_text(answer)
    if not elements:
        return text, ([], [], []), False
    last = elements[-1]
    if not last.complete:
        return text, ([], [], []), False
    raw = _decode(last.body) if last.body is not None else None
    return text, oracle_ops(raw, max_ops), True


# --- the generator ---------------------------------------------------------------------------

ws = st.text(alphabet=WS, max_size=3)
words = st.sampled_from(["Hello", "world.", "Use", "Python,", "ok!", "tea", "a/b", "x>y", "é", "1"])
visible = st.lists(st.tuples(words, ws), max_size=5).map(lambda p: "".join(w + s for w, s in p))

memory_words = st.sampled_from(["User", "likes", "TEA", "tea", "lives", "in", "Porto", "Ünïcode"])
memory_text = st.one_of(
    st.sampled_from(["User likes tea", "user likes TEA", "User lives in Porto"]),
    st.lists(st.tuples(memory_words, st.sampled_from([" ", "  ", "\t", "\n"])), max_size=5).map(
        lambda p: "".join(w + s for w, s in p)
    ),
    st.sampled_from(["", "   ", "bell\x07char", "x" * 501, "y" * 500]),
)
category = st.sampled_from(
    ["fact", "Fact", "preferences", "context", "CONTEXT", "Preference", "hobby", "", 3, None]
)
ident = st.sampled_from(["m1", "m2", "m3", "M1", " m2 ", "m9", "", 7])


def _key(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.capitalize()])


@st.composite
def item_with_text(draw: st.DrawFn, text_keys: tuple[str, ...], extra: dict[str, Any]) -> Any:
    item = {draw(_key(draw(st.sampled_from(text_keys)))): draw(memory_text)}
    for name, value in extra.items():
        if value is not None:
            item[draw(_key(name))] = value
    return item


@st.composite
def ops_json(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if draw(st.booleans()):
        adds = draw(
            st.lists(
                st.one_of(
                    memory_text,
                    category.flatmap(
                        lambda c: item_with_text(("text", "content", "memory"), {"category": c})
                    ),
                ),
                max_size=8,
            )
        )
        seed = draw(st.booleans())
        name = "memories" if seed else "add"
        if seed:
            adds = [a for a in adds if isinstance(a, dict)]
        raw[draw(_key(name))] = adds[0] if len(adds) == 1 and draw(st.booleans()) else adds
    if draw(st.booleans()):
        updates = draw(
            st.lists(
                st.tuples(ident, category).flatmap(
                    lambda ic: item_with_text(("text", "content"), {"id": ic[0], "category": ic[1]})
                ),
                max_size=6,
            )
        )
        raw[draw(_key("update"))] = updates
    if draw(st.booleans()):
        deletes = draw(st.lists(st.one_of(ident, ident.map(lambda i: {"id": i})), max_size=6))
        raw[draw(_key("delete"))] = (
            deletes[0] if len(deletes) == 1 and draw(st.booleans()) else deletes
        )
    return raw


@st.composite
def body(draw: st.DrawFn) -> str:
    raw = draw(ops_json())
    encoded = draw(
        st.sampled_from(["json", "json", "json", "python", "fenced", "sentence", "broken", "empty"])
    )
    if encoded == "python":
        return repr(raw)
    if encoded == "fenced":
        return "```json\n" + json.dumps(raw) + "\n```"
    if encoded == "sentence":
        return "Here you go: " + json.dumps(raw, indent=1) + " (done)"
    if encoded == "broken":
        return '{"add": [{"text": "User likes'
    if encoded == "empty":
        return draw(ws)
    return json.dumps(raw, ensure_ascii=draw(st.booleans()))


open_tag = st.sampled_from(["<memory>", "<MEMORY>", "<Memory>", '<memory type="x">'])
close_tag = st.sampled_from(["</memory>", "</MEMORY>", "</memory >", "</Memory\n>"])
self_closing = st.sampled_from(["<memory/>", "<memory />", "<MEMORY/>"])


@st.composite
def answers(draw: st.DrawFn) -> str:
    parts = [draw(visible)]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["element", "element", "self", "stray"]))
        if kind == "element":
            tag = draw(open_tag) + draw(ws) + draw(body()) + draw(ws) + draw(close_tag)
        elif kind == "self":
            tag = draw(self_closing)
        else:
            tag = draw(close_tag)
        parts += [draw(ws), tag, draw(ws), draw(visible)]
    if draw(st.booleans()):  # most answers end with a block
        block = draw(open_tag) + draw(ws) + draw(body()) + draw(ws) + draw(close_tag)
        parts += [draw(ws), block, draw(ws), draw(st.sampled_from(["", "", "Bye."]))]
    if draw(st.integers(0, 4)) == 0:  # cut off by max_tokens
        cut = draw(open_tag) + draw(body())
        parts += [draw(ws), cut[: draw(st.integers(max(len(cut) // 2, 7), len(cut)))]]
    else:
        parts.append(draw(ws))
    return "".join(parts)


# --- the properties --------------------------------------------------------------------------


def _plain(ops: Any) -> Ops:
    return (
        [(m.text, m.category) for m in ops.add],
        [(u.id, u.text, u.category) for u in ops.update],
        list(ops.delete),
    )


@settings(max_examples=350, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.sampled_from([20, 2, 1]))
def test_parse_answer_agrees_with_the_specification(answer: str, max_ops: int) -> None:
    parsed = parse_answer(answer, allowed_ids=ALLOWED, max_ops=max_ops)
    text, ops, found = oracle_parse(answer, max_ops)
    assert parsed.text == text
    assert clean_text(answer) == text
    assert parsed.found_block == found
    assert _plain(parsed.ops) == ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(visible, ops_json(), st.sampled_from([20, 3, 2, 1]))
def test_validation_of_a_well_formed_block_agrees_with_the_specification(
    text: str, raw: dict[str, Any], max_ops: int
) -> None:
    # Every answer ends with a decodable block: the examples go to validation's rules.
    answer = f"{text}<memory>{json.dumps(raw)}</memory>"
    parsed = parse_answer(answer, allowed_ids=ALLOWED, max_ops=max_ops)
    assert parsed.found_block
    assert _plain(parsed.ops) == oracle_parse(answer, max_ops)[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_streams_the_specifications_visible_text(answer: str, cuts: list[int]) -> None:
    flt = BlockStreamFilter()
    bounds = sorted({0, len(answer), *(c % (len(answer) + 1) for c in cuts)})
    shown = "".join(flt.feed(answer[a:b]) for a, b in itertools.pairwise(bounds)) + flt.finish()
    assert shown == oracle_text(answer)


def test_the_oracle_reads_the_documents_own_examples() -> None:
    # The oracle itself, on the examples docs/memory-block.md spells out.
    assert oracle_text("Answer.\n\n<memory>{}</memory>\n") == "Answer."
    assert oracle_text("A <memory>{}</memory> B") == "A B"
    assert oracle_text("Hi. <memory/> and <memory />") == "Hi. and"
    assert oracle_text("one </memory> two </MEMORY >") == "one two"
    assert oracle_text("<memory>{}</memory>\n\nHello") == "Hello"
    assert oracle_text("  Hello\n<memory>{}</memory>\n") == "  Hello"
    assert oracle_text("A\n\n<memory>{}</memory>\n\nB") == "A\n\nB"
    grammar = (
        '<memory>{"add": [{"text": "User prefers Python for backend work", "category": '
        '"preference"}], "update": [{"id": "m1", "text": "User lives in Berlin", "category": '
        '"fact"}], "delete": ["m2"]}</memory>'
    )
    assert oracle_parse("Sure." + grammar, 20) == (
        "Sure.",
        (
            [("User prefers Python for backend work", "preference")],
            [("m1", "User lives in Berlin", "fact")],
            ["m2"],
        ),
        True,
    )
    assert oracle_parse('Hi <memory>{"add": ["x"]}', 20) == ("Hi", ([], [], []), False)


def test_item_keys_are_matched_ignoring_case() -> None:
    body = (
        '{"add": [{"TEXT": "User likes tea", "Category": "preference"}],'
        ' "update": [{"Text": "User lives in Porto", "ID": "m1", "CATEGORY": "context"}],'
        ' "delete": [{"Id": "m2"}]}'
    )
    parsed = parse_answer(f"Ok.<memory>{body}</memory>", allowed_ids=ALLOWED)
    assert _plain(parsed.ops) == oracle_parse(f"Ok.<memory>{body}</memory>", 20)[1]
    assert _plain(parsed.ops) == (
        [("User likes tea", "preference")],
        [("m1", "User lives in Porto", "context")],
        ["m2"],
    )
