"""Damage never disappears silently: a store that recovered from mid-file damage says so when
it opens (a WARNING on the ``headroom.memory`` logger), in ``stats()``, and in ``verify``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from headroom.memory.store.store import MemoryStore
from tests._native_helpers import frames, segments
from tests.store_helpers import HashEmbedder


def _damaged_store(tmp_path: Path) -> tuple[Path, list[str]]:
    db = tmp_path / "db"
    with MemoryStore(db, embedder=HashEmbedder(16), sync="off") as store:
        ids = [store.add("u", f"User fact number {i}").id for i in range(4)]
    [seg] = segments(db)
    middle = list(frames(seg))[2]  # a memory's frame, neither the first nor the last
    data = bytearray(seg.read_bytes())
    data[middle.offset + 20] ^= 0x40
    seg.write_bytes(bytes(data))
    return db, ids


def test_opening_a_damaged_store_warns_and_stats_report_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db, ids = _damaged_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="headroom.memory"):
        store = MemoryStore(db, embedder=HashEmbedder(16))
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "recovered from damage" in warnings[0].getMessage()
        message = warnings[0].getMessage()
        assert str(db) in message and "1 records" in message and segments(db)[0].name in message
        lost = [i for i in ids if store.get("u", i) is None]
        assert len(lost) == 1  # one memory's record failed its checksum
        recovery = store.stats()["recovery"]
        assert recovery["corrupt_records"] == 1 and recovery["corrupt_bytes"] > 0
        assert list(recovery["damaged_segments"]) == [segments(db)[0].name]
        report = store.verify()
        assert not report["ok"] and report["recovered_corrupt_records"] == 1
    finally:
        store.close()


def test_a_clean_store_opens_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(16)) as store:
        store.add("u", "User likes tea")
    with (
        caplog.at_level(logging.DEBUG, logger="headroom.memory"),
        MemoryStore(tmp_path / "db", embedder=HashEmbedder(16)) as store,
    ):
        assert store.stats()["recovery"]["corrupt_bytes"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
