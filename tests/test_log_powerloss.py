"""Power loss, simulated in the compiled I/O layer (native/src/fileio.h, ``powerloss``), in the
way of LevelDB's fault-injection test env: the layer tracks what each file held at its last
fdatasync and which directory entries were fsynced, and an image of the store directory keeps
only that (a file created or renamed into place since its directory's last fsync is gone).

Each workload runs once to count its I/O steps (create, write, fsync, truncate, rename,
unlink, directory fsync, mkdir), then once per step with a crash there: that call and every
later one fail without touching anything, the Log is abandoned, and the store directory is
imaged four ways (``drop``: every unsynced byte lost; ``torn``: a random prefix of each file's
unsynced appended bytes survives; ``zero``: they read as zeros; ``keep``: a process crash).
Each image must open, recover without corruption, and hold exactly the state after some
prefix of the workload's batches (batches are atomic, nothing is reordered), with:

* ``sync="always"``: every acknowledged batch (the prefix is at least the acknowledged ones);
* ``"interval"`` and ``"off"``: every batch acknowledged before the last ``flush()`` or
  ``compact()`` that returned, or before the last file fsync the Log completed (the
  flusher's, a roll's, a compaction's); in ``keep`` images, every acknowledged batch;
* a PURGE in the prefix means the purged text is gone from the state, and once the compaction
  after it is durable, from every file of the store.

The interval promise (a power loss loses at most the writes of the last interval) is timed:
a writer appends for a while, a crash lands at a random moment, and every write acknowledged
longer than an interval (plus scheduling slack) before it must be in the image.
docs/durability.md states the promises and names these tests.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from headroom.memory import errors as E
from headroom.memory.store.local import _native as N
from tests._native_helpers import add, op, read_header, segments, store_bytes, update, vec

MODES = ("drop", "torn", "zero", "keep")
SYNCS = ("always", "interval", "off")
# Crash points tried (steps x images), per sync mode, summed over this module's tests.
TRIED: Counter[str] = Counter()

Entry = tuple[object, ...]
State = dict[tuple[str, str], str]


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    line = "power-loss crash points tried: " + ", ".join(
        f"{s}={TRIED[s]}" for s in SYNCS if TRIED[s]
    )
    print("\n" + line)
    if path := os.environ.get("HEADROOM_POWERLOSS_REPORT"):
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.fixture(autouse=True)
def _tracking_off() -> Iterator[None]:
    yield
    N._powerloss_disable()


# --- workloads --------------------------------------------------------------------------------


@dataclass
class Workload:
    """Steps: ("batch", entries), ("flush",), ("compact",) or ("search", user): an exact
    search, which writes the user's vector pack when the user has 64 vectors or more."""

    steps: list[tuple[object, ...]]
    segment_bytes: int = 1 << 20
    secrets: list[tuple[str, int]] = field(default_factory=list)  # (text, compaction ordinal)
    secret_vectors: list[tuple[bytes, int]] = field(default_factory=list)  # (bytes, ordinal)

    def batches(self) -> list[list[Entry]]:
        return [s[1] for s in self.steps if s[0] == "batch"]  # type: ignore[misc]

    def states(self) -> list[State]:
        """The state after each prefix of the batches (states[0]: empty)."""
        st: State = {}
        out = [dict(st)]
        for batch in self.batches():
            for e in batch:
                code, user, mid, text = e[0], str(e[1]), str(e[2]), str(e[6])
                if code in (N.ADD, N.UPDATE):
                    st[(user, mid)] = text
                elif code == N.DELETE or (code == N.PURGE and mid):
                    st.pop((user, mid), None)
                elif code in (N.CLEAR, N.PURGE):
                    for key in [k for k in st if k[0] == user]:
                        del st[key]
            out.append(dict(st))
        return out


def _v(i: int) -> object:
    return vec(float(i), 1.0, -float(i % 3), 0.5)


def append_workload() -> Workload:
    secret = "the secret that a PURGE takes away"
    steps: list[tuple[object, ...]] = [
        ("batch", [add("u", "a", "alpha", _v(1))]),
        ("batch", [add("u", "b", "bravo", _v(2)), add("v", "c", "charlie", _v(3))]),
        ("batch", [add("u", "s", secret, _v(4))]),
        ("batch", [update("u", "a", "alpha two", _v(5))]),
        ("flush",),
        ("batch", [op(N.DELETE, "u", "b")]),
        ("batch", [op(N.PURGE, "u", "s")]),
        ("batch", [add("u", "s", "a new memory under the purged id", _v(6))]),
        ("batch", [add("w", f"w{i}", f"whiskey {i}", _v(i)) for i in range(5)]),
        ("batch", [op(N.CLEAR, "w")]),
        ("batch", [add("v", "d", "delta", _v(7)), update("v", "c", "charlie two")]),
        ("flush",),
        ("batch", [add("u", "e", "echo", _v(8))]),
        ("batch", [op(N.PURGE, "v")]),
    ]
    return Workload(steps)


def roll_workload() -> Workload:
    # Texts of ~900 bytes in 4 KiB segments: a new segment every few batches.
    steps: list[tuple[object, ...]] = []
    for i in range(14):
        steps.append(("batch", [add("u", f"r{i}", f"roll {i} " + "x" * 900, _v(i))]))
        if i == 6:
            steps.append(("batch", [op(N.PURGE, "u", "r2"), op(N.DELETE, "u", "r3")]))
            steps.append(("flush",))
    return Workload(steps, segment_bytes=4096)


def compact_workload() -> Workload:
    secret = "a purged secret that no file may keep after the compaction"
    steps: list[tuple[object, ...]] = [
        ("batch", [add("u", "a", "alpha", _v(1)), add("u", "b", "bravo", _v(2))]),
        ("batch", [add("u", "s", secret, _v(3))]),
        ("batch", [op(N.DELETE, "u", "b"), update("u", "a", "alpha two")]),
        ("batch", [op(N.PURGE, "u", "s")]),
        ("compact",),
        ("batch", [add("u", "c", "charlie " + "y" * 600, _v(4))]),
        ("batch", [add("v", "d", "delta " + "z" * 600, _v(5))]),
        ("batch", [op(N.CLEAR, "v"), add("u", "b", "bravo again", _v(6))]),
        ("compact",),
        ("batch", [add("u", "e", "echo", _v(7))]),
    ]
    # Small segments: the compactions replace several segments, and leave leftovers on a crash.
    return Workload(steps, segment_bytes=4096, secrets=[(secret, 1)])


def packs_workload() -> Workload:
    # A user of 70 vectors: its searches write vector packs (never fsynced: a damaged one must
    # fail its CRC and be rewritten); the compaction after a PURGE must leave no pack holding
    # the purged vector.
    secret = vec(12345.5, -777.25, 3.125, 99.0)
    steps: list[tuple[object, ...]] = [
        ("batch", [add("p", f"p{i}", f"pack {i}", _v(i)) for i in range(70)]),
        ("batch", [add("p", "s", "holds the secret vector", secret), add("q", "q", "q", _v(1))]),
        ("search", "p"),
        ("batch", [op(N.PURGE, "p", "s")]),
        ("compact",),
        ("search", "p"),
        ("batch", [add("p", "z", "zulu", _v(99))]),
    ]
    return Workload(steps, secret_vectors=[(secret.tobytes(), 1)])


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "append": append_workload,
    "roll": roll_workload,
    "compact": compact_workload,
    "packs": packs_workload,
}

QUERY = np.asarray([0.5, -1.0, 2.0, 0.25], dtype=np.float32)


def check_search(log: N.Log, where: str) -> None:
    """Every user's exact search equals a scan of its live vectors (packs or not)."""
    for user in log.users():
        _labels, vectors = log.vectors(user)
        want = np.sort(vectors @ QUERY)[::-1][:5] if len(vectors) else []
        got = [score for _, score in log.search(user, QUERY, 5)]
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=where)


# --- running and checking -----------------------------------------------------------------


@dataclass
class Run:
    acked: int = 0  # batches acknowledged, in order
    # Batches that must survive in every mode: acknowledged before the last flush() or
    # compact() that returned, or before the last file fsync the I/O layer completed (the
    # flusher's, a roll's, a compaction's).
    floor: int = 0
    attempted: int = 0  # batches handed to append()
    crashed: bool = False


def run(db: Path, sync: str, w: Workload, crash_at: int) -> Run:
    """Runs the workload with a crash at the crash_at-th I/O step (0: none); abandons the Log."""
    N._powerloss_crash_at(crash_at)
    r = Run()
    log = None
    ack_steps: list[int] = []  # the I/O step count when each batch was acknowledged
    try:
        log = N.Log(str(db), sync=sync, sync_interval_ms=2, segment_bytes=w.segment_bytes)
        for step in w.steps:
            if step[0] == "batch":
                r.attempted += 1
                log.append(step[1])  # type: ignore[arg-type]
                ack_steps.append(N._powerloss_steps())
                r.acked += 1
            elif step[0] == "flush":
                log.flush()
                r.floor = r.acked
            elif step[0] == "search":
                log.search(step[1], QUERY, 5)
            else:
                log.compact()
                r.floor = r.acked
    except E.StoreError:
        assert N._powerloss_crashed(), "an I/O error without a crash"
    r.crashed = N._powerloss_crashed()
    N._powerloss_crash()  # nothing after this point becomes durable (not even close's fsync)
    # A batch's write came at or before the step count read when it was acknowledged; a file
    # fsync at a later step covered it (the tracked calls are serialised). Every fsync of the
    # Log covers all the data written before it: the flusher's and flush() sync the segment
    # written to, a roll syncs the full segment first, a compaction syncs the segment before
    # it rewrites the store.
    last_sync = N._powerloss_last_sync()
    r.floor = max(r.floor, sum(1 for a in ack_steps if a < last_sync))
    if log is not None:
        log.abandon()
    return r


def read_state(log: N.Log) -> State:
    return {(u, m["id"]): m["text"] for u in log.users() for m in log.list(u)}


def leftovers(db: Path) -> set[str]:
    """What a crash may leave for the next opener to remove: files being written, and
    segments a committed compaction replaced."""
    heads = {p.name: read_header(p.read_bytes()) for p in segments(db)}
    replaced = max((h.replaces for h in heads.values()), default=0)
    out = {n for n, h in heads.items() if h.number <= replaced}
    return out | {p.name for p in db.iterdir() if p.name.endswith(".tmp")}


def check_image(img: Path, exists: bool, mode: str, sync: str, w: Workload, r: Run) -> set[str]:
    """Checks one image; returns the leftovers it held before the reopen removed them."""
    states = w.states()
    required = r.acked if (sync == "always" or mode == "keep") else r.floor
    where = f"{sync}/{mode} image {img.name} (acked {r.acked}, floor {r.floor})"
    if not exists:
        assert required == 0, f"{where}: the store directory is gone"
        return set()
    left = leftovers(img)
    with N.Log(str(img), sync="off") as log:
        rec = log.recovery
        assert rec["corrupt_bytes"] == 0 and rec["corrupt_records"] == 0, (where, rec)
        assert log.stats()["skipped_entries"] == 0, where
        got = read_state(log)
        prefixes = [p for p, st in enumerate(states) if st == got]
        assert prefixes, f"{where}: the state is no prefix of the workload: {sorted(got)}"
        assert any(required <= p <= r.attempted for p in prefixes), (
            f"{where}: state after batches {prefixes}, expected {required}..{r.attempted}"
        )
        seqs = [e["seq"] for e in log.records()]
        assert seqs == sorted(set(seqs)), where
        generation = log.generation
        # Still writable after recovery, and the write is there after a reopen.
        log.append([add("after", "x", "written after the recovery")])
    assert not leftovers(img), where  # the opener removed them
    data = store_bytes(img)
    for secret, ordinal in w.secrets:
        if generation >= ordinal:
            assert secret.encode() not in data, f"{where}: purged text left after compaction"
    for vector, ordinal in w.secret_vectors:
        if generation >= ordinal:
            assert vector not in data, f"{where}: purged vector left after compaction"
    with N.Log(str(img)) as log:
        assert log.get("after", "x") is not None, where
        check_search(log, where)  # after the byte checks: a search may rewrite a pack
    return left


def crash_everywhere(tmp_path: Path, sync: str, make: Callable[[], Workload]) -> Counter[str]:
    """Crashes the workload at every I/O step; returns the crash points tried (x images) as
    "tried", and how many images held each kind of leftover."""
    w = make()
    dry = tmp_path / "dry"
    dry.mkdir()
    N._powerloss_enable(str(dry))
    r = run(dry / "db", sync, w, 0)
    total = N._powerloss_steps()
    assert not r.crashed and r.acked == len(w.batches()) and total > 10
    seen: Counter[str] = Counter()
    for k in range(1, total + 1):
        root = tmp_path / f"c{k}"
        root.mkdir()
        N._powerloss_enable(str(root))
        r = run(root / "db", sync, w, k)
        # Interval mode's flusher adds steps at its own pace, so late points may not be reached.
        assert r.crashed or sync == "interval", k
        for mode in MODES:
            img = tmp_path / f"img{k}-{mode}"
            exists = N._powerloss_image(str(root / "db"), str(img), mode, k)
            for name in check_image(img, exists, mode, sync, w, r):
                seen["compact.tmp" if name == "compact.tmp" else name[-3:]] += 1
            seen["tried"] += 1
        N._powerloss_disable()
    TRIED[sync] += seen["tried"]
    return seen


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_crash_at_every_step(tmp_path: Path, sync: str, workload: str) -> None:
    seen = crash_everywhere(tmp_path, sync, WORKLOADS[workload])
    assert seen["tried"] >= 4 * 20
    if workload == "compact":  # crashes mid-compaction left both kinds for the opener
        assert seen["compact.tmp"] > 0 and seen["log"] > 0, seen
    if workload == "roll":  # and mid-roll, a segment being written
        assert seen["tmp"] > 0, seen
    if workload == "packs":  # the uncrashed run wrote the pack of its last search
        assert len(list((tmp_path / "dry" / "db" / "packs").glob("*.vpk"))) == 1


# --- group commit -----------------------------------------------------------------------------

THREADS = 4
PER_THREAD = 6


def group_run(db: Path, sync: str, crash_at: int) -> tuple[set[str], set[str], set[str]]:
    """Threads append two-entry batches; returns the names of the batches acknowledged,
    acknowledged before the last file fsync (synced), and attempted."""
    N._powerloss_crash_at(crash_at)
    try:
        log = N.Log(str(db), sync=sync, sync_interval_ms=2)
    except E.StoreError:
        assert N._powerloss_crashed()
        return set(), set(), set()
    acked: dict[str, int] = {}  # name -> the I/O step count at its acknowledgement
    attempted: set[str] = set()
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def writer(t: int) -> None:
        start.wait()
        for i in range(PER_THREAD):
            name = f"t{t}-{i}"
            with lock:
                attempted.add(name)
            try:
                log.append([add("g", f"{name}a", f"{name} first"), add("g", f"{name}b", "second")])
            except E.StoreError:
                return
            step = N._powerloss_steps()
            with lock:
                acked[name] = step

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    N._powerloss_crash()
    last_sync = N._powerloss_last_sync()
    log.abandon()
    synced = {n for n, step in acked.items() if step < last_sync}  # see run()
    return set(acked), synced, attempted


@pytest.mark.parametrize("sync", SYNCS)
def test_group_commit_crash_at_every_step(tmp_path: Path, sync: str) -> None:
    dry = tmp_path / "dry"
    dry.mkdir()
    N._powerloss_enable(str(dry))
    acked, _, _ = group_run(dry / "db", sync, 0)
    assert len(acked) == THREADS * PER_THREAD
    total = N._powerloss_steps()
    tried = 0
    for k in range(1, total + 1):
        root = tmp_path / f"c{k}"
        root.mkdir()
        N._powerloss_enable(str(root))
        acked, synced, attempted = group_run(root / "db", sync, k)
        for mode in MODES:
            img = tmp_path / f"img{k}-{mode}"
            where = f"{sync}/{mode} crash at step {k}"
            if not N._powerloss_image(str(root / "db"), str(img), mode, k):
                assert not synced and (not acked or (sync != "always" and mode != "keep")), where
                tried += 1
                continue
            with N.Log(str(img)) as log:
                rec = log.recovery
                assert rec["corrupt_bytes"] == 0 and rec["corrupt_records"] == 0, (where, rec)
                ids = [m["id"] for m in log.list("g")]
                seqs = [e["seq"] for e in log.records()]
            names = {i[:-1] for i in ids}
            # Batches are atomic: both entries or neither.
            assert sorted(ids) == sorted([n + "a" for n in names] + [n + "b" for n in names])
            assert names <= attempted, where
            if sync == "always" or mode == "keep":
                assert acked <= names, f"{where}: lost {sorted(acked - names)}"
            assert synced <= names, f"{where}: lost after an fsync: {sorted(synced - names)}"
            # Lost writes are a suffix of the log: the seqs left are 1..n without a hole.
            assert seqs == list(range(1, len(seqs) + 1)), where
            tried += 1
        N._powerloss_disable()
    TRIED[sync] += tried
    assert tried >= 4 * 20


# --- the interval promise, timed --------------------------------------------------------------

INTERVAL_MS = 10
SLACK_S = 0.4  # scheduling delay allowed to the flusher thread beyond its interval (CI load)


def timed_run(db: Path, sync: str, seconds: float) -> tuple[list[float], float]:
    """Appends one memory every ~millisecond for `seconds`, then crashes; returns the
    acknowledgement time of each write and the crash time."""
    log = N.Log(str(db), sync=sync, sync_interval_ms=INTERVAL_MS)
    acks: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        log.append([add("u", f"m{len(acks)}", f"memory {len(acks)}")])
        acks.append(time.monotonic())
        time.sleep(0.001)
    crash = time.monotonic()
    N._powerloss_crash()
    log.abandon()
    return acks, crash


def surviving(img: Path, exists: bool) -> int:
    """How many of the timed run's writes the image holds (they must be a prefix)."""
    if not exists:
        return 0
    with N.Log(str(img)) as log:
        assert log.recovery["corrupt_bytes"] == 0
        ids = [m["id"] for m in log.list("u")]
    assert ids == [f"m{i}" for i in range(len(ids))]  # a prefix: a lost suffix, no hole
    return len(ids)


def test_interval_loses_at_most_the_last_interval(tmp_path: Path) -> None:
    rng = random.Random(14)
    checked = 0
    for rnd in range(3):
        root = tmp_path / f"r{rnd}"
        root.mkdir()
        N._powerloss_enable(str(root))
        acks, crash = timed_run(root / "db", "interval", rng.uniform(0.6, 0.8))
        for mode in ("drop", "torn", "zero"):
            img = tmp_path / f"img{rnd}-{mode}"
            n = surviving(img, N._powerloss_image(str(root / "db"), str(img), mode, rnd))
            old = [i for i, t in enumerate(acks) if t <= crash - INTERVAL_MS / 1000 - SLACK_S]
            assert old and n > old[-1], (
                f"{mode}: a write acknowledged {crash - acks[n]:.3f} s before the crash was lost"
            )
            checked += len(old)
            TRIED["interval"] += 1
        N._powerloss_disable()
    assert checked > 100


def test_off_loses_what_was_never_synced_and_keeps_what_flush_synced(tmp_path: Path) -> None:
    # The contrast to the interval test: with sync="off" nothing reaches the disk before a
    # flush (or a rotation, compaction or close), so a power loss takes every write since.
    for flushed in (False, True):
        root = tmp_path / f"f{flushed}"
        root.mkdir()
        N._powerloss_enable(str(root))
        log = N.Log(str(root / "db"), sync="off")
        for i in range(20):
            log.append([add("u", f"m{i}", f"memory {i}")])
        if flushed:
            log.flush()
        log.append([add("u", "m20", "after the flush")])
        N._powerloss_crash()
        log.abandon()
        img = tmp_path / f"img{flushed}"
        n = surviving(img, N._powerloss_image(str(root / "db"), str(img), "drop"))
        assert n == (20 if flushed else 0)
        TRIED["off"] += 1
        N._powerloss_disable()


# --- the simulation itself --------------------------------------------------------------------


def test_the_simulation_drops_unsynced_files_entries_and_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    N._powerloss_enable(str(root))
    with N.Log(str(root / "db"), sync="always") as log:
        log.append([add("u", "a", "synced")])
    steps = N._powerloss_steps()
    assert steps >= 8  # mkdir, LOCK, tmp, header write + fsync, rename, dir fsync, write, fsync
    # Bytes written behind the I/O layer's back never count as synced, nor do new names.
    seg = next((root / "db").glob("seg-*.log"))
    with open(seg, "ab") as f:
        f.write(b"unsynced tail")
    (root / "db" / "stray").write_bytes(b"never synced")
    keep = tmp_path / "keep"
    assert N._powerloss_image(str(root / "db"), str(keep), "keep")
    assert (keep / seg.name).read_bytes().endswith(b"unsynced tail") and (keep / "stray").exists()
    drop = tmp_path / "drop"
    assert N._powerloss_image(str(root / "db"), str(drop), "drop")
    assert not (drop / seg.name).read_bytes().endswith(b"unsynced tail")
    # "stray" was made after the directory's last fsync: gone. (It predates nothing.)
    assert not (drop / "stray").exists()
    zero = tmp_path / "zero"
    assert N._powerloss_image(str(root / "db"), str(zero), "zero")
    assert (zero / seg.name).read_bytes().endswith(b"\0" * len(b"unsynced tail"))
    # In place: the directory now is what the power loss left.
    assert N._powerloss_image(str(root / "db"))
    assert (root / "db" / seg.name).read_bytes() == (drop / seg.name).read_bytes()
    N._powerloss_disable()
    with N.Log(str(root / "db")) as log:
        assert log.get("u", "a") is not None


def test_a_crash_fails_every_later_call_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    N._powerloss_enable(str(root))
    log = N.Log(str(root / "db"), sync="always")
    size = next((root / "db").glob("seg-*.log")).stat().st_size
    N._powerloss_crash_at(1)  # the write of the next append
    with pytest.raises(E.StoreFailedError, match="errno 5"):
        log.append([add("u", "a", "never written")])
    assert N._powerloss_crashed()
    assert next((root / "db").glob("seg-*.log")).stat().st_size == size
    log.abandon()
