"""Round trip and API of the compiled core (headroom.memory.store.local._native): every op,
validation errors, persistence across reopen, and the on-disk format read back by an independent
pure-Python reader written from docs/log-format.md.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from headroom.memory import errors as E
from headroom.memory.store.local import _native as N
from tests._native_helpers import (
    add,
    crc32c,
    mask,
    op,
    patch,
    read_header,
    read_store,
    segments,
    update,
    vec,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "memory.db"


def test_crc32c_matches_the_standard_check_value_and_the_python_reader() -> None:
    assert N.crc32c(b"123456789") == 0xE3069283
    data = bytes(range(256)) * 5
    assert N.crc32c(data) == crc32c(data)
    rng = np.random.default_rng(0)
    for n in (7, 8, 4095, 12287, 12288, 12289, 24576 + 13, 50_001):  # 3-way blocks and tails
        chunk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert N.crc32c(chunk) == crc32c(chunk), n
    assert N.kernels()["crc32c"] in ("sse4.2", "portable")
    assert N.kernels()["dot"] in ("avx2+fma", "portable")


def test_add_get_list_and_reopen(db: Path) -> None:
    with N.Log(str(db), sync="always") as log:
        seqs = log.append(
            [
                add("alice", "m1", "likes python", vec(1, 0, 0), category=1, created_at=10),
                add(
                    "alice",
                    "m2",
                    "works at acme",
                    vec(0, 1, 0),
                    category=2,
                    created_at=20,
                    meta='{"k": 1}',
                ),
                add("bob", "m1", "bob's own m1", vec(0, 0, 1), created_at=5),
            ]
        )
        assert seqs == [1, 2, 3]
        assert log.last_seq == 3
    log = N.Log(str(db))
    m = log.get("alice", "m2")
    assert m is not None
    assert (m["id"], m["user"], m["text"], m["category"], m["source"]) == (
        "m2",
        "alice",
        "works at acme",
        2,
        2,
    )
    assert (m["created_at"], m["metadata"], m["model"], m["seq"], m["version"]) == (
        20,
        '{"k": 1}',
        "test-model",
        2,
        1,
    )
    assert m["updated_at"] > 0
    assert [x["id"] for x in log.list("alice")] == ["m1", "m2"]
    assert [x["text"] for x in log.list("bob")] == ["bob's own m1"]
    assert log.get("alice", "nope") is None and log.get("carol", "m1") is None
    assert log.count("alice") == 2 and log.count("carol") == 0
    assert log.users() == ["alice", "bob"]
    assert log.user_seq("alice") == 2 and log.user_seq("bob") == 3 and log.user_seq("x") == 0
    assert log.recovery == {
        "torn_tail_bytes": 0,
        "corrupt_bytes": 0,
        "corrupt_records": 0,
        "segments": 1,
        "damaged_segments": [],
    }
    log.close()


def test_list_filters_by_category_mask_and_time_inclusively(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append(
            [
                add("u", f"m{i}", f"t{i}", vec(1, 0), category=1 + i % 3, created_at=i)
                for i in range(9)
            ]
        )
        assert [x["id"] for x in log.list("u", categories=1 << 1)] == ["m0", "m3", "m6"]
        both = (1 << 2) | (1 << 3)
        assert [x["id"] for x in log.list("u", categories=both)] == [
            "m1",
            "m2",
            "m4",
            "m5",
            "m7",
            "m8",
        ]
        assert [x["id"] for x in log.list("u", t_min=3, t_max=5)] == ["m3", "m4", "m5"]


def test_update_keeps_history_and_relabels(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", "m", "v1", vec(1, 0), category=1, created_at=7)])
        log.append([update("u", "m", "v2", vec(0, 1))])
        log.append([update("u", "m", "v3", None, category=3)])  # no vector: keeps v2's
        m = log.get("u", "m")
        assert m is not None
        assert (m["text"], m["category"], m["version"], m["seq"], m["created_at"]) == (
            "v3",
            3,
            3,
            3,
            7,
        )
        hist = log.history("u", "m")
        assert [(h["op"], h["text"], h["version"]) for h in hist] == [
            ("ADD", "v1", 1),
            ("UPDATE", "v2", 2),
            ("UPDATE", "v3", 3),
        ]
        labels, vecs = log.vectors("u")
        assert labels.tolist() == [3] and vecs.tolist() == [[0.0, 1.0]]
        removed, added, avecs = log.changes("u", 1)
        assert removed.tolist() == [1] and added.tolist() == [3] and avecs.shape == (1, 2)
        assert log.resolve("u", [1, 2, 3]) == [None, None, ("m", 3, 7)]


def test_update_with_created_at_and_explicit_timestamps(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([(*add("u", "m", "v1", vec(1.0), created_at=5), 111)])
        log.append([(N.UPDATE, "u", "m", 0, 0, 3, "v2", "", "x", vec(1.0), 222)])
        m = log.get("u", "m")
        assert m is not None and m["created_at"] == 3 and m["updated_at"] == 222
        assert [h["updated_at"] for h in log.history("u", "m")] == [111, 222]


def test_delete_clear_and_tombstones_in_history(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", f"m{i}", f"t{i}", vec(1, 0)) for i in range(3)])
        log.append([op(N.DELETE, "u", "m0")])
        assert [x["id"] for x in log.list("u")] == ["m1", "m2"]
        assert [h["op"] for h in log.history("u", "m0")] == ["ADD", "DELETE"]
        with pytest.raises(E.MemoryNotFoundError):
            log.append([op(N.DELETE, "u", "m0")])
        with pytest.raises(E.InvalidInputError, match="already exists"):
            log.append([add("u", "m0", "again")])  # ids are never reused while known
        log.append([op(N.CLEAR, "u")])
        assert log.list("u") == [] and log.count("u") == 0
        assert [h["op"] for h in log.history("u", "m1")] == ["ADD", "CLEAR"]
        assert log.search("u", vec(1, 0), 5) == []


def test_purge_memory_and_user_and_their_jobs(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append(
            [
                add("u", "m1", "a", vec(1.0)),
                add("u", "m2", "b", vec(1.0)),
                add("v", "m1", "c", vec(1.0)),
            ]
        )
        log.append([op(N.PENDING, "u", "j1", '{"x": 1}'), op(N.PENDING, "v", "j2", "{}")])
        log.append([op(N.PURGE, "u", "m1")])
        assert log.get("u", "m1") is None and log.history("u", "m1") == []
        assert [j["id"] for j in log.pending()] == ["j2"]  # a purge drops the user's jobs
        log.append([add("u", "m1", "a fresh m1 after purge", vec(1.0))])  # id free again
        log.append([op(N.PURGE, "v")])
        assert log.users() == ["u"] and log.pending() == []


def test_pending_done_and_config(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append(
            [
                op(N.PENDING, "u", "j1", '{"a": 1}', created_at=5),
                op(N.PENDING, "u", "j2", "{}", created_at=6),
            ]
        )
        with pytest.raises(E.InvalidInputError, match="already pending"):
            log.append([op(N.PENDING, "u", "j1", "{}")])
        log.append([op(N.DONE, "", "j1")])
        assert log.pending() == [{"id": "j2", "user": "u", "text": "{}", "created_at": 6, "seq": 2}]
        log.append([op(N.CONFIG, "", "model", '"a"')])
        log.append([op(N.CONFIG, "", "model", '"b"'), op(N.CONFIG, "", "dim", "384")])
        assert log.config() == {"model": '"b"', "dim": "384"}
        with pytest.raises(E.InvalidInputError):
            log.append([op(N.CONFIG, "u", "k", "1")])


def test_revector_replaces_vector_without_new_version(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", "m", "t", vec(1, 0))])
        log.append([(N.REVECTOR, "u", "m", 0, 0, 0, "", "", "model-2", vec(0, 1, 0))])
        m = log.get("u", "m")
        assert m is not None and m["version"] == 1 and m["model"] == "model-2" and m["seq"] == 2
        assert [h["op"] for h in log.history("u", "m")] == ["ADD", "REVECTOR"]
        assert log.vectors("u")[1].tolist() == [[0.0, 1.0, 0.0]]
        with pytest.raises(E.InvalidVectorError):
            log.append([(N.REVECTOR, "u", "m", 0, 0, 0, "", "", "m", None)])


def test_search_top_k_filters_and_ties(db: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((200, 16)).astype(np.float32)
    with N.Log(str(db)) as log:
        log.append(
            [add("u", f"m{i}", "t", data[i], category=1 + i % 3, created_at=i) for i in range(200)]
        )
        log.append([add("other", "x", "t", data[0] * 10)])
        q = rng.standard_normal(16).astype(np.float32)
        scores = data @ q
        want = [f"m{i}" for i in np.argsort(-scores, kind="stable")[:10]]
        got = log.search("u", q, 10)
        assert [g[0] for g in got] == want
        assert got[0][1] == pytest.approx(float(scores.max()), rel=1e-5)
        mask_ = 1 << 2
        got = log.search("u", q, 7, categories=mask_, t_min=50, t_max=150)
        ok = [i for i in range(200) if 1 + i % 3 == 2 and 50 <= i <= 150]
        want = [f"m{i}" for i in sorted(ok, key=lambda i: -scores[i])[:7]]
        assert [g[0] for g in got] == want
        assert len(log.search("u", q, 1000)) == 200  # never more than the live matches
        # Ties: equal scores come back oldest seq first.
        log.append([add("t", f"e{i}", "t", vec(1, 0)) for i in range(5)])
        assert [g[0] for g in log.search("t", vec(1, 0), 3)] == ["e0", "e1", "e2"]
        with pytest.raises(E.InvalidVectorError, match="dim"):
            log.search("u", vec(1, 2, 3), 3)


@pytest.mark.parametrize(
    ("entry", "error", "match"),
    [
        (add("u", "m", "t", vec(1, 2, 3)), E.InvalidVectorError, "dim"),
        (add("u", "m", "t", vec(1, float("nan"), 0, 0)), E.InvalidVectorError, "NaN"),
        (add("u", "m", "t", vec(1, float("inf"), 0, 0)), E.InvalidVectorError, "NaN"),
        (add("u", "m", "t", np.zeros(4, dtype=np.float64)), E.InvalidVectorError, "float32"),
        (add("u", "m", "t", np.zeros((2, 2), dtype=np.float32)), E.InvalidVectorError, "1-D"),
        (
            add("u", "m", "t", np.zeros(8, dtype=np.float32)[::2]),
            E.InvalidVectorError,
            "contiguous",
        ),
        (add("u", "m", "t", [1.0, 2.0, 3.0, 4.0]), E.InvalidVectorError, "numpy"),
        (add("u", "m", "t", np.zeros(0, dtype=np.float32)), E.InvalidVectorError, "dim"),
        ((0, "u", "m", 1, 1, 0, "t", "", "", None), E.InvalidInputError, "op"),
        ((10, "u", "m", 1, 1, 0, "t", "", "", None), E.InvalidInputError, "op"),
        (add("", "m", "t"), E.InvalidInputError, "user"),
        (add("u\n", "m", "t"), E.InvalidInputError, "control"),
        (add("u" * 257, "m", "t"), E.InvalidInputError, "user"),
        (add("u", "", "t"), E.InvalidInputError, "id"),
        (add("u", "m", ""), E.InvalidInputError, "text"),
        (add("u", "m", "t", category=0), E.InvalidInputError, "category"),
        (add("u", "m", "t", category=4), E.InvalidInputError, "category"),
        (add("u", "m", "\ud800"), E.InvalidInputError, "UTF-8"),
        (add("u", 5, "t"), E.InvalidInputError, "str"),  # type: ignore[arg-type]
        (("a",), E.InvalidInputError, "entry"),
        (op(N.DELETE, "u", "m", v=vec(1.0)), E.InvalidVectorError, "no vector"),
        (update("u", "missing", "t"), E.MemoryNotFoundError, "missing"),
    ],
)
def test_bad_input_raises_typed_errors_and_writes_nothing(
    db: Path, entry: tuple[object, ...], error: type[Exception], match: str
) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", "first", "t", vec(0, 0, 0, 1))])
        size = segments(db)[0].stat().st_size
        with pytest.raises(error, match=match):
            log.append([add("u", "ok", "fine", vec(1, 0, 0, 0)), entry])
        assert log.get("u", "ok") is None  # the batch is all or nothing
        assert segments(db)[0].stat().st_size == size
        assert log.last_seq == 1


def test_batch_meaning_is_checked_in_order(db: Path) -> None:
    with N.Log(str(db)) as log:
        # ADD then UPDATE then DELETE of the same id inside one batch is valid...
        log.append([add("u", "m", "a", vec(1.0)), update("u", "m", "b"), op(N.DELETE, "u", "m")])
        assert log.get("u", "m") is None
        # ...and an UPDATE after a CLEAR in the same batch is not.
        log.append([add("u", "n", "a", vec(1.0))])
        with pytest.raises(E.MemoryNotFoundError):
            log.append([op(N.CLEAR, "u"), update("u", "n", "b")])
        assert log.get("u", "n") is not None


def test_records_match_the_independent_reader(db: Path) -> None:
    with N.Log(str(db), segment_bytes=4096) as log:
        for i in range(60):
            log.append([add(f"u{i % 3}", f"m{i}", f"text {i} é", vec(i, 1.5), created_at=i)])
        log.append([op(N.DELETE, "u0", "m0"), op(N.PENDING, "u1", "j", "{}")])
        log.append([op(N.CONFIG, "", "k", "v")])
        ours = list(log.records())
        assert len(segments(db)) > 1  # rotated
    theirs = read_store(db)
    assert len(ours) == len(theirs) == 63
    for a, b in zip(ours, theirs, strict=True):
        va, vb = a.pop("vector"), b.pop("vector")
        assert a == b
        assert (va is None and vb is None) or np.array_equal(va, vb)
    assert [r["seq"] for r in theirs] == list(range(1, 64))


def test_segment_header_layout(db: Path) -> None:
    N.Log(str(db)).close()
    h = read_header(segments(db)[0].read_bytes())
    assert (h.version, h.size, h.number, h.replaces, h.generation) == (
        N.FORMAT_VERSION,
        48,
        1,
        0,
        0,
    )


def _rewrite_header(path: Path, version: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, version)
    struct.pack_into("<I", data, 44, mask(crc32c(bytes(data[:44]))))
    path.write_bytes(bytes(data))


def test_a_newer_format_version_says_to_upgrade(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", "m", "t")])
    _rewrite_header(segments(db)[0], N.FORMAT_VERSION + 1)
    with pytest.raises(E.StoreVersionError, match="upgrade"):
        N.Log(str(db))


def test_a_damaged_segment_header_is_a_corruption_error(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", "m", "t")])
    patch(segments(db)[0], 20, b"\xff")
    with pytest.raises(E.StoreCorruptionError, match="segment header"):
        N.Log(str(db))


def test_compaction_keeps_live_history_and_seqs(db: Path) -> None:
    with N.Log(str(db)) as log:
        log.append([add("u", "a", "a1", vec(1, 0)), add("u", "b", "b1", vec(0, 1))])
        log.append([update("u", "a", "a2", vec(1, 1))])
        log.append(
            [op(N.DELETE, "u", "b"), op(N.PENDING, "u", "j1", "{}"), op(N.PENDING, "u", "j2", "{}")]
        )
        log.append([op(N.DONE, "", "j1"), op(N.CONFIG, "", "k", "1")])
        log.append([op(N.CONFIG, "", "k", "2")])
        before = [(h["op"], h["text"], h["seq"]) for h in log.history("u", "a")]
        res = log.compact()
        assert res["entries_before"] == 9 and res["entries_after"] == 4  # a1, a2, j2, k=2
        assert res["bytes_after"] < res["bytes_before"]
        assert log.generation == 1
        assert [(h["op"], h["text"], h["seq"]) for h in log.history("u", "a")] == before
        assert log.get("u", "b") is None and log.history("u", "b") == []
        assert [j["id"] for j in log.pending()] == ["j2"] and log.config() == {"k": "2"}
        assert log.append([add("u", "c", "c1")]) == [10]  # seqs never go back
    assert len(segments(db)) == 1
    with N.Log(str(db)) as log:
        assert log.last_seq == 10 and log.generation == 1
        assert [m["id"] for m in log.list("u")] == ["a", "c"]


def test_closed_and_abandoned_logs_refuse_calls(db: Path) -> None:
    log = N.Log(str(db))
    log.close()
    log.close()  # idempotent
    assert log.closed
    with pytest.raises(E.StoreClosedError):
        log.append([add("u", "m", "t")])
    with pytest.raises(E.StoreClosedError):
        log.list("u")
    other = N.Log(str(db))
    other.abandon()
    with pytest.raises(E.StoreClosedError):
        other.get("u", "m")


def test_bad_arguments_to_open(tmp_path: Path) -> None:
    with pytest.raises(E.InvalidInputError, match="sync"):
        N.Log(str(tmp_path / "x"), sync="sometimes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(E.InvalidInputError, match="not a directory"):
        N.Log(str(tmp_path / "file"))


def test_threads_group_commit_all_entries_once(db: Path) -> None:
    import threading

    with N.Log(str(db), sync="always") as log:
        seqs: list[int] = []
        lock = threading.Lock()

        def work(t: int) -> None:
            for i in range(50):
                s = log.append([add(f"user{t}", f"m{i}", f"t{t}-{i}", vec(float(t), 1.0))])
                with lock:
                    seqs.extend(s)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seqs) == list(range(1, 201))
        assert sum(log.count(f"user{t}") for t in range(4)) == 200
        stats = log.stats()
        # Each batch is one frame, written once (a shared write and fsync never merges or
        # repeats batches), and every acknowledged batch was covered by an fsync.
        assert (stats["records"], stats["entries"]) == (200, 200)
        assert 1 <= stats["fsyncs"] <= 200
    with N.Log(str(db)) as again:
        assert [r["seq"] for r in again.records()] == list(range(1, 201))
        assert again.recovery["torn_tail_bytes"] == 0


def test_a_forked_child_cannot_use_or_hang_on_the_parents_handle(db: Path) -> None:
    import os

    log = N.Log(str(db), sync="interval")  # has a background fsync thread
    log.append([add("u", "m", "t")])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                log.get("u", "m")
            except E.StoreClosedError:
                code = 2
            log.close()  # must not join the parent's thread (it does not exist here)
            del log
            code = code + 1 if code == 2 else code
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 3
    assert log.get("u", "m") is not None  # the parent's handle is untouched
    log.close()
