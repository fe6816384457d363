"""LoCoMo retrieval through the PostgreSQL backend beside the embedded store, in one run.

``python -m bench postgres-locomo [--split tune] [--unit facts|turns|summaries|all] [--quick]``

The same conversations, memories (with their dia_ids, speaker and session in metadata and the
session date as ``created_at``) and questions go through :class:`StoreRetriever` twice: a store
directory and a PostgreSQL database (the ``postgres`` suite's own server, or ``--url``). Both
run ``MemoryStore.search`` (the hybrid ranking, and ``hybrid=False``) and are scored like
every row of the ``locomo`` suite (:mod:`bench.locomo.scoring`). Vectors come from the locomo
cache (:class:`~bench.locomo.embed.CachedEmbedder`), so both backends see the same vectors and
the difference is the backend alone.

Printed per unit kind and ranking: R@5 and R@10 of each backend, their difference (issue 12's
target: R@5 within 0.005 of the embedded store), the share of questions whose top 10 is the
same list on both, and the median ranking time (the query vector looked up). Results:
``bench/results/postgres-locomo.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.bench_postgres import Server, given_server, local_server, watched
from bench.common import RESULTS_DIR, format_table, percentiles, write_json
from bench.locomo.data import SPLITS, UNIT_KINDS, Conversation, UnitKind, load
from bench.locomo.embed import CachedEmbedder, load_embedder
from bench.locomo.retrievers import StoreRetriever
from bench.locomo.scoring import QuestionResult, score_question, summarize

#: How deep each ranking goes (as in the locomo suite: enough for every metric).
DEPTH = 40
#: Issue 12's target: |R@5 postgres - R@5 embedded| at most this.
TARGET_R5_DIFF = 0.005


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench postgres-locomo", description=__doc__)
    p.add_argument("--split", choices=sorted(SPLITS), default="tune")
    p.add_argument("--unit", choices=[*UNIT_KINDS, "all"], default="facts")
    p.add_argument("--quick", action="store_true", help="one conversation (smoke test)")
    p.add_argument("--url", help="a PostgreSQL URL of yours instead of a local server")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    return p.parse_args(list(argv))


def _token_counter() -> Callable[[str], int]:
    from headroom.transforms.tokens import default_counter

    return default_counter().count_text


def _prefetch(
    embedder: CachedEmbedder, convs: Sequence[Conversation], kinds: Sequence[str]
) -> None:
    """Embed every unit and question once, so rankings read vectors from the cache."""
    texts = [u.text for c in convs for k in kinds for u in c.units(k)]  # type: ignore[arg-type]
    texts += [q.question for c in convs for q in c.questions]
    todo = list(dict.fromkeys(texts))
    for start in range(0, len(todo), 64):
        embedder.embed(todo[start : start + 64])
    embedder.save()


def run_store(
    store: StoreRetriever,
    convs: Sequence[Conversation],
    kind: UnitKind,
    count: Callable[[str], int],
    hybrid: bool,
) -> tuple[list[QuestionResult], list[list[int]]]:
    """Every question of every conversation ranked through ``store``: scores and rankings."""
    results: list[QuestionResult] = []
    rankings: list[list[int]] = []
    for conv in convs:
        units = conv.units(kind)
        store.fit(conv.sample_id, units)
        tokens = [count(u.text) for u in units]
        for q in conv.questions:
            if not q.evidence:
                continue
            t0 = time.perf_counter()
            hits = store.store.search(store.user, q.question, top_k=DEPTH, hybrid=hybrid)
            ms = (time.perf_counter() - t0) * 1000
            ranked = [int(m.metadata["unit"]) for m, _ in hits]
            rankings.append(ranked)
            results.append(
                score_question(conv.sample_id, q.category, q.evidence, units, ranked, tokens, ms)
            )
    return results, rankings


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[Server]:
    if url:
        with given_server(url) as server:
            yield server
    else:
        with local_server() as server:
            yield server


def main(argv: Sequence[str]) -> int:
    """Run both backends over the split; print and write the comparison. Returns 0."""
    args = _parse(argv)
    ids = SPLITS[args.split][:1] if args.quick else SPLITS[args.split]
    resamples = 200 if args.quick else args.resamples
    convs = load(ids=ids)
    kinds: list[UnitKind] = list(UNIT_KINDS) if args.unit == "all" else [args.unit]
    embedder = CachedEmbedder(load_embedder())
    count = _token_counter()
    report: dict[str, Any] = {"split": args.split, "conversations": list(ids)}
    rows: list[dict[str, Any]] = []
    _prefetch(embedder, convs, kinds)
    with _server(args.url) as server, tempfile.TemporaryDirectory(prefix="pg-locomo-") as tmp:
        url = server.database(f"locomo_{os.getpid()}")
        stores = {
            "embedded": StoreRetriever(embedder, Path(tmp) / "memory.db"),
            "postgres": StoreRetriever(embedder, url),
        }
        try:
            for kind in kinds:
                for hybrid in (True, False):
                    ranking = "hybrid" if hybrid else "dense (hybrid=False)"
                    got: dict[str, tuple[list[QuestionResult], list[list[int]]]] = {}
                    with watched(f"{kind}, {ranking}", server, report):
                        for name, store in stores.items():
                            got[name] = run_store(store, convs, kind, count, hybrid)
                    rows.append(_row(kind, ranking, got, resamples))
        finally:
            for store in stores.values():
                store.close()
        report["server"] = {"transport": server.transport, **server.settings}
    report["rows"] = rows
    _print(report)
    path = write_json("postgres-locomo" + ("-quick" if args.quick else ""), report, args.results)
    print(f"\nwrote {path}")
    return 0


def _row(
    kind: str,
    ranking: str,
    got: dict[str, tuple[list[QuestionResult], list[list[int]]]],
    resamples: int,
) -> dict[str, Any]:
    """One kind and ranking: each backend's summary, the differences, the agreement."""
    summaries = {name: summarize(results, resamples) for name, (results, _) in got.items()}
    emb, pg = got["embedded"][1], got["postgres"][1]
    same10 = sum(a[:10] == b[:10] for a, b in zip(emb, pg, strict=True)) / max(1, len(emb))
    r5 = {n: s["overall"]["recall@5"]["mean"] for n, s in summaries.items()}
    r10 = {n: s["overall"]["recall@10"]["mean"] for n, s in summaries.items()}
    ms = {
        n: percentiles([r.latency_ms or 0.0 for r in results], (50, 99))
        for n, (results, _) in got.items()
    }
    return {
        "unit": kind,
        "ranking": ranking,
        "questions": summaries["embedded"]["questions"],
        "recall@5": r5,
        "recall@10": r10,
        "r5_diff": r5["postgres"] - r5["embedded"],
        "r10_diff": r10["postgres"] - r10["embedded"],
        "same_top10_share": same10,
        "rank_ms": ms,
        "summaries": summaries,
    }


def _print(report: dict[str, Any]) -> None:
    server = report["server"]
    print(f"\nLoCoMo {report['split']} split ({', '.join(report['conversations'])}) through")
    print(f"MemoryStore.search; server: {', '.join(f'{k} {v}' for k, v in server.items())}")
    headers = ["unit", "ranking", "questions", "R@5 embedded", "R@5 postgres", "diff"]
    headers += ["R@10 embedded", "R@10 postgres", "diff", "same top 10", "rank p50 ms emb / pg"]
    table = [
        [r["unit"], r["ranking"], r["questions"], r["recall@5"]["embedded"],
         r["recall@5"]["postgres"], f"{r['r5_diff']:+.4f}", r["recall@10"]["embedded"],
         r["recall@10"]["postgres"], f"{r['r10_diff']:+.4f}", f"{r['same_top10_share']:.3f}",
         f"{r['rank_ms']['embedded']['p50']:.2f} / {r['rank_ms']['postgres']['p50']:.2f}"]
        for r in report["rows"]
    ]  # fmt: skip
    print(format_table(headers, table))
    for r in report["rows"]:
        if r["ranking"] == "hybrid":
            verdict = "PASS" if abs(r["r5_diff"]) <= TARGET_R5_DIFF else "FAIL"
            print(
                f"target: {r['unit']} R@5 within {TARGET_R5_DIFF} of the embedded store: "
                f"{r['r5_diff']:+.4f} {verdict}"
            )
