"""Several processes on one store: 4 processes x 2,000 adds each (one batch per add), some into
a user they all share. All 8,000 are present exactly once, with globally unique sequence
numbers, and every process sees all of them.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np

from headroom.memory.store.local import _native as N

PROCS = 4
ADDS = 2000


def _worker(db: str, i: int, barrier: Any, results: Any) -> None:
    log = N.Log(db, sync="interval")
    seqs: list[int] = []
    v = np.zeros(4, dtype=np.float32)
    for n in range(ADDS):
        user = "shared" if n % 2 == 0 else f"own{i}"
        v[0] = float(n)
        v[1] = float(i)
        seqs += log.append([(N.ADD, user, f"p{i}-{n}", 2, 2, n, f"p{i} says {n}", "{}", "m", v)])
    barrier.wait(timeout=120)  # everyone has written
    ids = [m["id"] for u in log.users() for m in log.list(u)]
    hits = log.search("shared", np.array([0, 0, 1, 0], dtype=np.float32), 5)
    results.put((i, seqs, len(ids), len(set(ids)), len(hits)))
    log.close()


def test_four_processes_two_thousand_adds_each(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    N.Log(db).close()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db, i, barrier, results)) for i in range(PROCS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    all_seqs: list[int] = []
    for _i, seqs, n_ids, n_unique, n_hits in got:
        assert n_ids == n_unique == PROCS * ADDS  # each process sees everything, once
        assert n_hits == 5
        assert seqs == sorted(seqs)
        all_seqs += seqs
    assert sorted(all_seqs) == list(range(1, PROCS * ADDS + 1))
    with N.Log(db) as log:
        assert log.count("shared") == PROCS * ADDS // 2
        for i in range(PROCS):
            own = log.list(f"own{i}")
            assert [m["id"] for m in own] == [f"p{i}-{n}" for n in range(1, ADDS, 2)]
        for i in range(PROCS):
            m = log.get("shared", f"p{i}-1998")
            assert m is not None and m["text"] == f"p{i} says 1998"
        assert log.recovery["corrupt_bytes"] == 0 and log.stats()["entries"] == PROCS * ADDS


def test_a_reader_follows_rotation_and_another_handles_compaction(tmp_path: Path) -> None:
    # Two Log objects have separate open file descriptions, so they lock and read exactly as
    # two processes do.
    db = str(tmp_path / "db")
    a = N.Log(db, segment_bytes=4096)
    b = N.Log(db, segment_bytes=4096)
    v = np.ones(4, dtype=np.float32)
    for n in range(200):  # many rotations
        a.append([(N.ADD, "u", f"m{n}", 1, 1, n, f"t{n}", "{}", "m", v)])
    assert b.count("u") == 200 and b.stats()["segments"] == a.stats()["segments"] > 3
    a.append([(N.DELETE, "u", f"m{n}", 0, 0, 0, "", "", "", None) for n in range(100)])
    assert b.count("u") == 100 and b.generation == 0
    a.compact()
    assert b.generation == 1 and b.stats()["segments"] == 1
    assert [m["id"] for m in b.list("u")] == [f"m{n}" for n in range(100, 200)]
    assert b.append([(N.ADD, "u", "after", 1, 1, 0, "t", "{}", "m", v)]) == [301]
    assert a.get("u", "after") is not None and a.last_seq == 301
    a.close()
    b.close()
