"""Zero-copy replay (native/src/state.h, arena.h): the state keeps texts, ids and vectors as
views of the bytes they were read from, either a segment mapping it pins (every segment but
the last, which no writer ever truncates, and the last one when it was read holding the lock)
or a copy in its arena (appended batches, the last segment read while another process held the
lock, and frames read through pread(2)). Every path must give the same answers, the id
index (open addressing with backward-shift deletion) must survive many purges, and exact search
must stay exact while a user's vectors are packed into one block and repacked: a vector pack
file every process maps (native/src/vecpack.h), or a private copy where no pack can be written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from headroom.memory.store.local import _native as N
from tests._native_helpers import add, op, segments, update

DIM = 8
USERS = ["alice", "bob", "carol"]


def _revector(user: str, mid: str, v: np.ndarray) -> tuple[object, ...]:
    return (N.REVECTOR, user, mid, 0, 0, 0, "", "", "test-model", v)


def _answers(log: Any, queries: np.ndarray) -> dict[str, object]:
    """Everything a reader can ask, in comparable form."""
    out: dict[str, object] = {"users": log.users(), "last_seq": log.last_seq}
    for u in USERS:
        labels, vecs = log.vectors(u)
        order = np.argsort(labels)
        out[u] = {
            "list": log.list(u),
            "search": [log.search(u, q, 5) for q in queries],
            "labels": labels[order].tolist(),
            "vectors": vecs[order].tolist(),
            "history": [log.history(u, m["id"]) for m in log.list(u)],
            "resolve": log.resolve(u, np.asarray(labels, dtype=np.uint64)),
        }
    return out


@contextmanager
def _lock_held_elsewhere(db: Path) -> Iterator[None]:
    """Holds LOCK as a writer in another process would: an opener then maps no last segment."""
    fd = os.open(db / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_appended_mapped_and_pread_replays_give_the_same_answers(tmp_path: Path) -> None:
    db = tmp_path / "db"
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    # Small segments: the store spans many, so an opener maps the earlier ones and (without
    # the lock) reads the last one through pread.
    with N.Log(str(db), sync="off", segment_bytes=4096) as log:
        for n in range(60):
            u = USERS[n % 3]
            v = rng.standard_normal(DIM).astype(np.float32)
            log.append([add(u, f"m{n}", f"text {n} of {u}", v, created_at=n, meta=f'{{"n":{n}}}')])
        for n in range(0, 60, 7):  # new text, vector kept (the row moves, its vector stays)
            log.append([update(USERS[n % 3], f"m{n}", f"updated {n}")])
        for n in range(1, 60, 9):  # new text and vector
            v = rng.standard_normal(DIM).astype(np.float32)
            log.append([update(USERS[n % 3], f"m{n}", f"updated {n}", v)])
        for n in range(2, 60, 8):
            v = rng.standard_normal(DIM).astype(np.float32)
            log.append([_revector(USERS[n % 3], f"m{n}", v)])
        log.append([op(N.DELETE, USERS[n % 3], f"m{n}") for n in range(3, 60, 10)])
        log.append([op(N.PURGE, USERS[n % 3], f"m{n}") for n in range(4, 60, 11)])
        written = _answers(log, queries)
    assert len(segments(db)) >= 3
    with N.Log(str(db), sync="off") as log:
        assert _answers(log, queries) == written
    with _lock_held_elsewhere(db), N.Log(str(db), sync="off") as log:
        assert _answers(log, queries) == written
    # Appended after a mapped open: both kinds of views in one user.
    v = np.full(DIM, 0.5, dtype=np.float32)
    with N.Log(str(db), sync="off") as log:
        log.append([add("alice", "late", "appended after open", v)])
        after = _answers(log, queries)
        assert log.get("alice", "late")["text"] == "appended after open"
    with N.Log(str(db), sync="off") as log:
        assert _answers(log, queries) == after


def test_many_purged_ids_are_gone_and_free_and_the_rest_stay_found(tmp_path: Path) -> None:
    db = tmp_path / "db"
    ids = [f"id-{n:05d}" for n in range(3000)]
    rnd = random.Random(3)
    purged = set(rnd.sample(ids, 1500))
    v = np.ones(4, dtype=np.float32)
    with N.Log(str(db), sync="off") as log:
        for s in range(0, len(ids), 500):
            log.append([add("u", i, f"text {i}", v) for i in ids[s : s + 500]])
        order = sorted(purged)
        rnd.shuffle(order)
        for s in range(0, len(order), 100):  # one PURGE entry per id, in random order
            log.append([op(N.PURGE, "u", i) for i in order[s : s + 100]])
        again = sorted(purged)[:200]
        log.append([add("u", i, f"again {i}", v) for i in again])

    def check(log: Any) -> None:
        for i in ids:
            m = log.get("u", i)
            if i in again:
                assert m is not None and m["text"] == f"again {i}"
            elif i in purged:
                assert m is None and log.history("u", i) == []
            else:
                assert m is not None and m["text"] == f"text {i}"
        assert log.count("u") == len(ids) - len(purged) + len(again)

    with N.Log(str(db), sync="off") as log:
        check(log)
        log.compact()
        check(log)


def test_search_stays_exact_while_vectors_are_packed_and_repacked(tmp_path: Path) -> None:
    # A user of 300 vectors interleaved with another user's: after a reopen they lie scattered
    # in the segment mapping, the first search packs them, later adds/updates/deletes make
    # them loose again and a later search repacks. Every answer must equal a numpy scan.
    db = tmp_path / "db"
    rng = np.random.default_rng(11)
    live: dict[str, np.ndarray] = {}
    with N.Log(str(db), sync="off") as log:
        for n in range(300):
            v, w = rng.standard_normal((2, DIM)).astype(np.float32)
            log.append([add("big", f"m{n}", f"t{n}", v), add("other", f"o{n}", f"t{n}", w)])
            live[f"m{n}"] = v

    def check(log: Any) -> None:
        ids = sorted(live)
        mat = np.stack([live[i] for i in ids])
        for q in rng.standard_normal((5, DIM)).astype(np.float32):
            scores = mat @ q
            best = np.argsort(-scores)[:10]
            hits = log.search("big", q, 10)
            assert [h[0] for h in hits] == [ids[b] for b in best]
            np.testing.assert_allclose([h[1] for h in hits], scores[best], rtol=1e-4, atol=1e-5)

    with N.Log(str(db), sync="off") as log:
        check(log)  # packs
        for n in range(300, 400):  # loose again: more than an eighth of the rows
            v = rng.standard_normal(DIM).astype(np.float32)
            log.append([add("big", f"m{n}", f"t{n}", v)])
            live[f"m{n}"] = v
        for n in range(0, 100, 3):
            v = rng.standard_normal(DIM).astype(np.float32)
            log.append([update("big", f"m{n}", f"u{n}", v)])
            live[f"m{n}"] = v
        log.append([update("big", f"m{n}", f"text only {n}") for n in range(1, 100, 3)])
        log.append([op(N.DELETE, "big", f"m{n}") for n in range(2, 100, 3)])
        for n in range(2, 100, 3):
            del live[f"m{n}"]
        check(log)  # repacks
        check(log)
    with N.Log(str(db), sync="off") as log:
        check(log)


def _maps_of(pid: int | str) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_packed_user_is_one_file_every_process_maps(tmp_path: Path) -> None:
    # The first search of a scattered user writes its vector pack (packs/<hash>.vpk, derived
    # from the log); that process and every later one map the same file (the page cache holds
    # one copy for all of them) instead of copying the vectors into private memory.
    db = tmp_path / "db"
    rng = np.random.default_rng(3)
    vecs = {u: rng.standard_normal((120, DIM)).astype(np.float32) for u in USERS}
    with N.Log(str(db), sync="off") as log:
        for n in range(120):
            log.append([add(u, f"m{n}", f"t{n}", vecs[u][n]) for u in USERS])
    q = rng.standard_normal(DIM).astype(np.float32)
    with N.Log(str(db), sync="off") as log:
        want = log.search("alice", q, 7)
        packs = sorted((db / "packs").iterdir())
        assert len(packs) == 1 and packs[0].suffix == ".vpk"  # only the user searched
        assert str(packs[0]) in _maps_of("self")
        inode = packs[0].stat().st_ino
        code = (
            "import sys, numpy as np; from headroom.memory.store.local import _native as N\n"
            "log = N.Log(sys.argv[1], sync='off')\n"
            "hits = log.search('alice', np.frombuffer(bytes.fromhex(sys.argv[2]), np.float32), 7)\n"
            "print(repr(hits)); print(open('/proc/self/maps').read())\n"
        )
        # -S and this process's sys.path: the child imports the very module this one did.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        out = subprocess.run(
            [sys.executable, "-S", "-c", code, str(db), q.tobytes().hex()],
            capture_output=True, text=True, check=True, env=env,
        ).stdout  # fmt: skip
        assert out.splitlines()[0] == repr(want)
        assert str(packs[0]) in out and packs[0].stat().st_ino == inode  # reused, not rewritten
    scores = vecs["alice"] @ q
    assert [h[0] for h in want] == [f"m{i}" for i in np.argsort(-scores)[:7]]


def test_a_store_that_cannot_hold_packs_still_searches_exactly(tmp_path: Path) -> None:
    # A packs path that is not a directory (as on a read-only or full disk, no pack can be
    # written): the search falls back to a private copy and stays exact.
    db = tmp_path / "db"
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((100, DIM)).astype(np.float32)
    with N.Log(str(db), sync="off") as log:
        for n in range(100):
            log.append([add("alice", f"m{n}", "t", vecs[n]), add("bob", f"o{n}", "t", vecs[n])])
    (db / "packs").write_bytes(b"not a directory")
    q = rng.standard_normal(DIM).astype(np.float32)
    with N.Log(str(db), sync="off") as log:
        hits = log.search("alice", q, 5)
    assert [h[0] for h in hits] == [f"m{i}" for i in np.argsort(-(vecs @ q))[:5]]
    assert (db / "packs").read_bytes() == b"not a directory"


def test_the_last_segment_is_mapped_only_when_read_under_the_lock(tmp_path: Path) -> None:
    # Read holding the lock, no commit was in progress: the state points into the mapping of
    # the last segment as into the others (no private copy). Read while another process holds
    # the lock, a commit may be undone after the read: the state copies what it keeps.
    db = tmp_path / "db"
    rng = np.random.default_rng(8)
    vecs = rng.standard_normal((50, DIM)).astype(np.float32)
    with N.Log(str(db), sync="off") as log:
        log.append([add("alice", f"m{n}", f"t{n}", vecs[n]) for n in range(50)])
    (last,) = segments(db)
    q = rng.standard_normal(DIM).astype(np.float32)
    want = [f"m{i}" for i in np.argsort(-(vecs @ q))[:5]]
    with N.Log(str(db), sync="off") as log:
        assert str(last) in _maps_of("self")
        assert [h[0] for h in log.search("alice", q, 5, pack=False)] == want
    with _lock_held_elsewhere(db):
        log = N.Log(str(db), sync="off")
        try:
            assert str(last) not in _maps_of("self")
            assert [h[0] for h in log.search("alice", q, 5, pack=False)] == want
        finally:
            log.close()


def test_a_pack_is_written_only_once_the_log_is_durable(tmp_path: Path) -> None:
    # A pack must never cover an entry a power loss could take (its seq would be reused by a
    # later write, and the pack would give that write the lost entry's vector): the log is
    # fsynced before a pack is written, and a failed fsync writes no pack (the search still
    # answers exactly, from a private copy) and fails the log for writes.
    db = tmp_path / "db"
    rng = np.random.default_rng(6)
    vecs = rng.standard_normal((100, DIM)).astype(np.float32)
    q = rng.standard_normal(DIM).astype(np.float32)
    with N.Log(str(db), sync="off") as log:
        for n in range(100):
            log.append([add("alice", f"m{n}", "t", vecs[n]), add("bob", f"o{n}", "t", vecs[n])])
        log._set_fault("fsync", 1, errno.EIO)
        hits = log.search("alice", q, 5)
        assert [h[0] for h in hits] == [f"m{i}" for i in np.argsort(-(vecs @ q))[:5]]
        assert not list(db.glob("packs/*.vpk"))
        assert log.failed
