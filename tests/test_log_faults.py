"""Fault injection through the compiled I/O layer's hook (`Log._set_fault`): ENOSPC and EIO on
write and on fsync. A failed batch raises StoreFailedError, the Log refuses every later write,
what was acknowledged before stays, and the failed batch is not there after reopen.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from headroom.memory import errors as E
from headroom.memory.store.local import _native as N
from tests._native_helpers import add, segments, vec

ACKED = [add("u", "a", "acknowledged", vec(1, 0)), add("u", "b", "also acknowledged", vec(0, 1))]
FAILED = [add("u", "c", "never stored " * 20, vec(1, 1)), add("v", "d", "nor this", vec(1, 1))]


def reopen_ids(db: Path) -> tuple[list[str], dict[str, int]]:
    with N.Log(str(db)) as log:
        ids = [m["id"] for u in ("u", "v") for m in log.list(u)]
        return ids, log.recovery


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize(
    ("fault", "sync"),
    [("write", "always"), ("write", "interval"), ("write", "off"), ("fsync", "always")],
)
def test_failed_write_or_fsync(tmp_path: Path, fault: str, sync: str, err: int) -> None:
    db = tmp_path / "db"
    log = N.Log(str(db), sync=sync)
    log.append(ACKED)
    size = segments(db)[0].stat().st_size
    log._set_fault(fault, 1, err)
    with pytest.raises(E.StoreFailedError, match=f"errno {err}"):
        log.append(FAILED)
    assert log.failed
    assert segments(db)[0].stat().st_size == size  # the partial write was cut off
    with pytest.raises(E.StoreFailedError, match="reopen"):
        log.append([add("u", "e", "after the failure")])
    with pytest.raises(E.StoreFailedError):
        log.compact()
    # Reads keep working and never show the failed batch.
    assert [m["id"] for m in log.list("u")] == ["a", "b"] and log.list("v") == []
    log.close()
    assert reopen_ids(db) == (
        ["a", "b"],
        {
            "torn_tail_bytes": 0,
            "corrupt_bytes": 0,
            "corrupt_records": 0,
            "segments": 1,
            "damaged_segments": [],
        },
    )


def test_failed_write_whose_cleanup_fails_leaves_a_torn_tail(tmp_path: Path) -> None:
    db = tmp_path / "db"
    log = N.Log(str(db), sync="always")
    log.append(ACKED)
    size = segments(db)[0].stat().st_size
    log._set_fault("truncate", 1, errno.EIO)
    log._set_fault("write", 1, errno.ENOSPC)
    with pytest.raises(E.StoreFailedError):
        log.append(FAILED)
    torn = segments(db)[0].stat().st_size - size
    assert torn > 0  # half the batch reached the file and stayed there
    log.close()
    ids, rec = reopen_ids(db)
    assert ids == ["a", "b"] and rec["torn_tail_bytes"] == torn and rec["corrupt_bytes"] == 0
    assert segments(db)[0].stat().st_size == size


def test_countdown_fails_the_nth_next_call(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with N.Log(str(db), sync="always") as log:
        log._set_fault("fsync", 3, errno.EIO)
        log.append([add("u", "a", "one")])
        log.append([add("u", "b", "two")])
        with pytest.raises(E.StoreFailedError):
            log.append([add("u", "c", "three")])
    assert reopen_ids(db)[0] == ["a", "b"]


def test_background_fsync_failure_fails_the_store(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with N.Log(str(db), sync="interval", sync_interval_ms=5) as log:
        log._set_fault("fsync", 1, errno.EIO)
        log.append(ACKED)  # acknowledged after write(2); the fsync comes later and fails
        for _ in range(2000):  # wait for the background thread, however slow the machine
            if log.failed:
                break
            time.sleep(0.005)
        assert log.failed
        with pytest.raises(E.StoreFailedError, match="background fsync"):
            log.append([add("u", "x", "refused")])


def test_a_failed_compaction_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with N.Log(str(db), sync="always") as log:
        log.append(ACKED)
        log.append([(N.DELETE, "u", "a", 0, 0, 0, "", "", "", None)])
        before = sorted(p.name for p in db.iterdir())
        log._set_fault("write", 2, errno.ENOSPC)
        with pytest.raises(E.StoreError, match="compaction failed"):
            log.compact()
        assert not log.failed
        assert sorted(p.name for p in db.iterdir()) == before
        assert [m["id"] for m in log.list("u")] == ["b"]
        log.append([add("u", "z", "still writable")])
    assert reopen_ids(db)[0] == ["b", "z"]


def test_flush_fsyncs_and_a_failed_flush_fails_the_store(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with N.Log(str(db), sync="off") as log:
        log.append(ACKED)
        log.flush()
        log._set_fault("fsync", 1, errno.EIO)
        with pytest.raises(E.StoreFailedError, match="fsync"):
            log.flush()
        assert log.failed
        with pytest.raises(E.StoreFailedError):
            log.append([add("u", "x", "refused")])
    assert reopen_ids(db)[0] == ["a", "b"]
