"""The ``cold`` suite: a user's first search in a fresh process against warm searches (issue 16).

``python -m bench cold [--sizes 10000,100000] [--runs 3] [--warm 40] [--keep DIR]``

For each size, one user gets ``size`` memories in a new store (``MemoryStore.add_many``, then
one search so the derived indexes are built, then ``close``, which snapshots them: what a
long-running application leaves behind). Then, ``--runs`` times each and interleaved, a fresh
Python process opens the store and times:

- ``open``: ``MemoryStore(path)`` (the log replayed; not part of the first search);
- ``first search``: the user's first ``store.search(user, text, top_k=5)`` (the hybrid search
  the wrapper injects from: it loads or builds the user's lexical state and vector index);
- ``warm search``: the median of ``--warm`` further searches, each with a new query text, and
  the slowest of them (``worst later``: a search that arrives while hnswlib loads the user's
  graph waits for it, since its ``load_index`` holds the GIL);
- the lexical side alone, after that: a fresh lexical state for the user (``lexical first``:
  loaded from the snapshot and caught up, or built from the log in the other variant) and its
  warm ``top(query, 50)``.

in two variants: ``snapshots`` (the store as ``close`` left it) and ``no lexical snapshot``
(the ``indexes/*.lex`` files deleted first: the user's lexical index is rebuilt from the log,
every text tokenized again, as before the lexical snapshots). The ratio first / warm is the
cold-start cost; the target (issue 16) is at most 10x at 10k and at 100k memories.

Texts are synthetic sentences over a Zipf-distributed vocabulary (a few very common words,
a long tail of rare ones: the shape of real memories' postings), 6 to 20 words; vectors are
seeded random unit vectors (384 dims, MiniLM's), served by a lookup embedder so that no model
runs: the figures are the store's alone. Each child reports the CPU time other processes used
while it ran (``bench.common.CpuWatch``). Results go to ``bench/results/cold.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import CpuWatch, child_json, format_table, write_json
from bench.corpus import CorpusEmbedder

USER = "bench-user"
DIM = 384
QUERIES = 64
VOCABULARY = 30_000
#: Words every memory may start with, as real extracted memories do ("User prefers ...").
LEADS = ("User", "The user", "User's", "They")


@dataclass(frozen=True)
class Workload:
    """The memories and queries of one size (deterministic in ``seed``)."""

    texts: list[str]
    vectors: npt.NDArray[np.float32]
    queries: list[str]
    query_vectors: npt.NDArray[np.float32]


def _words(rng: np.random.Generator) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "sa", "tor", "vi", "xen", "bu", "del", "fa", "gor"]
    out: set[str] = set()
    while len(out) < VOCABULARY:
        n = int(rng.integers(2, 6))  # 12**2 + ... + 12**5 words to draw from
        out.add("".join(syllables[int(i)] for i in rng.integers(0, len(syllables), n)))
    return sorted(out)


def _sentences(rng: np.random.Generator, words: list[str], n: int, lo: int, hi: int) -> list[str]:
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    p = 1.0 / ranks**1.1
    p /= p.sum()
    lengths = rng.integers(lo, hi + 1, n)
    picks = rng.choice(len(words), size=int(lengths.sum()), p=p)
    leads = rng.integers(0, len(LEADS), n)
    out, at = [], 0
    for i in range(n):
        body = " ".join(words[int(j)] for j in picks[at : at + lengths[i]])
        at += int(lengths[i])
        out.append(f"{LEADS[int(leads[i])]} {body} (#{i})")
    return out


def _unit(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v)


def workload(size: int, seed: int) -> Workload:
    """``size`` memories and :data:`QUERIES` queries."""
    words = _words(np.random.default_rng(seed))
    texts = _sentences(np.random.default_rng(seed + 1), words, size, 6, 20)
    queries = _sentences(np.random.default_rng(seed + 2), words, QUERIES, 3, 7)
    queries = [q.replace("(#", "(query #") for q in queries]
    vectors = _unit(np.random.default_rng(seed + 3), size)
    return Workload(texts, vectors, queries, _unit(np.random.default_rng(seed + 4), QUERIES))


#: The model id the workload's lookup embedder reports (no model runs).
LOOKUP_MODEL = "bench/lookup-384"


def prefill(path: Path, work: Workload) -> float:
    """The store at ``path`` with :data:`USER`'s memories, indexes built and snapshotted."""
    from headroom.memory.store.store import MemoryStore
    from headroom.memory.types import NewMemory

    t0 = time.perf_counter()
    store = MemoryStore(path, embedder=CorpusEmbedder(work.texts, work.vectors, LOOKUP_MODEL))
    try:
        for start in range(0, len(work.texts), 2000):
            batch = [NewMemory(t) for t in work.texts[start : start + 2000]]
            store.add_many(USER, batch, source="import", dedup=False)
        store.search(USER, work.texts[0], top_k=5)
    finally:
        store.close()
    return time.perf_counter() - t0


def child(path: str, size: int, seed: int, warm: int, snapshot: bool) -> dict[str, Any]:
    """In a fresh process: open, first search, warm searches; then the lexical side alone
    (milliseconds)."""
    from headroom.memory.store.store import MemoryStore

    work = workload(0, seed)  # the queries only (the memories' texts are not needed)
    embedder = CorpusEmbedder(work.queries, work.query_vectors, LOOKUP_MODEL)
    with CpuWatch() as watch:
        t0 = time.perf_counter()
        store = MemoryStore(path, embedder=embedder)
        open_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        store.search(USER, work.queries[0], top_k=5)
        first_ms = (time.perf_counter() - t0) * 1000
        times = []
        for query in work.queries[1 : 1 + warm]:
            t0 = time.perf_counter()
            store.search(USER, query, top_k=5)
            times.append((time.perf_counter() - t0) * 1000)
        count = store.backend.count(USER)
        # The lexical side alone, in this process: a fresh state for the user (loaded from its
        # snapshot and caught up, or built from the log without one), then a warm top-50.
        from headroom.memory.store.local.lexical import LexicalState

        backend: Any = store.backend
        state = LexicalState(backend.path / "indexes" if snapshot else None)
        t0 = time.perf_counter()
        ranking = state.get(backend.log, USER)
        lexical_ms = (time.perf_counter() - t0) * 1000
        top = []
        for query in work.queries[1 : 1 + warm]:
            t0 = time.perf_counter()
            ranking.top(query, 50)
            top.append((time.perf_counter() - t0) * 1000)
        store.close()
    if count != size:
        raise RuntimeError(f"the store holds {count} memories; expected {size}")
    return {
        "open_ms": open_ms,
        "first_ms": first_ms,
        "warm_ms": statistics.median(times),
        "worst_later_ms": max(times),
        "lexical_first_ms": lexical_ms,
        "lexical_top_ms": statistics.median(top),
        "others_share": watch.report.others_share,
    }


def _run_child(path: Path, size: int, seed: int, warm: int, snapshot: bool) -> dict[str, Any]:
    args = [str(path), str(size), str(seed), str(warm), str(int(snapshot))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return child_json(["-m", "bench.bench_cold", "--child", *args], env)


def measure(size: int, runs: int, warm: int, seed: int, scratch: Path) -> dict[str, Any]:
    """Both variants at one size, ``runs`` fresh processes each, interleaved."""
    work = workload(size, seed)
    # The child regenerates only the queries; they must be those of this workload.
    assert workload(0, seed).queries == work.queries
    path = scratch / f"cold-{size}"
    shutil.rmtree(path, ignore_errors=True)
    prefill_s = prefill(path, work)
    lex = sorted((path / "indexes").glob("*.lex"))
    saved = {p: p.read_bytes() for p in lex}
    variants: dict[str, list[dict[str, Any]]] = {"snapshots": [], "no lexical snapshot": []}
    for _ in range(runs):
        for name, samples in variants.items():
            for p, data in saved.items():
                p.write_bytes(data)
            if name == "no lexical snapshot":
                for p in saved:
                    p.unlink()
            samples.append(_run_child(path, size, seed, warm, name == "snapshots"))
    out: dict[str, Any] = {"size": size, "prefill_s": prefill_s, "lex_bytes": sum(
        len(d) for d in saved.values())}  # fmt: skip
    for name, samples in variants.items():
        first = statistics.median(s["first_ms"] for s in samples)
        warm_ms = statistics.median(s["warm_ms"] for s in samples)
        out[name] = {
            "open_ms": statistics.median(s["open_ms"] for s in samples),
            "first_ms": first,
            "warm_ms": warm_ms,
            "ratio": first / warm_ms,
            "worst_later_ms": statistics.median(s["worst_later_ms"] for s in samples),
            "lexical_first_ms": statistics.median(s["lexical_first_ms"] for s in samples),
            "lexical_top_ms": statistics.median(s["lexical_top_ms"] for s in samples),
            "others_share_max": max(s["others_share"] or 0.0 for s in samples),
            "runs": samples,
        }
    shutil.rmtree(path, ignore_errors=True)
    return out


def report(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for name in ("snapshots", "no lexical snapshot"):
            v = r[name]
            rows.append([
                f"{r['size']:,}", name, f"{v['open_ms']:.0f}", f"{v['first_ms']:.1f}",
                f"{v['warm_ms']:.2f}", f"{v['ratio']:.1f}x",
                "pass" if v["ratio"] <= 10 else "FAIL", f"{v['worst_later_ms']:.1f}",
                f"{v['lexical_first_ms']:.1f}",
                f"{v['lexical_top_ms']:.3f}", f"{v['others_share_max']:.0%}",
            ])  # fmt: skip
    headers = ["memories", "variant", "open ms", "first search ms", "warm p50 ms",
               "first/warm", "<= 10x", "worst later ms", "lexical first ms", "lexical top-50 ms",
               "other CPU (max)"]  # fmt: skip
    return format_table(headers, rows)


def main(argv: list[str]) -> int:
    """``python -m bench cold``: see the module docstring."""
    if argv and argv[0] == "--child":
        path, size, seed, warm = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(child(path, size, seed, warm, argv[5] == "1")))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench cold", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="comma list of user sizes")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--warm", type=int, default=40, help="warm searches per process")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--keep", type=Path, default=None, help="scratch folder (kept)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) < 1 or args.runs < 1 or not 1 <= args.warm < QUERIES:
        parser.error(f"sizes >= 1, runs >= 1 and 1 <= warm < {QUERIES}")
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="bench-cold-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for size in sizes:
            print(f"size {size:,}: pre-filling, then {args.runs} fresh processes per variant")
            results.append(measure(size, args.runs, args.warm, args.seed, scratch))
            print(report(results[-1:]))
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + report(results))
    written = write_json("cold", {"args": vars(args), "results": results})
    print(f"results: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
