"""Per-question records of a run and their summaries (means with bootstrap CIs, by category).

A :class:`QuestionResult` holds every metric of one question for one (retriever, unit kind);
:func:`summarize` turns a list of them into the figures the suite prints and saves. Headline
figures use categories 1-4 only (LoCoMo's convention); category 5 is reported on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentiles
from bench.locomo.data import CATEGORY_NAMES, HEADLINE_CATEGORIES, Unit
from bench.locomo.metrics import bootstrap_ci, question_scores, recall_within_budget

#: Injected-token budgets at which memory units are compared.
BUDGETS: tuple[int, ...] = (128, 256, 512)
#: Metrics given a confidence interval in summaries.
CI_METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "hit@5", "mrr", "ndcg@10")


@dataclass
class QuestionResult:
    """Every metric of one question: retrieval scores, budget recalls and injected tokens."""

    conversation: str
    category: int
    scores: dict[str, float]
    tokens_at_5: int
    latency_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def score_question(
    conversation: str,
    category: int,
    evidence: Sequence[str],
    units: Sequence[Unit],
    ranked: Sequence[int],
    token_counts: Sequence[int],
    latency_ms: float | None = None,
) -> QuestionResult:
    """All metrics of one ranked list of unit positions (``evidence`` must be non-empty)."""
    gold = set(evidence)
    covered = [units[i].dia_ids for i in ranked]
    n_relevant = sum(1 for u in units if gold.intersection(u.dia_ids))
    scores = question_scores(evidence, covered, n_relevant)
    tokens = [token_counts[i] for i in ranked]
    for budget in BUDGETS:
        scores[f"recall@{budget}tok"] = recall_within_budget(evidence, covered, tokens, budget)
    return QuestionResult(conversation, category, scores, sum(tokens[:5]), latency_ms)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(results: Sequence[QuestionResult], resamples: int = 2000) -> dict[str, Any]:
    """Headline means (categories 1-4) with 95% CIs, per-category means, tokens and latency."""
    head = [r for r in results if r.category in HEADLINE_CATEGORIES]
    out: dict[str, Any] = {"questions": len(head), "questions_cat5": len(results) - len(head)}
    if not head:
        return out
    metric_names = list(head[0].scores)
    overall: dict[str, Any] = {}
    for name in metric_names:
        values = [r.scores[name] for r in head]
        if name in CI_METRICS:
            mean, low, high = bootstrap_ci(values, n_resamples=resamples)
            overall[name] = {"mean": mean, "ci95": [low, high]}
        else:
            overall[name] = {"mean": _mean(values)}
    out["overall"] = overall
    by_cat: dict[int, list[QuestionResult]] = defaultdict(list)
    for r in results:
        by_cat[r.category].append(r)
    out["by_category"] = {
        f"{cat} {CATEGORY_NAMES.get(cat, '?')}": {
            "n": len(rs),
            **{m: _mean([r.scores[m] for r in rs]) for m in ("recall@5", "recall@10", "mrr")},
        }
        for cat, rs in sorted(by_cat.items())
    }
    out["injected_tokens_at_5"] = _mean([float(r.tokens_at_5) for r in head])
    lat = [r.latency_ms for r in results if r.latency_ms is not None]
    if lat:
        out["latency_ms"] = percentiles(lat, (50, 99))
    return out
