"""The ``wrapper`` suite: what ``with_fast_memory`` adds to a chat call (issue 4's benchmark).

``python -m bench wrapper [--quick] [--sizes 100,10000,100000] [--calls N] [--no-anchor]``

Every call goes through the real openai SDK over real HTTP to a scripted OpenAI-compatible
endpoint on 127.0.0.1 (:class:`BenchLLM`, built on ``headroom.memory.cli.scripted_llm``) that
answers at once with about 60 words and a ``<memory>`` block of 1, 2 or 3 new memories (in
turn), written in the format the request's instruction asks for. Queries are distinct real
sentences (no hit in the embedder's cache); the block's memories are distinct real sentences
too. Before each size the user gets ``size`` memories through ``MemoryStore.add_many`` with
the real MiniLM vectors of real sentences (:mod:`bench.corpus`, served from its cache by
:class:`CorpusEmbedder`); an index the store builds for a large user is built then, not
during the calls.

Figures, per size (milliseconds, p50/p99, one onnxruntime thread unless ``--threads``):
- ``critical path``: wrapped call minus the bare call of the same request, measured
  interleaved (the order alternates call by call): inject + instruct + parse, what the caller
  waits for beyond the call itself.
- its parts, timed on the pipeline functions directly (``headroom.memory.protocol.pipeline``):
  ``query embedding`` (``embed_queries``: what the search embeds a query with, the int8 graph
  by default), ``search`` (``store.search`` with that vector, memories read back),
  ``injection rendering`` (``build_injection``), ``parse`` (``parse_choice`` of an answer
  with its block); the dense-only search beside the hybrid one, with the query vector cached
  and with the embedding included, and their paired differences (``gap`` rows).
- ``baseline: one fp32 embedding``: ``store.embedder.embed`` of each call's query (the exact
  fp32 model, caches emptied first), timed interleaved with the calls; the critical path's
  p50 and p99 are printed as ratios to its p50 and p99 (issue 16: at most 1.0 at 10k).
- ``in call`` rows, timed inside the measured wrapped calls (not the warm-up) by proxies the
  suite passes in (:class:`TimedEmbedder` around its embedder, :class:`TimedStore` as the
  store the wrapper opens): the int8 query embedding on the caller's thread (the one that ran
  the model), the search (with its query embedding, and minus it), the writer's fp32
  ``embed`` per memory; beside them the same embeddings in tight loops right after the calls
  (``tight loop`` rows, caches emptied before each), and two differences of p50s
  (``unexplained``, ``outside the search``): what the timed parts leave of the critical path.
- ``store path``: ``client.flush()`` right after each call (the background writer embeds the
  block's memories and appends them durably: the log's default ``interval`` sync), by block
  size; and ``store.apply`` called directly with 1, 2 and 3 new memories.
- The anchor, headroom-ai 0.2.15's ``with_fast_memory`` on the same queries, blocks and
  memories in its own venv (:mod:`bench.wrapper_anchor`), and the ratio ours/theirs. It
  stores synchronously, so its critical path includes its store path.

``--backend postgres`` puts our store in PostgreSQL instead (a fresh database per size on the
``postgres`` suite's own server, TCP on 127.0.0.1, or ``--url``); the server's CPU is then
reported apart from other processes'.

Targets at 10k memories: critical path p50 < 6 ms and p99 < 15 ms, store path p50 < 10 ms for
3 memories (issue 4); critical path p50 at most one fp32 embedding of the same queries, and
the hybrid search at most 0.5 ms over the dense search (issue 16). Printed beside the figures
with pass/fail, with the CPU time other processes used while each part ran
(``bench.common.CpuWatch``). Results go to
``bench/results/wrapper.json`` (``wrapper-quick.json``) with a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import openai

from bench.bench_postgres import (
    Server,
    analyze,
    given_server,
    local_server,
    ready_indexes,
    tree_cpu_seconds,
)
from bench.common import (
    RESULTS_DIR,
    CpuReport,
    CpuWatch,
    format_table,
    machine_info,
    percentiles,
    plot_bars,
    write_json,
)
from bench.corpus import Corpus, CorpusEmbedder, load_corpus
from bench.locomo.anchors import anchor_python
from headroom.memory import with_fast_memory
from headroom.memory.cli.scripted_llm import ScriptedLLM
from headroom.memory.embedders import get_embedder
from headroom.memory.embedders.base import Embedder, embed_queries
from headroom.memory.errors import InvalidInputError, InvalidTextError
from headroom.memory.protocol.block import MEMORY_INSTRUCTION, MemoryOps, render_block
from headroom.memory.protocol.block import NewMemory as BlockMemory
from headroom.memory.protocol.injection import build_injection
from headroom.memory.protocol.pipeline import parse_choice
from headroom.memory.store.store import MemoryStore, NewMemory
from headroom.memory.types import Category, Memory, validate_text

Vectors = npt.NDArray[np.float32]

#: The benchmark's user (one user per store; other users do not change a user's search).
USER = "bench-user"
DEFAULT_SIZES = (100, 10_000, 100_000)
#: Targets of issue 4 at this many memories: critical p50 and p99, store path p50 (3 memories).
TARGET_SIZE = 10_000
TARGET_CRITICAL_P50_MS = 6.0
TARGET_CRITICAL_P99_MS = 15.0
TARGET_STORE_P50_MS = 10.0
#: Issue 16 at the same size: critical path p50 over one fp32 embedding's p50 (at most), and
#: the hybrid search's p50 over the dense search's (ms, at most).
TARGET_CRITICAL_FP32_RATIO = 1.0
TARGET_HYBRID_GAP_MS = 0.5
#: The baseline row: one fp32 embedding of each call's query, timed with the calls.
FP32_BASELINE = "baseline: one fp32 embedding (the calls' queries)"
CRITICAL = "critical path (wrapped - bare)"
GAP_CACHED = "gap: hybrid - dense search, query vector cached (paired)"
GAP_EMBEDDED = "gap: hybrid - dense search, embedding included (paired)"
#: Timed inside the wrapped calls (:class:`TimedEmbedder`, :class:`TimedStore`) while
#: :func:`measure_calls` runs, and the same embeddings in tight loops right after the calls.
IN_CALL_QUERY = "in call: query embedding (int8, caller's thread)"
IN_CALL_SEARCH = "in call: search (its query embedding included)"
IN_CALL_SEARCH_REST = "in call: search minus its query embedding (paired)"
IN_CALL_STORE = "in call: store embedding fp32 per memory (writer thread)"
TIGHT_QUERY = "tight loop: query embedding (int8, the calls' queries, caches emptied)"
TIGHT_STORE = "tight loop: store embedding fp32 per memory (the blocks, caches emptied)"
#: Derived rows: differences of medians (p50s), not distributions (no n, no p99).
UNEXPLAINED = (
    "unexplained: critical - (in-call query embedding + part: search + rendering + parse)"
    ", diff of p50s"
)
OUTSIDE_SEARCH = "outside the search: critical - (in-call search + rendering + parse), diff of p50s"
#: In-call p50 over tight-loop p50 of the same embeddings (cold caches and all).
COLD_QUERY = "query embedding, in call / tight loop (p50)"
COLD_STORE = "store embedding per memory, in call / tight loop (p50)"
#: Words of a block's memory (a memory is one short sentence).
FACT_WORDS = (6, 30)
FACT_MAX_CHARS = 200
CATEGORIES: tuple[Category, ...] = ("preference", "fact", "context")
#: Pre-fill batch: one add_many (one embed call and one durable append) per batch.
PREFILL_BATCH = 5_000
#: What the scripted model says before its block: about 60 words.
ANSWER = (
    "Here is a short answer to your question. The usual approach is to start with the "
    "simplest thing that works, measure it under a realistic load, and only then decide "
    "whether the extra complexity pays for itself. Keep the configuration in one place, write "
    "a test for the behaviour you rely on, and document the trade-off you chose so that the "
    "next reader understands why."
)
SYSTEM_PROMPT = "You are a helpful assistant."


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One run: sizes, calls per size, warm-up calls, the anchor's budget, where results go."""

    sizes: tuple[int, ...]
    calls: int
    warmup: int
    parts: int
    applies: int
    anchor: bool
    anchor_budget_s: float
    anchor_min_calls: int
    seed: int
    name: str
    results_dir: Path
    threads: int = 1
    #: Where our store lives: "local" (a store directory) or "postgres" (a fresh database
    #: per size on the postgres suite's own server, or ``url``).
    backend: str = "local"
    url: str | None = None


def parse_args(argv: Sequence[str]) -> Config:
    """The run's configuration from the command line; InvalidInputError for bad values."""
    parser = argparse.ArgumentParser(
        prog="python -m bench wrapper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 10000, 40 calls")
    parser.add_argument("--sizes", help="comma-separated memories per user")
    parser.add_argument("--calls", type=int, help="measured calls per size (default 200)")
    parser.add_argument("--no-anchor", action="store_true", help="skip headroom-ai 0.2.15")
    parser.add_argument(
        "--anchor-budget", type=float, default=45.0, help="seconds of anchor calls per size"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime threads of our embedder (default 1)"
    )
    parser.add_argument(
        "--backend",
        choices=("local", "postgres"),
        default="local",
        help="our store: a directory (default) or PostgreSQL (a local server, or --url)",
    )
    parser.add_argument("--url", help="with --backend postgres: a PostgreSQL URL of yours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args(list(argv))
    quick = bool(args.quick)
    if args.url and args.backend != "postgres":
        raise InvalidInputError("--url needs --backend postgres")
    try:
        sizes = (
            tuple(int(v) for v in args.sizes.split(","))
            if args.sizes
            else ((100, 10_000) if quick else DEFAULT_SIZES)
        )
    except ValueError:
        raise InvalidInputError(f"--sizes takes integers; got {args.sizes!r}") from None
    calls = args.calls if args.calls is not None else (40 if quick else 200)
    if calls < 2 or any(s < 1 for s in sizes) or args.threads < 1:
        raise InvalidInputError("--calls must be >= 2, every size >= 1 and --threads >= 1")
    return Config(
        sizes=sizes,
        calls=calls,
        warmup=3,
        parts=max(10, calls),
        applies=max(10, calls),  # one fresh block per round of parts
        anchor=not args.no_anchor,
        anchor_budget_s=float(args.anchor_budget),
        anchor_min_calls=min(calls, 20),
        seed=int(args.seed),
        name=("wrapper-quick" if quick else "wrapper")
        + (f"-{args.threads}threads" if args.threads != 1 else "")
        + ("-postgres" if args.backend == "postgres" else ""),
        results_dir=Path(args.results),
        threads=int(args.threads),
        backend=args.backend,
        url=args.url,
    )


# --- the workload --------------------------------------------------------------------------------


Block = tuple[tuple[str, Category], ...]  # (text, category) per memory of one block


@dataclass(frozen=True)
class SizeScript:
    """Distinct sentences for one size: queries of the calls and of the parts, and blocks."""

    warmup: tuple[str, ...]
    warmup_blocks: tuple[Block, ...]
    calls: tuple[str, ...]
    blocks: tuple[Block, ...]  # blocks[i] is the block of calls[i]
    part_queries: tuple[str, ...]
    apply_blocks: tuple[Block, ...]  # 1, 2, 3 memories in turn


@dataclass(frozen=True)
class Workload:
    """The memories every size draws from (size n uses the first n) and one script per size."""

    memories: tuple[str, ...]
    vectors: Vectors
    model_id: str
    scripts: Mapping[int, SizeScript]

    def script_blocks(self) -> dict[str, Block]:
        """Query -> the block the scripted model answers it with (every size, warm-up too)."""
        out: dict[str, Block] = {}
        for script in self.scripts.values():
            out.update(zip(script.calls, script.blocks, strict=True))
            out.update(zip(script.warmup, script.warmup_blocks, strict=True))
        return out


def is_fact(sentence: str) -> bool:
    """True for a sentence short enough to be one memory (6-30 words, at most 200 chars)."""
    return FACT_WORDS[0] <= len(sentence.split()) <= FACT_WORDS[1] and len(sentence) <= (
        FACT_MAX_CHARS
    )


def is_memory_text(sentence: str) -> bool:
    """True for a sentence the store takes as a memory's text (a few docstring sentences hold
    NUL characters, which it refuses)."""
    try:
        validate_text(sentence)
    except InvalidTextError:
        return False
    return True


def _blocks(facts: Iterator[str], count: int, offset: int = 0) -> tuple[Block, ...]:
    """``count`` blocks of 1, 2, 3, 1, ... memories, categories in turn."""
    out: list[Block] = []
    for i in range(count):
        n = (i + offset) % 3 + 1
        out.append(tuple((next(facts), CATEGORIES[(i + j) % 3]) for j in range(n)))
    return tuple(out)


def needed_sentences(cfg: Config) -> int:
    """Corpus sentences a run needs: the largest user plus every size's held-out sentences.

    Block memories are drawn from held-out sentences that pass :func:`is_fact` (about 3 in 4
    docstring sentences do), so the count leaves room for twice as many candidates.
    """
    queries = cfg.warmup + cfg.calls + cfg.parts
    facts = 2 * (cfg.warmup + cfg.calls + cfg.applies)
    return max(cfg.sizes) + len(cfg.sizes) * (queries + facts * 3 // 2)


def build_workload(cfg: Config, corpus: Corpus) -> Workload:
    """Split ``corpus`` (seeded) into held-out scripts per size and the memories to pre-fill.

    Raises InvalidInputError when the corpus is too small for the run.
    """
    order = np.random.default_rng(cfg.seed).permutation(len(corpus)).tolist()
    order = [i for i in order if is_memory_text(corpus.sentences[i])]
    held_out = (len(order) - max(cfg.sizes)) if len(order) > max(cfg.sizes) else 0
    pool = iter(corpus.sentences[i] for i in order[:held_out])
    memory_rows = order[held_out : held_out + max(cfg.sizes)]
    facts = (s for s in pool if is_fact(s))

    def take(n: int, source: Iterator[str]) -> tuple[str, ...]:
        got = tuple(s for _, s in zip(range(n), source, strict=False))
        if len(got) < n:
            raise InvalidInputError(
                f"the corpus of {len(corpus)} sentences is too small for this run "
                f"(build a larger one: python -m bench.corpus --size {needed_sentences(cfg)})"
            )
        return got

    scripts: dict[int, SizeScript] = {}
    for size in cfg.sizes:
        queries = take(cfg.warmup + cfg.calls + cfg.parts, pool)
        warmup_facts = iter(take(2 * cfg.warmup, facts))
        call_facts = iter(take(2 * cfg.calls, facts))
        apply_facts = iter(take(2 * cfg.applies, facts))
        scripts[size] = SizeScript(
            warmup=queries[: cfg.warmup],
            warmup_blocks=_blocks(warmup_facts, cfg.warmup),
            calls=queries[cfg.warmup : cfg.warmup + cfg.calls],
            blocks=_blocks(call_facts, cfg.calls),
            part_queries=queries[cfg.warmup + cfg.calls :],
            apply_blocks=_blocks(apply_facts, cfg.applies),
        )
    if len(memory_rows) < max(cfg.sizes):
        raise InvalidInputError(f"the corpus has no room for {max(cfg.sizes)} memories")
    rows = np.asarray(memory_rows, dtype=np.int64)
    return Workload(
        memories=tuple(corpus.sentences[i] for i in memory_rows),
        vectors=np.ascontiguousarray(corpus.vectors[rows], dtype=np.float32),
        model_id=corpus.model_id,
        scripts=scripts,
    )


# --- the scripted endpoint -----------------------------------------------------------------------


def user_query(messages: Sequence[Mapping[str, Any]]) -> str:
    """The caller's own text of the last user message.

    headroom-ai puts its ``<context>`` in front of the user's text, separated by a blank line;
    the query is what follows the last blank line.
    """
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"]).rsplit("\n\n", 1)[-1].strip()
    return ""


def asks_our_format(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when the request carries our memory instruction (else: the seed-era format)."""
    return any(
        m.get("role") == "system" and MEMORY_INSTRUCTION in str(m.get("content", ""))
        for m in messages
    )


def answer_text(block: Block, ours: bool) -> str:
    """The scripted answer: :data:`ANSWER` and the block in the format the caller asked for."""
    if ours:
        ops = MemoryOps(add=tuple(BlockMemory(text, cat) for text, cat in block))
        return f"{ANSWER}\n\n{render_block(ops)}"
    body = {"memories": [{"content": text, "category": cat} for text, cat in block]}
    return f"{ANSWER}\n\n<memory>{json.dumps(body)}</memory>"


@dataclass
class BenchLLM(ScriptedLLM):
    """The scripted endpoint answering each query with its block (empty when unknown).

    It does not keep the request bodies (``requests`` stays empty): a long run would grow.
    """

    blocks: Mapping[str, Block] = field(default_factory=dict)

    def reply(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """About 60 words and the query's block, in the format the instruction asks for."""
        self.requests.clear()
        block = self.blocks.get(user_query(messages), ())
        return answer_text(block, asks_our_format(messages))


# --- pre-filling a store -------------------------------------------------------------------------


def prefill(
    path: Path | str, texts: Sequence[str], vectors: Vectors, model_id: str
) -> dict[str, float]:
    """Give :data:`USER` the memories ``texts`` in a new store at ``path`` (a directory or a
    PostgreSQL URL); close it.

    Goes through ``MemoryStore.add_many`` (no dedup: corpus sentences are distinct) in
    batches, then runs one search so an index the engine keeps for a large user is built (and
    snapshotted at close) before anything is timed. Returns the seconds of each step.
    """
    embedder = CorpusEmbedder(texts, vectors, model_id)
    store = MemoryStore(path, embedder=embedder)
    try:
        t0 = time.perf_counter()
        for start in range(0, len(texts), PREFILL_BATCH):
            batch = [NewMemory(t) for t in texts[start : start + PREFILL_BATCH]]
            store.add_many(USER, batch, source="import", dedup=False)
        t1 = time.perf_counter()
        store.search(USER, vectors[0], top_k=5)
        t2 = time.perf_counter()
        count = store.backend.count(USER)
    finally:
        store.close()
    if count != len(texts):
        raise InvalidInputError(f"pre-fill stored {count} memories; expected {len(texts)}")
    return {"add_many_s": t1 - t0, "first_search_s": t2 - t1, "close_s": time.perf_counter() - t2}


# --- measuring ours ------------------------------------------------------------------------------


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _request(query: str) -> dict[str, Any]:
    return {
        "model": "bench-llm",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": query},
        ],
    }


@dataclass
class Samples:
    """Per-call times (ms) of one size, by figure name."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, ms: float) -> None:
        self.values.setdefault(name, []).append(ms)

    def stats(self) -> dict[str, dict[str, float]]:
        """``{name: {"n", "p50", "p99"}}`` of every figure with samples."""
        return {
            name: {"n": float(len(v)), **percentiles(v, (50, 99))}
            for name, v in self.values.items()
            if v
        }


@dataclass
class OursResult:
    """Everything measured for our wrapper at one size."""

    size: int
    prefill: dict[str, float]
    stats: dict[str, dict[str, float]]
    samples: dict[str, list[float]]
    cpu: dict[str, CpuReport]
    checks: dict[str, Any]
    #: :data:`UNEXPLAINED` and :data:`OUTSIDE_SEARCH` (ms), :data:`COLD_QUERY` and
    #: :data:`COLD_STORE` (ratios): figures derived from the medians of ``stats``.
    derived: dict[str, float] = field(default_factory=dict)


def _forget_vectors(embedder: Any) -> None:
    """Empty the embedder's vector caches (``embed``'s and ``embed_query``'s), where it has
    them: the next embedding of any text runs the model."""
    for name in ("cache", "query_cache"):
        cache = getattr(embedder, name, None)
        if cache is not None:
            cache.clear()


def time_fp32_embedding(embedder: Any, query: str) -> float:
    """Milliseconds of one fp32 embedding of ``query`` (``embedder.embed``, caches emptied)."""
    _forget_vectors(embedder)
    t0 = time.perf_counter()
    embedder.embed([query])
    return _ms(t0)


# --- timing inside the wrapped calls -------------------------------------------------------------


class EmbedCall(NamedTuple):
    """One embedding call seen by :class:`TimedEmbedder` while it was recording (a tuple:
    cheap to make inside the timed call)."""

    kind: str  # "embed" (fp32: what the store writes) or "embed_query"
    texts: tuple[str, ...]
    start: float  # time.perf_counter() at the call
    ms: float
    caller: bool  # on the measuring thread; else on another one (the background writer)
    cached: bool  # every text was in the cache the call reads: the model did not run


class TimedEmbedder:
    """A timing proxy for the suite's embedder: the public Embedder protocol by delegation.

    ``model_id``, ``dim`` and ``embed`` are its own, and ``embed_query`` where the wrapped
    embedder has one (else there is none, and ``embed_queries`` falls back to ``embed`` as it
    would on the bare embedder). Every other attribute is the wrapped embedder's
    (``__getattr__``): ``query_cache`` and ``cache`` (so ``query_cached`` and
    ``_forget_vectors`` see and empty the real caches), ``query_mode``, ``query_path``,
    ``threads``, ``vector_key``. Between :meth:`start` and :meth:`stop` each ``embed`` and
    ``embed_query`` call is appended to ``calls`` with its milliseconds, its batch and whether
    it ran on the thread that called :meth:`start`; otherwise a call costs one attribute test
    and one Python call more than on the bare embedder.

    One difference remains: it is not a ``MiniLMEmbedder``, so the relevance rule embeds its
    generic messages (once per embedder, during the warm-up) instead of reading the same
    vectors from the bank on disk (``embedders/query_bank.py``); the measured calls are alike.
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls: list[EmbedCall] = []
        self._recording = False
        self._caller = threading.get_ident()
        if getattr(inner, "embed_query", None) is not None:
            self.embed_query = self._embed_query

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not self._recording:
            return self.inner.embed(texts)
        return self._timed("embed", self.inner.embed, texts, "cache")

    def _embed_query(self, texts: Sequence[str]) -> Vectors:
        run: Callable[[Sequence[str]], Vectors] = self.inner.embed_query  # type: ignore[attr-defined]
        if not self._recording:
            return run(texts)
        return self._timed("embed_query", run, texts, "query_cache")

    def _timed(
        self, kind: str, run: Callable[[Sequence[str]], Vectors], texts: Sequence[str], cache: str
    ) -> Vectors:
        batch = tuple(texts)
        held = getattr(self.inner, cache, None)
        cached = held is not None and all(text in held for text in batch)
        t0 = time.perf_counter()
        vectors = run(texts)
        ms = _ms(t0)
        caller = threading.get_ident() == self._caller
        self.calls.append(EmbedCall(kind, batch, t0, ms, caller, cached))
        return vectors

    def start(self) -> None:
        """Record calls from now on; the calling thread is the caller's."""
        self._caller = threading.get_ident()
        self._recording = True

    def stop(self) -> None:
        self._recording = False

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class SearchCall(NamedTuple):
    """One ``search`` seen by :class:`TimedStore` while it was recording."""

    query: str | None  # None for a vector query
    start: float
    ms: float
    caller: bool


class TimedStore(MemoryStore):
    """A ``MemoryStore`` whose ``search`` (the library's own, through ``super()``) is timed
    between :meth:`start` and :meth:`stop`.

    The suite opens it with ``TimedStore.open(path, embedder=...)`` before wrapping: the
    wrapper's ``MemoryStore.open`` of the same path then returns this very store (one shared
    store per path and process, ``open``'s documented rule; :func:`measure_ours` checks it).
    Nothing of the library is patched.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.searches: list[SearchCall] = []
        self._recording = False
        self._caller = threading.get_ident()

    def search(self, *args: Any, **kwargs: Any) -> list[tuple[Memory, float]]:
        if not self._recording:
            return super().search(*args, **kwargs)
        query = args[1] if len(args) > 1 else kwargs.get("query")
        t0 = time.perf_counter()
        results = super().search(*args, **kwargs)
        ms = _ms(t0)
        text = query if isinstance(query, str) else None
        self.searches.append(SearchCall(text, t0, ms, threading.get_ident() == self._caller))
        return results

    def start(self) -> None:
        self._caller = threading.get_ident()
        self._recording = True

    def stop(self) -> None:
        self._recording = False


@dataclass
class InCallTimers:
    """The proxies of one size and what they saw, turned into rows call by call.

    :meth:`start` before a wrapped call, :meth:`stop` after its ``flush()``: everything
    recorded in between belongs to that call (the writer has finished its block by then).
    """

    embedder: TimedEmbedder
    store: TimedStore
    counts: dict[str, int] = field(default_factory=dict)
    _calls_from: int = 0
    _searches_from: int = 0

    def start(self) -> None:
        self._calls_from = len(self.embedder.calls)
        self._searches_from = len(self.store.searches)
        self.embedder.start()
        self.store.start()

    def stop(self, query: str, samples: Samples) -> None:
        """Stop recording; add the call's in-call rows for ``query`` and count what ran.

        :data:`IN_CALL_QUERY`: the caller's-thread ``embed_query`` of the call's query that
        ran the model (a later one answered from the cache, e.g. the relevance rule's, is
        counted, not timed); :data:`IN_CALL_SEARCH`: the caller's search with the query's
        text, and minus the query embedding that ran inside it; :data:`IN_CALL_STORE`: each
        ``embed`` on another thread (the writer), its ms over its batch size.
        """
        self.embedder.stop()
        self.store.stop()
        calls = self.embedder.calls[self._calls_from :]
        searches = self.store.searches[self._searches_from :]
        own = [c for c in calls if c.caller and c.kind == "embed_query" and c.texts == (query,)]
        ran = [c for c in own if not c.cached]
        if ran:
            samples.add(IN_CALL_QUERY, sum(c.ms for c in ran))
        writer = [c for c in calls if not c.caller and c.kind == "embed" and c.texts]
        for c in writer:
            samples.add(IN_CALL_STORE, c.ms / len(c.texts))
        search = next((s for s in searches if s.caller and s.query == query), None)
        if search is not None:
            end = search.start + search.ms / 1000.0
            inside = sum(c.ms for c in ran if search.start <= c.start <= end)
            samples.add(IN_CALL_SEARCH, search.ms)
            samples.add(IN_CALL_SEARCH_REST, search.ms - inside)
        others = [c for c in calls if c not in own and c not in writer]
        for key, n in (
            ("calls", 1),
            ("query embeddings of its query", len(own)),
            ("of which ran the model", len(ran)),
            ("searches of its query", int(search is not None)),
            ("other searches", len(searches) - int(search is not None)),
            ("writer fp32 embeddings", len(writer)),
            ("writer fp32 memories", sum(len(c.texts) for c in writer)),
            ("other embeddings, caller thread", sum(c.caller for c in others)),
            ("other embeddings, other threads", sum(not c.caller for c in others)),
        ):
            self.counts[key] = self.counts.get(key, 0) + n


def measure_tight_loops(embedder: Any, script: SizeScript, samples: Samples) -> None:
    """The in-call embeddings again, right after the calls, in tight loops on ``embedder``
    (the bare one), caches emptied before each: each call's query with ``embed_queries``
    (:data:`TIGHT_QUERY`), then each call's block with ``embed`` (:data:`TIGHT_STORE`, ms
    over the block's size): the same texts and batches as in the calls."""
    for query in script.calls:
        _forget_vectors(embedder)
        t0 = time.perf_counter()
        embed_queries(embedder, [query])
        samples.add(TIGHT_QUERY, _ms(t0))
    for block in script.blocks:
        texts = [text for text, _ in block]
        _forget_vectors(embedder)
        t0 = time.perf_counter()
        embedder.embed(texts)
        samples.add(TIGHT_STORE, _ms(t0) / len(texts))


def derived_figures(stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The derived figures of one size (a figure whose rows are missing is left out).

    :data:`UNEXPLAINED`: the critical path's p50 minus the p50s of the in-call query
    embedding, the hybrid search with the vector cached (``part: search``), the rendering
    and the parse; :data:`OUTSIDE_SEARCH`: the critical path's p50 minus the p50s of the
    in-call search (embedding included), the rendering and the parse. Both are differences
    of medians, not medians of differences. :data:`COLD_QUERY`, :data:`COLD_STORE`: in-call
    p50 over tight-loop p50 of the same embeddings.
    """

    def p50(*names: str) -> float | None:
        if not all(name in stats for name in names):
            return None
        return sum(stats[name]["p50"] for name in names)

    out: dict[str, float] = {}
    crit = p50(CRITICAL)
    rest = ("part: injection rendering", "part: parse")
    explained = p50(IN_CALL_QUERY, "part: search (hybrid, top 5)", *rest)
    if crit is not None and explained is not None:
        out[UNEXPLAINED] = crit - explained
    searched = p50(IN_CALL_SEARCH, *rest)
    if crit is not None and searched is not None:
        out[OUTSIDE_SEARCH] = crit - searched
    for key, in_call, tight in (
        (COLD_QUERY, IN_CALL_QUERY, TIGHT_QUERY),
        (COLD_STORE, IN_CALL_STORE, TIGHT_STORE),
    ):
        a, b = p50(in_call), p50(tight)
        if a is not None and b is not None and b > 0:
            out[key] = a / b
    return out


def measure_calls(
    wrapped: Any,
    bare: Any,
    embedder: Any,
    script: SizeScript,
    samples: Samples,
    timers: InCallTimers | None = None,
) -> dict[str, int]:
    """Interleaved wrapped and bare calls, ``flush()`` timed after each wrapped one, and the
    :data:`FP32_BASELINE` (one fp32 embedding of the same query with ``embedder``); the three
    take turns at going first. With ``timers``, each wrapped call and its flush are recorded
    from inside (the ``in call`` rows); the recording starts before the call's clock and is
    read after the flush's.

    Returns counts to check the run did what it claims: answers that still showed block text
    (must be 0) and the memories the blocks carried.
    """
    leaked = carried = 0
    turns = ("wrapped", "bare", "fp32")
    for i, (query, block) in enumerate(zip(script.calls, script.blocks, strict=True)):
        for turn in turns[i % 3 :] + turns[: i % 3]:
            if turn == "fp32":
                samples.add(FP32_BASELINE, time_fp32_embedding(embedder, query))
            elif turn == "wrapped":
                if timers is not None:
                    timers.start()
                t0 = time.perf_counter()
                response = wrapped.chat.completions.create(**_request(query))
                wrapped_ms = _ms(t0)
                t1 = time.perf_counter()
                wrapped.flush()
                flush_ms = _ms(t1)
                if timers is not None:
                    timers.stop(query, samples)
                samples.add("wrapped call", wrapped_ms)
                samples.add("store path: flush after the call", flush_ms)
                samples.add(f"store path: flush, block of {len(block)}", flush_ms)
                leaked += "<memory" in (response.choices[0].message.content or "")
                carried += len(block)
            else:
                t0 = time.perf_counter()
                bare.chat.completions.create(**_request(query))
                samples.add("bare call", _ms(t0))
    wrapped_ms_all = samples.values["wrapped call"][-len(script.calls) :]
    bare_ms_all = samples.values["bare call"][-len(script.calls) :]
    for w, b in zip(wrapped_ms_all, bare_ms_all, strict=True):
        samples.add(CRITICAL, w - b)
    return {"leaked_block_text": leaked, "memories_in_blocks": carried}


def measure_parts(store: MemoryStore, script: SizeScript, samples: Samples) -> None:
    """The store path and the critical path's parts, timed on the functions themselves.

    Each round mirrors one call of real traffic: ``store.apply`` of a fresh block (embed +
    durable append: the store path), then for a fresh query: the search the injection runs
    (``store.search`` with the text, nothing cached: it brings the user's indexes up to date
    with the write before it, embeds the query while the lexical side runs on the prefetch
    pool, then fuses), the rendering of the injection and the parse of an answer. Then its
    parts one by one: the query embedding alone (``embed_queries``, what the search runs, its
    cache emptied first) and the searches of :func:`time_searches`.
    """
    rounds = zip(script.part_queries, script.apply_blocks, script.blocks * 2, strict=False)
    for i, (query, fresh, block) in enumerate(rounds):
        adds = [NewMemory(text, cat) for text, cat in fresh]
        t0 = time.perf_counter()
        store.apply(USER, adds=adds)
        samples.add(f"store path: apply, {len(fresh)} memories", _ms(t0))
        t0 = time.perf_counter()
        results = store.search(USER, query, top_k=5, min_score=0.15)
        samples.add("part: embedding + search", _ms(t0))
        _forget_vectors(store.embedder)
        t0 = time.perf_counter()
        vector = embed_queries(store.embedder, [query])[0]
        samples.add("part: query embedding", _ms(t0))
        time_searches(store, query, vector, samples, hybrid_first=i % 2 == 0)
        t0 = time.perf_counter()
        context = build_injection(results, min_score=0.15, max_tokens=300, role="system")
        samples.add("part: injection rendering", _ms(t0))
        text = answer_text(block, ours=True)
        t0 = time.perf_counter()
        parse_choice(text, context.id_map)
        samples.add("part: parse", _ms(t0))


def time_searches(
    store: MemoryStore, query: str, vector: Vectors, samples: Samples, hybrid_first: bool
) -> None:
    """The hybrid search against the dense-only one (``hybrid=False``) on indexes already
    current, in two pairs: with ``vector`` (``query``'s, cached by the embedder) and with the
    embedding included (caches emptied first). Each pair runs in the order ``hybrid_first``
    says; the ``gap`` rows are each pair's difference, hybrid minus dense."""

    def hybrid() -> list[tuple[Memory, float]]:
        return store.search(USER, query, top_k=5, min_score=0.15)

    def dense() -> list[tuple[Memory, float]]:
        return store.search(USER, vector, top_k=5, min_score=0.15, hybrid=False)

    def embedded_hybrid() -> list[tuple[Memory, float]]:
        _forget_vectors(store.embedder)
        return hybrid()

    def embedded_dense() -> list[tuple[Memory, float]]:
        _forget_vectors(store.embedder)
        return store.search(USER, query, top_k=5, min_score=0.15, hybrid=False)

    pairs = (
        (
            "part: search (hybrid, top 5)",
            hybrid,
            "diag: dense-only search (hybrid=False)",
            dense,
            GAP_CACHED,
        ),
        (
            "diag: embedding + hybrid search, indexes current",
            embedded_hybrid,
            "diag: embedding + dense-only search",
            embedded_dense,
            GAP_EMBEDDED,
        ),
    )
    for hybrid_name, run_hybrid, dense_name, run_dense, gap_name in pairs:
        times: dict[str, float] = {}
        order = ((hybrid_name, run_hybrid), (dense_name, run_dense))
        for name, run in order if hybrid_first else order[::-1]:
            t0 = time.perf_counter()
            run()
            times[name] = _ms(t0)
            samples.add(name, times[name])
        samples.add(gap_name, times[hybrid_name] - times[dense_name])


def _mean_words(texts: Sequence[str]) -> float:
    return float(np.mean([len(t.split()) for t in texts])) if texts else 0.0


@contextmanager
def _watched(cpu: dict[str, CpuReport], name: str) -> Iterator[None]:
    with CpuWatch() as watch:
        yield
    cpu[name] = watch.report


@contextmanager
def _server_cpu(server: Server | None, out: dict[str, float | None], name: str) -> Iterator[None]:
    """CPU seconds the PostgreSQL server's processes used during the block (None: not ours)."""
    pid = server.pid if server is not None else None
    before = tree_cpu_seconds(pid) if pid else 0.0
    yield
    out[name] = tree_cpu_seconds(pid) - before if pid else None


def measure_ours(
    size: int,
    workload: Workload,
    base_url: str,
    folder: Path,
    cfg: Config,
    server: Server | None = None,
) -> OursResult:
    """Pre-fill a store with ``size`` memories, then time calls, parts and applies.

    The store is a directory under ``folder``, or with ``server`` a new PostgreSQL database
    of it (its server's CPU is then recorded in the checks, apart from other processes').
    """
    script = workload.scripts[size]
    path: Path | str = folder / f"ours-{size}"
    if server is not None:
        path = server.database(f"wrapper_{size}_{os.getpid()}")
    filled = prefill(path, workload.memories[:size], workload.vectors[:size], workload.model_id)
    if server is not None:
        filled.update(ready_postgres(str(path), int(workload.vectors.shape[1])))
    bare = openai.OpenAI(base_url=base_url, api_key="bench-no-key", max_retries=0)
    injected: list[int] = []
    embedder = get_embedder(threads=cfg.threads)
    proxy = TimedEmbedder(embedder)
    t0 = time.perf_counter()
    # Opened first, so that the wrapper's MemoryStore.open of this path gets this store.
    store = TimedStore.open(path, embedder=proxy)
    wrapped = with_fast_memory(
        bare,
        user_id=USER,
        db_path=path,
        observer=lambda event: injected.append(len(event.injected)),
        embedder=proxy,
    )
    filled["wrap_s"] = time.perf_counter() - t0
    samples = Samples()
    cpu: dict[str, CpuReport] = {}
    try:
        if not isinstance(store, TimedStore) or MemoryStore.open(path) is not store:
            raise RuntimeError(f"the wrapper does not use the suite's TimedStore at {path}")
        timers = InCallTimers(proxy, store)
        for query in script.warmup:  # model load, connection, index load: not measured
            wrapped.chat.completions.create(**_request(query))
            wrapped.flush()
            bare.chat.completions.create(**_request(query))
            time_fp32_embedding(embedder, query)
        server_cpu: dict[str, float | None] = {}
        with _watched(cpu, "calls"), _server_cpu(server, server_cpu, "calls"):
            checks: dict[str, Any] = measure_calls(wrapped, bare, embedder, script, samples, timers)
        with _watched(cpu, "tight loops"):
            measure_tight_loops(embedder, script, samples)
        with _watched(cpu, "parts"), _server_cpu(server, server_cpu, "parts"):
            measure_parts(store, script, samples)
        if server is not None:
            checks["backend"] = f"postgres ({server.transport})"
            checks["postgres_server_cpu_s"] = server_cpu
            # The server is another process: CpuWatch counted it among the others.
            for name, seconds in server_cpu.items():
                if seconds is not None and cpu[name].others_cpu_s is not None:
                    others = max(0.0, float(cpu[name].others_cpu_s or 0.0) - seconds)
                    share = others / (cpu[name].wall_s * len(os.sched_getaffinity(0)))
                    cpu[name] = CpuReport(cpu[name].wall_s, cpu[name].own_cpu_s, others, share)
        measured = injected[len(script.warmup) :][: len(script.calls)]
        checks["injected_per_call"] = float(np.mean(measured)) if measured else 0.0
        checks["memories_after"] = store.backend.count(USER)
        checks["query_words_mean"] = _mean_words(script.calls)
        checks["block_memory_words_mean"] = _mean_words([t for b in script.blocks for t, _ in b])
        checks["embedder_threads"] = getattr(store.embedder, "threads", None)
        checks["embedder_query_mode"] = getattr(store.embedder, "query_mode", None)
        checks["embedder_query_path"] = getattr(store.embedder, "query_path", None)
        checks["in_call"] = dict(timers.counts)
        checks["sync"] = store.sync
    finally:
        wrapped.flush()
        store.close()
    stats = samples.stats()
    return OursResult(
        size, filled, stats, samples.values, cpu, checks, derived=derived_figures(stats)
    )


# --- the anchor ----------------------------------------------------------------------------------


ANCHOR = "headroom-ai"
ANCHOR_DRIVER = Path(__file__).with_name("wrapper_anchor.py")


def _weights_folder() -> str:
    """The folder of the local MiniLM weights (what the anchor loads with sentence-transformers)."""
    from headroom.memory.embedders.resolve import resolve

    return str(resolve().folder)


def run_anchor(
    cfg: Config, workload: Workload, base_url: str, folder: Path
) -> tuple[dict[str, Any] | None, str | None, CpuReport | None]:
    """headroom-ai 0.2.15 on the same workload in its venv: ``(output, why_not, cpu)``.

    ``why_not`` says exactly why it did not run (no venv, failed, timed out); then the output
    is None.
    """
    python = anchor_python(ANCHOR)
    if python is None:
        return (
            None,
            f"no venv with {ANCHOR} 0.2.15 at bench/.venvs/{ANCHOR} (bench/README.md)",
            None,
        )
    memories_file = folder / "anchor-memories.json"
    vectors_file = folder / "anchor-vectors.npy"
    memories_file.write_text(json.dumps(list(workload.memories)))
    np.save(vectors_file, workload.vectors)
    job = {
        "model_path": _weights_folder(),
        "base_url": base_url,
        "user": USER,
        "memories_file": str(memories_file),
        "vectors_file": str(vectors_file),
        "sizes": [
            {
                "size": size,
                "warmup": list(s.warmup),
                "calls": list(s.calls),
                "part_queries": list(s.part_queries),
                "store_blocks": [list(map(list, b)) for b in s.apply_blocks],
                "budget_s": cfg.anchor_budget_s,
                "min_calls": cfg.anchor_min_calls,
            }
            for size, s in workload.scripts.items()
        ],
    }
    in_path, out_path = folder / "anchor-in.json", folder / "anchor-out.json"
    in_path.write_text(json.dumps(job))
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    timeout = 600.0 + len(cfg.sizes) * (cfg.anchor_budget_s * 3 + 120.0)
    with CpuWatch() as watch:
        try:
            proc = subprocess.run(
                [str(python), str(ANCHOR_DRIVER), str(in_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return None, f"{ANCHOR} did not finish within {timeout:.0f} s", None
    if proc.returncode != 0 or not out_path.is_file():
        tail = (proc.stderr or proc.stdout)[-1500:]
        return None, f"{ANCHOR} failed (exit {proc.returncode}):\n{tail}", watch.report
    output: dict[str, Any] = json.loads(out_path.read_text())
    return output, None, watch.report


def anchor_stats(size_out: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The anchor's per-call lists of one size as ``{name: {n, p50, p99}}``, in our names.

    Its ``FastMemoryStore.search`` (query embedding included) is ``part: embedding +
    search``; its wrapper's ``_store_memories`` (embed and commit one memory at a time) is
    ``store path: apply, n memories``.
    """
    samples = Samples()
    wrapped, bare = size_out["wrapped_ms"], size_out["bare_ms"]
    for w, b in zip(wrapped, bare, strict=False):
        samples.add(CRITICAL, w - b)
    samples.values["wrapped call"] = list(wrapped)
    samples.values["bare call"] = list(bare)
    samples.values["part: query embedding"] = list(size_out["embed_ms"])
    samples.values["part: embedding + search"] = list(size_out["search_ms"])
    samples.values["part: parse"] = list(size_out["parse_ms"])
    for n, values in size_out["store_ms"].items():
        samples.values[f"store path: apply, {n} memories"] = list(values)
    return samples.stats()


# --- report --------------------------------------------------------------------------------------


def _pass(value: float, limit: float) -> str:
    return f"{'pass' if value < limit else 'FAIL'} (< {limit:g})"


def issue16_figures(stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """One size's figures of issue 16: the critical path's p50 and p99 as ratios to the fp32
    baseline's p50 and p99 (same queries, same run), and the p50 of each ``gap`` row (ms).
    A figure whose rows are missing is left out."""
    out: dict[str, float] = {}
    crit, base = stats.get(CRITICAL), stats.get(FP32_BASELINE)
    if crit and base and base["p50"] > 0 and base["p99"] > 0:
        out["critical p50 / fp32 p50"] = crit["p50"] / base["p50"]
        out["critical p99 / fp32 p99"] = crit["p99"] / base["p99"]
    for name, key in ((GAP_CACHED, "gap ms, vector cached"), (GAP_EMBEDDED, "gap ms, embedded")):
        if name in stats:
            out[key] = stats[name]["p50"]
    return out


def targets(ours: Mapping[int, OursResult]) -> list[dict[str, Any]]:
    """The targets at :data:`TARGET_SIZE` (absent when that size did not run): issue 4's
    critical and store paths in ms (below the limit), issue 16's critical path over one fp32
    embedding (a ratio) and hybrid-dense gaps (ms), at most the limit."""
    result = ours.get(TARGET_SIZE)
    if result is None:
        return []
    crit = result.stats[CRITICAL]
    nan = {"p50": float("nan")}
    store = result.stats.get("store path: flush, block of 3", nan)
    apply3 = result.stats.get("store path: apply, 3 memories", nan)
    below = [
        ("critical path p50 (issue 4)", crit["p50"], TARGET_CRITICAL_P50_MS, "ms"),
        ("critical path p99 (issue 4)", crit["p99"], TARGET_CRITICAL_P99_MS, "ms"),
        ("store path p50, 3 memories (flush)", store["p50"], TARGET_STORE_P50_MS, "ms"),
        ("store path p50, 3 memories (apply)", apply3["p50"], TARGET_STORE_P50_MS, "ms"),
    ]
    figures = issue16_figures(result.stats)
    nan_value = float("nan")
    at_most = [
        (
            "critical path p50 / one fp32 embedding p50 (issue 16)",
            figures.get("critical p50 / fp32 p50", nan_value),
            TARGET_CRITICAL_FP32_RATIO,
            "x",
        ),
        (
            "hybrid - dense search p50, vector cached (issue 16)",
            figures.get("gap ms, vector cached", nan_value),
            TARGET_HYBRID_GAP_MS,
            "ms",
        ),
        (
            "hybrid - dense search p50, embedding included (issue 16)",
            figures.get("gap ms, embedded", nan_value),
            TARGET_HYBRID_GAP_MS,
            "ms",
        ),
    ]
    rows = [
        {"target": name, "value": v, "limit": lim, "unit": unit, "passed": bool(v < lim)}
        for name, v, lim, unit in below
    ]
    rows += [
        {"target": name, "value": v, "limit": lim, "unit": unit, "passed": bool(v <= lim)}
        for name, v, lim, unit in at_most
    ]
    return rows


def _others(report: CpuReport | None) -> str:
    if report is None or report.others_cpu_s is None:
        return "n/a"
    share = (
        f" ({report.others_share:.0%} of the machine)" if report.others_share is not None else ""
    )
    return f"{report.others_cpu_s:.1f} s{share}"


#: Row order of the tables: the critical path and its parts, then the store path.
ROW_ORDER = (
    CRITICAL,
    "wrapped call",
    "bare call",
    FP32_BASELINE,
    "part: query embedding",
    "part: search (hybrid, top 5)",
    "part: embedding + search",
    "part: injection rendering",
    "part: parse",
    IN_CALL_QUERY,
    TIGHT_QUERY,
    IN_CALL_SEARCH,
    IN_CALL_SEARCH_REST,
    IN_CALL_STORE,
    TIGHT_STORE,
    "store path: flush after the call",
    "store path: flush, block of 1",
    "store path: flush, block of 2",
    "store path: flush, block of 3",
    "store path: apply, 1 memories",
    "store path: apply, 2 memories",
    "store path: apply, 3 memories",
    "diag: dense-only search (hybrid=False)",
    GAP_CACHED,
    "diag: embedding + hybrid search, indexes current",
    "diag: embedding + dense-only search",
    GAP_EMBEDDED,
)


#: Where the derived rows (``OursResult.derived``, differences of p50s) go in the tables.
DERIVED_ROWS = (UNEXPLAINED, OUTSIDE_SEARCH)
_DISPLAY_ORDER = (
    *ROW_ORDER[: ROW_ORDER.index(TIGHT_STORE) + 1],
    *DERIVED_ROWS,
    *ROW_ORDER[ROW_ORDER.index(TIGHT_STORE) + 1 :],
)


def _row_order(name: str) -> int:
    return _DISPLAY_ORDER.index(name) if name in _DISPLAY_ORDER else len(_DISPLAY_ORDER)


def size_table(result: OursResult, anchor: Mapping[str, dict[str, float]] | None) -> str:
    """One size's figures, ours beside the anchor's and the ratios where both exist."""
    limits: dict[str, tuple[float | None, float | None]] = {}
    if result.size == TARGET_SIZE:
        limits = {
            CRITICAL: (TARGET_CRITICAL_P50_MS, TARGET_CRITICAL_P99_MS),
            "store path: flush, block of 3": (TARGET_STORE_P50_MS, None),
            "store path: apply, 3 memories": (TARGET_STORE_P50_MS, None),
        }
    rows: list[list[object]] = []
    derived = [name for name in DERIVED_ROWS if name in result.derived]
    for name in sorted([*result.stats, *derived], key=_row_order):
        if name in derived:  # a difference of p50s: no n, no p99
            rows.append([name, "", result.derived[name], ""] + [""] * 6)
            continue
        st = result.stats[name]
        theirs = (anchor or {}).get(name)
        p50_limit, p99_limit = limits.get(name, (None, None))
        target = ", ".join(
            f"{label} {_pass(st[label], lim)}"
            for label, lim in (("p50", p50_limit), ("p99", p99_limit))
            if lim is not None
        )
        row: list[object] = [name, int(st["n"]), st["p50"], st["p99"], target]
        if theirs:
            row += [int(theirs["n"]), theirs["p50"], theirs["p99"]]
            row += [_ratio(st["p50"], theirs["p50"]), _ratio(st["p99"], theirs["p99"])]
        rows.append(row + [""] * (10 - len(row)))
    headers = ["figure", "n", "p50 ms", "p99 ms", "target (issue 4)"]
    headers += ["theirs n", "theirs p50", "theirs p99", "ours/theirs p50", "p99"]
    return format_table(headers, rows)


def in_call_line(result: OursResult) -> str:
    """What the in-call rows rest on: the query path, what the proxies saw per call, and the
    factors of the same embeddings (in-call p50 over tight-loop p50)."""
    checks = result.checks
    counts: Mapping[str, int] = checks.get("in_call", {})
    calls = max(1, counts.get("calls", 0))

    def per_call(key: str) -> str:
        return f"{counts.get(key, 0) / calls:.2f}"

    factors = ", ".join(
        f"{label} x{result.derived[name]:.2f}"
        for name, label in ((COLD_QUERY, "query embedding"), (COLD_STORE, "store embedding"))
        if name in result.derived
    )
    return (
        f"in call: query_mode={checks.get('embedder_query_mode')} (runs "
        f"{checks.get('embedder_query_path')}); per wrapped call "
        f"{per_call('query embeddings of its query')} embed_query of its query on the caller's "
        f"thread ({per_call('of which ran the model')} ran the model), "
        f"{per_call('searches of its query')} search of it ({counts.get('other searches', 0)} "
        f"other searches in all), {per_call('writer fp32 embeddings')} fp32 embed on the writer "
        f"({counts.get('writer fp32 memories', 0)} memories in all); other embeddings: "
        f"{counts.get('other embeddings, caller thread', 0)} on the caller's thread, "
        f"{counts.get('other embeddings, other threads', 0)} on other threads. "
        + f"In call / tight loop, p50: {factors or 'n/a'}"
    )


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.3f}" if theirs > 0 else "n/a"


def report(
    cfg: Config,
    ours: Mapping[int, OursResult],
    anchor_out: dict[str, Any] | None,
    why_not: str | None,
    anchor_cpu: CpuReport | None,
) -> dict[str, Any]:
    """Print every table; return the JSON payload."""
    anchor_by_size: dict[int, dict[str, dict[str, float]]] = {}
    anchor_raw: dict[int, Mapping[str, Any]] = {}
    if anchor_out is not None:
        for entry in anchor_out["sizes"]:
            anchor_by_size[int(entry["size"])] = anchor_stats(entry)
            anchor_raw[int(entry["size"])] = entry
    for size, result in ours.items():
        print(
            f"\n== {size:,} memories: pre-fill {result.prefill['add_many_s']:.1f} s "
            f"(+ first search {result.prefill['first_search_s']:.1f} s); other processes used "
            f"{_others(result.cpu.get('calls'))} of CPU during the calls, "
            f"{_others(result.cpu.get('parts'))} during the parts"
        )
        if size in anchor_by_size:
            print("theirs = headroom-ai 0.2.15's with_fast_memory on the same calls")
        print(size_table(result, anchor_by_size.get(size)))
        checks = result.checks
        line = (
            f"checks: block text shown to the caller {checks['leaked_block_text']} times; "
            f"{checks['injected_per_call']:.2f} memories injected per call; "
            f"{checks['memories_in_blocks']} memories in blocks (mean "
            f"{checks['block_memory_words_mean']:.1f} words; queries "
            f"{checks['query_words_mean']:.1f}); user has "
            f"{checks['memories_after']:,} memories after the run "
            f"({checks.get('backend', 'local')}, sync={checks['sync']}, "
            f"onnxruntime threads={checks['embedder_threads']})"
        )
        if "postgres_server_cpu_s" in checks:
            line += "; postgres server CPU: " + ", ".join(
                f"{seconds:.1f} s during the {name}" if seconds is not None else f"n/a ({name})"
                for name, seconds in checks["postgres_server_cpu_s"].items()
            )
        if size in anchor_raw:
            raw = anchor_raw[size]
            line += (
                f"; anchor: {len(raw['wrapped_ms'])} calls, block text shown "
                f"{raw['leaked']} times, {raw['stored']:,} memories after, its store loaded "
                f"in {raw['load_s']:.1f} s"
            )
        print(line)
        print(in_call_line(result))
        figures = issue16_figures(result.stats)
        if figures:
            print("issue 16: " + "; ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    if anchor_out is not None:
        print(
            f"\nanchor: headroom-ai {anchor_out['version']} (torch {anchor_out['torch']}, one "
            f"thread) in its own venv; other processes used {_others(anchor_cpu)} of CPU "
            "during its run. Its critical path includes its store path (it stores before "
            "returning); ours stores on a background writer after the return."
        )
    else:
        print(f"\nanchor: not run: {why_not}")
    rows = targets(ours)
    if rows:
        print(f"\nTargets at {TARGET_SIZE:,} memories")
        print(
            format_table(
                ["target", "value", "limit", "unit", "result"],
                [
                    [
                        r["target"],
                        r["value"],
                        r["limit"],
                        r["unit"],
                        "pass" if r["passed"] else "FAIL",
                    ]
                    for r in rows
                ],
            )
        )
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "ours": {str(size): asdict(result) for size, result in ours.items()},
        "anchor": {
            "ran": anchor_out is not None,
            "why_not": why_not,
            "version": anchor_out["version"] if anchor_out else None,
            "cpu": anchor_cpu,
            "stats": {str(k): v for k, v in anchor_by_size.items()},
            "samples": {str(k): v for k, v in anchor_raw.items()},
        },
        "targets": rows,
        "issue16": {str(size): issue16_figures(r.stats) for size, r in ours.items()},
    }


def _plot(cfg: Config, payload: Mapping[str, Any]) -> Path | None:
    series: dict[str, dict[str, float]] = {"ours": {}, "headroom-ai 0.2.15": {}}
    name = CRITICAL
    for size, result in payload["ours"].items():
        series["ours"][f"{int(size):,}"] = result["stats"][name]["p50"]
    for size, stats in payload["anchor"]["stats"].items():
        series["headroom-ai 0.2.15"][f"{int(size):,}"] = stats[name]["p50"]
    return plot_bars(
        cfg.name,
        {k: v for k, v in series.items() if v},
        "critical path p50 (ms) by memories per user",
        "ms",
        cfg.results_dir,
    )


# --- entry point ---------------------------------------------------------------------------------


def ready_postgres(url: str, dim: int) -> dict[str, float]:
    """After a PostgreSQL pre-fill: ``ANALYZE`` (as autovacuum would soon after a bulk load)
    and, for a user of ``ann_threshold`` memories or more, their HNSW index built and valid
    (the backend starts building it as the user grows; it is used once valid). Seconds."""
    from headroom.memory.store.postgres import PostgresBackend

    out = {"analyze_s": analyze(url)}
    backend = PostgresBackend(url, pool_size=1)
    try:
        t0 = time.perf_counter()
        if backend.build_ann_index(USER):  # None: below the threshold, no index
            ready_indexes(url, backend, [USER], dim)
            out["hnsw_ready_s"] = time.perf_counter() - t0
    finally:
        backend.close()
    return out


@contextmanager
def _server(cfg: Config) -> Iterator[Server | None]:
    """The PostgreSQL server of a ``--backend postgres`` run (None for the local backend)."""
    if cfg.backend != "postgres":
        yield None
    elif cfg.url:
        with given_server(cfg.url) as server:
            yield server
    else:
        with local_server() as server:
            yield server


def run(cfg: Config, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite for ``cfg``; print the tables; return the JSON payload (also written)."""
    info = machine_info()
    progress(
        f"wrapper suite: {info['cpu_model']}, {info['usable_cores']} usable cores, load "
        f"{info['loadavg_1m']:.2f}; sizes {', '.join(f'{s:,}' for s in cfg.sizes)}; "
        f"{cfg.calls} calls per size; onnxruntime threads {cfg.threads}"
    )
    corpus = load_corpus(needed_sentences(cfg))
    workload = build_workload(cfg, corpus)
    del corpus
    llm = BenchLLM(turns=(), blocks=workload.script_blocks()).start()
    ours: dict[int, OursResult] = {}
    anchor_out: dict[str, Any] | None = None
    why_not: str | None = "not asked for (--no-anchor)"
    anchor_cpu: CpuReport | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-wrapper-") as tmp, _server(cfg) as server:
            folder = Path(tmp)
            for size in cfg.sizes:
                progress(f"ours: {size:,} memories ...")
                ours[size] = measure_ours(size, workload, llm.base_url, folder, cfg, server)
            if cfg.anchor:
                progress("headroom-ai 0.2.15 in its own venv ...")
                anchor_out, why_not, anchor_cpu = run_anchor(cfg, workload, llm.base_url, folder)
    finally:
        llm.stop()
    payload = report(cfg, ours, anchor_out, why_not, anchor_cpu)
    _plot(cfg, payload)
    path = write_json(cfg.name, payload, cfg.results_dir)
    progress(f"\nwrote {path}")
    return payload


def main(argv: list[str]) -> int:
    """``python -m bench wrapper [options]``; 0 when the run completed (targets or not)."""
    try:
        cfg = parse_args(argv)
    except InvalidInputError as exc:
        print(f"python -m bench wrapper: {exc}", file=sys.stderr)
        return 2
    run(cfg)
    return 0
