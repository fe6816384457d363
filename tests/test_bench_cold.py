"""The ``cold`` bench suite: its workload and a real small run (fresh child processes that open
a real store, search it first and warm, with and without the lexical snapshot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import bench_cold as bc


def test_the_workload_is_deterministic_and_the_child_regenerates_its_queries() -> None:
    a, b = bc.workload(200, 5), bc.workload(200, 5)
    assert a.texts == b.texts and a.queries == b.queries
    assert np.array_equal(a.vectors, b.vectors)
    assert len(set(a.texts)) == 200 and a.vectors.shape == (200, bc.DIM)
    assert bc.workload(0, 5).queries == a.queries  # what a child process rebuilds
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, rtol=1e-5)


def test_a_small_run_measures_both_variants_in_fresh_processes(tmp_path: Path) -> None:
    # 400 memories: above the size the store snapshots lexical state for at close.
    out = bc.measure(400, runs=1, warm=5, seed=3, scratch=tmp_path)
    assert out["size"] == 400 and out["lex_bytes"] > 0  # the snapshot was written
    for name in ("snapshots", "no lexical snapshot"):
        v = out[name]
        assert len(v["runs"]) == 1
        assert v["first_ms"] > 0 and 0 < v["warm_ms"] <= v["worst_later_ms"]
        assert v["ratio"] == v["first_ms"] / v["warm_ms"]
        assert v["lexical_first_ms"] > 0 and v["lexical_top_ms"] > 0
    table = bc.report([out])
    assert "400" in table and "snapshots" in table and "worst later ms" in table
    assert not (tmp_path / "cold-400").exists()  # the scratch store is removed
