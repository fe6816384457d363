"""What the wrapper injects, per store size and relevance rule: ``python -m bench injection``.

Stores (one user each, in a temporary MemoryStore with the real MiniLM model):

- ``small``: each persona of ``bench/injection/personas.json`` alone (7-15 memories, written in
  sessions on separate days);
- ``large``: the same persona plus the observation facts of one LoCoMo conversation, the first
  speaker's name written as "User" (170-340 memories; dev personas take tune conversations,
  held-out personas report ones);
- ``xlarge``: the persona plus the facts of all seven conversations so written (~1,770);
- ``locomo``: the facts of each LoCoMo tune conversation as they are.

Messages: each persona's messages (``wanted`` memories must come, ``ok`` ones may), the generic
messages of ``bench/injection/generic.json`` against every store (``dev`` and ``heldout``
halves), and the LoCoMo tune questions of categories 1-4 against their conversation.

For every message the store's search (``MemoryStore.search``, top 5, the call the wrapper
makes) runs once; each rule of :data:`RULES` then decides what of those results it injects.
Figures per store kind, split and rule: ``generic`` (share of generic messages that inject
anything), ``recall`` (share of wanted memories injected), ``precision`` (share of injected
memories that were wanted, ``ok`` ones left out of the count) and, for LoCoMo, ``evidence``
(share of questions whose injection holds a memory from their evidence). Then the cost the
default rule adds to an injection: the calibration per user (once per growth of its memory
count) and the per-call check, against a fixed floor in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.common import CpuWatch, child_json, format_table, machine_info, write_json
from bench.locomo.data import REPORT_SPLIT, TUNE_SPLIT, Conversation, load
from bench.locomo.embed import CachedEmbedder, QueryPath, SplitEmbedder, load_embedder
from headroom.memory.embedders.base import embed_queries
from headroom.memory.embedders.minilm import DEFAULT_QUERY_MODE, QUERY_MODES
from headroom.memory.protocol import relevance
from headroom.memory.protocol.pipeline import Settings, find_memories
from headroom.memory.store.ranking import tokenize
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import Memory, NewMemory

DATA = Path(__file__).resolve().parent / "injection"
TOP_K = 5
#: The conversation whose facts fill each persona's large store.
FILLER: dict[str, str] = dict(
    zip(("maya", "rex7", "priya", "tom"), TUNE_SPLIT, strict=True),
    **dict(zip(("lena", "carlos", "ana"), REPORT_SPLIT, strict=True)),
)
_BASE_DATE = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)

Results = list[tuple[Memory, float]]


@dataclass
class Case:
    """One message against one store: its search results and what it should inject."""

    text: str
    results: Results
    wanted: frozenset[str] = frozenset()  # keys (persona) or dia_ids (LoCoMo)
    ok: frozenset[str] = frozenset()
    generic: bool = False
    genericness: float = 0.0  # relevance.genericness of the text


@dataclass
class StoreCase:
    """One user's store, its background probes' results and its cases."""

    user: str
    kind: str  # small | large | locomo
    split: str  # dev | heldout | tune
    count: int
    probes: list[Results] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)


# --- rules --------------------------------------------------------------------------------------

#: A rule: (the store with its probes' results, the message with its results) -> what it injects.
Rule = Callable[[StoreCase, Case], Results]


def _probe_best(store: StoreCase) -> list[float]:
    return [r[0][1] if r else 0.0 for r in store.probes]


def fixed(floor: float) -> Rule:
    """Today's rule: every result at or above a fixed floor."""
    return lambda store, case: [(m, s) for m, s in case.results if s >= floor]


def library_rule(store: StoreCase, case: Case) -> Results:
    """The library's rule (``relevance.select``) over this store's probe background."""
    background = relevance.Background(store.count, tuple(_probe_best(store)))
    return relevance.select(case.results, background, case.genericness)


def generic_gate(base: float, slope: float) -> Rule:
    """The library's rule with other constants: gate p90 + base + slope * genericness."""

    def rule(store: StoreCase, case: Case) -> Results:
        best = _probe_best(store)
        g = relevance.quantile(best, 0.9) + base + slope * case.genericness
        f = relevance.quantile(best, 0.5) + 0.05
        if not case.results or case.results[0][1] < g:
            return []
        return [(m, s) for m, s in case.results if s >= min(f, case.results[0][1])]

    return rule


def per_memory(q: float, margin: float) -> Rule:
    """Every result at or above a quantile of the probes' best scores plus a margin."""

    def rule(store: StoreCase, case: Case) -> Results:
        floor = relevance.quantile(_probe_best(store), q) + margin
        return [(m, s) for m, s in case.results if s >= floor]

    return rule


def mean_sd(k: float) -> Rule:
    """Every result at or above the probes' mean best score plus k standard deviations."""

    def rule(store: StoreCase, case: Case) -> Results:
        best = _probe_best(store)
        floor = statistics.fmean(best) + k * statistics.pstdev(best)
        return [(m, s) for m, s in case.results if s >= floor]

    return rule


def gate(q: float, margin: float, floor_margin: float | None, lexical: float | None = None) -> Rule:
    """A message gate (quantile q + margin), then a per-memory floor (median + floor_margin;
    None: none). ``lexical``: below the gate, a memory sharing a query word still goes in
    at the floor plus this much."""

    def rule(store: StoreCase, case: Case) -> Results:
        best = _probe_best(store)
        g = relevance.quantile(best, q) + margin
        f = -9.0 if floor_margin is None else relevance.quantile(best, 0.5) + floor_margin
        results = case.results
        if results and results[0][1] >= g:
            return [(m, s) for m, s in results if s >= f]
        if lexical is None:
            return []
        words = set(tokenize(case.text))
        return [(m, s) for m, s in results if s >= f + lexical and words & set(tokenize(m.text))]

    return rule


LIBRARY = (
    f"library: gate p{relevance.GATE_QUANTILE * 100:g}{relevance.GATE_BASE:+g}"
    f"+{relevance.GATE_SLOPE:g}g, floor p{relevance.FLOOR_QUANTILE * 100:g}"
    f"+{relevance.FLOOR_MARGIN:g}"
)

#: Every rule measured, by name (g: the message's genericness).
RULES: dict[str, Rule] = {
    "fixed 0.15 (today)": fixed(0.15),
    "fixed 0.3": fixed(0.3),
    "fixed 0.4": fixed(0.4),
    "fixed 0.5": fixed(0.5),
    LIBRARY: library_rule,
    "gate p90-0.375+1.75g, floor p50+0.05": generic_gate(-0.375, 1.75),
    "gate p90-0.325+1.5g, floor p50+0.05": generic_gate(-0.325, 1.5),
    "gate p90-0.25+1.25g, floor p50+0.05": generic_gate(-0.25, 1.25),
    "gate p90-0.2+1.0g, floor p50+0.05": generic_gate(-0.2, 1.0),
    "gate p90-0.4+1.5g, floor p50+0.05": generic_gate(-0.4, 1.5),
    "gate p90+0.25, floor p50+0.05 (no g)": gate(0.9, 0.25, 0.05),
    "gate p90+0.2, floor p50+0.05 (no g)": gate(0.9, 0.2, 0.05),
    "gate p90+0.225, no floor (no g)": gate(0.9, 0.225, None),
    "gate p90+0.225 + lexical path +0.1": gate(0.9, 0.225, 0.05, lexical=0.1),
    "gate p100+0.1, floor p50+0.05": gate(1.0, 0.1, 0.05),
    "gate p75+0.325, floor p50+0.05": gate(0.75, 0.325, 0.05),
    "per-memory p90+0.2": per_memory(0.9, 0.2),
    "per-memory p100+0.1": per_memory(1.0, 0.1),
    "per-memory p75+0.3": per_memory(0.75, 0.3),
    "per-memory mean+3.5sd": mean_sd(3.5),
}


# --- building the stores -----------------------------------------------------------------------


def _persona_items(persona: dict[str, Any]) -> list[NewMemory]:
    items = []
    for day, session in enumerate(persona["sessions"]):
        for key, text, category in session:
            created = _BASE_DATE + timedelta(days=3 * day)
            items.append(NewMemory(text, category, {"key": key}, created))
    return items


def _as_user(conv: Conversation) -> list[NewMemory]:
    """The conversation's facts with its first speaker written as "User" (filler)."""
    name = conv.speakers[0]
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    return [
        NewMemory(pattern.sub("User", f.text), "fact", {"key": "filler"}, f.created_at)
        for f in conv.facts
    ]


def _search(store: MemoryStore, user: str, text: str) -> Results:
    return store.search(user, text, top_k=TOP_K)


def build(store: MemoryStore, generic: dict[str, list[str]]) -> list[StoreCase]:
    """Ingest every store and run every message's search once."""
    personas = json.loads((DATA / "personas.json").read_text(encoding="utf-8"))["personas"]
    convs = {c.sample_id: c for c in load(ids=TUNE_SPLIT + REPORT_SPLIT)}
    plans: list[tuple[str, str, str, list[NewMemory], list[Case]]] = []
    for p in personas:
        messages = [
            Case(m["text"], [], frozenset(m["wanted"]), frozenset(m.get("ok", ())))
            for m in p["messages"]
        ]
        items = _persona_items(p)
        plans.append((f"{p['name']}-small", "small", p["split"], items, messages))
        filler = _as_user(convs[FILLER[p["name"]]])
        plans.append((f"{p['name']}-large", "large", p["split"], items + filler, messages))
        every = [m for conv in convs.values() for m in _as_user(conv)]
        plans.append((f"{p['name']}-xlarge", "xlarge", p["split"], items + every, messages))
    for cid in TUNE_SPLIT:
        conv = convs[cid]
        items = [
            NewMemory(f.text, "fact", {"dia": list(f.dia_ids)}, f.created_at) for f in conv.facts
        ]
        questions = [
            Case(q.question, [], frozenset(q.evidence))
            for q in conv.questions
            if q.evidence and q.category in (1, 2, 3, 4)
        ]
        plans.append((f"locomo-{cid}", "locomo", "tune", items, questions))
    out = []
    for user, kind, split, items, messages in plans:
        store.add_many(user, items, source="import", dedup=False)
        sc = StoreCase(user, kind, split, store.backend.count(user))
        sc.probes = [_search(store, user, p) for p in relevance.PROBES]
        for m in messages:
            sc.cases.append(Case(m.text, _search(store, user, m.text), m.wanted, m.ok))
        for half, texts in generic.items():
            for t in texts:
                sc.cases.append(
                    Case(t, _search(store, user, t), generic=True, ok=frozenset([half]))
                )
        for case in sc.cases:
            case.genericness = relevance.genericness(store.embedder, case.text)
        out.append(sc)
    return out


# --- figures ---------------------------------------------------------------------------------


def _keys(memory: Memory) -> set[str]:
    meta = memory.metadata or {}
    if "dia" in meta:
        return set(meta["dia"])
    return {str(meta.get("key"))}


def evaluate(stores: Sequence[StoreCase], rule: Rule, kind: str, split: str) -> dict[str, float]:
    """The figures of one rule over the stores of one kind, messages of one split."""
    generic = generic_hit = wanted = wanted_hit = injected = injected_good = 0
    questions = question_hit = 0
    for sc in stores:
        if sc.kind != kind:
            continue
        for case in sc.cases:
            kept = rule(sc, case)
            if case.generic:
                if split in case.ok:
                    generic += 1
                    generic_hit += bool(kept)
                continue
            if kind == "locomo":
                questions += 1
                question_hit += any(_keys(m) & case.wanted for m, _ in kept)
                continue
            if sc.split != split:
                continue
            wanted += len(case.wanted)
            got = set().union(*(_keys(m) for m, _ in kept)) if kept else set()
            wanted_hit += len(got & case.wanted)
            for m, _ in kept:
                keys = _keys(m)
                if keys & case.ok:
                    continue
                injected += 1
                injected_good += bool(keys & case.wanted)
    out = {"generic": generic_hit / generic if generic else float("nan")}
    if kind == "locomo":
        out["evidence"] = question_hit / questions if questions else float("nan")
    else:
        out["recall"] = wanted_hit / wanted if wanted else float("nan")
        out["precision"] = injected_good / injected if injected else float("nan")
    return out


def _critical_path(
    store: MemoryStore, stores: Sequence[StoreCase], calls: int, query_mode: str
) -> tuple[list[float], list[float]]:
    """find_memories p50 (ms) with the rule and with a fixed floor, interleaved, on a store of
    its own whose embedder is the library's (its query cache on, as in a wrapper): each call's
    text is new, so the search embeds it and the rule's genericness finds it cached."""
    from headroom.memory.embedders.minilm import MiniLMEmbedder

    rule_ms: list[float] = []
    fixed_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-injection-cost-") as folder:
        live = MemoryStore(folder, embedder=MiniLMEmbedder(query_mode=query_mode), sync="off")
        for sc in stores:
            if not sc.user.startswith("maya-") or sc.kind == "xlarge":
                continue
            memories = [
                NewMemory(m.text, m.category, None, m.created_at) for m in store.get_all(sc.user)
            ]
            live.add_many(sc.user, memories, source="import", dedup=False)
            auto = Settings(user_id=sc.user, min_score=None)
            floor = Settings(user_id=sc.user, min_score=0.15)
            find_memories(live, auto, "warm-up")  # the calibration, untimed
            for i, case in enumerate(sc.cases[:calls]):
                for settings, sink, tag in ((auto, rule_ms, "a"), (floor, fixed_ms, "b")):
                    t0 = time.perf_counter()
                    find_memories(live, settings, f"{case.text} ({i}{tag})")
                    sink.append((time.perf_counter() - t0) * 1000)
        live.close()
    return rule_ms, fixed_ms


def _first_call(store: MemoryStore, user: str, text: str, query_mode: str) -> dict[str, float]:
    """ms of the first find_memories of a process (a new embedder, model already loaded) for
    ``user``'s memories, with the rule (generic messages embedded, user calibrated) and with
    a fixed floor."""
    from headroom.memory.embedders.minilm import MiniLMEmbedder

    out = {}
    memories = [NewMemory(m.text, m.category, None, m.created_at) for m in store.get_all(user)]
    for name, min_score in (("rule", None), ("fixed", 0.15)):
        embedder = MiniLMEmbedder(query_mode=query_mode)
        embedder.embed_query(["warm-up"])
        with tempfile.TemporaryDirectory(prefix="bench-injection-first-") as folder:
            fresh = MemoryStore(folder, embedder=embedder, sync="off")
            fresh.add_many(user, memories, source="import", dedup=False)
            t0 = time.perf_counter()
            find_memories(fresh, Settings(user_id=user, min_score=min_score), text)
            out[f"first_call_{name}_ms"] = (time.perf_counter() - t0) * 1000
            fresh.close()
    return out


def _growing_user(
    store: MemoryStore, stores: Sequence[StoreCase], query_mode: str, turns: int
) -> dict[str, float]:
    """A user gaining one memory per turn (maya's large store's memories, in order), a
    find_memories with the rule after each: with the background measured on the call when
    the count has moved by the refresh factor (no writer), and with the inline writer's
    :meth:`relevance.Calibration.refresh` after the write (untimed: off the critical path).
    Two users of one live store, turns interleaved, each query new to the embedder."""
    from headroom.memory.embedders.minilm import MiniLMEmbedder

    source = next(sc for sc in stores if sc.user == "maya-large")
    texts = [c.text for c in source.cases if not c.generic] or ["What should I do next?"]
    memories = [
        NewMemory(m.text, m.category, None, m.created_at) for m in store.get_all(source.user)
    ][:turns]
    timings: dict[str, list[float]] = {"call": [], "writer": []}
    with tempfile.TemporaryDirectory(prefix="bench-injection-grow-") as folder:
        embedder = MiniLMEmbedder(query_mode=query_mode, warmup=True)
        relevance.generic_vectors(embedder)  # a process's first call is measured elsewhere
        live = MemoryStore(folder, embedder=embedder, sync="off")
        cal = relevance.calibration()
        on_call = 0
        for i, memory in enumerate(memories):
            for variant in ("call", "writer"):
                user = f"grow-{variant}"
                live.add_many(user, [memory], source="import", dedup=False)
                if variant == "writer":
                    cal.refresh(live, user)
                before = cal.measured
                t0 = time.perf_counter()
                find_memories(
                    live, Settings(user_id=user), f"{texts[i % len(texts)]} ({i}{variant})"
                )
                timings[variant].append((time.perf_counter() - t0) * 1000)
                if variant == "call":
                    on_call += cal.measured - before
        live.close()
    return {
        "growing_turns": len(memories),
        "growing_calibrations_on_call": on_call,
        "growing_call_ms_sum": sum(timings["call"]),
        "growing_call_ms_max": max(timings["call"]),
        "growing_writer_ms_sum": sum(timings["writer"]),
        "growing_writer_ms_max": max(timings["writer"]),
        "growing_call_ms_p50": statistics.median(timings["call"]),
        "growing_writer_ms_p50": statistics.median(timings["writer"]),
    }


#: A fresh process's first find_memories (see :func:`_first_call_processes`).
_FIRST_CALL_CHILD = """
import json, sys, time
from headroom.memory.embedders.minilm import MiniLMEmbedder
from headroom.memory.protocol import relevance
from headroom.memory.protocol.pipeline import Settings, find_memories
from headroom.memory.store.store import MemoryStore
folder, user, text, mode, floor = sys.argv[1:6]
embedder = MiniLMEmbedder(query_mode=mode, warmup=True)
store = MemoryStore(folder, embedder=embedder, sync="off")
find_memories(store, Settings(user_id=user, min_score=0.15), "warm-up")  # the store's first search
settings = Settings(user_id=user, min_score=None if floor == "rule" else 0.15)
t0 = time.perf_counter()
find_memories(store, settings, text)
first = (time.perf_counter() - t0) * 1000
t0 = time.perf_counter()
relevance.background_of(store, user, store.backend.count(user))
calibration = (time.perf_counter() - t0) * 1000
store.close()
print(json.dumps({"first_ms": first, "calibration_ms": calibration}))
"""


def _first_call_processes(
    store: MemoryStore, user: str, text: str, query_mode: str, runs: int
) -> dict[str, float]:
    """A fresh process's first find_memories for ``user`` (model loaded, the store searched
    once with another text, so what is timed is what the rule adds): with the rule and no
    bank of the generic messages on disk (they are embedded, as before the bank existed; each
    run has a new empty model cache), with the rule and the bank on disk, and with a fixed
    floor; ``runs`` of each, interleaved; medians. The calibration of the user (probes
    cached), timed again after the first call, is the part the bank leaves."""
    from headroom.memory.embedders.minilm import MiniLMEmbedder
    from headroom.memory.embedders.resolve import resolve

    times: dict[str, list[float]] = {"no_bank": [], "bank": [], "fixed": [], "calibration": []}
    memories = [NewMemory(m.text, m.category, None, m.created_at) for m in store.get_all(user)]
    with tempfile.TemporaryDirectory(prefix="bench-injection-process-") as folder:
        db = Path(folder) / "store"
        built = MemoryStore(db, embedder=MiniLMEmbedder(query_mode=query_mode), sync="off")
        built.add_many(user, memories, source="import", dedup=False)
        built.close()
        env = dict(os.environ, HEADROOM_MODEL_PATH=str(resolve().folder))
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])])
        kept_cache = Path(folder) / "kept-cache"
        for run in range(runs):
            for kind in ("no_bank", "bank", "fixed"):
                cache = Path(folder) / f"cache-{run}" if kind == "no_bank" else kept_cache
                if kind == "bank" and not list(kept_cache.glob("**/bank-generic-*.bin")):
                    _child(env, kept_cache, db, user, text, query_mode, "rule")  # writes it
                floor = "fixed" if kind == "fixed" else "rule"
                out = _child(env, cache, db, user, text, query_mode, floor)
                times[kind].append(out["first_ms"])
                if kind == "bank":
                    times["calibration"].append(out["calibration_ms"])
    return {
        "process_first_call_rule_no_bank_ms_p50": statistics.median(times["no_bank"]),
        "process_first_call_rule_bank_ms_p50": statistics.median(times["bank"]),
        "process_first_call_fixed_ms_p50": statistics.median(times["fixed"]),
        "process_calibration_ms_p50": statistics.median(times["calibration"]),
        "process_runs": runs,
    }


def _child(
    env: dict[str, str], cache: Path, db: Path, user: str, text: str, mode: str, floor: str
) -> dict[str, float]:
    """Run :data:`_FIRST_CALL_CHILD` with ``cache`` as its model cache; its JSON line."""
    args = ["-c", _FIRST_CALL_CHILD, str(db), user, text, mode, floor]
    return child_json(args, dict(env, XDG_CACHE_HOME=str(cache)), timeout=300)


def _cost(
    store: MemoryStore,
    stores: Sequence[StoreCase],
    calls: int,
    embedder: SplitEmbedder,
    query_mode: str,
    process_runs: int,
) -> dict[str, float]:
    """What the default rule costs: a calibration per user with the probes embedded live and
    with their vectors cached (as the embedder's query cache holds them after the first); the
    per-call check (:func:`relevance.relevant` with the background and the query's vector
    cached: the count, the genericness, the selection); embedding the generic messages (once
    per process and embedder); :func:`_critical_path`; :func:`_first_call`;
    :func:`_first_call_processes`; :func:`_growing_user`."""
    cold: list[float] = []
    warm: list[float] = []
    check_us: list[float] = []
    for sc in stores:
        with embedder.bypass():
            t0 = time.perf_counter()
            relevance.background_of(store, sc.user, sc.count)
            cold.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        relevance.background_of(store, sc.user, sc.count)
        warm.append((time.perf_counter() - t0) * 1000)
        relevance.relevant(store, sc.user, sc.cases[0].text, sc.cases[0].results)
        for case in sc.cases[:calls]:
            t0 = time.perf_counter()
            relevance.relevant(store, sc.user, case.text, case.results)
            check_us.append((time.perf_counter() - t0) * 1e6)
    with embedder.bypass():
        t0 = time.perf_counter()
        embed_queries(embedder, list(relevance.GENERIC))
        generic_ms = (time.perf_counter() - t0) * 1000
    rule_ms, fixed_ms = _critical_path(store, stores, calls, query_mode)
    question = "What database should I use for my new project?"
    first = _first_call(store, "maya-small", question, query_mode)
    processes = _first_call_processes(store, "maya-small", question, query_mode, process_runs)
    growing = _growing_user(store, stores, query_mode, 120)
    return {
        **first,
        **processes,
        **growing,
        "calibration_cold_ms_p50": statistics.median(cold),
        "calibration_cold_ms_max": max(cold),
        "calibration_warm_ms_p50": statistics.median(warm),
        "calibration_warm_ms_max": max(warm),
        "rule_check_us_p50": statistics.median(check_us),
        "generic_messages_embedding_ms": generic_ms,
        "find_memories_rule_ms_p50": statistics.median(rule_ms),
        "find_memories_fixed_ms_p50": statistics.median(fixed_ms),
    }


def main(argv: list[str]) -> int:
    """Run the suite; print one table per store kind; write bench/results/injection.json."""
    ap = argparse.ArgumentParser(prog="python -m bench injection", description=__doc__)
    ap.add_argument("--cost-calls", type=int, default=40, help="timed calls per store")
    ap.add_argument(
        "--process-runs", type=int, default=5, help="fresh processes per first-call variant"
    )
    ap.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=DEFAULT_QUERY_MODE,
        help=f"how MiniLM embeds search queries (default {DEFAULT_QUERY_MODE}, the library's)",
    )
    args = ap.parse_args(argv)
    info = machine_info()
    print(
        f"injection suite: {info['cpu_model']}, {info['usable_cores']} usable cores; "
        f"queries embedded in {args.query_mode}"
    )
    generic = json.loads((DATA / "generic.json").read_text(encoding="utf-8"))
    generic = {half: generic[half] for half in ("dev", "heldout")}
    inner = load_embedder(args.query_mode)
    embedder = SplitEmbedder(CachedEmbedder(inner), CachedEmbedder(QueryPath(inner)))
    payload: dict[str, Any] = {"machine": info, "query_mode": args.query_mode, "figures": {}}
    with tempfile.TemporaryDirectory(prefix="bench-injection-") as folder, CpuWatch() as watch:
        store = MemoryStore(folder, embedder=embedder, sync="off")
        stores = build(store, generic)
        embedder.save()
        for kind, splits in (
            ("small", ("dev", "heldout")),
            ("large", ("dev", "heldout")),
            ("xlarge", ("dev", "heldout")),
            ("locomo", ("dev", "heldout")),
        ):
            sizes = [sc.count for sc in stores if sc.kind == kind]
            print(f"\n{kind} stores ({len(sizes)} users, {min(sizes)}-{max(sizes)} memories)")
            rows = []
            for name, rule in RULES.items():
                cells: list[object] = [name]
                for split in splits:
                    fig = evaluate(stores, rule, kind, split)
                    payload["figures"][f"{kind}/{split}/{name}"] = fig
                    cells += [f"{v:.3f}" for v in fig.values()]
                rows.append(cells)
            cols = ["generic", "evidence"] if kind == "locomo" else ["generic", "recall", "prec"]
            if kind == "locomo":
                headers = ["rule", "generic dev", "evidence", "generic held-out", "evidence"]
            else:
                headers = ["rule"] + [f"{c} {s}" for s in splits for c in cols]
            print(format_table(headers, rows))
        cost = _cost(store, stores, args.cost_calls, embedder, args.query_mode, args.process_runs)
        store.close()
    payload["cost"] = cost
    payload["cpu"] = dataclasses.asdict(watch.report)
    print(
        f"\ncost: calibration per user p50 {cost['calibration_cold_ms_p50']:.1f} ms with the "
        f"probes embedded (max {cost['calibration_cold_ms_max']:.1f}), "
        f"{cost['calibration_warm_ms_p50']:.1f} ms with their vectors cached (max "
        f"{cost['calibration_warm_ms_max']:.1f}); per-call check p50 "
        f"{cost['rule_check_us_p50']:.1f} us; the generic messages embedded once per process in "
        f"{cost['generic_messages_embedding_ms']:.0f} ms; find_memories p50 (query embedded "
        f"live, maya's small and large stores) with the "
        f"rule {cost['find_memories_rule_ms_p50']:.2f} ms, with a fixed floor "
        f"{cost['find_memories_fixed_ms_p50']:.2f} ms; a process's first call (model loaded) "
        f"{cost['first_call_rule_ms']:.0f} ms with the rule, {cost['first_call_fixed_ms']:.0f} "
        "ms with a fixed floor"
    )
    print(
        f"a fresh process's first call (p50 of {cost['process_runs']}, model loaded, store "
        f"searched once): rule {cost['process_first_call_rule_no_bank_ms_p50']:.1f} ms without "
        f"the generic messages' bank on disk, {cost['process_first_call_rule_bank_ms_p50']:.1f}"
        f" ms with it, fixed floor {cost['process_first_call_fixed_ms_p50']:.1f} ms; of which "
        f"the user's calibration {cost['process_calibration_ms_p50']:.1f} ms"
    )
    print(
        f"a user growing by one memory per call ({cost['growing_turns']} calls): find_memories "
        f"{cost['growing_call_ms_sum']:.0f} ms in all (max {cost['growing_call_ms_max']:.1f}, "
        f"p50 {cost['growing_call_ms_p50']:.2f}) with the background measured on "
        f"the call ({cost['growing_calibrations_on_call']:.0f} times), "
        f"{cost['growing_writer_ms_sum']:.0f} ms (max {cost['growing_writer_ms_max']:.1f}, p50 "
        f"{cost['growing_writer_ms_p50']:.2f}) with the writer measuring it after each write"
    )
    share = watch.report.others_share
    print(f"other processes used {share:.0%} of the CPU" if share is not None else "")
    path = write_json("injection", payload)
    print(f"wrote {path}")
    return 0
