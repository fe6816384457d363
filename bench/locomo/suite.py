"""``python -m bench locomo``: evidence retrieval on LoCoMo, per memory unit and retriever.

For each conversation of the split, one user; every retriever indexes that user's memory
units (observation facts, raw turns or session summaries) and ranks them for each question.
Scores: evidence recall@1/5/10, hit@k, MRR, nDCG@10 (headline: categories 1-4, with bootstrap
95% CIs), recall within injected-token budgets, injected tokens at top 5 against the whole
conversation, and latency (rank-only for in-bench retrievers; the full query path, live query
embedding included, for the store). Writes ``bench/results/locomo_<split>.json`` and a PNG.

Tune on the ``tune`` split only; ``report`` is held out (``--sweep`` there prints a warning).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import (
    CpuWatch,
    format_table,
    percentiles,
    plot_bars,
    progress,
    write_json,
)
from bench.locomo.anchors import ANCHORS, run_anchor
from bench.locomo.data import SPLITS, UNIT_KINDS, Conversation, UnitKind, load
from bench.locomo.embed import CachedEmbedder, QueryPath, SplitEmbedder, load_embedder
from bench.locomo.retrievers import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    HybridSetting,
    Retriever,
    StoreDenseRetriever,
    StoreRetriever,
)
from bench.locomo.scale import scale_latency
from bench.locomo.scoring import BUDGETS, QuestionResult, score_question, summarize
from bench.locomo.variants import Variant, rewrite_query
from headroom.memory.embedders.minilm import DEFAULT_QUERY_MODE, QUERY_MODES
from headroom.memory.store.ranking import DEFAULT_CONFIG, RankConfig

#: How deep every retriever ranks (enough for the largest token budget over facts and turns).
DEPTH = 40


def sweep_settings() -> list[HybridSetting]:
    """Every hybrid configuration tried on the tune split (kept, winners and losers alike).

    The centring rows vary one thing from the tuned default
    (:data:`headroom.memory.store.ranking.DEFAULT_CONFIG` with BM25 b=0.3 and a pool of 50
    dense + 50 lexical candidates). The session-context rows were tried before centring: they vary
    one thing from that default without it. The rows after them were tried before session context
    came in: they vary one thing from that earlier default (lexical weight 0.25, no session
    context, no centring). So every row reproduces the figures measured when it was tried.
    The rrf and entity rows are :mod:`bench.locomo.variants` (options the store does not ship).
    """
    d = DEFAULT_CONFIG

    def new(**changes: Any) -> RankConfig:
        return replace(d, **changes)

    def ctx(**changes: Any) -> RankConfig:
        return replace(d, **{"centroid_weight": 0.0, **changes})

    def cfg(**changes: Any) -> RankConfig:
        earlier = {
            "lexical_weight": 0.25,
            "context_weight": 0.0,
            "context_top_weight": 0.0,
            "centroid_weight": 0.0,
        }
        return replace(d, **{**earlier, **changes})

    out = [HybridSetting("no centring (session-context default)", ctx())]
    out += [HybridSetting(f"centring w={w:g}", new(centroid_weight=w)) for w in (0.4, 0.8, 1.0)]
    out += [HybridSetting(f"centring, lexical w={w:g}", new(lexical_weight=w)) for w in (0.1, 0.2)]
    out += [HybridSetting("no session context (earlier default)", cfg())]
    out += [
        HybridSetting(f"context w={w:g}", ctx(context_weight=w)) for w in (0.0, 0.05, 0.15, 0.2)
    ]
    out += [
        HybridSetting(f"context top w={w:g}", ctx(context_top_weight=w)) for w in (0.0, 0.02, 0.06)
    ]
    out += [
        HybridSetting(f"context, lexical w={w:g}", ctx(lexical_weight=w)) for w in (0.1, 0.2, 0.25)
    ]
    out += [HybridSetting(f"lexical w={w:g}", cfg(lexical_weight=w)) for w in (0.1, 0.2, 0.3, 0.4)]
    out += [HybridSetting(f"date w={w:g}", cfg(date_weight=w)) for w in (0.0, 0.1, 0.3)]
    out += [
        HybridSetting(f"rrf w={w:g}", cfg(lexical_weight=w, date_weight=0.0), Variant(fusion="rrf"))
        for w in (0.5, 1.0)
    ]
    out += [
        HybridSetting("entity w=0.05", cfg(), Variant(entity_weight=0.05)),
        HybridSetting("bm25 b=0.75", cfg(), bm25_b=0.75),
        HybridSetting("rewritten query", cfg(), rewrite=True),
        HybridSetting("pool=20", cfg(), pool=20),
        HybridSetting("pool=100", cfg(), pool=100),
        HybridSetting("exact dense for lexical-only", cfg(), exact_dense=True),
    ]
    return out


def _token_counter() -> tuple[Callable[[str], int], str]:
    """The project's token counter (tiktoken offline when available, else its estimate)."""
    try:
        from headroom.transforms.tokens import default_counter
    except ImportError:
        return (lambda text: max(1, len(text) // 4)), "chars/4"
    counter = default_counter()
    return counter.count_text, counter.name


def _prefetch(
    embedder: CachedEmbedder, convs: Sequence[Conversation], kinds: Sequence[UnitKind]
) -> None:
    """Embed every unit and question once (in batches) so ranking reads the cache."""
    texts: list[str] = []
    for conv in convs:
        for kind in kinds:
            texts += [u.text for u in conv.units(kind)]
        texts += [q.question for q in conv.questions]
        texts += [rewrite_query(q.question) for q in conv.questions]
    todo = list(dict.fromkeys(texts))
    batch = 64
    for start in progress(range(0, len(todo), batch), "embedding", total=-(-len(todo) // batch)):
        embedder.embed(todo[start : start + batch])
    embedder.save()


def _prefetch_questions(embedder: CachedEmbedder, convs: Sequence[Conversation]) -> None:
    """Embed every question once through ``embedder`` (the query path of a query mode)."""
    todo = list(dict.fromkeys(q.question for conv in convs for q in conv.questions))
    for start in progress(range(0, len(todo), 64), "query embedding", total=-(-len(todo) // 64)):
        embedder.embed(todo[start : start + 64])
    embedder.save()


def _query_mode_retrievers(store: StoreRetriever | None, mode: str) -> list[Retriever]:
    """The store rows again, on a store whose queries are embedded in ``mode``."""
    if store is None:
        return []
    store.name = f"store, {mode} queries"
    out: list[Retriever] = [store]
    if StoreDenseRetriever.supported(store):
        dense = StoreDenseRetriever(store)
        dense.name = f"store, hybrid=False, {mode} queries"
        out.append(dense)
    return out


def _run_retriever(
    retriever: Retriever,
    convs: Sequence[Conversation],
    kind: UnitKind,
    count: Callable[[str], int],
) -> list[QuestionResult]:
    results: list[QuestionResult] = []
    for conv in convs:
        units = conv.units(kind)
        retriever.fit(conv.sample_id, units)
        tokens = [count(u.text) for u in units]
        for q in conv.questions:
            if not q.evidence:
                continue
            t0 = time.perf_counter()
            ranked = retriever.rank(q.question, DEPTH)
            ms = (time.perf_counter() - t0) * 1000
            results.append(
                score_question(conv.sample_id, q.category, q.evidence, units, ranked, tokens, ms)
            )
    return results


def _query_path_latency(
    retriever: Retriever,
    embedder: CachedEmbedder | SplitEmbedder,
    convs: Sequence[Conversation],
    kind: UnitKind,
) -> dict[str, Any]:
    """p50/p99 (ms) of a store-backed top-5 query with the query embedded live (inject path)."""
    times: list[float] = []
    for conv in convs:
        retriever.fit(conv.sample_id, conv.units(kind))
        with embedder.bypass():
            for q in conv.questions:
                t0 = time.perf_counter()
                retriever.rank(q.question, 5)
                times.append((time.perf_counter() - t0) * 1000)
    return {"queries": len(times), **percentiles(times, (50, 99))}


def _run_anchors(
    convs: Sequence[Conversation],
    kind: UnitKind,
    count: Callable[[str], int],
    summary: dict[str, dict[str, Any]],
    extra: dict[str, Any],
    resamples: int,
) -> None:
    """Run every installed anchor; a missing or failing one is reported, never fatal."""
    for name in ANCHORS:
        try:
            run = run_anchor(name, convs, kind, DEPTH, count)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"anchor {name} skipped: {exc}", file=sys.stderr)
            extra[f"anchor {name} {kind}"] = {"skipped": str(exc)[-500:]}
            continue
        summary[f"{kind} / {name} {run.version}"] = summarize(run.results, resamples)
        extra[f"anchor {name} {kind}"] = {"version": run.version, "ingest_s": run.ingest_s}


def _open_store(embedder: CachedEmbedder | SplitEmbedder, folder: Path) -> StoreRetriever | None:
    """A fresh MemoryStore in ``folder``, or None (with the reason) when it cannot be built."""
    try:
        return StoreRetriever(embedder, folder)
    except ImportError as exc:  # the compiled core is not built in this checkout
        print(f"store run skipped: {exc} (build with `pip install -e .`)", file=sys.stderr)
        return None


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench locomo", description=__doc__)
    p.add_argument("--split", choices=sorted(SPLITS), default="tune")
    p.add_argument("--unit", choices=[*UNIT_KINDS, "all"], default="all")
    p.add_argument("--quick", action="store_true", help="first conversation only, fewer resamples")
    p.add_argument("--sweep", action="store_true", help="also every hybrid setting tried")
    p.add_argument("--no-store", action="store_true", help="skip the MemoryStore end-to-end run")
    p.add_argument(
        "--anchors",
        action="store_true",
        help="also headroom-ai 0.2.15 and mem0 from their venvs under bench/.venvs/",
    )
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument(
        "--scale", type=int, default=10_000, help="memories of the one-user latency run (0: skip)"
    )
    p.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=DEFAULT_QUERY_MODE,
        help="MiniLM query_mode: unless fp32, the store rows run again with queries embedded "
        "in it (memories fp32), and the --scale run embeds its queries in it (default: "
        "the library's default, %(default)s)",
    )
    p.add_argument(
        "--memory-mode",
        choices=QUERY_MODES,
        default="fp32",
        help="embed the memories too (and so every query) on this MiniLM path: int8 measures "
        "what int8 stored vectors would cost in quality (the library stores fp32)",
    )
    return p.parse_args(list(argv))


def _headline_rows(summary: dict[str, dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, s in summary.items():
        o = s.get("overall")
        if not o:
            continue
        r5 = o["recall@5"]
        rows.append(
            [
                label,
                s["questions"],
                o["recall@1"]["mean"],
                r5["mean"],
                f"[{r5['ci95'][0]:.3f}, {r5['ci95'][1]:.3f}]",
                o["recall@10"]["mean"],
                o["hit@5"]["mean"],
                o["mrr"]["mean"],
                o["ndcg@10"]["mean"],
                *(o[f"recall@{b}tok"]["mean"] for b in BUDGETS),
                s["injected_tokens_at_5"],
                s.get("latency_ms", {}).get("p50", float("nan")),
            ]
        )
    return rows


HEADERS = [
    "unit / retriever",
    "n",
    "R@1",
    "R@5",
    "R@5 95% CI",
    "R@10",
    "hit@5",
    "MRR",
    "nDCG@10",
    *(f"R@{b}tok" for b in BUDGETS),
    "tok@5",
    "rank p50 ms",
]


def main(argv: Sequence[str]) -> int:
    """Run the suite; print the table; write JSON and PNG. Returns 0."""
    args = _parse(argv)
    if args.sweep and args.split != "tune":
        print("warning: sweeping on a split that includes held-out conversations", file=sys.stderr)
    ids = SPLITS[args.split][:1] if args.quick else SPLITS[args.split]
    resamples = 300 if args.quick else args.resamples
    convs = load(ids=ids)
    kinds: list[UnitKind] = list(UNIT_KINDS) if args.unit == "all" else [args.unit]
    inner = load_embedder("int8" if args.memory_mode == "int8" else args.query_mode)
    # --memory-mode int8: every retriever's vectors (memories and queries) from the int8 path.
    embedder = CachedEmbedder(QueryPath(inner) if args.memory_mode == "int8" else inner)
    split = None
    if args.query_mode != "fp32" and args.memory_mode == "fp32":
        split = SplitEmbedder(embedder, CachedEmbedder(QueryPath(inner)))
    if not BM25Retriever.available():
        print(
            "bm25 baseline skipped: rank_bm25 is not installed (the bench extra)", file=sys.stderr
        )
    count, counter_name = _token_counter()
    summary: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    with CpuWatch() as watch:
        _prefetch(embedder, convs, kinds)
        if split is not None:
            _prefetch_questions(split.queries, convs)
        settings = [HybridSetting("hybrid (tuned)", DEFAULT_CONFIG)]
        if args.sweep:
            settings += sweep_settings()
        with tempfile.TemporaryDirectory(prefix="locomo-store-") as tmp:
            store = None if args.no_store else _open_store(embedder, Path(tmp) / "memory.db")
            q_store = None
            if store is not None and split is not None:
                q_store = _open_store(split, Path(tmp) / "memory-query-mode.db")
            for kind in kinds:
                retrievers: list[Retriever] = [
                    *([BM25Retriever()] if BM25Retriever.available() else []),
                    DenseRetriever(embedder),
                    DenseRetriever(embedder, rewrite=True),
                    *(HybridRetriever(embedder, s) for s in settings),
                ]
                store_based: list[Retriever] = []
                if store is not None:
                    store_based = [store]
                    if StoreDenseRetriever.supported(store):
                        store_based.append(StoreDenseRetriever(store))
                    ingest_before = store.ingest_s
                q_based = _query_mode_retrievers(q_store, args.query_mode)
                retrievers += store_based + q_based
                for r in progress(retrievers, f"{kind}"):
                    results = _run_retriever(r, convs, kind, count)
                    summary[f"{kind} / {r.name}"] = summarize(results, resamples)
                if args.anchors:
                    _run_anchors(convs, kind, count, summary, extra, resamples)
                if store is not None:
                    extra[f"store ingest s {kind}"] = store.ingest_s - ingest_before
                for r in store_based:
                    extra[f"query path ms {kind} / {r.name}"] = _query_path_latency(
                        r, embedder, convs, kind
                    )
                for r in q_based:
                    assert split is not None
                    extra[f"query path ms {kind} / {r.name}"] = _query_path_latency(
                        r, split, convs, kind
                    )
            for s in (store, q_store):
                if s is not None:
                    s.close()
        if args.scale and not args.quick:
            extra["scale"] = scale_latency(split or embedder, load(), args.scale)
        (split or embedder).save()
    conv_tokens = {c.sample_id: count(c.full_text()) for c in convs}
    print(f"LoCoMo evidence retrieval, split={args.split} ({', '.join(ids)}), categories 1-4")
    print(format_table(HEADERS, _headline_rows(summary)))
    for key, value in extra.items():
        if key.startswith("query path"):
            print(f"{key}: p50 {value['p50']:.2f}  p99 {value['p99']:.2f}  ({value['queries']} q)")
        elif key.startswith("store ingest"):
            print(f"{key}: {value:.2f} (add_many of every conversation; vectors from the cache)")
    if "scale" in extra:
        sc = extra["scale"]
        print(f"one user with {sc['memories']} memories, {sc['queries']} queries (ms):")
        rows = [[k, v["p50"], v["p99"]] for k, v in sc["ms"].items()]
        print(format_table(["part", "p50", "p99"], rows))
    mean_conv = sum(conv_tokens.values()) / len(conv_tokens)
    print(f"whole conversation: {mean_conv:.0f} tokens on average ({counter_name})")
    rep = watch.report
    if rep.others_share is not None:
        print(f"other processes used {rep.others_share:.0%} of the CPU during the run")
    name = f"locomo_{args.split}_{args.unit}{'_sweep' if args.sweep else ''}"
    name += "_int8_memories" if args.memory_mode == "int8" else ""
    name += "_quick" if args.quick else ""
    path = write_json(
        name,
        {
            "suite": "locomo",
            "args": vars(args),
            "conversations": list(ids),
            "token_counter": counter_name,
            "conversation_tokens": conv_tokens,
            "embedder": embedder.model_id,
            "query_mode": args.query_mode,
            "memory_mode": args.memory_mode,
            "cpu": rep,
            "results": summary,
            **extra,
        },
    )
    plot_bars(
        name,
        {
            metric: {k: v["overall"][metric]["mean"] for k, v in summary.items() if "overall" in v}
            for metric in ("recall@5", "recall@10")
        },
        f"LoCoMo evidence recall ({args.split})",
        "recall",
    )
    print(f"wrote {path}")
    return 0
