"""The injection suite's development set and figures (bench/bench_injection.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from bench import bench_injection as B
from headroom.memory.protocol import relevance
from headroom.memory.types import Memory


def _personas() -> list[dict[str, object]]:
    data = json.loads((B.DATA / "personas.json").read_text(encoding="utf-8"))
    personas: list[dict[str, object]] = data["personas"]
    return personas


def test_every_message_names_memories_of_its_persona() -> None:
    for persona in _personas():
        sessions = persona["sessions"]
        assert isinstance(sessions, list)
        keys = [key for session in sessions for key, _, _ in session]
        assert len(keys) == len(set(keys)), persona["name"]
        assert 5 <= len(keys) <= 30
        messages = persona["messages"]
        assert isinstance(messages, list)
        for message in messages:
            assert message["wanted"], message["text"]
            assert set(message["wanted"]) | set(message.get("ok", ())) <= set(keys), message


def test_splits_and_generic_messages_do_not_overlap() -> None:
    splits = {str(p["split"]) for p in _personas()}
    assert splits == {"dev", "heldout"}
    generic = json.loads((B.DATA / "generic.json").read_text(encoding="utf-8"))
    dev, heldout = set(generic["dev"]), set(generic["heldout"])
    assert len(dev) == len(generic["dev"]) == 50 and len(heldout) == len(generic["heldout"]) == 50
    assert not dev & heldout
    assert not (dev | heldout) & set(relevance.GENERIC)  # the rule is judged on other texts
    assert set(B.FILLER) == {str(p["name"]) for p in _personas()}


def _memory(key: str) -> Memory:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Memory(key, key, "fact", now, now, "manual", {"key": key})


def test_evaluate_counts_generic_share_recall_and_precision() -> None:
    a, b, c = _memory("a"), _memory("b"), _memory("c")
    store = B.StoreCase("u", "small", "dev", 3, probes=[[(a, 0.1)]] * 10)
    store.cases = [
        B.Case("q1", [(a, 0.9), (b, 0.5), (c, 0.1)], frozenset({"a"}), frozenset({"b"})),
        B.Case("q2", [(c, 0.3)], frozenset({"b"})),
        B.Case("hi", [(a, 0.2)], generic=True, ok=frozenset({"dev"})),
        B.Case("yo", [(a, 0.05)], generic=True, ok=frozenset({"dev"})),
        B.Case("hey", [(a, 0.9)], generic=True, ok=frozenset({"heldout"})),
    ]
    figures = B.evaluate([store], B.fixed(0.15), "small", "dev")
    # Generic: "hi" injects, "yo" does not ("hey" is held out). Wanted: a of {a, b}. Injected,
    # ok ones aside: a (wanted) and c (not).
    assert figures == {"generic": 0.5, "recall": 0.5, "precision": 0.5}
    assert B.evaluate([store], B.fixed(0.15), "small", "heldout")["generic"] == 1.0


def test_the_library_row_is_the_library_rule() -> None:
    a, b = _memory("a"), _memory("b")
    store = B.StoreCase("u", "small", "dev", 2, probes=[[(a, 0.1 * i)] for i in range(10)])
    background = relevance.Background(2, tuple(0.1 * i for i in range(10)))
    for g in (0.0, 0.3, 0.9):
        case = B.Case("q", [(a, 0.7), (b, 0.45)], genericness=g)
        assert B.RULES[B.LIBRARY](store, case) == relevance.select(case.results, background, g)
