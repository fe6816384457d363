"""Benchmark of the compiled core alone (``python -m bench log``): append latency and throughput
per durability mode, group commit across threads, and opening (replaying) a store of 1M
synthetic records across 10k users, with peak RSS. Vectors are random (synthetic): fine for
latency and scale, meaningless for recall (bench_store measures recall on real embeddings).

Every figure says how much CPU other processes used while it ran (shared machines).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    CpuWatch,
    format_table,
    machine_info,
    median_of_runs,
    percentiles,
    write_json,
)
from headroom.memory.store.local import _native as N

OPEN_CHILD = r"""
import json, resource, sys, time
import numpy as np
from headroom.memory.store.local import _native as N
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
log = N.Log(sys.argv[1], sync="off")
t1 = time.perf_counter()
r1 = resource.getrusage(resource.RUSAGE_SELF)
q = np.ones(int(sys.argv[3]), dtype=np.float32)
hits = log.search(sys.argv[2], q, 10)
t2 = time.perf_counter()
st = log.stats()
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"open_s": t1 - t0, "open_cpu_s": cpu, "first_search_s": t2 - t1,
                  "entries": st["entries"],
                  "bytes": st["bytes"], "hits": len(hits),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _entries(rng: np.random.Generator, user: str, start: int, n: int, dim: int) -> list[Any]:
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    return [
        (
            N.ADD,
            user,
            f"m{start + i}",
            1 + (start + i) % 3,
            2,
            start + i,
            f"synthetic memory number {start + i} of {user}",
            "{}",
            "synthetic",
            vecs[i],
        )
        for i in range(n)
    ]


def bench_append(dim: int, n: int, root: Path) -> list[dict[str, Any]]:
    """Latency of one durable add of 3 memories (vectors given), per mode, one thread."""
    rows = []
    rng = np.random.default_rng(1)
    batches = [_entries(rng, f"user{i % 50}", 3 * i, 3, dim) for i in range(n)]
    for mode in ("always", "interval", "off"):
        db = root / f"append-{mode}"
        lat = []
        with N.Log(str(db), sync=mode) as log, CpuWatch() as watch:
            for b in batches:
                t0 = time.perf_counter()
                log.append(b)
                lat.append(time.perf_counter() - t0)
        p = percentiles([x * 1e6 for x in lat])
        rows.append(
            {
                "mode": mode,
                "batches": n,
                "p50_us": p["p50"],
                "p99_us": p["p99"],
                "batches_per_s": n / sum(lat),
                "others_share": watch.report.others_share,
            }
        )
        shutil.rmtree(db)
    return rows


def bench_group_commit(dim: int, n: int, threads: int, root: Path) -> list[dict[str, Any]]:
    """Throughput of sync="always" with 1 and `threads` appending threads (one fsync per group)."""
    rows = []
    rng = np.random.default_rng(2)
    for t in (1, threads):
        db = root / f"group-{t}"
        per = n // t
        work = [[_entries(rng, f"t{k}", i, 1, dim) for i in range(per)] for k in range(t)]
        with N.Log(str(db), sync="always") as log, CpuWatch() as watch:

            def run(batches: list[Any], log: Any = log) -> None:
                for b in batches:
                    log.append(b)

            ths = [threading.Thread(target=run, args=(w,)) for w in work]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            frames = log.stats()["fsyncs"]
        rows.append(
            {
                "threads": t,
                "adds": per * t,
                "adds_per_s": per * t / watch.report.wall_s,
                "fsyncs": frames,
                "others_share": watch.report.others_share,
            }
        )
        shutil.rmtree(db)
    return rows


def build_store(db: Path, records: int, users: int, dim: int) -> dict[str, Any]:
    """A store of `records` ADDs over `users` users, written in batches of 1,000."""
    rng = np.random.default_rng(3)
    per_user = records // users
    with N.Log(str(db), sync="off") as log, CpuWatch() as watch:
        batch: list[Any] = []
        for u in range(users):
            batch += _entries(rng, f"user{u}", 0, per_user, dim)
            if len(batch) >= 1000:
                log.append(batch)
                batch = []
        if batch:
            log.append(batch)
        log.flush()
    return {"build_s": watch.report.wall_s, "records_per_s": records / watch.report.wall_s}


def bench_open(db: Path, dim: int, runs: int) -> dict[str, Any]:
    """Open the store in a fresh process (page cache warm): time, first search, peak RSS."""
    results = []
    for _ in range(runs):
        with CpuWatch() as watch:
            out = subprocess.run(
                [sys.executable, "-c", OPEN_CHILD, str(db), "user0", str(dim)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        r = json.loads(out)
        r["others_share"] = watch.report.others_share
        results.append(r)
    open_s = median_of_runs([r["open_s"] for r in results])
    return {
        "open_s": open_s,
        "open_cpu_s": median_of_runs([r["open_cpu_s"] for r in results]),
        "first_search_ms": median_of_runs([r["first_search_s"] * 1e3 for r in results]),
        "replay_records_per_s": results[0]["entries"] / open_s.median,
        "entries": results[0]["entries"],
        "bytes": results[0]["bytes"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "others_share": max(r["others_share"] or 0.0 for r in results),
    }


def main(argv: list[str]) -> int:
    """Run the suite; print the tables; write bench/results/log.json."""
    ap = argparse.ArgumentParser(prog="python -m bench log", description=__doc__)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384, help="vector dim (MiniLM: 384)")
    ap.add_argument("--appends", type=int, default=2000, help="batches per durability mode")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3, help="opens to take the median of")
    ap.add_argument("--quick", action="store_true", help="100k records, 500 appends")
    ap.add_argument(
        "--sections", default="append,group,open", help="comma list of append,group,open"
    )
    ap.add_argument(
        "--store",
        type=Path,
        help="open this store instead of building one in a temporary directory (built there "
        "first when it does not exist, and kept: repeated open measurements skip the build)",
    )
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if not sections <= {"append", "group", "open"}:
        ap.error("--sections takes a comma list of append, group, open")
    if args.quick:
        args.records, args.appends = 100_000, 500
    if args.users < 1 or args.records < args.users:
        ap.error("--records must be >= --users >= 1")
    info = machine_info()
    print(
        f"log suite: {info['cpu_model']}, {info['usable_cores']} usable cores, load "
        f"{info['loadavg_1m']:.2f}; kernels {N.kernels()}; synthetic vectors of dim {args.dim}"
    )
    root = Path(tempfile.mkdtemp(prefix="bench-log-"))
    app: list[dict[str, Any]] = []
    grp: list[dict[str, Any]] = []
    build: dict[str, Any] = {}
    opened: dict[str, Any] = {}
    try:
        if "append" in sections:
            app = bench_append(args.dim, args.appends, root)
            _print_append(app)
        if "group" in sections:
            grp = bench_group_commit(args.dim, args.appends, args.threads, root)
            _print_group(grp)
        if "open" in sections:
            db = args.store if args.store else root / "big"
            if not db.exists():
                build = build_store(db, args.records, args.users, args.dim)
            opened = bench_open(db, args.dim, args.runs)
            _print_open(opened, args.users, build)
        path = write_json(
            "log",
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "append": app,
                "group_commit": grp,
                "build": build,
                "open": opened,
            },
        )
        print(f"\nwrote {path}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _print_append(app: list[dict[str, Any]]) -> None:
    print("\nDurable add of 3 memories (vectors given), one thread:")
    print(
        format_table(
            ["mode", "batches", "p50 µs", "p99 µs", "batches/s", "others' CPU"],
            [
                [
                    r["mode"],
                    r["batches"],
                    r["p50_us"],
                    r["p99_us"],
                    r["batches_per_s"],
                    r["others_share"],
                ]
                for r in app
            ],
        )
    )


def _print_group(grp: list[dict[str, Any]]) -> None:
    print('\nGroup commit, sync="always", one memory per add:')
    print(
        format_table(
            ["threads", "adds", "adds/s", "fsyncs", "others' CPU"],
            [
                [r["threads"], r["adds"], r["adds_per_s"], r["fsyncs"], r["others_share"]]
                for r in grp
            ],
        )
    )


def _print_open(opened: dict[str, Any], users: int, build: dict[str, Any]) -> None:
    print(
        f"\nOpen a store of {opened['entries']:,} records across {users:,} users "
        f"({opened['bytes'] / 2**20:,.0f} MiB; page cache warm; fresh process):"
    )
    print(
        format_table(
            [
                "open s (median)",
                "spread",
                "open CPU s",
                "replay records/s",
                "first search ms",
                "peak RSS MB",
                "others' CPU",
                "bulk build records/s",
            ],
            [
                [
                    opened["open_s"].median,
                    opened["open_s"].rel_spread,
                    opened["open_cpu_s"].median,
                    f"{opened['replay_records_per_s']:,.0f}",
                    opened["first_search_ms"].median,
                    opened["peak_rss_mb"],
                    opened["others_share"],
                    f"{build['records_per_s']:,.0f}" if build else "(reused store)",
                ]
            ],
        )
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
