"""Cost of the hybrid ranking at scale: one user with ``n`` memories (10k by default).

The memories are LoCoMo facts, turns and summaries of every conversation (repeated with a
suffix when more are needed), the queries are LoCoMo questions. Per query it times the parts
the store's search adds on top of its dense top-N: the lexical top-N from the user's
:class:`~headroom.memory.store.ranking.LexicalIndex` and
:func:`~headroom.memory.store.ranking.rerank` over the union, plus (for reference) exact numpy dense
top-N over the same vectors (the query centred on their mean, as the store does) and the live query
embedding. Budget: the whole
query path p50 under 6 ms at 10k memories per user.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.common import percentiles, progress
from bench.locomo.data import Conversation
from bench.locomo.embed import CachedEmbedder, SplitEmbedder
from headroom.memory.embedders.base import embed_queries
from headroom.memory.store.hybrid import centred_query
from headroom.memory.store.ranking import DEFAULT_CONFIG, Candidate, LexicalIndex, rerank


def scale_latency(
    embedder: CachedEmbedder | SplitEmbedder,
    convs: Sequence[Conversation],
    n_memories: int = 10_000,
    n_queries: int = 300,
    pool: int = 50,
) -> dict[str, Any]:
    """p50/p99 in ms of each part of the hybrid query path for one user of ``n_memories``.

    The query is embedded live as the store embeds it (``embed_query`` where ``embedder``
    has one: a :class:`SplitEmbedder` measures that query mode).
    """
    base = [u for c in convs for kind in ("facts", "turns", "summaries") for u in c.units(kind)]
    texts = [u.text for u in base]
    dates = [u.created_at for u in base]
    vectors = embedder.embed(texts)
    embedder.save()
    reps = -(-n_memories // len(texts))
    all_texts = [t if r == 0 else f"{t} ({r})" for r in range(reps) for t in texts][:n_memories]
    all_dates = (dates * reps)[:n_memories]
    matrix = np.ascontiguousarray(np.tile(vectors, (reps, 1))[:n_memories])
    centroid = matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
    lexical = LexicalIndex()
    t0 = time.perf_counter()
    lexical.add_many((str(i), t) for i, t in enumerate(all_texts))
    build_s = time.perf_counter() - t0
    questions = [q.question for c in convs for q in c.questions][:n_queries]
    timings: dict[str, list[float]] = {"embed": [], "dense": [], "lexical": [], "rerank": []}
    for question in progress(questions, "scale"):
        t0 = time.perf_counter()
        with embedder.bypass():
            qv = embed_queries(embedder, [question])[0]
        t1 = time.perf_counter()
        centred, offset = centred_query(qv, centroid, DEFAULT_CONFIG.centroid_weight)
        scores = matrix @ centred + offset
        top = np.argpartition(-scores, pool)[:pool]
        t2 = time.perf_counter()
        lex_hits = lexical.top(question, pool)
        t3 = time.perf_counter()
        chosen = [int(i) for i in top]
        seen = set(chosen)
        chosen += [int(k) for k, _ in lex_hits if int(k) not in seen]
        dense = {int(i): float(scores[i]) for i in top}
        cands = [Candidate(str(i), dense.get(i), all_dates[i]) for i in chosen]
        rerank(question, cands, lexical, DEFAULT_CONFIG)
        t4 = time.perf_counter()
        for name, dt in zip(
            ("embed", "dense", "lexical", "rerank"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
            strict=True,
        ):
            timings[name].append(dt * 1000)
    added = [lex + rr for lex, rr in zip(timings["lexical"], timings["rerank"], strict=True)]
    total = [sum(parts) for parts in zip(*timings.values(), strict=True)]
    return {
        "memories": n_memories,
        "queries": len(questions),
        "pool": pool,
        "lexical_index_build_s": build_s,
        "ms": {
            **{name: percentiles(v, (50, 99)) for name, v in timings.items()},
            "hybrid_added": percentiles(added, (50, 99)),
            "total": percentiles(total, (50, 99)),
        },
    }
