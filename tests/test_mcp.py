"""``headroom-memory mcp``: the real server subprocess, driven over stdio by the ``mcp`` SDK's
own client (``ClientSession`` over ``stdio_client``), on stores that use the real MiniLM model.
What the tools did is checked against the store opened directly afterwards."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, InitializeResult

from headroom.memory.cli.main import build_parser
from headroom.memory.embedders.resolve import ENV_VAR
from headroom.memory.embedders.resolve import MODEL_ID as MINILM_ID
from headroom.memory.store.store import MemoryStore

README = Path(__file__).resolve().parent.parent / "README.md"

TOOLS = {
    "search_memories",
    "list_memories",
    "add_memory",
    "update_memory",
    "delete_memory",
    "forget_memories",
    "memory_history",
}

T = TypeVar("T")

#: The command, run as a subprocess.
SERVE = [sys.executable, "-m", "headroom.memory.cli", "mcp"]


def _env() -> dict[str, str]:
    """What the server needs from our environment to find the same model and package."""
    keys = (ENV_VAR, "XDG_CACHE_HOME", "HOME", "PYTHONPATH")
    return {k: os.environ[k] for k in keys if k in os.environ}


def serve(
    db: Path,
    user: str,
    body: Callable[[ClientSession, InitializeResult], Awaitable[T]],
    errlog: Path,
) -> T:
    """Start ``headroom-memory mcp`` for ``user`` and run ``body`` on an initialised session;
    the session ends (stdin closes, the server exits) before this returns."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "headroom.memory.cli", "mcp", "--db", str(db), "--user", user],
        env=_env(),
    )

    async def run() -> T:
        with errlog.open("w", encoding="utf-8") as err:
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write) as session,
            ):
                init = await session.initialize()
                return await body(session, init)

    return anyio.run(run)


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call (which the text content repeats as JSON)."""
    assert not result.is_error, result.content
    assert result.structured_content is not None
    text = result.content[0]
    assert text.type == "text" and json.loads(text.text) == result.structured_content
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


def no_traceback(errlog: Path) -> None:
    text = errlog.read_text(encoding="utf-8")
    assert "Traceback" not in text, text


def seed(db: Path) -> dict[str, dict[str, str]]:
    """A store holding alice's and bob's memories, written with MiniLM; ids by user and text."""
    ids: dict[str, dict[str, str]] = {"alice": {}, "bob": {}}
    with MemoryStore(db) as store:
        for user, text, category in [
            ("alice", "Loves Neapolitan pizza", "preference"),
            ("alice", "Works as a nurse in Lyon", "fact"),
            ("alice", "Is training for the Paris marathon in April", "context"),
            ("bob", "Favourite food is pizza margherita", "preference"),
            ("bob", "Is a carpenter in Oslo", "fact"),
        ]:
            ids[user][text] = store.add(user, text, category=category).id
    return ids


def test_every_tool_over_stdio_acts_on_the_one_user_only(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    ids = seed(db)
    alice, bob = ids["alice"], ids["bob"]
    pizza = alice["Loves Neapolitan pizza"]
    nurse = alice["Works as a nurse in Lyon"]
    marathon = alice["Is training for the Paris marathon in April"]
    with MemoryStore(db) as store:
        bob_before = store.get_all("bob")

    async def body(session: ClientSession, init: InitializeResult) -> dict[str, Any]:
        assert init.server_info.name == "headroom-memory"
        assert init.instructions and "never pass a user id" in init.instructions
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 100, tool.name
            schema = tool.input_schema
            assert schema["type"] == "object"
            assert not any("user" in name.lower() for name in schema.get("properties", {}))
        add_schema = tools["add_memory"].input_schema
        assert add_schema["required"] == ["text"]
        assert add_schema["properties"]["category"]["enum"] == ["preference", "fact", "context"]
        assert sorted(tools["update_memory"].input_schema["required"]) == ["memory_id", "text"]
        assert tools["search_memories"].input_schema["properties"]["top_k"]["maximum"] == 50
        assert tools["search_memories"].annotations.read_only_hint is True
        assert tools["forget_memories"].annotations.destructive_hint is True

        out: dict[str, Any] = {}
        # search: alice's pizza first; bob's pizza, worded like the query, never comes back
        found = ok(
            await session.call_tool(
                "search_memories", {"query": "Favourite food is pizza margherita", "top_k": 10}
            )
        )["results"]
        assert found[0]["id"] == pizza
        assert {hit["id"] for hit in found} == set(alice.values())
        scores = [hit["score"] for hit in found]
        assert scores == sorted(scores, reverse=True)
        assert set(found[0]) == {"id", "text", "category", "created_at", "updated_at", "score"}
        facts = ok(await session.call_tool("search_memories", {"query": "job", "category": "fact"}))
        assert [hit["id"] for hit in facts["results"]] == [nurse]
        # list: alice's three, oldest first, a page at a time
        listed = ok(await session.call_tool("list_memories", {}))
        assert listed["total"] == 3 and [m["id"] for m in listed["memories"]] == [
            pizza,
            nurse,
            marathon,
        ]
        page = ok(await session.call_tool("list_memories", {"limit": 1, "offset": 1}))
        assert [m["id"] for m in page["memories"]] == [nurse] and page["total"] == 3
        # add, then find it by meaning
        cat = ok(await session.call_tool("add_memory", {"text": " Has a cat named Miso "}))
        assert cat["text"] == "Has a cat named Miso" and cat["category"] == "fact"
        pets = ok(await session.call_tool("search_memories", {"query": "pets", "top_k": 1}))
        assert [hit["id"] for hit in pets["results"]] == [cat["id"]]
        out["cat"] = cat["id"]
        # update keeps the category unless given; history shows both versions
        updated = ok(
            await session.call_tool(
                "update_memory",
                {"memory_id": pizza, "text": "Loves Neapolitan pizza and tiramisu"},
            )
        )
        assert updated["id"] == pizza and updated["category"] == "preference"
        history = ok(await session.call_tool("memory_history", {"memory_id": pizza}))
        assert history["memory_id"] == pizza
        assert [(v["operation"], v["text"]) for v in history["versions"]] == [
            ("add", "Loves Neapolitan pizza"),
            ("update", "Loves Neapolitan pizza and tiramisu"),
        ]
        moved = ok(
            await session.call_tool(
                "update_memory",
                {"memory_id": cat["id"], "text": "Has a cat named Miso", "category": "context"},
            )
        )
        assert moved["category"] == "context"
        # delete (soft: history kept) and forget (hard: nothing kept)
        assert ok(await session.call_tool("delete_memory", {"memory_id": marathon})) == {
            "deleted": marathon
        }
        gone = ok(await session.call_tool("memory_history", {"memory_id": marathon}))
        assert [v["operation"] for v in gone["versions"]] == ["add", "delete"]
        forgot = await session.call_tool("forget_memories", {"memory_ids": [nurse]})
        assert ok(forgot) == {"forgotten": 1}
        # bob's ids do not exist for this server: every tool says so and changes nothing
        for text, bob_id in bob.items():
            for tool, args in [
                ("update_memory", {"memory_id": bob_id, "text": "hijacked"}),
                ("delete_memory", {"memory_id": bob_id}),
                ("memory_history", {"memory_id": bob_id}),
                ("forget_memories", {"memory_ids": [bob_id]}),
            ]:
                message = error_text(await session.call_tool(tool, args))
                assert f"no memory with id {bob_id!r}" in message, (tool, text, message)
        final = ok(await session.call_tool("list_memories", {}))
        assert [m["id"] for m in final["memories"]] == [pizza, cat["id"]]
        return out

    out = serve(db, "alice", body, tmp_path / "stderr.txt")
    no_traceback(tmp_path / "stderr.txt")
    with MemoryStore(db) as store:
        assert [(m.id, m.text, m.category) for m in store.get_all("alice")] == [
            (pizza, "Loves Neapolitan pizza and tiramisu", "preference"),
            (out["cat"], "Has a cat named Miso", "context"),
        ]
        assert store.get("alice", marathon) is None
        assert store.history("alice", nurse) == []  # forgotten: no version left
        # the deleted one's history went with the compaction that forget runs
        assert store.history("alice", marathon) == []
        assert store.get_all("bob") == bob_before  # untouched, nothing added
        assert store.get("bob", out["cat"]) is None
        assert store.users() == ["alice", "bob"]


BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("update_memory", {"text": "x"}, "invalid arguments: memory_id: required but missing"),
    ("delete_memory", {}, "invalid arguments: memory_id: required but missing"),
    ("delete_memory", {"memory_id": "no-such-id"}, "no memory with id 'no-such-id'"),
    ("update_memory", {"memory_id": "no-such-id", "text": "x"}, "no memory with id 'no-such-id'"),
    ("memory_history", {"memory_id": "no-such-id"}, "no memory with id 'no-such-id'"),
    (
        "add_memory",
        {"text": "Plays chess", "category": "hobby"},
        "category: Input should be 'preference', 'fact' or 'context'",
    ),
    ("search_memories", {"query": "x", "category": "hobby"}, "category: Input should be"),
    ("add_memory", {"text": "   "}, "invalid input: memory text must not be empty"),
    ("add_memory", {"text": "x" * 20_000}, "invalid input: memory text is 20000 bytes"),
    ("add_memory", {"category": "fact"}, "text: required but missing"),
    ("add_memory", {"text": 42}, "text: Input should be a valid string"),
    ("search_memories", {"query": " "}, "invalid input: query must not be empty"),
    ("search_memories", {"query": "x", "top_k": 0}, "top_k: Input should be greater than"),
    ("list_memories", {"offset": -1}, "offset: Input should be greater than or equal to 0"),
    ("forget_memories", {}, "give the memory_ids to forget, or all_memories=true"),
    ("forget_memories", {"memory_ids": ["a"], "all_memories": True}, "not both"),
    ("forget_memories", {"memory_ids": ["no-such-id"]}, "nothing was forgotten"),
    (
        "add_memory",
        {"text": "Likes tea", "user_id": "bob"},
        "unknown argument(s) user_id; it takes text, category, dedup (this server serves one "
        "fixed user",
    ),
    ("search_memories", {"query": "tea", "user": "bob"}, "unknown argument(s) user"),
    ("drop_everything", {}, "Unknown tool: drop_everything"),
]


def test_add_memory_dedups_by_default_and_adds_a_copy_on_request(tmp_path: Path) -> None:
    async def body(session: ClientSession, init: InitializeResult) -> list[str]:
        schema = {t.name: t for t in (await session.list_tools()).tools}["add_memory"]
        assert schema.input_schema["properties"]["dedup"]["default"] is True
        first = ok(await session.call_tool("add_memory", {"text": "User has a dog named Max"}))
        same = ok(await session.call_tool("add_memory", {"text": "user has a dog named max"}))
        near = ok(await session.call_tool("add_memory", {"text": "The user has a dog called Max"}))
        assert same == first and near["id"] == first["id"]  # 0.9466 with MiniLM: superseded
        copy = ok(
            await session.call_tool(
                "add_memory", {"text": "The user has a dog called Max", "dedup": False}
            )
        )
        return [first["id"], copy["id"]]

    first_id, copy_id = serve(tmp_path / "db", "alice", body, tmp_path / "err.log")
    with MemoryStore(tmp_path / "db") as store:
        assert [(m.id, m.text) for m in store.get_all("alice")] == [
            (first_id, "The user has a dog called Max"),
            (copy_id, "The user has a dog called Max"),
        ]
        history = store.history("alice", first_id)
        assert [h.text for h in history] == [
            "User has a dog named Max",
            "The user has a dog called Max",
        ]
    no_traceback(tmp_path / "err.log")


def test_bad_input_is_a_tool_error_naming_the_problem_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    db = tmp_path / "fresh.db"  # no store yet: the server creates it

    async def body(session: ClientSession, init: InitializeResult) -> list[str]:
        kept = ok(await session.call_tool("add_memory", {"text": "Drinks green tea"}))
        messages = []
        for tool, args, expected in BAD_CALLS:
            message = error_text(await session.call_tool(tool, args))
            assert expected in message, (tool, args, message)
            assert "\n" not in message and "errors.pydantic.dev" not in message, message
            messages.append(message)
        # still serving, and none of the bad calls wrote anything
        listed = ok(await session.call_tool("list_memories", {}))
        assert [m["id"] for m in listed["memories"]] == [kept["id"]]
        hits = ok(await session.call_tool("search_memories", {"query": "what does alice drink"}))
        assert [h["id"] for h in hits["results"]] == [kept["id"]]
        return messages

    serve(db, "alice", body, tmp_path / "stderr.txt")
    no_traceback(tmp_path / "stderr.txt")
    with MemoryStore(db) as store:
        assert store.recorded_model() == {"model": MINILM_ID, "dim": 384}
        assert store.users() == ["alice"]
        assert [m.text for m in store.get_all("alice")] == ["Drinks green tea"]


def _rpc(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> dict[str, Any] | None:
    """Send one JSON-RPC message; for a request, the response (skipping notifications)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()
    if "id" not in message:
        return None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        assert ready, "no answer from the server"
        reply = json.loads(proc.stdout.readline())
        if reply.get("id") == message["id"]:
            result: dict[str, Any] = reply
            return result
    raise AssertionError("no answer from the server")


def test_forget_all_then_sigterm_ends_cleanly_and_keeps_the_writes(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    ids = seed(db)
    proc = subprocess.Popen(
        [*SERVE, "--db", str(db), "--user", "alice"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        init = _rpc(
            proc,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "0"},
                },
            },
        )
        assert init is not None and init["result"]["serverInfo"]["name"] == "headroom-memory"
        _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})

        def call(number: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
            reply = _rpc(
                proc,
                {
                    "jsonrpc": "2.0",
                    "id": number,
                    "method": "tools/call",
                    "params": {"name": name, "arguments": arguments},
                },
            )
            assert reply is not None and not reply["result"].get("isError"), reply
            structured: dict[str, Any] = reply["result"]["structuredContent"]
            return structured

        assert call(2, "forget_memories", {"all_memories": True}) == {"forgotten": 3}
        assert call(3, "list_memories", {})["total"] == 0
        berlin = call(4, "add_memory", {"text": "Moved to Berlin", "category": "context"})
        proc.send_signal(signal.SIGTERM)  # what a host does after closing stdin, or instead
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert "Traceback" not in err, err
    with MemoryStore(db) as store:
        assert [(m.id, m.text) for m in store.get_all("alice")] == [
            (berlin["id"], "Moved to Berlin")
        ]
        assert all(store.history("alice", i) == [] for i in ids["alice"].values())
        assert sorted(m.id for m in store.get_all("bob")) == sorted(ids["bob"].values())


def test_streamable_http_on_loopback_serves_the_same_tools_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    db = tmp_path / "memory.db"
    ids = seed(db)
    proc = subprocess.Popen(
        [*SERVE, "--db", str(db), "--user", "bob", "--http-port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready, "the server never said where it listens"
        line = proc.stderr.readline().decode()
        match = re.fullmatch(
            r"headroom-memory: serving the memories of 'bob' over MCP at "
            r"(http://127\.0\.0\.1:\d+/mcp)\n",
            line,
        )
        assert match, line
        url = match.group(1)

        async def run() -> dict[str, Any]:
            async with (
                streamable_http_client(url) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                tools = (await session.list_tools()).tools
                assert {tool.name for tool in tools} == TOOLS
                added = ok(await session.call_tool("add_memory", {"text": "Owns a sailboat"}))
                found = ok(
                    await session.call_tool("search_memories", {"query": "pizza", "top_k": 10})
                )
                assert {hit["id"] for hit in found["results"]} == {
                    *ids["bob"].values(),
                    added["id"],
                }
                return added

        added = anyio.run(run)
        # DNS rebinding protection: a request naming another host is refused
        request = urllib.request.Request(
            url,
            data=b"{}",
            method="POST",
            headers={"Host": "attacker.example", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 421 and refused.value.read() == b"Invalid Host header"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert "Traceback" not in err, err
    with MemoryStore(db) as store:
        assert [m.text for m in store.get_all("bob")][-1] == "Owns a sailboat"
        assert store.get("bob", added["id"]) is not None
        assert store.get("alice", added["id"]) is None
        assert len(store.get_all("alice")) == 3


def _cli(*argv: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess; ``code`` runs first (to hide the SDK, say)."""
    prefix = (code or "") + "\nfrom headroom.memory.cli.main import main\nraise SystemExit(main())"
    return subprocess.run(
        [sys.executable, "-c", prefix, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
        stdin=subprocess.DEVNULL,
    )


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headroom-memory: "), err
    return lines[0]


def test_without_the_mcp_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    hide_sdk = "import sys\nsys.modules['mcp'] = None  # as if the mcp extra were not installed"
    done = _cli("mcp", "--db", str(db), "--user", "alice", code=hide_sdk)
    assert done.returncode == 1
    assert _one_line(done.stderr) == (
        "headroom-memory: the mcp command needs the MCP Python SDK 2.x: "
        "pip install 'headroom-memory[mcp]'"
    )
    assert done.stdout == "" and not db.exists()


def test_a_bad_user_fails_before_any_store_is_created(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    done = _cli("mcp", "--db", str(db), "--user", " ")
    assert done.returncode == 1
    assert _one_line(done.stderr) == "headroom-memory: user_id must not be empty"
    missing = _cli("mcp", "--db", str(db))
    assert missing.returncode == 2 and "--user" in missing.stderr
    assert not db.exists()


def test_the_readme_config_entry_starts_this_command() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## MCP") :]
    blocks = re.findall(r"^```json\n(.*?)^```", section, re.M | re.S)
    entries = [json.loads(b)["mcpServers"] for b in blocks if '"mcpServers"' in b]
    assert entries, "README's MCP section has no mcpServers entry"
    (entry,) = entries[0].values()
    assert entry["command"] == "headroom-memory"
    args = build_parser().parse_args(entry["args"])
    assert args.command == "mcp" and args.user and args.db
    assert args.handler.__module__ == "headroom.memory.cli.mcp_command"
    assert "--user" in section and "one user" in section
