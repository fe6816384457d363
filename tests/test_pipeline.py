"""The pipeline's plain functions: instruct, inject, parse with short ids, clean, modes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from store_helpers import HashEmbedder

from headroom.memory import MemoryStore
from headroom.memory.errors import InvalidInputError
from headroom.memory.protocol.block import MEMORY_INSTRUCTION, MemoryOps, MemoryUpdate, NewMemory
from headroom.memory.protocol.pipeline import (
    INSTRUCTION_MESSAGE,
    Settings,
    check_mode,
    clean_completion,
    content_text,
    instruct,
    is_json_mode,
    last_user_text,
    map_ops,
    parse_choice,
    prepare,
    store_ops,
)

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "ok"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Which database"},
            {"type": "image_url", "image_url": {"url": "data:,x"}},
            {"type": "text", "text": "should I use?"},
        ],
    },
]


def test_instruct_after_the_callers_system_prompt_and_byte_stable() -> None:
    before = copy.deepcopy(CONVERSATION)
    first = instruct(CONVERSATION)
    second = instruct([*CONVERSATION[:2], {"role": "user", "content": "other"}])
    assert before == CONVERSATION  # never mutated
    assert first[2] == {"role": "system", "content": MEMORY_INSTRUCTION}
    assert first[2] == dict(INSTRUCTION_MESSAGE)
    assert json.dumps(first[:3]) == json.dumps(second[:3])
    assert instruct([{"role": "user", "content": "hi"}])[0]["content"] == MEMORY_INSTRUCTION


def test_last_user_text_reads_text_parts_only() -> None:
    assert last_user_text(CONVERSATION) == "Which database\nshould I use?"
    assert last_user_text([{"role": "assistant", "content": "x"}]) == ""
    assert content_text(None) == ""


def test_modes_and_json_detection() -> None:
    assert [check_mode(m) for m in (None, "on", "off", "read", "write")] == [
        "on",
        "on",
        "off",
        "read",
        "write",
    ]
    with pytest.raises(InvalidInputError):
        check_mode("later")
    assert is_json_mode({"type": "json_object"}) and is_json_mode({"type": "json_schema"})
    assert not is_json_mode({"type": "text"}) and not is_json_mode(None)


def test_short_ids_map_to_real_ids_and_unknown_ones_drop() -> None:
    ops = MemoryOps(
        add=(NewMemory("User likes tea"),),
        update=(MemoryUpdate("m1", "User lives in Berlin"), MemoryUpdate("m7", "forged")),
        delete=("m2", "m9"),
    )
    mapped = map_ops(ops, {"m1": "real-1", "m2": "real-2"})
    assert [u.id for u in mapped.update] == ["real-1"]
    assert mapped.delete == ("real-2",)
    assert mapped.add == ops.add
    parsed = parse_choice(
        'Hi.<memory>{"update": [{"id": "m2", "text": "User x"}], "delete": ["m1", "m3"]}</memory>',
        {"m1": "A", "m2": "B"},
    )
    assert parsed.text == "Hi."
    assert [(u.id, u.text) for u in parsed.ops.update] == [("B", "User x")]
    assert parsed.ops.delete == ("A",)


def test_clean_completion_cleans_every_choice_and_keeps_the_rest() -> None:
    block = '<memory>{"add": [{"text": "User a"}]}</memory>'
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": f"a{block}"},
        {"role": "assistant", "content": "b<memory>{}</memory>"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    completion = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": i, "finish_reason": "stop", "message": m} for i, m in enumerate(messages)
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )
    first = clean_completion(completion, {})
    assert first is not None and [m.text for m in first.ops.add] == ["User a"]
    assert [c.message.content for c in completion.choices] == ["a", "b", None]
    assert completion.choices[2].message.tool_calls[0].function.name == "f"
    assert completion.usage is not None and completion.usage.total_tokens == 3


def test_prepare_places_memories_just_before_the_last_user_message(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "db", embedder=HashEmbedder(dim=32))
    try:
        settings = Settings(user_id="alice", min_score=-1.0)
        store.add("alice", "User uses PostgreSQL")
        store.add("bob", "User uses MySQL")
        on = prepare(store, settings, CONVERSATION, "on")
        roles = [m["role"] for m in on.messages]
        assert roles == ["system", "developer", "system", "user", "assistant", "system", "user"]
        assert on.messages[-1] == CONVERSATION[-1]
        assert "User uses PostgreSQL" in on.messages[-2]["content"]
        assert "MySQL" not in json.dumps(on.messages)
        assert [s for s, _, _ in on.shown] == ["m1"] and on.extract and not on.background

        read = prepare(store, settings, CONVERSATION, "read")
        assert MEMORY_INSTRUCTION not in json.dumps(read.messages) and not read.extract
        write = prepare(store, settings, CONVERSATION, "write")
        assert write.context is None and write.extract
        off = prepare(store, settings, CONVERSATION, "off")
        assert off.messages == CONVERSATION and not off.extract
        json_mode = prepare(store, settings, CONVERSATION, "on", json_mode=True)
        assert json_mode.background and MEMORY_INSTRUCTION not in json.dumps(json_mode.messages)

        applied = store_ops(store, "alice", parse_choice(
            'x<memory>{"add": [{"text": "User likes Go", "category": "preference"}], '
            '"delete": ["m1"]}</memory>', on.id_map).ops)  # fmt: skip
        assert applied is not None and len(applied.added) == 1 and len(applied.deleted) == 1
        assert [m.text for m in store.get_all("alice")] == ["User likes Go"]
        assert [m.text for m in store.get_all("bob")] == ["User uses MySQL"]
        assert store_ops(store, "alice", MemoryOps()) is None
    finally:
        store.close()
