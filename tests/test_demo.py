"""The README's main job: `headroom-memory demo`, end to end, with the real MiniLM model."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from headroom.memory.cli import demo


def test_demo_recalls_across_sessions(tmp_path: Path) -> None:
    out = io.StringIO()
    assert demo.run(tmp_path / "memory.db", out=out) == 0
    text = out.getvalue()
    assert "SCRIPTED local endpoint" in text  # it says what stands in for the LLM
    # Recalled in the new session only through retrieval + injection:
    assert "your team already runs PostgreSQL" in text
    assert "You live in Porto." in text
    # The move superseded the old fact, which stays in history.
    assert "add     User lives in Lisbon" in text and "update  User lives in Porto" in text
    assert "<memory>" not in text  # no block text ever reaches the user
    assert "stats: 7 memories" in text
    # The search shown at the end finds the memory that answers it first (real MiniLM).
    shown = text.split(f"search({demo.SEARCH_QUERY!r}, top_k=3)")[1].splitlines()
    assert shown[1].split(None, 1)[1] == "User writes most services in Python"


def test_demo_cli_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "headroom.memory.cli.main", "demo", "--db", str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "You live in Porto." in result.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "headroom.memory.cli.main", "list", "--db", str(tmp_path / "db"),
         "--user", "maya", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "User lives in Porto" in listed.stdout and "Lisbon" not in listed.stdout
