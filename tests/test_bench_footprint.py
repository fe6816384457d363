"""The ``footprint`` bench suite: its synthetic data, its arguments and a real small run.

Everything is real: stores on disk written through the engine, fresh child processes reading
their own /proc/self/smaps_rollup, and the library's cold start with the installed MiniLM.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import bench_footprint as bf
from headroom.memory.store.local.backend import LocalBackend


def test_synthetic_texts_and_vectors_are_deterministic_and_distinct() -> None:
    assert bf.texts(50, 3) == bf.texts(50, 3)
    assert len(set(bf.texts(500, 3))) == 500
    assert len({bf.word(i) for i in range(bf.VOCABULARY)}) == bf.VOCABULARY
    vectors = bf.unit_vectors(10, 1)
    assert vectors.shape == (10, bf.DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    embedder = bf.HashEmbedder()
    a, b = embedder.embed(["x", "y"]), embedder.embed(["x"])
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], a[1])


def test_many_user_store_holds_every_user_interleaved(tmp_path: Path) -> None:
    bf.build_many_users(tmp_path / "db", 5, 7, seed=0)
    backend = LocalBackend(tmp_path / "db")
    try:
        assert backend.users() == [bf.user_name(u) for u in range(5)]
        assert {backend.count(u) for u in backend.users()} == {7}
        # round by round: the second memory of user 0 comes after the first of user 4
        seq = {
            m.id: backend.log.get(m.user_id, m.id)["seq"] for m in backend.memories("user-00000")
        }
        last_first = backend.log.get("user-00004", f"{4:016x}{0:016x}")["seq"]
        assert sorted(seq.values())[1] > last_first
    finally:
        backend.close()


def test_smaps_reads_this_process() -> None:
    mem = bf.smaps()
    assert mem["Rss"] > 0 and mem["USS"] >= mem["Private_Dirty"] > 0


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as err:
        bf.parse_args(["--sizes", "10,x"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        bf.parse_args(["--sections", "users,nope"])
    with pytest.raises(SystemExit):
        bf.parse_args(["--users", "0"])
    cfg = bf.parse_args(["--quick", "--users", "30"])
    assert cfg.quick and cfg.users == 30 and cfg.sizes == (2_000, 6_000)


@pytest.mark.slow
def test_quick_run_measures_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--users", "40", "--per-user", "100", "--sizes", "300,5000"]
    assert bf.main([*argv, "--warm", "5", "--results", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "other processes used" in printed and "target <= 0.5 KB" in printed
    doc = json.loads((tmp_path / "footprint-quick.json").read_text())
    assert set(doc["cpu"]) == set(bf.SECTIONS)
    users = doc["users"]
    assert users["memories"] == 4000 and users["vectors"] == "synthetic"
    for mode in bf.MODES:
        row = users["per_memory_bytes"][mode]
        assert math.isfinite(row["anon_total"]) and row["open_s"] > 0
        run = users["runs"][mode]
        assert run["after"]["Rss"] >= run["before"]["Rss"] > 0
    assert set(users["split_bytes"]) == {"vectors", "lexical", "other", "state_at_open"}
    # the lexical side holds a BM25 index of every user: it cannot be free
    assert users["per_memory_bytes"]["lexical"]["anon_after_open"] > 0
    cold = doc["cold"]
    assert [(r["size"], r["path"]) for r in cold] == [
        (300, "dense"), (300, "hybrid"), (5000, "dense"), (5000, "hybrid"),
    ]  # fmt: skip
    for r in cold:
        assert r["first_ms"] > 0 and r["warm_p50_ms"] > 0 and r["warm_samples"] == 5
        assert r["first_over_warm"] == pytest.approx(r["first_ms"] / r["warm_p50_ms"])
    lib = doc["library"]
    assert lib["bare_numpy_s"] > 0 and lib["cold_s"] > 0
    assert lib["package_mb"] > 0.1 and lib["runtime_deps_mb"] > lib["deps"]["numpy"] > 0
