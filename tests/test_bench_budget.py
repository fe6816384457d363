"""The ``budget`` suite runs end to end on a tiny configuration and writes its figures."""

from __future__ import annotations

import json

import pytest

from bench.bench_budget import main
from bench.common import RESULTS_DIR


def test_budget_suite_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--turns", "2,30", "--calls", "4", "--memories", "20"]) == 0
    out = capsys.readouterr().out
    assert "fit_messages vs RollingWindowTransform.apply" in out and "Core.prepare" in out
    payload = json.loads((RESULTS_DIR / "budget-quick.json").read_text())
    assert [r["turns"] for r in payload["fit"]] == [2, 30]
    assert [r["turns"] for r in payload["prepare"]] == [2, 30]
    for row in payload["fit"] + payload["prepare"]:
        assert row["ratio_p50"] > 0
