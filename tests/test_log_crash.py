"""Crash safety: child processes append in a loop, write every acknowledged write to a pipe,
and are killed with SIGKILL at random moments (several children per round, on one store).
After each round the store opens, every acknowledged write is there, and nothing is corrupt
(a torn tail is the only damage a crash may leave, and the opener removes it).

The children are forked from the test process (which has already imported the core), so a
child costs milliseconds and the kills land while the children are busy appending.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import numpy as np

from headroom.memory.store.local import _native as N

ROUNDS = 40
CHILDREN = 4  # per round: 160 kills per run, each after the child acknowledged a write


def _child(db: Path, name: str, sync: str, fd: int) -> None:
    log = N.Log(str(db), sync=sync, segment_bytes=16384)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    n = 0
    while True:
        k = int(rng.integers(1, 4))
        batch: list[tuple[object, ...]] = []
        for j in range(k):
            v = rng.standard_normal(8).astype(np.float32)
            batch.append(
                (N.ADD, name, f"{name}-{n + j}", 1, 2, n + j, f"text {name} {n + j}", "{}", "m", v)
            )
        if n >= 3 and n % 5 == 0:  # now and then an update of an acknowledged memory
            batch.append((N.UPDATE, name, f"{name}-{n - 3}", 0, 0, 0, "updated", "", "m", None))
        log.append(batch)
        msg = "".join(f"A {name}-{n + j}\n" for j in range(k))
        if len(batch) > k:
            msg += f"U {name}-{n - 3}\n"
        os.write(fd, msg.encode())
        n += k


def _spawn(db: Path, name: str, sync: str) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            _child(db, name, sync, w)
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def _first_ack(fd: int) -> bytes:
    """Block until the child has acknowledged its first write; return what was read."""
    got = b""
    while b"\n" not in got:
        chunk = os.read(fd, 65536)
        assert chunk, "the child died before acknowledging a write"
        got += chunk
    return got


def _drain(fd: int, head: bytes = b"") -> list[str]:
    chunks = [head]
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode().split("\n")[:-1]  # drop a line cut by the kill


def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "db"
    N.Log(str(db)).close()
    rng = random.Random(2024)
    acked: set[str] = set()
    updated: set[str] = set()
    kills = 0
    for rnd in range(ROUNDS):
        sync = ("interval", "always", "off")[rnd % 3]
        kids = [_spawn(db, f"c{rnd}x{i}", sync) for i in range(CHILDREN)]
        # Kill each child at a random moment after its first acknowledged write: it is busy
        # appending then, whatever the scheduler did with its start.
        heads = []
        try:
            for pid, fd in kids:
                heads.append(_first_ack(fd))
                time.sleep(rng.uniform(0, 0.005))
                os.kill(pid, signal.SIGKILL)
        except BaseException:
            for pid, _fd in kids:  # no child outlives a failed round
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        for (pid, fd), head in zip(kids, heads, strict=True):
            lines = _drain(fd, head)
            assert lines, "every child acknowledged a write before it was killed"
            for line in lines:
                kind, mid = line.split()
                (acked if kind == "A" else updated).add(mid)
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            kills += 1
        with N.Log(str(db)) as log:
            rec = log.recovery
            assert rec["corrupt_bytes"] == 0 and rec["corrupt_records"] == 0, rec
            present = {m["id"]: m["text"] for u in log.users() for m in log.list(u)}
            missing = acked - present.keys()
            assert not missing, f"round {rnd}: acknowledged but lost: {sorted(missing)[:5]}"
            for mid in updated:
                assert present[mid] == "updated", mid
            assert log.stats()["skipped_entries"] == 0
            seqs = [r["seq"] for r in log.records()]
            assert seqs == sorted(set(seqs))  # global and unique across processes
    assert kills == ROUNDS * CHILDREN
    assert len(acked) >= ROUNDS * CHILDREN  # at least one acknowledged write per child
