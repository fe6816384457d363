"""Shared helpers of every benchmark suite: machine facts, CPU contention, statistics, output.

Contracts:
- Nothing here needs more than numpy. matplotlib, tqdm and threadpoolctl are used when they are
  installed (the ``bench`` extra) and skipped silently when they are not: a missing plot or
  progress bar never fails a run.
- :class:`CpuWatch` measures how much CPU time *other* processes used while a block ran
  (busy time of the whole machine from ``/proc/stat`` minus this process's own ``rusage``), so a
  result measured on a shared machine says how shared it was.
- Results are written as JSON under ``bench/results/`` (gitignored) with the machine facts.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

#: Folder of the repository checkout (bench/ lives directly under it).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where every suite writes its JSON and PNG files (gitignored).
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def shared_dir() -> Path:
    """The shared data folder: ``$HEADROOM_SHARED_DIR``, else ``shared`` beside the checkout."""
    env = os.environ.get("HEADROOM_SHARED_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def _optional(name: str) -> Any:
    """The module ``name`` if it can be imported, else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# --- machine facts ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info() -> list[dict[str, Any]]:
    """numpy's BLAS libraries with their kernel (``internal_api``, ``architecture``, threads).

    Empty when threadpoolctl is not installed. ``OPENBLAS_CORETYPE`` changes the kernel, so it
    is reported by :func:`machine_info` too.
    """
    tpc = _optional("threadpoolctl")
    if tpc is None:
        return []
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: lib.get(k) for k in keys} for lib in tpc.threadpool_info()]


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a figure: CPU, cores, load, library versions, BLAS."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ort = _optional("onnxruntime")
    if ort is not None:
        info["onnxruntime"] = ort.__version__
    return info


# --- CPU used by other processes ---------------------------------------------------------------


def _machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), or None off Linux."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice]; guest is in user.
    values = [int(v) for v in first[1:9]]
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class CpuReport:
    """CPU accounting of one measured block.

    ``others_cpu_s`` is CPU time used by other processes during the block;
    ``others_share`` is that divided by (wall time x usable cores): 0 on an idle machine,
    1 when other processes kept every core busy the whole time.
    """

    wall_s: float
    own_cpu_s: float
    others_cpu_s: float | None
    others_share: float | None


class CpuWatch:
    """Context manager measuring wall time, own CPU and other processes' CPU of a block.

    >>> with CpuWatch() as watch:
    ...     pass
    >>> watch.report.wall_s >= 0
    True
    """

    def __init__(self) -> None:
        self.report = CpuReport(0.0, 0.0, None, None)
        self._t0 = 0.0
        self._own0 = 0.0
        self._busy0: float | None = None

    def __enter__(self) -> CpuWatch:
        self._busy0 = _machine_busy_seconds()
        self._own0 = _own_cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        own = _own_cpu_seconds() - self._own0
        busy1 = _machine_busy_seconds()
        others: float | None = None
        share: float | None = None
        if self._busy0 is not None and busy1 is not None:
            # Clock-tick granularity can make this slightly negative on an idle machine.
            others = max(0.0, (busy1 - self._busy0) - own)
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            share = others / (wall * cores) if wall > 0 else None
        self.report = CpuReport(wall, own, others, share)


# --- statistics --------------------------------------------------------------------------------


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` of ``values`` (linear interpolation). Raises on empty input."""
    if len(values) == 0:
        raise ValueError("percentiles of an empty sequence")
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


@dataclass
class Spread:
    """The median of repeated runs with how far the runs strayed from it."""

    median: float
    min: float
    max: float
    rel_spread: float  # (max - min) / median; 0 when the median is 0
    runs: int


def median_of_runs(values: Sequence[float]) -> Spread:
    """Median of several runs of one measurement, with min, max and relative spread."""
    if len(values) == 0:
        raise ValueError("median of no runs")
    med = float(statistics.median(values))
    lo, hi = float(min(values)), float(max(values))
    return Spread(med, lo, hi, (hi - lo) / med if med else 0.0, len(values))


# --- output ------------------------------------------------------------------------------------


def _json_default(value: object) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    if isinstance(value, (datetime, Path)):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def child_json(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh interpreter (this one's executable and ``-S`` flag,
    the repository as working directory, ``env`` or this environment) and return the JSON
    document on the last line of its stdout. RuntimeError, with the tail of its stderr, when it
    exits non-zero."""
    flags = ["-S"] if sys.flags.no_site else []
    proc = subprocess.run(
        [sys.executable, *flags, *args],
        cwd=REPO_ROOT,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child {' '.join(args)[:120]} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


def write_json(name: str, payload: Mapping[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``payload`` plus machine facts to ``<results>/<name>.json``; return the path."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    doc = {"machine": machine_info(), **payload}
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def plot_bars(
    name: str,
    series: Mapping[str, Mapping[str, float]],
    title: str,
    ylabel: str,
    results_dir: Path | None = None,
) -> Path | None:
    """Grouped bar chart (one group per inner key, one bar per outer key) as a PNG.

    Returns the path, or None when matplotlib is not installed.
    """
    mpl = _optional("matplotlib")
    if mpl is None:
        return None
    mpl.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    groups = list(dict.fromkeys(g for s in series.values() for g in s))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * len(series) * 0.5 + 3), 4))
    for i, (label, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``items`` wrapped in a tqdm progress bar (on stderr) when tqdm is installed."""
    tqdm = _optional("tqdm")
    if tqdm is None:
        yield from items
        return
    yield from tqdm.tqdm(items, desc=desc, total=total, leave=False)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table with aligned columns; floats printed with 3 decimals."""

    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join(
        [line, sep, *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body)]
    )
