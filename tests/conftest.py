"""Suite-wide rules.

On CI (``CI`` set) a skipped test is a failure: CI has the shared data, the model and every
test dependency, so a skip there can only hide missing work. That holds for skips at run time
(``pytest.skip``, ``skipif``) and at collection time (a module-level ``pytest.importorskip``
or ``pytest.skip(..., allow_module_level=True)``), which would otherwise drop a whole module
silently.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where nothing may be skipped: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped at collection on CI, where nothing may be skipped: {reason}"
