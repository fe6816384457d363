"""Retrieval metrics over LoCoMo evidence, and bootstrap confidence intervals.

A question's gold set is its evidence dia_ids; a retrieved memory "covers" the dia_ids in its
``dia_ids`` metadata. Per question, for a ranked list of covered-id tuples:

- recall@k: share of the gold dia_ids covered by the top k memories (LoCoMo's own metric);
- hit@k: 1 if the top k cover at least one gold dia_id;
- MRR: 1 / rank of the first memory covering a gold dia_id (0 when none does; the list is
  whatever the retriever returned, normally its top 10);
- nDCG@10: binary relevance (a memory is relevant if it covers a gold dia_id), ideal DCG from
  the number of relevant memories in the user's whole corpus (capped at 10).

Every function is pure. Questions without evidence must be filtered out by the caller: these
functions raise ValueError on an empty gold set rather than invent a score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KS: tuple[int, ...] = (1, 5, 10)


def _check(gold: Sequence[str]) -> frozenset[str]:
    if not gold:
        raise ValueError("a question without evidence cannot be scored")
    return frozenset(gold)


def recall_at_k(gold: Sequence[str], ranked: Sequence[Sequence[str]], k: int) -> float:
    """Share of ``gold`` covered by the first ``k`` entries of ``ranked``."""
    want = _check(gold)
    covered = {d for ids in ranked[:k] for d in ids} & want
    return len(covered) / len(want)


def hit_at_k(gold: Sequence[str], ranked: Sequence[Sequence[str]], k: int) -> float:
    """1.0 if any of the first ``k`` entries covers a gold dia_id, else 0.0."""
    want = _check(gold)
    return 1.0 if any(want.intersection(ids) for ids in ranked[:k]) else 0.0


def reciprocal_rank(gold: Sequence[str], ranked: Sequence[Sequence[str]]) -> float:
    """1 / (1-based rank of the first entry covering a gold dia_id); 0.0 if none does."""
    want = _check(gold)
    for rank, ids in enumerate(ranked, start=1):
        if want.intersection(ids):
            return 1.0 / rank
    return 0.0


def ndcg_at_k(
    gold: Sequence[str], ranked: Sequence[Sequence[str]], n_relevant: int, k: int = 10
) -> float:
    """Binary-relevance nDCG@k; ``n_relevant`` = relevant memories in the whole corpus.

    Returns 0.0 when the corpus holds no relevant memory (the question is unanswerable from it).
    """
    want = _check(gold)
    dcg = sum(1.0 / math.log2(i + 2) for i, ids in enumerate(ranked[:k]) if want.intersection(ids))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(n_relevant, k)))
    return dcg / ideal if ideal > 0 else 0.0


def question_scores(
    gold: Sequence[str], ranked: Sequence[Sequence[str]], n_relevant: int
) -> dict[str, float]:
    """Every metric of one question: ``recall@k``, ``hit@k`` for k in :data:`KS`, mrr, ndcg@10."""
    scores = {f"recall@{k}": recall_at_k(gold, ranked, k) for k in KS}
    scores.update({f"hit@{k}": hit_at_k(gold, ranked, k) for k in KS})
    scores["mrr"] = reciprocal_rank(gold, ranked)
    scores["ndcg@10"] = ndcg_at_k(gold, ranked, n_relevant, 10)
    return scores


def recall_within_budget(
    gold: Sequence[str],
    ranked: Sequence[Sequence[str]],
    token_counts: Sequence[int],
    budget: int,
) -> float:
    """Recall of the longest prefix of ``ranked`` whose tokens fit in ``budget``.

    The first memory always counts, even when it alone is over budget (an injector never
    injects nothing when something matched); later ones only while the running total fits.
    """
    want = _check(gold)
    used = 0
    covered: set[str] = set()
    for i, (ids, tokens) in enumerate(zip(ranked, token_counts, strict=False)):
        if i > 0 and used + tokens > budget:
            break
        used += tokens
        covered.update(want.intersection(ids))
    return len(covered) / len(want)


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap confidence interval.

    Resamples questions with replacement; deterministic for a given ``seed``. One value gives
    a zero-width interval; an empty sequence raises ValueError.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("bootstrap of no values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(arr.mean()), float(low), float(high)
