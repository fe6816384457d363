"""``python -m bench postgres --import``: one user's export imported into PostgreSQL (issue 12).

``python -m bench postgres --import [--sizes 10000,100000] [--modes embedded,append,bulk]``

``MemoryStore.import_`` of one user's N exported records (real corpus sentences with their
MiniLM vectors, looked up, never computed: :func:`bench.bench_postgres.corpus_embedder`),
timed to its return and then to the moment the user's HNSW index is valid (the state a
search wants), in three ways on one server:

- ``embedded``: the embedded store (the baseline of the ratios; its hnswlib index is built at
  the first search, not here);
- ``append``: PostgreSQL with the backend's ``bulk_load`` hidden, so the import appends as any
  writer does: the index build starts on a thread once the user passes ``ann_threshold``
  (``--ann-threshold``, 10,000) and every later row updates it;
- ``bulk``: PostgreSQL as ``import_`` runs it (``bulk_load``: the index is built once at the
  end, after an ANALYZE).

After each PostgreSQL import: ``get`` by id p50 (200 ids, the store's one read path) and the
plan PostgreSQL picks for a read by id with ``deleted_seq IS NULL`` (the query shape that
depends on the statistics: ``pkey`` or the partial index it picks without them). The CPU of
other processes is printed per block (the server's own apart). Results:
``bench/results/postgres-import.json``.

``python -m bench postgres --forget-burst [--size 10000] [--forgets 10] [--threads 4]``:
``MemoryStore.forget`` of small users (each a PURGE, then compact()'s VACUUM FULL, which
holds an ACCESS EXCLUSIVE lock on each table it rewrites) one after another and from several
stores at once, while a thread reads a ``size``-memory user by id: each forget's time, the
bursts' wall times and the reader's get latency before and during
(``bench/results/postgres-forget-burst.json``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_postgres import Server, corpus_embedder, local_server, ready_indexes, watched
from bench.bench_store import one_thread
from bench.common import RESULTS_DIR, format_table, machine_info, percentiles, write_json
from bench.corpus import Corpus, load_corpus
from headroom.memory.errors import InvalidInputError
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import validate_text

MODES = ("embedded", "append", "bulk")
ANN_THRESHOLD = 10_000
GETS = 200
USER = "importer"


def records(corpus: Corpus, rows: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Export records (docs/export.md) of one user: one per corpus row, with its vector."""
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for j, row in enumerate(rows):
        at = datetime.fromtimestamp(base + j * 60, UTC).isoformat()
        yield {
            "user_id": USER,
            "id": uuid.UUID(int=row + 1).hex,
            "text": corpus.sentences[row],
            "category": "fact",
            "created_at": at,
            "updated_at": at,
            "model": corpus.model_id,
            "vector": corpus.vectors[row],
        }


def _rows(corpus: Corpus, n: int) -> list[int]:
    rows = []
    for i in range(len(corpus)):
        try:
            validate_text(corpus.sentences[i])
        except InvalidInputError:
            continue
        rows.append(i)
        if len(rows) == n:
            return rows
    raise InvalidInputError(f"the corpus has fewer than {n} valid sentences")


def plan_of_get(url: str, memory_id: str) -> str:
    """The index PostgreSQL reads for a live memory by id (``deleted_seq IS NULL`` in the
    condition, as the planner's statistics decide), or the plan's first line."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.user_id', %s, true)", (USER,))
        lines = [
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT id FROM memories WHERE user_id = %s AND id = %s "
                "AND deleted_seq IS NULL",
                (USER, memory_id),
            ).fetchall()
        ]
    for line in lines:
        if " using " in line:
            return str(line.split(" using ", 1)[1].split()[0])
    return str(lines[0]).strip()


def one_pg(
    server: Server,
    corpus: Corpus,
    rows: Sequence[int],
    mode: str,
    report: dict[str, Any],
    threshold: int = ANN_THRESHOLD,
) -> dict[str, Any]:
    """Import into a fresh database the ``append`` or ``bulk`` way; times and reads."""
    from headroom.memory.store.postgres import PostgresBackend

    url = server.database(f"imp_{mode}_{len(rows)}")
    backend = PostgresBackend(url, ann_threshold=threshold)
    if mode == "append":
        vars(backend)["bulk_load"] = None  # import_ then appends as any writer does
    store = MemoryStore(url, embedder=corpus_embedder(corpus), backend=backend)
    label = f"{len(rows)}: postgres {mode}"
    try:
        with watched(f"{label}: import", server, report):
            t0 = time.perf_counter()
            count = store.import_(records(corpus, rows))
            import_s = time.perf_counter() - t0
            dim = int(corpus.vectors.shape[1])
            index = ready_indexes(url, backend, [USER], dim) if len(rows) >= threshold else None
            ready_s = time.perf_counter() - t0
        if index is not None and mode == "bulk":
            index["built_by"] = "bulk_load, before import_ returned"
        ids = [uuid.UUID(int=rows[int(i)] + 1).hex for i in np.linspace(0, len(rows) - 1, GETS)]
        plan = plan_of_get(url, ids[0])
        times = []
        for memory_id in ids:
            t = time.perf_counter()
            assert backend.get(USER, memory_id) is not None
            times.append((time.perf_counter() - t) * 1000)
    finally:
        store.close()
    return {
        "mode": mode,
        "imported": count,
        "import_s": import_s,
        "index_ready_s": ready_s,
        "index": index,
        "get_ms": percentiles(times),
        "plan_by_id": plan,
    }


def one_embedded(corpus: Corpus, rows: Sequence[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="headroom-bench-import-") as tmp:
        store = MemoryStore(Path(tmp) / "store", embedder=corpus_embedder(corpus))
        try:
            t0 = time.perf_counter()
            count = store.import_(records(corpus, rows))
            import_s = time.perf_counter() - t0
        finally:
            store.close()
    return {"mode": "embedded", "imported": count, "import_s": import_s}


def forget_burst(
    server: Server, corpus: Corpus, size: int, forgets: int, threads: int, report: dict[str, Any]
) -> dict[str, Any]:
    """``forgets`` small users forgotten (``MemoryStore.forget``: PURGE, then compact()'s
    VACUUM FULL) one after another, then again from ``threads`` stores at once (each its
    own pool and lock, as separate processes would be), while a reader thread reads the
    ``size``-memory user by id in a loop: each forget's time, the burst's wall time, and the
    reader's get latency before and during."""
    import threading

    from headroom.memory.store.postgres import PostgresBackend

    url = server.database(f"forget_{size}")
    embedder = corpus_embedder(corpus)
    rows = _rows(corpus, size + 20 * 2 * forgets)
    big, small = rows[:size], rows[size:]
    stores = [
        MemoryStore(url, embedder=embedder, backend=PostgresBackend(url, ann_threshold=None))
        for _ in range(max(1, threads))
    ]
    main = stores[0]
    main.import_(records(corpus, big))
    small_users = [f"small{i}" for i in range(2 * forgets)]
    for i, user in enumerate(small_users):
        batch = small[i * 20 : (i + 1) * 20]
        main.import_({**r, "user_id": user} for r in records(corpus, batch))
    ids = [uuid.UUID(int=r + 1).hex for r in big]
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def reader() -> None:
        backend = PostgresBackend(url, ann_threshold=None, pool_size=1)
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            backend.get(USER, ids[i % len(ids)])
            samples.append((t, (time.perf_counter() - t) * 1000))
            i += 1
        backend.close()

    def during(t0: float, t1: float) -> dict[str, float]:
        ms = [m for t, m in samples if t0 <= t < t1]
        return {**percentiles(ms), "max": max(ms), "n": float(len(ms))}

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(3.0)
        t_base = time.perf_counter()
        time.sleep(3.0)
        baseline = during(t_base, time.perf_counter())
        with watched(f"forget burst, {size} memories: sequential", server, report):
            t_seq = time.perf_counter()
            each = []
            for user in small_users[:forgets]:
                t = time.perf_counter()
                main.forget(user)
                each.append((time.perf_counter() - t) * 1000)
            seq_wall = time.perf_counter() - t_seq
        sequential = during(t_seq, time.perf_counter())
        share = small_users[forgets:]
        parts = [share[i :: len(stores)] for i in range(len(stores))]
        with watched(f"forget burst, {size} memories: {len(stores)} at once", server, report):
            t_par = time.perf_counter()
            workers = [
                threading.Thread(target=lambda s=s, us=us: [s.forget(u) for u in us])
                for s, us in zip(stores, parts, strict=True)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            par_wall = time.perf_counter() - t_par
        parallel = during(t_par, time.perf_counter())
    finally:
        stop.set()
        thread.join()
        for store in stores:
            store.close()
    return {
        "size": size,
        "forgets": forgets,
        "threads": len(stores),
        "forget_ms": {**percentiles(each), "max": max(each)},
        "sequential_s": seq_wall,
        "parallel_s": par_wall,
        "get_ms_before": baseline,
        "get_ms_during_sequential": sequential,
        "get_ms_during_parallel": parallel,
    }


def main_forget(argv: Sequence[str]) -> int:
    """``python -m bench postgres --forget-burst [--size N] [--forgets N] [--threads N]``."""
    parser = argparse.ArgumentParser(prog="python -m bench postgres --forget-burst")
    parser.add_argument("--size", type=int, default=10_000, help="memories of the read user")
    parser.add_argument("--forgets", type=int, default=10, help="forgets per burst")
    parser.add_argument("--threads", type=int, default=4, help="stores forgetting at once")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args([a for a in argv if a != "--forget-burst"])
    if args.size < 1 or args.forgets < 1 or args.threads < 1:
        print("error: --size, --forgets and --threads must be >= 1")
        return 2
    corpus = load_corpus(args.size + 40 * args.forgets + 1000)
    report: dict[str, Any] = {}
    with local_server() as server, one_thread():
        res = forget_burst(server, corpus, args.size, args.forgets, args.threads, report)
        report["server"] = server.settings
    report["result"] = res
    report["cpu"] = {k: v.__dict__ for k, v in report.get("cpu", {}).items()}
    for key, value in res.items():
        print(f"{key}: {value}")
    print(f"\nwrote {write_json('postgres-forget-burst', report, args.results)}")
    return 0


def main(argv: Sequence[str]) -> int:
    """``python -m bench postgres --import`` (or ``--forget-burst``: :func:`main_forget`)."""
    if "--forget-burst" in argv:
        return main_forget(argv)
    parser = argparse.ArgumentParser(prog="python -m bench postgres --import")
    parser.add_argument("--sizes", default="10000,100000", help="memories of the one user")
    parser.add_argument("--modes", default=",".join(MODES), help="embedded,append,bulk")
    parser.add_argument(
        "--ann-threshold", type=int, default=ANN_THRESHOLD, help="HNSW from (10000)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args([a for a in argv if a != "--import"])
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    modes = [m for m in args.modes.split(",") if m]
    if not sizes or any(n < 1 for n in sizes) or not set(modes) <= set(MODES):
        print(f"error: --sizes must be positive and --modes among {', '.join(MODES)}")
        return 2
    if args.ann_threshold < 1:
        print("error: --ann-threshold must be >= 1")
        return 2
    corpus = load_corpus(max(sizes) + 1000)
    report: dict[str, Any] = {"sizes": sizes, "modes": modes, "ann_threshold": args.ann_threshold}
    results = []
    with local_server() as server, one_thread():
        for n in sizes:
            rows = _rows(corpus, n)
            for mode in modes:
                print(f"== {n} memories, {mode}", flush=True)
                if mode == "embedded":
                    res = one_embedded(corpus, rows)
                else:
                    res = one_pg(server, corpus, rows, mode, report, args.ann_threshold)
                results.append({"size": n, **res})
                print(res, flush=True)
        report["server"] = server.settings
    report["results"] = results
    report["cpu"] = {k: v.__dict__ for k, v in report.get("cpu", {}).items()}
    report["machine"] = machine_info()
    print_results(results)
    print(f"\nwrote {write_json('postgres-import', report, args.results)}")
    return 0


def print_results(results: Sequence[dict[str, Any]]) -> None:
    """The table: seconds to return and to a valid index, ratio to embedded, get, plan."""
    base = {r["size"]: r["import_s"] for r in results if r["mode"] == "embedded"}
    print(
        format_table(
            ["memories", "import", "import_ s", "x embedded", "index valid s", "get p50", "plan"],
            [
                [
                    r["size"],
                    r["mode"],
                    round(r["import_s"], 2),
                    f"{r['import_s'] / base[r['size']]:.1f}x" if r["size"] in base else "-",
                    round(r["index_ready_s"], 2) if "index_ready_s" in r else "-",
                    r["get_ms"]["p50"] if "get_ms" in r else "-",
                    r.get("plan_by_id", "-"),
                ]
                for r in results
            ],
        )
    )
