"""The anchors: headroom-ai 0.2.15's memory store and mem0, each in its own venv.

Each anchor lives in ``bench/.venvs/<name>/`` (gitignored; see bench/README.md for the two
install commands). :func:`run_anchor` writes the conversations' units and questions to a JSON
file, runs ``bench/locomo/anchor_driver.py`` under that venv's Python (a real separate
process), and scores the rankings it returns exactly like the in-process retrievers. The
latency it reports is the anchor's own search call, query embedding included.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO_ROOT
from bench.locomo.data import Conversation, UnitKind
from bench.locomo.scoring import QuestionResult, score_question

VENVS = REPO_ROOT / "bench" / ".venvs"
DRIVER = Path(__file__).with_name("anchor_driver.py")
ANCHORS: tuple[str, ...] = ("headroom-ai", "mem0")


@dataclass
class AnchorRun:
    """What one anchor produced for one unit kind: scored questions, version, ingest time."""

    name: str
    version: str
    results: list[QuestionResult]
    ingest_s: float


def anchor_python(name: str) -> Path | None:
    """The Python of the anchor's venv, or None when that venv is not installed."""
    python = VENVS / name / "bin" / "python"
    return python if python.is_file() else None


def _model_path() -> str:
    from headroom.memory.embedders.resolve import resolve

    return str(resolve().folder)


def run_anchor(
    name: str,
    convs: Sequence[Conversation],
    kind: UnitKind,
    depth: int,
    count: Callable[[str], int],
    timeout_s: float = 3600.0,
) -> AnchorRun:
    """Run anchor ``name`` over ``convs``; raise RuntimeError with the reason if it cannot run."""
    python = anchor_python(name)
    if python is None:
        raise RuntimeError(f"{name}: no venv at {VENVS / name} (see bench/README.md)")
    questions = {c.sample_id: [q for q in c.questions if q.evidence] for c in convs}
    job = {
        "model_path": _model_path(),
        "depth": depth,
        "users": [
            {
                "user": c.sample_id,
                "units": [u.text for u in c.units(kind)],
                "questions": [q.question for q in questions[c.sample_id]],
            }
            for c in convs
        ],
    }
    with tempfile.TemporaryDirectory(prefix="anchor-job-") as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps(job))
        proc = subprocess.run(
            [str(python), str(DRIVER), name, str(in_path), str(out_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout)[-1500:]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{tail}")
        output = json.loads(out_path.read_text())
    results: list[QuestionResult] = []
    ingest = 0.0
    by_user = {u["user"]: u for u in output["users"]}
    for conv in convs:
        units = conv.units(kind)
        tokens = [count(u.text) for u in units]
        got = by_user[conv.sample_id]
        ingest += float(got["ingest_s"])
        for q, ranked, ms in zip(
            questions[conv.sample_id], got["rankings"], got["latency_ms"], strict=True
        ):
            results.append(
                score_question(conv.sample_id, q.category, q.evidence, units, ranked, tokens, ms)
            )
    return AnchorRun(name, str(output["version"]), results, ingest)
