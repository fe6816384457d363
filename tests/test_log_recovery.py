"""Recovery at open, in the style of LevelDB's log tests: truncations, flipped bytes, bad
lengths, zeroed regions, garbage, bad segment headers. Each test states exactly which
memories survive and what `recovery` reports. Rules (docs/log-format.md, "Recovery"): an
invalid region that no valid frame follows, in the last segment, is a torn tail (truncated
only by an opener holding the lock); an invalid region followed by a valid frame is skipped
and counted (corrupt_bytes, and corrupt_records = sync magics in it, at least 1).
"""

from __future__ import annotations

import fcntl
import os
import random
import struct
from pathlib import Path

import pytest

from headroom.memory import errors as E
from headroom.memory.store.local import _native as N
from tests._native_helpers import SYNC_MAGIC, Frame, add, frames, patch, segments, vec

MAGIC = struct.pack("<I", SYNC_MAGIC)
IDS = ["m0", "m1", "m2", "m3"]
Store = tuple[Path, Path, bytes, list[Frame]]


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path, bytes, list[Frame]]:
    """A store of four one-entry frames; returns (db, segment, its bytes, its frames)."""
    db = tmp_path / "db"
    with N.Log(str(db), sync="off") as log:
        for i, mid in enumerate(IDS):
            log.append([add("u", mid, f"text of {mid}", vec(float(i), 1.0, 2.0), created_at=i)])
    seg = segments(db)[0]
    data = seg.read_bytes()
    frs = list(frames(seg))
    assert len(frs) == 4 and frs[-1].end == len(data)
    return db, seg, data, frs


def survivors(db: Path) -> tuple[list[str], dict[str, int]]:
    """The ids that survived an open, and its recovery report without the damaged segments'
    names, which are checked here: named exactly when bytes were skipped or cut, and real."""
    with N.Log(str(db)) as log:
        ids = [m["id"] for m in log.list("u")]
        for m in log.list("u"):
            assert m["text"] == f"text of {m['id']}"
        recovery = dict(log.recovery)
    damaged = recovery.pop("damaged_segments")
    assert bool(damaged) == bool(recovery["torn_tail_bytes"] or recovery["corrupt_bytes"])
    assert set(damaged) <= {seg.name for seg in segments(db)}
    return ids, recovery


def report(torn: int = 0, corrupt: int = 0, records: int = 0) -> dict[str, int]:
    return {
        "torn_tail_bytes": torn,
        "corrupt_bytes": corrupt,
        "corrupt_records": records,
        "segments": 1,
    }


def test_truncation_at_every_byte_of_the_last_frame(store: Store) -> None:
    db, seg, data, frs = store
    last = frs[-1]
    for cut in range(last.offset, last.end):
        seg.write_bytes(data[:cut])
        ids, rec = survivors(db)
        assert ids == IDS[:3], cut
        assert rec == report(torn=cut - last.offset), cut
        assert seg.stat().st_size == last.offset  # truncated: the opener held the lock
    # The store keeps working after the repair, and seqs continue.
    with N.Log(str(db)) as log:
        assert log.append([add("u", "m9", "text of m9")]) == [4]
    assert survivors(db)[0] == [*IDS[:3], "m9"]


def test_without_the_lock_an_incomplete_tail_is_ignored_not_truncated(store: Store) -> None:
    db, seg, data, frs = store
    seg.write_bytes(data[: frs[-1].offset + 7])
    fd = os.open(db / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live writer in another process would
        ids, rec = survivors(db)
        assert ids == IDS[:3] and rec == report()
        assert seg.stat().st_size == frs[-1].offset + 7
    finally:
        os.close(fd)
    assert survivors(db) == (IDS[:3], report(torn=7))


@pytest.mark.parametrize("where", [0, 3, 4, 7, 8, 9, 12])  # magic, length, type, crc bytes
def test_flipped_byte_in_a_middle_frame_header(store: Store, where: int) -> None:
    db, seg, data, frs = store
    f = frs[1]
    patch(seg, f.offset + where, bytes([data[f.offset + where] ^ 0x40]))
    magics = 0 if where < 4 else 1
    assert survivors(db) == (
        ["m0", "m2", "m3"],
        report(corrupt=f.end - f.offset, records=max(1, magics)),
    )


def test_flipped_bytes_anywhere_in_a_middle_payload(store: Store) -> None:
    db, seg, data, frs = store
    f = frs[2]
    for pos in range(f.offset + 13, f.end, 7):
        seg.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
        assert survivors(db) == (["m0", "m1", "m3"], report(corrupt=f.end - f.offset, records=1)), (
            pos
        )


def test_flipped_byte_in_the_last_frame_is_a_torn_tail(store: Store) -> None:
    db, seg, data, frs = store
    f = frs[-1]
    patch(seg, f.offset + 40, bytes([data[f.offset + 40] ^ 0xFF]))
    assert survivors(db) == (IDS[:3], report(torn=f.end - f.offset))


@pytest.mark.parametrize("length", [0, 1, 3, 0xFFFFFFFF, 64 << 20, (64 << 20) + 1])
def test_bad_lengths(store: Store, length: int) -> None:
    db, seg, _data, frs = store
    f = frs[1]
    patch(seg, f.offset + 4, struct.pack("<I", length))
    assert survivors(db) == (["m0", "m2", "m3"], report(corrupt=f.end - f.offset, records=1))


def test_bad_length_in_the_last_frame_is_a_torn_tail(store: Store) -> None:
    db, seg, _data, frs = store
    f = frs[-1]
    patch(seg, f.offset + 4, struct.pack("<I", 0xFFFFFFF0))
    assert survivors(db) == (IDS[:3], report(torn=f.end - f.offset))


def test_zeroed_region_across_frames(store: Store) -> None:
    db, seg, _data, frs = store
    start, end = frs[0].offset + 20, frs[2].offset + 20  # kills frames 0, 1 and 2
    patch(seg, start, bytes(end - start))
    # Frame 0's magic is intact (1 magic in the skipped region); 1 and 2 lost theirs.
    assert survivors(db) == (["m3"], report(corrupt=frs[3].offset - frs[0].offset, records=1))


def test_zeroed_whole_frames_count_each_surviving_magic(store: Store) -> None:
    db, seg, _data, frs = store
    # Zero the payloads (not the headers) of frames 1 and 2: two magics in the region.
    for f in frs[1:3]:
        patch(seg, f.offset + 13, bytes(f.length))
    assert survivors(db) == (["m0", "m3"], report(corrupt=frs[3].offset - frs[1].offset, records=2))


def test_zeroed_tail_is_torn(store: Store) -> None:
    db, seg, data, _frs = store
    with open(seg, "ab") as fh:
        fh.write(bytes(4096))  # a crash after the file grew but before data reached it
    assert survivors(db) == (IDS, report(torn=4096))
    assert seg.stat().st_size == len(data)


def test_garbage_appended_is_torn_and_removed(store: Store) -> None:
    db, seg, data, _frs = store
    garbage = random.Random(7).randbytes(333) + MAGIC + b"\x10\x00\x00\x00\x01junk"
    with open(seg, "ab") as fh:
        fh.write(garbage)
    assert survivors(db) == (IDS, report(torn=len(garbage)))
    assert seg.read_bytes() == data


def test_garbage_in_the_middle_is_skipped(store: Store) -> None:
    db, seg, data, frs = store
    garbage = random.Random(3).randbytes(500).replace(MAGIC, b"xxxx")
    seg.write_bytes(data[: frs[2].offset] + garbage + data[frs[2].offset :])
    assert survivors(db) == (IDS, report(corrupt=500, records=1))


def test_damage_in_an_earlier_segment(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with N.Log(str(db), segment_bytes=4096) as log:
        i = 0
        while len(segments(db)) < 2:
            log.append([add("u", f"m{i}", f"text of m{i}", vec(1.0) * i)])
            i += 1
    first = segments(db)[0]
    frs = list(frames(first))
    f = frs[3]
    patch(first, f.offset + 20, b"\xff\xff")
    with N.Log(str(db)) as log:
        ids = [m["id"] for m in log.list("u")]
        assert ids == [f"m{k}" for k in range(i) if k != 3]
        assert log.recovery == {
            "torn_tail_bytes": 0,
            "corrupt_bytes": f.end - f.offset,
            "corrupt_records": 1,
            "segments": 2,
            "damaged_segments": [first.name],  # the earlier one, not the last
        }


@pytest.mark.parametrize("size", [0, 10, 47])
def test_a_short_segment_header_is_a_corruption_error(store: Store, size: int) -> None:
    db, seg, data, _frs = store
    seg.write_bytes(data[:size])
    with pytest.raises(E.StoreCorruptionError):
        N.Log(str(db))


def test_bad_magic_is_a_corruption_error(store: Store) -> None:
    db, seg, _data, _frs = store
    patch(seg, 0, b"NOTALOG!")
    with pytest.raises(E.StoreCorruptionError, match="segment header"):
        N.Log(str(db))


def test_random_damage_never_crashes_and_never_invents_data(store: Store) -> None:
    db, seg, data, _frs = store
    rng = random.Random(12345)
    for _ in range(300):
        buf = bytearray(data)
        for _k in range(rng.randint(1, 6)):
            kind = rng.random()
            pos = rng.randrange(48, len(buf))
            if kind < 0.5:
                buf[pos] ^= 1 << rng.randrange(8)
            elif kind < 0.7:
                n = rng.randint(1, 64)
                buf[pos : pos + n] = bytes(n)
            elif kind < 0.85:
                buf[pos : pos + 4] = struct.pack("<I", rng.choice([0, 2**32 - 1, 1 << 26]))
            else:
                del buf[pos:]
                break
        seg.write_bytes(bytes(buf))
        ids, rec = survivors(db)
        assert set(ids) <= set(IDS)
        assert rec["corrupt_bytes"] + rec["torn_tail_bytes"] <= len(data)
