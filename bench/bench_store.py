"""The ``store`` suite: search, the exact/hnswlib crossover, durable adds, open and replay.

``python -m bench store [--quick]`` measures the engine
(``headroom.memory.store.local.engine.Engine`` over the compiled log) and, side by side in the same
run, the design of headroom-ai 0.2.15: SQLite with vectors as BLOBs, and per query a SELECT of all
of the user's rows, ``np.frombuffer``, a
matrix product and an argsort. It prints tables with the ratio ours/theirs and the targets of
issue 2 (pass/fail), and writes ``bench/results/store.json`` (``store-quick.json``) and plots.

What is measured (one thread everywhere: BLAS limited to 1 thread, hnswlib queried with 1):
- ``search``: p50/p99 of ``Engine.search(user, vector, k=10)`` for one user at each size,
  exact (the compiled scan) and hnswlib (the engine's ANN path, forced with
  ``ann_threshold=0``; its build time is reported apart), recall@10 of hnswlib against exact,
  and the SQLite + numpy baseline. Vectors are real MiniLM embeddings of docstring sentences
  (:mod:`bench.corpus`) wherever the corpus is large enough; larger sizes use random unit
  vectors, labelled ``synthetic``, with no recall (random vectors make every HNSW look broken).
- ``crossover``: exact against hnswlib p50 from 1k to 20k memories on real vectors: the size
  where hnswlib becomes faster, which is what ``DEFAULT_ANN_THRESHOLD`` should be.
- ``add``: one durable append of 3 memories (vectors given) per durability mode, against SQLite
  committing the same 3 rows (WAL with synchronous FULL / NORMAL / OFF, and SQLite's defaults).
- ``open``: a store of 1M records across 10k users opened in a fresh process: open (replay)
  time, time to the first search, replay rate, peak RSS; SQLite's connect + first search.

Every section reports the CPU time other processes used while it ran (``CpuWatch``): these
machines are shared, and a figure measured beside a busy neighbour says so. Latency loops run
for a fixed number of calls or until a time budget is spent, whichever comes first (at least
``MIN_SAMPLES`` calls); the number of samples is printed beside every percentile.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    CpuWatch,
    child_json,
    format_table,
    machine_info,
    percentiles,
    plot_bars,
    write_json,
)

Vectors = npt.NDArray[np.float32]

DIM = 384
K = 10
#: Op, category and source codes of the native API (docs/architecture.md).
OP_ADD = 1
CATEGORY_FACT = 2
SOURCE_MANUAL = 2
SYNTHETIC_MODEL = "bench/synthetic-unit-normal-384"
#: Latency loops never take fewer samples than this, whatever the time budget.
MIN_SAMPLES = 20
WARMUP = 5
#: ``ann_threshold`` that keeps the engine on the exact scan at any size.
EXACT_ONLY = 1 << 62

#: Issue 2's targets: name -> (threshold, "<" or ">=", unit).
TARGETS: dict[str, tuple[float, str, str]] = {
    "open 1M records + first search": (1.0, "<", "s"),
    "replay rate": (1_000_000.0, ">=", "records/s"),
    "search 10k-memory user, p50 (engine default path)": (0.5, "<", "ms"),
    "recall@10 hnswlib vs exact (real vectors, worst size)": (0.98, ">=", ""),
    "durable add of 3 (interval), p50": (2.0, "<", "ms"),
}


@dataclass
class Config:
    """What one run measures; ``--quick`` shrinks every dimension for a smoke run."""

    quick: bool
    sections: list[str]
    sizes: list[int]
    ann_max: int
    sqlite_max: int
    crossover_sizes: list[int]
    queries: int
    budget_s: float
    add_batches: int
    open_records: int
    open_users: int
    open_runs: int
    corpus_size: int
    seed: int = 0
    name: str = "store"


def make_config(args: argparse.Namespace) -> Config:
    """The run's configuration from the parsed command line."""
    quick = bool(args.quick)

    def ints(given: list[int] | None, default: list[int]) -> list[int]:
        return given if given else default

    return Config(
        quick=quick,
        sections=args.sections.split(",") if args.sections else list(SECTIONS),
        sizes=ints(
            args.sizes, [100, 10_000] if quick else [100, 10_000, 50_000, 100_000, 1_000_000]
        ),
        ann_max=args.ann_max if args.ann_max is not None else (10_000 if quick else 100_000),
        sqlite_max=args.sqlite_max if args.sqlite_max is not None else 1_000_000,
        crossover_sizes=ints(
            args.crossover,
            [1000, 2000, 4000, 8000]
            if quick
            else [1000, 2000, 3000, 4000, 6000, 8000, 12_000, 16_000, 20_000],
        ),
        queries=args.queries or (100 if quick else 500),
        budget_s=args.budget or (1.0 if quick else 8.0),
        add_batches=args.add_batches or (100 if quick else 500),
        open_records=args.open_records or (100_000 if quick else 1_000_000),
        open_users=args.open_users or (1_000 if quick else 10_000),
        open_runs=1 if quick else 3,
        corpus_size=args.corpus or (10_500 if quick else 60_000),
        seed=args.seed,
        name="store-quick" if quick else "store",
    )


# --- vectors -----------------------------------------------------------------------------------


def synthetic_unit(n: int, seed: int, dim: int = DIM) -> Vectors:
    """``n`` random unit vectors (standard normal, normalised), float32, C-contiguous."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65_536):
        block = rng.standard_normal((min(65_536, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


@dataclass
class Workload:
    """One user's memory vectors and the query vectors to search them with."""

    memories: Vectors
    queries: Vectors
    kind: str  # "real" (MiniLM on docstring sentences) or "synthetic"
    model_id: str


class VectorSource:
    """Real corpus vectors where the corpus is large enough, else synthetic ones."""

    def __init__(self, corpus_size: int, n_queries: int, seed: int) -> None:
        from bench.corpus import load_corpus

        self.n_queries = n_queries
        self.seed = seed
        self.corpus = load_corpus(corpus_size)

    def real_capacity(self) -> int:
        """The largest user the real corpus can fill with the queries held out."""
        return len(self.corpus) - self.n_queries

    def workload(self, n: int, *, real_only: bool = False) -> Workload:
        """Vectors for a user of ``n`` memories (queries disjoint from memories)."""
        if n <= self.real_capacity():
            memories, queries = self.corpus.split(n, self.n_queries, seed=self.seed + n)
            return Workload(memories, queries, "real", self.corpus.model_id)
        if real_only:
            raise ValueError(f"the corpus holds {len(self.corpus)} sentences; {n} asked")
        return Workload(
            synthetic_unit(n, self.seed + n),
            synthetic_unit(self.n_queries, self.seed + n + 1),
            "synthetic",
            SYNTHETIC_MODEL,
        )


# --- the engine --------------------------------------------------------------------------------


def memory_id(i: int) -> str:
    """The id of memory ``i`` (32 hex digits, the shape of the store's uuid4 ids)."""
    return f"{i:032x}"


def memory_text(user: str, i: int) -> str:
    """A memory text of typical length (about 80 bytes)."""
    return f"{user} note {i}: prefers short answers, works on the backend team, likes tea."


def add_entries(
    user: str, vectors: Vectors, start: int, model_id: str, now_us: int
) -> list[tuple[Any, ...]]:
    """ADD entries of the native API for rows ``vectors`` numbered from ``start``."""
    return [
        (
            OP_ADD,
            user,
            memory_id(start + i),
            CATEGORY_FACT,
            SOURCE_MANUAL,
            now_us,
            memory_text(user, start + i),
            "{}",
            model_id,
            vectors[i],
        )
        for i in range(len(vectors))
    ]


def open_engine(path: Path, **kwargs: Any) -> Any:
    """``Engine(path, **kwargs)`` (imported here: the suite lists its options without it)."""
    from headroom.memory.store.local.engine import Engine

    return Engine(path, **kwargs)


def fill_user(engine: Any, user: str, vectors: Vectors, model_id: str, batch: int = 4096) -> None:
    """Append ``vectors`` as the user's memories, in atomic batches."""
    now_us = time.time_ns() // 1000
    for start in range(0, len(vectors), batch):
        engine.append(add_entries(user, vectors[start : start + batch], start, model_id, now_us))


# --- the baseline: SQLite + numpy (headroom-ai 0.2.15) -----------------------------------------


class SqliteBaseline:
    """Memories in one SQLite table, vectors as float32 BLOBs; search scans the user's rows.

    The search is the design being compared against: SELECT every row of the user, turn each
    BLOB into a vector with ``np.frombuffer``, one matrix product, ``argsort``, top k.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS memories (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
        "content TEXT NOT NULL, category TEXT, created_at REAL, metadata TEXT, embedding BLOB)",
        "CREATE INDEX IF NOT EXISTS idx_memories_user ON memories(user_id)",
    )

    def __init__(self, path: Path, *, journal: str = "WAL", synchronous: str = "NORMAL") -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA journal_mode={journal}")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        for statement in self.SCHEMA:
            self.conn.execute(statement)

    def add(self, user: str, vectors: Vectors, start: int) -> None:
        """Insert the rows in one transaction and commit (one durable add)."""
        now = time.time()
        rows = [
            (
                memory_id(start + i),
                user,
                memory_text(user, start + i),
                "fact",
                now,
                "{}",
                v.tobytes(),
            )
            for i, v in enumerate(vectors)
        ]
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO memories VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self.conn.execute("COMMIT")

    def bulk_load(self, user: str, vectors: Vectors, batch: int = 50_000) -> None:
        """Load many rows quickly (set-up, not measured)."""
        for start in range(0, len(vectors), batch):
            self.add(user, vectors[start : start + batch], start)

    def search(self, user: str, query: Vectors, k: int) -> list[tuple[str, float]]:
        """Top-k ``(id, score)`` by dot product over all of the user's rows."""
        rows = self.conn.execute(
            "SELECT id, embedding FROM memories WHERE user_id = ?", (user,)
        ).fetchall()
        if not rows:
            return []
        matrix = np.array([np.frombuffer(row[1], dtype=np.float32) for row in rows])
        scores = matrix @ query
        top = np.argsort(-scores)[:k]
        return [(rows[i][0], float(scores[i])) for i in top]

    def close(self) -> None:
        self.conn.close()


# --- timing ------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Latencies of one loop in milliseconds, and what each call returned."""

    ms: list[float]
    results: list[Any]

    def summary(self) -> dict[str, float]:
        """``{"p50", "p99", "n"}`` in milliseconds."""
        stats = percentiles(self.ms, (50, 99))
        return {"p50": stats["p50"], "p99": stats["p99"], "n": float(len(self.ms))}


def time_calls(
    fn: Callable[[int], Any],
    count: int,
    budget_s: float,
    warmup: int = WARMUP,
    min_samples: int = MIN_SAMPLES,
) -> Timing:
    """Call ``fn(i)`` with a fresh ``i`` each time: ``warmup`` unrecorded calls, then up to
    ``count`` timed calls, stopping early once ``budget_s`` is spent (never before
    ``min_samples`` calls). ``i`` runs from 0 to at most ``warmup + count - 1``."""
    for i in range(warmup):
        fn(i)
    gc.collect()
    ms: list[float] = []
    results: list[Any] = []
    deadline = time.perf_counter() + budget_s
    for i in range(warmup, warmup + count):
        t0 = time.perf_counter_ns()
        out = fn(i)
        ms.append((time.perf_counter_ns() - t0) / 1e6)
        results.append(out)
        if len(ms) >= min_samples and time.perf_counter() > deadline:
            break
    return Timing(ms, results)


def time_search(
    search: Callable[[str, Vectors, int], Any],
    user: str,
    queries: Vectors,
    cfg: Config,
    warmup: int = WARMUP,
    min_samples: int = MIN_SAMPLES,
) -> Timing:
    """Time ``search(user, query, K)`` cycling through ``queries`` (see :func:`time_calls`)."""
    nq = len(queries)
    return time_calls(
        lambda i: search(user, queries[i % nq], K), cfg.queries, cfg.budget_s, warmup, min_samples
    )


def time_adds(add: Callable[[int], Any], cfg: Config) -> Timing:
    """Time ``add(i)`` (the i-th batch of 3) ``cfg.add_batches`` times (see :func:`time_calls`)."""
    return time_calls(add, cfg.add_batches, cfg.budget_s)


def recall_at_k(truth: Sequence[list[tuple[str, float]]], got: Sequence[Any], k: int) -> float:
    """Mean share of the exact top-k ids found in the approximate top-k (common queries)."""
    n = min(len(truth), len(got))
    if n == 0:
        return float("nan")
    hits = 0
    for exact, approx in zip(truth[:n], got[:n], strict=True):
        hits += len({m for m, _ in exact[:k]} & {m for m, _ in approx[:k]})
    return hits / (n * k)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Limit BLAS (numpy) to one thread while the block runs, when threadpoolctl is present."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


@contextlib.contextmanager
def scratch_dir(tag: str) -> Iterator[Path]:
    """A temporary folder for one store, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"headroom-bench-{tag}-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def watched(name: str, report: dict[str, Any]) -> Iterator[CpuWatch]:
    """Measure the block with a CpuWatch; store it in ``report["cpu"][name]`` and print it."""
    with CpuWatch() as watch:
        yield watch
    report.setdefault("cpu", {})[name] = watch.report
    print(_cpu_line(name, watch), flush=True)


def _cpu_line(name: str, watch: CpuWatch) -> str:
    r = watch.report
    others = "unknown" if r.others_cpu_s is None else f"{r.others_cpu_s:.1f} CPU-s"
    share = "" if r.others_share is None else f" ({100 * r.others_share:.0f}% of the cores)"
    return f"[{name}] wall {r.wall_s:.1f} s; other processes used {others}{share}"


# --- sections ----------------------------------------------------------------------------------


def bench_search(cfg: Config, source: VectorSource, out: dict[str, Any]) -> None:
    """Search latency per user size: exact, hnswlib (with recall) and SQLite + numpy."""
    rows: list[dict[str, Any]] = []
    for n in cfg.sizes:
        work = source.workload(n)
        row: dict[str, Any] = {"size": n, "vectors": work.kind}
        queries = work.queries
        with scratch_dir("search") as folder:
            engine = open_engine(folder / "store", sync="off", ann_threshold=EXACT_ONLY)
            try:
                fill_user(engine, "u", work.memories, work.model_id)
                engine.ann_threshold = EXACT_ONLY
                exact = time_search(engine.search, "u", queries, cfg)
                row["exact"] = exact.summary()
                row["numpy"] = time_search(
                    numpy_searcher(work.memories), "u", queries, cfg
                ).summary()
                if n <= cfg.ann_max:
                    engine.ann_threshold = 0
                    t0 = time.perf_counter()
                    engine.search("u", queries[0], K)  # builds the index from the log
                    row["hnsw_build_s"] = time.perf_counter() - t0
                    ann = time_search(engine.search, "u", queries, cfg)
                    row["hnsw"] = ann.summary()
                    if work.kind == "real":
                        row["recall@10"] = recall_at_k(exact.results, ann.results, K)
            finally:
                engine.close()
            if n <= cfg.sqlite_max:
                db = SqliteBaseline(folder / "sqlite.db")
                try:
                    db.bulk_load("u", work.memories)
                    with one_thread():
                        # Seconds per query at 1M: fewer samples, said in the table.
                        theirs = time_search(db.search, "u", queries, cfg, warmup=1, min_samples=5)
                    row["sqlite"] = theirs.summary()
                finally:
                    db.close()
        rows.append(row)
        print(f"  searched a user of {n} memories ({work.kind})", flush=True)
    out["search"] = rows
    print(search_table(rows))


def numpy_top_k(matrix: Vectors, query: Vectors, k: int) -> npt.NDArray[np.intp]:
    """Rows of the top-k dot products (a reference floor: vectors already in one matrix)."""
    scores = matrix @ query
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def numpy_searcher(matrix: Vectors) -> Callable[[str, Vectors, int], Any]:
    """A ``search(user, query, k)`` over ``matrix`` with :func:`numpy_top_k` (user ignored)."""

    def search(_user: str, query: Vectors, k: int) -> Any:
        return numpy_top_k(matrix, query, k)

    return search


def default_path(size: int) -> str:
    """Which path the engine takes by default for a user of ``size`` live memories."""
    from headroom.memory.store.local.engine import DEFAULT_ANN_THRESHOLD

    return "hnsw" if size >= DEFAULT_ANN_THRESHOLD else "exact"


def search_table(rows: Sequence[dict[str, Any]]) -> str:
    """The search table: p50/p99 in ms per size and path, recall, SQLite and the ratio."""

    def cell(row: dict[str, Any], key: str, stat: str) -> str:
        return f"{row[key][stat]:.3f}" if key in row else "-"

    table = []
    for row in rows:
        ours = row.get(default_path(row["size"])) or row["exact"]
        ratio = f"{ours['p50'] / row['sqlite']['p50']:.4f}" if "sqlite" in row else "-"
        recall = row.get("recall@10")
        table.append(
            [
                f"{row['size']:,}",
                row["vectors"],
                cell(row, "exact", "p50"),
                cell(row, "exact", "p99"),
                cell(row, "numpy", "p50"),
                cell(row, "hnsw", "p50"),
                cell(row, "hnsw", "p99"),
                "-" if recall is None else f"{recall:.4f}",
                f"{row['hnsw_build_s']:.1f}" if "hnsw_build_s" in row else "-",
                cell(row, "sqlite", "p50"),
                cell(row, "sqlite", "p99"),
                ratio,
                f"{int(row['exact']['n'])}/{int(row['hnsw']['n']) if 'hnsw' in row else 0}"
                f"/{int(row['sqlite']['n']) if 'sqlite' in row else 0}",
            ]
        )
    headers = [
        "memories",
        "vectors",
        "exact p50",
        "exact p99",
        "numpy p50",
        "hnsw p50",
        "hnsw p99",
        "recall@10",
        "build s",
        "sqlite p50",
        "sqlite p99",
        "ours/theirs p50",
        "samples e/h/s",
    ]
    return (
        "Search one user, top-10, ms (ours = the engine's default path at that size; numpy = "
        "matrix product over the vectors already in RAM, a floor for an exact scan)\n"
        + format_table(headers, table)
    )


def paired_search(engine: Any, user: str, queries: Vectors, cfg: Config) -> tuple[Timing, Timing]:
    """Time exact and hnswlib searches alternately, query by query, through the same engine
    (``ann_threshold`` switched between calls), so both see the same load on a shared machine.
    Returns ``(exact, hnsw)``."""
    nq = len(queries)

    def both(i: int) -> tuple[float, float, Any, Any]:
        q = queries[i % nq]
        engine.ann_threshold = EXACT_ONLY
        t0 = time.perf_counter_ns()
        exact = engine.search(user, q, K)
        t1 = time.perf_counter_ns()
        engine.ann_threshold = 0
        ann = engine.search(user, q, K)
        t2 = time.perf_counter_ns()
        return (t1 - t0) / 1e6, (t2 - t1) / 1e6, exact, ann

    runs = time_calls(both, cfg.queries, 2 * cfg.budget_s).results
    exact = Timing([r[0] for r in runs], [r[2] for r in runs])
    ann = Timing([r[1] for r in runs], [r[3] for r in runs])
    return exact, ann


def bench_crossover(cfg: Config, source: VectorSource, out: dict[str, Any]) -> None:
    """Exact vs hnswlib p50 through the engine from 1k to 20k memories (real vectors)."""
    rows: list[dict[str, Any]] = []
    with scratch_dir("crossover") as folder:
        engine = open_engine(folder / "store", sync="off", ann_threshold=EXACT_ONLY)
        try:
            for n in cfg.crossover_sizes:
                work = source.workload(n, real_only=True)
                user = f"user-{n}"
                fill_user(engine, user, work.memories, work.model_id)
                queries = work.queries
                engine.ann_threshold = 0
                engine.search(user, queries[0], K)  # builds the index from the log
                exact, ann = paired_search(engine, user, queries, cfg)
                rows.append(
                    {
                        "size": n,
                        "exact": exact.summary(),
                        "hnsw": ann.summary(),
                        "recall@10": recall_at_k(exact.results, ann.results, K),
                    }
                )
        finally:
            engine.close()
    cross = crossover_point([r["size"] for r in rows], rows)
    out["crossover"] = {"rows": rows, "crossover": cross}
    table = [
        [
            f"{r['size']:,}",
            f"{r['exact']['p50']:.3f}",
            f"{r['hnsw']['p50']:.3f}",
            f"{r['exact']['p50'] / r['hnsw']['p50']:.2f}",
            f"{r['recall@10']:.4f}",
        ]
        for r in rows
    ]
    print(
        "Crossover, real MiniLM vectors, engine.search top-10 p50 in ms "
        "(exact and hnswlib timed alternately, query by query)\n"
        + format_table(["memories", "exact p50", "hnsw p50", "exact/hnsw", "recall@10"], table)
    )
    from headroom.memory.store.local.engine import DEFAULT_ANN_THRESHOLD

    print(
        f"measured crossover: {cross['text']} "
        f"(the engine's DEFAULT_ANN_THRESHOLD is {DEFAULT_ANN_THRESHOLD})"
    )
    plot_bars(
        f"{cfg.name}-crossover",
        {
            "exact": {f"{r['size']}": r["exact"]["p50"] for r in rows},
            "hnsw": {f"{r['size']}": r["hnsw"]["p50"] for r in rows},
        },
        "engine.search p50 (ms), exact vs hnswlib",
        "ms",
    )


def crossover_point(sizes: Sequence[int], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where hnswlib's p50 first drops below exact's (linear interpolation of the gap)."""
    gaps = [r["exact"]["p50"] - r["hnsw"]["p50"] for r in rows]  # > 0: hnswlib is faster
    for i, gap in enumerate(gaps):
        if gap <= 0:
            continue
        if i == 0:
            return {"size": sizes[0], "text": f"<= {sizes[0]} (hnswlib faster at every size)"}
        prev = gaps[i - 1]
        at = sizes[i - 1] + (sizes[i] - sizes[i - 1]) * (-prev) / (gap - prev)
        return {"size": round(at), "text": f"about {round(at):,} memories"}
    return {"size": None, "text": f"> {sizes[-1]:,} (exact faster at every size measured)"}


#: SQLite settings compared with each durability mode (label -> journal mode, synchronous).
SQLITE_ADD_SETTINGS: dict[str, tuple[str, str]] = {
    "always": ("WAL", "FULL"),
    "interval": ("WAL", "NORMAL"),
    "off": ("WAL", "OFF"),
    "sqlite defaults": ("DELETE", "FULL"),
}


def engine_adder(engine: Any, vectors: Vectors, now_us: int) -> Callable[[int], Any]:
    """``add(i)``: append memories ``3i..3i+2`` (vectors given) as one atomic batch."""

    def add(i: int) -> Any:
        rows = vectors[3 * i : 3 * i + 3]
        return engine.append(add_entries("u", rows, 3 * i, SYNTHETIC_MODEL, now_us))

    return add


def sqlite_adder(db: SqliteBaseline, vectors: Vectors) -> Callable[[int], Any]:
    """``add(i)``: insert memories ``3i..3i+2`` in one committed transaction."""

    def add(i: int) -> None:
        db.add("u", vectors[3 * i : 3 * i + 3], 3 * i)

    return add


def bench_add(cfg: Config, out: dict[str, Any]) -> None:
    """One durable append of 3 memories with vectors given, per durability mode, vs SQLite."""
    vectors = synthetic_unit(3 * (cfg.add_batches + WARMUP), cfg.seed + 7)
    now_us = time.time_ns() // 1000
    rows: list[dict[str, Any]] = []
    for label, (journal, synchronous) in SQLITE_ADD_SETTINGS.items():
        row: dict[str, Any] = {"mode": label, "sqlite_setting": f"{journal}/{synchronous}"}
        if label in ("always", "interval", "off"):
            with scratch_dir(f"add-{label}") as folder:
                engine = open_engine(folder / "store", sync=label)
                try:
                    row["engine"] = time_adds(engine_adder(engine, vectors, now_us), cfg).summary()
                finally:
                    engine.close()
        with scratch_dir("add-sqlite") as folder:
            db = SqliteBaseline(folder / "sqlite.db", journal=journal, synchronous=synchronous)
            try:
                row["sqlite"] = time_adds(sqlite_adder(db, vectors), cfg).summary()
            finally:
                db.close()
        rows.append(row)
    out["add"] = rows
    print(add_table(rows))


def add_table(rows: Sequence[dict[str, Any]]) -> str:
    """The durable-add table: ms per batch of 3, ours and SQLite's, and the ratio."""
    table = []
    for r in rows:
        ours, theirs = r.get("engine"), r["sqlite"]
        table.append(
            [
                r["mode"],
                f"{ours['p50']:.3f}" if ours else "-",
                f"{ours['p99']:.3f}" if ours else "-",
                r["sqlite_setting"],
                f"{theirs['p50']:.3f}",
                f"{theirs['p99']:.3f}",
                f"{ours['p50'] / theirs['p50']:.3f}" if ours else "-",
                f"{int(ours['n']) if ours else 0}/{int(theirs['n'])}",
            ]
        )
    headers = [
        "sync",
        "ours p50",
        "ours p99",
        "sqlite journal/sync",
        "sqlite p50",
        "sqlite p99",
        "ours/theirs p50",
        "samples",
    ]
    return "Durable add of 3 memories (vectors given), ms per batch\n" + format_table(
        headers, table
    )


def build_open_store(cfg: Config, folder: Path) -> tuple[Path, Path, list[str]]:
    """A store and a SQLite file of ``open_records`` synthetic memories over ``open_users``.

    Every memory is its own append (one log record each), the worst case for replay: batched
    adds put several entries in one record.
    """
    per_user = cfg.open_records // cfg.open_users
    users = [f"user-{u:05d}" for u in range(cfg.open_users)]
    store, db_path = folder / "store", folder / "sqlite.db"
    engine = open_engine(store, sync="off")
    db = SqliteBaseline(db_path, synchronous="OFF")
    now_us = time.time_ns() // 1000
    try:
        group = max(1, 8192 // per_user)  # users per atomic batch
        for g in range(0, len(users), group):
            vectors = synthetic_unit(per_user * len(users[g : g + group]), cfg.seed + g)
            entries: list[tuple[Any, ...]] = []
            for j, user in enumerate(users[g : g + group]):
                rows = vectors[j * per_user : (j + 1) * per_user]
                first = (g + j) * per_user  # ids unique across users, as uuid4 ids are
                entries.extend(add_entries(user, rows, first, SYNTHETIC_MODEL, now_us))
                db.add(user, rows, first)
            for entry in entries:  # one record per memory, as single adds write them
                engine.append([entry])
    finally:
        engine.close()
        db.close()
    return store, db_path, users


def peak_rss_kib() -> int:
    """This process's peak resident set (KiB): ``VmHWM`` of /proc/self/status, else rusage.

    ``ru_maxrss`` is not used on Linux: a child started by fork + exec reports the parent's
    peak there, not its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class PhaseClock:
    """Wall and CPU seconds (``time.process_time``: every thread of this process) per phase."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def lap(self, name: str) -> None:
        """Close the phase ``name`` (started at the previous lap)."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.phases[f"{name}_s"] = wall - self._wall
        self.phases[f"{name}_cpu_s"] = cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def open_child(argv: Sequence[str]) -> int:
    """In a fresh process: open a store (``engine``) or a SQLite file (``sqlite``), run one
    search, print JSON: wall and CPU seconds of import, open and first search, the number of
    hits and this process's peak RSS (MiB)."""
    kind, path, user = argv
    query = synthetic_unit(1, 12345)[0]
    clock = PhaseClock()
    stats: dict[str, Any] = {}
    if kind == "engine":
        from headroom.memory.store.local.engine import Engine

        clock.lap("import")
        engine = Engine(path)
        clock.lap("open")
        hits = engine.search(user, query, K)
        clock.lap("first_search")
        stats = dict(engine.log.stats())
        engine.close()
    else:
        clock.lap("import")
        db = SqliteBaseline(Path(path))
        clock.lap("open")
        hits = db.search(user, query, K)
        clock.lap("first_search")
        db.close()
    doc = {
        **clock.phases,
        "hits": len(hits),
        "peak_rss_mib": peak_rss_kib() / 1024,
        "stats": stats,
    }
    print(json.dumps(doc, default=str))
    return 0


def run_open_child(kind: str, path: Path, user: str) -> dict[str, Any]:
    """Run :func:`open_child` in a new interpreter; its JSON report."""
    code = (
        "import sys; from bench.bench_store import open_child; sys.exit(open_child(sys.argv[1:]))"
    )
    return child_json(["-c", code, kind, str(path), user])


def bench_open(cfg: Config, out: dict[str, Any]) -> None:
    """Open time, time to first search, replay rate and peak RSS of a fresh process."""
    with scratch_dir("open") as folder:
        t0 = time.perf_counter()
        store, db_path, users = build_open_store(cfg, folder)
        build_s = time.perf_counter() - t0
        log_bytes = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "sqlite": []}
        for i in range(cfg.open_runs):
            user = users[(i * 7919) % len(users)]
            runs["engine"].append(run_open_child("engine", store, user))
            runs["sqlite"].append(run_open_child("sqlite", db_path, user))
        sqlite_bytes = db_path.stat().st_size
    medians = {
        kind: {
            key: float(np.median([r[key] for r in reports]))
            for key in (
                "open_s",
                "open_cpu_s",
                "first_search_s",
                "first_search_cpu_s",
                "peak_rss_mib",
                "import_s",
            )
        }
        for kind, reports in runs.items()
    }
    for m in medians.values():
        m["open_plus_search_s"] = m["open_s"] + m["first_search_s"]
        m["open_plus_search_cpu_s"] = m["open_cpu_s"] + m["first_search_cpu_s"]
    ours = medians["engine"]
    ours["replay_records_per_s"] = cfg.open_records / ours["open_s"]
    ours["replay_records_per_cpu_s"] = cfg.open_records / max(ours["open_cpu_s"], 1e-9)
    out["open"] = {
        "records": cfg.open_records,
        "users": cfg.open_users,
        "vectors": "synthetic",
        "build_s": build_s,
        "log_bytes": log_bytes,
        "sqlite_bytes": sqlite_bytes,
        "runs": runs,
        "median": medians,
    }
    theirs = medians["sqlite"]
    table = [
        [
            label,
            f"{ours[key]:.4f}" if key != "peak_rss_mib" else f"{ours[key]:.0f}",
            f"{theirs[key]:.4f}" if key != "peak_rss_mib" else f"{theirs[key]:.0f}",
            f"{ours[key] / theirs[key]:.2f}" if theirs[key] else "-",
        ]
        for label, key in (
            ("open (replay), wall s", "open_s"),
            ("open (replay), CPU s", "open_cpu_s"),
            ("first search, wall s", "first_search_s"),
            ("open + first search, wall s", "open_plus_search_s"),
            ("open + first search, CPU s", "open_plus_search_cpu_s"),
            ("peak RSS, MiB", "peak_rss_mib"),
        )
    ]
    print(
        f"Open a store of {cfg.open_records:,} records across {cfg.open_users:,} users "
        f"(synthetic vectors; fresh process, page cache warm; median of {cfg.open_runs})\n"
        + format_table(["", "ours", "sqlite", "ours/theirs"], table)
    )
    print(
        f"replay rate: {ours['replay_records_per_s']:,.0f} records/s of wall time, "
        f"{ours['replay_records_per_cpu_s']:,.0f} per CPU second; log {log_bytes / 2**20:,.0f}"
        f" MiB ({_log_shape(runs['engine'][0].get('stats', {}))})"
        f", sqlite file {sqlite_bytes / 2**20:,.0f} MiB; build {build_s:.1f} s"
    )


def _log_shape(stats: dict[str, Any]) -> str:
    keys = ("records", "entries", "segments")
    return ", ".join(f"{stats[k]:,} {k}" for k in keys if isinstance(stats.get(k), int))


# --- targets -----------------------------------------------------------------------------------


def measured_targets(out: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """The value measured for each target (None when its section did not run) and a note."""
    found: dict[str, tuple[float | None, str]] = {name: (None, "not run") for name in TARGETS}
    names = list(TARGETS)
    if "open" in out:
        med = out["open"]["median"]["engine"]
        note = f"{out['open']['records']:,} records"
        found[names[0]] = (med["open_plus_search_s"], note)
        found[names[1]] = (med["replay_records_per_s"], note)
    for row in out.get("search", []):
        if row["size"] == 10_000:
            path = default_path(10_000)
            stats = row.get(path) or row["exact"]
            found[names[2]] = (stats["p50"], f"{path}, {row['vectors']} vectors")
    recalls = [
        (r["recall@10"], f"{r['size']:,}")
        for r in [*out.get("search", []), *out.get("crossover", {}).get("rows", [])]
        if "recall@10" in r
    ]
    if recalls:
        worst = min(recalls)
        found[names[3]] = (worst[0], f"worst at {worst[1]} memories")
    for row in out.get("add", []):
        if row["mode"] == "interval":
            found[names[4]] = (row["engine"]["p50"], "engine.append")
    return found


def targets_table(out: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The targets with the measured values and pass/fail; also as a dict for the JSON."""
    table, doc = [], {}
    for name, (value, note) in measured_targets(out).items():
        limit, op, unit = TARGETS[name]
        if value is None:
            verdict = "-"
        else:
            ok = value < limit if op == "<" else value >= limit
            verdict = "PASS" if ok else "FAIL"
        shown = "-" if value is None else (f"{value:,.0f}" if value >= 1000 else f"{value:.4f}")
        table.append([name, f"{op} {limit:,g} {unit}".strip(), shown, verdict, note])
        doc[name] = {"target": f"{op} {limit:g} {unit}".strip(), "value": value, "verdict": verdict}
    return format_table(["target", "wanted", "measured", "", "note"], table), doc


# --- entry point -------------------------------------------------------------------------------

SECTIONS: dict[str, str] = {
    "search": "search p50/p99 per user size, exact / hnswlib / SQLite, recall@10",
    "crossover": "exact vs hnswlib from 1k to 20k memories (DEFAULT_ANN_THRESHOLD)",
    "add": "durable add of 3 memories per sync mode vs SQLite",
    "open": "open + first search + replay rate + peak RSS, vs SQLite",
}


def count(text: str) -> int:
    """An int >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def positive(text: str) -> int:
    """An int >= 1 (argparse type)."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value}")
    return value


def size_list(text: str) -> list[int]:
    """A comma list of ints >= 1 (argparse type)."""
    return [positive(part.strip()) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The suite's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench store",
        description="Store and search benchmarks (see bench/bench_store.py).",
        epilog="sections: " + "; ".join(f"{k}: {v}" for k, v in SECTIONS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    parser.add_argument("--sections", help=f"comma list of {','.join(SECTIONS)} (default all)")
    parser.add_argument(
        "--sizes", type=size_list, help="user sizes for 'search' (default 100,10k,50k,100k,1M)"
    )
    parser.add_argument("--ann-max", type=count, help="largest size searched with hnswlib")
    parser.add_argument("--sqlite-max", type=count, help="largest size searched with SQLite")
    parser.add_argument("--crossover", type=size_list, help="sizes for 'crossover' (comma list)")
    parser.add_argument("--queries", type=positive, help="queries per latency loop (max)")
    parser.add_argument("--budget", type=float, help="seconds per latency loop (max)")
    parser.add_argument("--add-batches", type=positive, help="durable adds per mode (max)")
    parser.add_argument("--open-records", type=positive, help="records of the 'open' store")
    parser.add_argument("--open-users", type=positive, help="users of the 'open' store")
    parser.add_argument("--corpus", type=positive, help="real sentences to load (default 60000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    unknown = set(args.sections.split(",")) - set(SECTIONS) if args.sections else set()
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be > 0")
    return args


def _need(source: VectorSource | None) -> VectorSource:
    if source is None:
        raise RuntimeError("the corpus was not loaded")
    return source


def main(argv: list[str]) -> int:
    """Run the suite; print the tables; write the JSON (and plots) under bench/results."""
    cfg = make_config(parse_args(argv))
    if cfg.open_users > cfg.open_records:
        print(
            f"--open-users ({cfg.open_users}) must not exceed --open-records ({cfg.open_records})",
            file=sys.stderr,
        )
        return 2
    info = machine_info()
    print(
        f"store suite ({'quick' if cfg.quick else 'full'}): {info['cpu_model']}, "
        f"{info['usable_cores']} usable cores, load {info['loadavg_1m']:.2f}, numpy BLAS "
        f"{[b.get('internal_api') + '/' + str(b.get('architecture')) for b in info['blas']]}, "
        f"OPENBLAS_CORETYPE={info['openblas_coretype']}; one thread for every measurement"
    )
    out: dict[str, Any] = {"config": cfg, "targets": {}}
    source: VectorSource | None = None
    if {"search", "crossover"} & set(cfg.sections):
        with watched("corpus", out):
            source = VectorSource(cfg.corpus_size, cfg.queries, cfg.seed)
        print(f"corpus: {len(source.corpus):,} real sentences ({source.corpus.model_id})")
    runners: dict[str, Callable[[], None]] = {
        "search": lambda: bench_search(cfg, _need(source), out),
        "crossover": lambda: bench_crossover(cfg, _need(source), out),
        "add": lambda: bench_add(cfg, out),
        "open": lambda: bench_open(cfg, out),
    }
    with one_thread():
        for name in SECTIONS:
            if name in cfg.sections:
                with watched(name, out):
                    runners[name]()
                write_json(cfg.name, out, RESULTS_DIR)  # a later failure keeps this section
    text, out["targets"] = targets_table(out)
    print("Targets (issue 2)\n" + text)
    if "search" in out:
        plot_bars(
            f"{cfg.name}-search",
            {
                path: {f"{r['size']:,}": r[path]["p50"] for r in out["search"] if path in r}
                for path in ("exact", "hnsw", "sqlite")
            },
            "search p50 (ms) per user size",
            "ms",
        )
    path = write_json(cfg.name, out, RESULTS_DIR)
    print(f"results: {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
