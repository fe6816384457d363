"""The offline demo: the real memory pipeline over a short multi-session conversation.

Everything is real (the wrapper, the openai SDK over HTTP, MiniLM embeddings, the on-disk
store) except the LLM: a scripted local endpoint (``scripted_llm``) stands in for it, and the
demo says so. Its answers only mention what the injected memory notes contain, so what you see
recalled in the last session came through retrieval and injection, not from the script.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .guard import fail, guard
from .scripted_llm import Note, ScriptedLLM, ScriptedTurn, note_id

USER = "maya"


def _adds(*items: tuple[str, str]) -> dict[str, Any]:
    return {"add": [{"text": text, "category": category} for text, category in items]}


def _db_answer(notes: Sequence[Note]) -> str:
    texts = " ".join(n["text"] for n in notes).lower()
    parts = []
    if "postgres" in texts:
        parts.append("your team already runs PostgreSQL, so start there")
    if "sql by hand" in texts:
        parts.append("you prefer hand-written SQL, so plain queries through psycopg fit")
    if not parts:
        return "It depends on your workload; PostgreSQL is a safe default."
    return "From what you told me before: " + "; and ".join(parts) + "."


def _city_answer(notes: Sequence[Note]) -> str:
    texts = " ".join(n["text"] for n in notes)
    for city in ("Porto", "Lisbon"):
        if city in texts:
            return f"You live in {city}."
    return "I don't know where you live; tell me and I'll remember."


SCRIPT: tuple[ScriptedTurn, ...] = (
    ScriptedTurn(
        "I'm Maya",
        lambda notes: "Nice to meet you, Maya! Fintech backends are a fun place to be.",
        lambda notes: _adds(
            ("User's name is Maya", "fact"),
            ("User is a backend developer at a small fintech startup", "fact"),
            ("User lives in Lisbon", "fact"),
        ),
    ),
    ScriptedTurn(
        "PostgreSQL",
        lambda notes: "Good choices: PostgreSQL and Python cover most backend needs.",
        lambda notes: _adds(
            ("User's team uses the PostgreSQL database for its whole stack", "fact"),
            ("User writes most services in Python", "preference"),
        ),
    ),
    ScriptedTurn("that's all", lambda notes: "Have a good evening!", lambda notes: {}),
    ScriptedTurn(
        "event-driven",
        lambda notes: "An outbox table plus a message broker is the usual first step.",
        lambda notes: _adds(
            ("User is migrating the payments service to an event-driven design", "context")
        ),
    ),
    ScriptedTurn(
        "moved from Lisbon to Porto",
        lambda notes: "Congratulations on the move!",
        lambda notes: (
            {"update": [{"id": mid, "text": "User lives in Porto"}]}
            if (mid := note_id(notes, "Lisbon"))
            else _adds(("User lives in Porto", "fact"))
        ),
    ),
    ScriptedTurn(
        "ORMs",
        lambda notes: "Fair enough: plain SQL keeps the queries visible.",
        lambda notes: _adds(("User prefers writing SQL by hand over using ORMs", "preference")),
    ),
    ScriptedTurn("What database", _db_answer, lambda notes: {}),
    ScriptedTurn("which city", _city_answer, lambda notes: {}),
)

SESSIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "session 1",
        (
            "Hi! I'm Maya, a backend developer at a small fintech startup in Lisbon.",
            "Our whole stack runs on PostgreSQL, and I write most services in Python.",
            "Thanks, that's all for today!",
        ),
    ),
    (
        "session 2",
        (
            "This quarter I'm migrating our payments service to an event-driven design.",
            "By the way, we moved from Lisbon to Porto last week.",
            "Honestly I dislike ORMs; I'd rather write SQL by hand.",
        ),
    ),
)
NEW_SESSION: tuple[str, ...] = (
    "What database should I use for my new project?",
    "Can you remind me which city I live in now?",
)
#: The `.memory.search` shown at the end: phrased as the user would ask in a chat, which is
#: what injection searches with (memories are written as "User ...").
SEARCH_QUERY = "What language should I write the new service in?"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run(db_path: Path, *, out: Any = sys.stdout, stream_turn: int = 1) -> int:
    """Run the demo against a store at ``db_path``; returns an exit code."""
    from openai import OpenAI

    from ..client.wrapper import with_fast_memory
    from ..embedders import get_embedder
    from ..errors import ModelNotFoundError
    from ..protocol.pipeline import MemoryEvent

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    try:
        started = time.perf_counter()
        embedder = get_embedder()
        embedder.embed(["warm-up"])
        load_time = time.perf_counter() - started
    except ModelNotFoundError as exc:
        return fail(f"demo: {exc}")

    llm = ScriptedLLM(SCRIPT).start()
    events: list[MemoryEvent] = []
    say("headroom memory demo (offline)")
    say(f"  LLM: a SCRIPTED local endpoint at {llm.base_url} stands in for a model;")
    say("       it answers from a script, using only the memory notes injected into the request")
    say(f"  embeddings: {embedder.model_id} on onnxruntime (loaded in {_ms(load_time)})")
    say(f"  store: {db_path}")
    try:
        base = OpenAI(base_url=llm.base_url, api_key="not-needed-for-the-scripted-endpoint")
        client = with_fast_memory(
            base, user_id=USER, db_path=str(db_path), observer=events.append, embedder=embedder
        )
        turn_no = 0
        for title, turns in (
            *SESSIONS,
            ("new session: nothing of the above is in the prompt", NEW_SESSION),
        ):
            say("")
            say(f"=== {title} ===")
            for text in turns:
                turn_no += 1
                _turn(client, base, text, turn_no == stream_turn, events, say)
        say("")
        say("=== what the store holds now ===")
        for memory in client.memory.get_all():
            say(f"  [{memory.category:10s}] {memory.text}   (id {memory.id[:8]})")
        t0 = time.perf_counter()
        results = client.memory.search(SEARCH_QUERY, top_k=3)
        search_time = time.perf_counter() - t0
        say("")
        say(f"search({SEARCH_QUERY!r}, top_k=3) in {_ms(search_time)}:")
        for memory, score in results:
            say(f"  {score:.2f}  {memory.text}")
        moved = [m for m in client.memory.get_all() if "Porto" in m.text]
        if moved:
            say("")
            say(f"history of {moved[0].id[:8]} (an update supersedes, the old version is kept):")
            for version in client.memory.history(moved[0].id):
                say(f"  {version.at:%H:%M:%S}  {version.operation:7s} {version.text}")
        stats = client.memory.stats()
        say("")
        say(
            f"stats: {stats['total_chunks']} memories "
            + ", ".join(f"{k} {v}" for k, v in stats["categories"].items())
        )
        client.close()
    finally:
        llm.stop()
    say("")
    say("From a checkout, `python -m bench` runs the benchmarks (bench/README.md has them all).")
    return 0


def _turn(client: Any, base: Any, text: str, stream: bool, events: list[Any], say: Any) -> None:
    messages = [{"role": "user", "content": text}]
    n_events = len(events)
    t0 = time.perf_counter()
    if stream:
        pieces = []
        for chunk in client.chat.completions.create(
            model="scripted", messages=messages, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        answer = "".join(pieces)
    else:
        response = client.chat.completions.create(model="scripted", messages=messages)
        answer = response.choices[0].message.content or ""
    call_time = time.perf_counter() - t0
    t1 = time.perf_counter()
    client.flush()
    store_time = time.perf_counter() - t1
    t2 = time.perf_counter()
    base.chat.completions.create(model="scripted", messages=messages)
    bare_time = time.perf_counter() - t2
    say(f"user: {text}")
    event = events[n_events] if len(events) > n_events else None
    if event is not None and event.injected:
        say("  injected:")
        for short_id, memory, score in event.injected:
            say(f"    {short_id} ({score:.2f}) {memory.text}")
    else:
        say("  injected: nothing relevant yet")
    say(f"  assistant{' (streamed)' if stream else ''}: {answer}")
    if event is not None and not event.ops.is_empty():
        for add in event.ops.add:
            say(f"  extracted: + [{add.category}] {add.text}")
        for upd in event.ops.update:
            say(f"  extracted: ~ {upd.id[:8]} -> {upd.text}")
        for gone in event.ops.delete:
            say(f"  extracted: - {gone[:8]}")
    else:
        say("  extracted: nothing worth remembering")
    overhead = _ms(max(call_time - bare_time, 0.0))
    say(
        f"  latency: call with memory {_ms(call_time)}, the same call without memory"
        f" {_ms(bare_time)} (overhead {overhead}); storing after the return {_ms(store_time)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``headroom-memory demo``."""
    parser = argparse.ArgumentParser(prog="headroom-memory demo")
    add_arguments(parser)
    return handle(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument("--db", help="keep the demo store in this directory (default: a temp dir)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``demo`` subcommand."""
    parser = sub.add_parser("demo", help="the offline demo of the whole pipeline")
    add_arguments(parser)
    parser.set_defaults(handler=handle)


@guard
def handle(args: argparse.Namespace) -> int:
    """Run the demo as the CLI asks (a failure is one line on stderr and exit 1)."""
    if args.db:
        return run(Path(args.db))
    tmp = Path(tempfile.mkdtemp(prefix="headroom-demo-"))
    try:
        return run(tmp / "memory.db")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
