"""The suite's CI rule (tests/conftest.py): on CI nothing may be skipped, at run time or at
collection time. Checked by running pytest in a subprocess, with this suite's conftest.py,
over tiny temporary test files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

FILES = {
    "test_passes.py": "def test_passes():\n    pass\n",
    "test_importorskip.py": (
        "import pytest\n\n"
        'missing = pytest.importorskip("headroom_no_such_module")\n\n\n'
        "def test_never_collected():\n    pass\n"
    ),
    "test_module_skip.py": (
        "import pytest\n\n"
        'pytest.skip("no data here", allow_module_level=True)\n\n\n'
        "def test_never_collected():\n    pass\n"
    ),
    "test_runtime_skip.py": (
        "import pytest\n\n\n"
        "def test_skips():\n"
        '    pytest.skip("no data here")\n\n\n'
        '@pytest.mark.xfail(strict=True, reason="known")\n'
        "def test_xfails():\n"
        "    assert False\n"
    ),
}


def _run(tmp_path: Path, ci: str | None, *names: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name in names:
        (tmp_path / name).write_text(FILES[name])
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *names],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_collection_time_skip_fails_on_ci_and_is_a_skip_off_it(tmp_path: Path) -> None:
    skippers = ["test_importorskip.py", "test_module_skip.py"]
    done = _run(tmp_path, "1", "test_passes.py", *skippers)
    assert done.returncode != 0, done.stdout
    for skipper in skippers:
        assert f"ERROR {skipper} - skipped at collection on CI" in done.stdout, done.stdout
    off_ci = _run(tmp_path, None, "test_passes.py", *skippers)
    assert off_ci.returncode == 0, off_ci.stdout
    assert "1 passed, 2 skipped" in off_ci.stdout, off_ci.stdout


def test_a_run_time_skip_fails_on_ci_and_an_xfail_does_not(tmp_path: Path) -> None:
    done = _run(tmp_path, "1", "test_passes.py", "test_runtime_skip.py")
    assert done.returncode != 0, done.stdout
    assert "FAILED test_runtime_skip.py::test_skips - skipped on CI" in done.stdout, done.stdout
    assert "1 failed, 1 passed, 1 xfailed" in done.stdout, done.stdout
