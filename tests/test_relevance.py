"""The relevance decision (protocol/relevance.py): the rule, the calibration, and the wrapper
injecting with it (the default) for a small and a large store, real MiniLM throughout."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import openai
import pytest
from openai_server import ScriptedServer, memory_reply

from bench.locomo import data
from headroom.memory import with_fast_memory, with_memory
from headroom.memory.client.background import close_all
from headroom.memory.protocol import relevance
from headroom.memory.protocol.relevance import Background, Calibration, quantile, select
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import Memory, NewMemory

MAYA = (
    "User's name is Maya",
    "User is a backend developer at a small fintech startup",
    "User lives in Porto",
    "User's team uses the PostgreSQL database for its whole stack",
    "User writes most services in Python",
    "User prefers writing SQL by hand over using ORMs",
    "User is migrating the payments service to an event-driven design",
    "User's team is evaluating Kafka and RabbitMQ as the message broker",
    "User cycles to work most days",
)


def _memory(text: str) -> Memory:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Memory(
        id=f"id-{text}",
        text=text,
        category="fact",
        created_at=now,
        updated_at=now,
        source="manual",
        metadata={},
    )


# --- the rule ------------------------------------------------------------------------------------


def test_quantile_interpolates_like_numpy() -> None:
    values = [0.5, 0.1, 0.3, 0.2]
    assert quantile(values, 0.0) == 0.1 and quantile(values, 1.0) == 0.5
    assert math.isclose(quantile(values, 0.5), 0.25)
    assert math.isclose(quantile(values, 0.9), 0.44)
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_gate_rises_with_genericness_and_both_follow_the_probe_scores() -> None:
    scores = tuple(i / 100 for i in range(11))  # 0.00 .. 0.10
    bg = Background(10, scores)
    assert math.isclose(bg.gate(0.0), 0.09 + relevance.GATE_BASE)
    assert math.isclose(bg.gate(0.5) - bg.gate(0.0), 0.5 * relevance.GATE_SLOPE)
    assert math.isclose(bg.floor, 0.05 + relevance.FLOOR_MARGIN)
    shifted = Background(10, tuple(s + 0.3 for s in scores))
    assert math.isclose(shifted.gate(0.2) - bg.gate(0.2), 0.3)
    assert math.isclose(shifted.floor - bg.floor, 0.3)


def test_select_gates_on_the_best_score_then_filters_by_the_floor() -> None:
    bg = Background(10, tuple(0.3 for _ in range(10)))  # gate(g) = -0.15 + 2 g, floor 0.35
    a, b, c = _memory("a"), _memory("b"), _memory("c")
    generic, personal = 0.8, 0.2  # gates 1.45 and 0.25
    assert select([(a, 0.9), (b, 0.4)], bg, generic) == []
    assert select([(a, 0.9), (b, 0.4), (c, 0.1)], bg, personal) == [(a, 0.9), (b, 0.4)]
    # The best result goes in once the message passes, even below the floor.
    assert select([(a, 0.3), (b, 0.2)], bg, personal) == [(a, 0.3)]
    assert select([(a, 0.2)], bg, personal) == []
    assert select([], bg, personal) == []
    assert select([(a, float("nan"))], bg, personal) == []


def test_probes_are_generic_messages_and_genericness_tells_them_apart(store: MemoryStore) -> None:
    assert set(relevance.PROBES) <= set(relevance.GENERIC)
    embedder = store.embedder
    assert relevance.genericness(embedder, "hello") > 0.99  # one of them
    assert relevance.genericness(embedder, "hi") > 0.6
    personal = relevance.genericness(embedder, "What database should I use for my new project?")
    assert personal < 0.35


@pytest.mark.parametrize(
    ("measured", "now", "current"),
    [(8, 8, True), (8, 9, True), (8, 10, False), (8, 7, True), (8, 6, False), (0, 1, False)],
)
def test_background_is_measured_again_when_the_count_moves_by_the_factor(
    measured: int, now: int, current: bool
) -> None:
    assert Background(measured, (0.1,)).is_current(now) is current


# --- calibration on a real store -----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MemoryStore]:
    s = MemoryStore(tmp_path / "store", sync="off")
    yield s
    s.close()


def test_calibration_measures_once_and_again_after_growth(store: MemoryStore) -> None:
    store.add_many("maya", [NewMemory(t) for t in MAYA[:4]], dedup=False)
    cal = Calibration()
    first = cal.background(store, "maya")
    assert first.count == 4 and len(first.probe_scores) == len(relevance.PROBES)
    assert cal.background(store, "maya") is first and cal.measured == 1
    store.add("maya", MAYA[4])  # 5 >= 4 * 1.25: measured again
    second = cal.background(store, "maya")
    assert second.count == 5 and cal.measured == 2
    assert cal.background(store, "bob").count == 0  # an empty user: no memories to score
    assert cal.background(store, "bob").probe_scores == (0.0,) * len(relevance.PROBES)


def test_refresh_measures_only_known_users_whose_count_moved(store: MemoryStore) -> None:
    store.add_many("maya", [NewMemory(t) for t in MAYA[:4]], dedup=False)
    cal = Calibration()
    assert cal.refresh(store, "maya") is None and cal.measured == 0  # never asked about
    first = cal.background(store, "maya")
    assert cal.refresh(store, "maya") is first and cal.measured == 1  # still current
    store.add("maya", MAYA[4])
    refreshed = cal.refresh(store, "maya")
    assert refreshed is not None and refreshed.count == 5 and cal.measured == 2
    assert cal.background(store, "maya") is refreshed  # the next call measures nothing


def test_after_write_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    closed = MemoryStore(tmp_path / "closed", sync="off")
    closed.add_many("maya", [NewMemory(t) for t in MAYA[:4]], dedup=False)
    relevance.calibration().background(closed, "maya")
    closed.close()  # its next count raises
    relevance.after_write(closed, "maya", None)
    assert "measuring the relevance background of user 'maya' failed" in caplog.text
    relevance.after_write(closed, "maya", 0.15)  # a fixed floor: nothing measured, no error


# --- end to end through the wrapper -------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


def _injected(server: ScriptedServer) -> list[str]:
    """The texts of the memories injected in the last request."""
    messages = server.chat_requests()[-1]["messages"]
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and "<memories>" in content:
            lines = content.split("<memories>\n")[1].split("\n</memories>")[0].split("\n")
            return [json.loads(line)["text"] for line in lines]
    return []


def _ask(client: object, server: ScriptedServer, text: str) -> list[str]:
    server.push("ok")
    client.chat.completions.create(  # type: ignore[attr-defined]
        model="m", messages=[{"role": "user", "content": text}], memory="read"
    )
    return _injected(server)


def _large_filler() -> list[NewMemory]:
    if not data.locomo_path().is_file():
        pytest.skip(f"LoCoMo not found at {data.locomo_path()}")
    conv = data.load(ids=["conv-26"])[0]
    name = conv.speakers[0]
    return [NewMemory(f.text.replace(name, "User"), "fact", None, f.created_at) for f in conv.facts]


@pytest.mark.parametrize("size", ["small", "large"])
def test_wrapper_injects_relevant_memories_and_nothing_for_generic_messages(
    server: ScriptedServer, tmp_path: Path, size: str
) -> None:
    base = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    client = with_fast_memory(base, user_id="maya", db_path=tmp_path / "db")  # the default rule
    items = [NewMemory(t) for t in MAYA] + (_large_filler() if size == "large" else [])
    MemoryStore.open(tmp_path / "db").add_many("maya", items, source="import", dedup=False)
    for generic in ("hi", "thanks!", "make it shorter", "what is 17 times 23?"):
        assert _ask(client, server, generic) == [], generic
    assert "User's team uses the PostgreSQL database for its whole stack" in _ask(
        client, server, "What database should I use for my new project?"
    )
    assert "User lives in Porto" in _ask(
        client, server, "Can you remind me which city I live in now?"
    )
    retries = "How should we handle retries when a payment event fails to publish?"
    assert "User is migrating the payments service to an event-driven design" in _ask(
        client, server, retries
    )
    assert "User's team is evaluating Kafka and RabbitMQ as the message broker" in _ask(
        client, server, "Is Kafka or RabbitMQ better for our payments events?"
    )
    # A fixed floor is still an explicit override: 0.15 injects for "hi" as before.
    fixed = with_fast_memory(base, user_id="maya", db_path=tmp_path / "db", min_score=0.15)
    assert _ask(fixed, server, "hi") != []


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_the_writer_measures_the_background_again_after_storing_off_the_next_call(
    server: ScriptedServer, tmp_path: Path, mode: str
) -> None:
    """Memories that move a user's count past the refresh factor, stored by the inline writer
    or the background extraction worker: the writer measures the background again once they
    are stored, and the next call measures nothing; what it measured is what the call would
    have (the same memories)."""
    base = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    wrap = with_fast_memory if mode == "inline" else with_memory
    client = wrap(base, user_id="maya", db_path=tmp_path / "db")
    store: MemoryStore = client._core.store
    store.add_many("maya", [NewMemory(t) for t in MAYA[:4]], dedup=False)
    cal = relevance.calibration()
    if mode == "inline":
        server.push(memory_reply("Noted.", MAYA[4], MAYA[5]))
    else:  # the answer, then the worker's extraction call
        server.push("Noted.")
        server.push(memory_reply("", MAYA[4], MAYA[5]))
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert client.flush(timeout=60)
    measured = cal.measured
    kept = cal.background(store, "maya")
    assert kept.count == 6 and cal.measured == measured  # measured by the writer, before
    server.push("ok")
    client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "thanks"}], memory="read"
    )
    assert cal.measured == measured
    assert kept == relevance.background_of(store, "maya", store.backend.count("maya"))
    # A fixed floor never measures a background, on the call or after it.
    fixed = with_fast_memory(base, user_id="rex", db_path=tmp_path / "db", min_score=0.15)
    server.push(memory_reply("Noted.", "User likes tea"))
    fixed.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    fixed.flush()
    assert cal.refresh(store, "rex") is None
    close_all()  # no extraction worker outlives the test
