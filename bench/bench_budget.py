"""The ``budget`` suite: what ``max_prompt_tokens`` adds to a wrapped call (issue 15).

``python -m bench budget [--quick] [--turns 10,100,1000] [--calls N]``

Conversations of N turns (a system prompt, then user and assistant messages of about 40
tokens each, every text distinct, then the new user message), the shapes a rolling window is
for. Figures per length (p50 and p99 in microseconds or milliseconds, one onnxruntime thread):

- ``fit``: ``protocol.budget.fit_messages`` with the instruction and a rendered injection of 5
  memories, against its baseline in the same run: ``RollingWindowTransform.apply`` of the same
  conversation at the same budget (what a caller windowing before the wrapper already pays);
  the ratio fit / window. Both with the counter the wrapper uses by default
  (``default_counter()``: tiktoken when its encoding is cached, else the estimate), its token
  counts cached as in a real session (the history is re-sent every call).
- ``prepare``: the wrapper's whole request side (``Core.prepare``: wait for own writes,
  embed the query with MiniLM, search a user of ``--memories`` memories, render, instruct)
  with and without the budget, interleaved call by call; the difference is what the budget
  adds to the caller's wait.

Every measured block reports the CPU other processes took (``bench.common.CpuWatch``).
Results go to ``bench/results/budget.json`` (``budget-quick.json``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import openai

from bench.common import CpuWatch, format_table, machine_info, percentiles, write_json
from headroom.memory import with_fast_memory
from headroom.memory.embedders import get_embedder
from headroom.memory.protocol.budget import PromptBudget, fit_messages
from headroom.memory.protocol.injection import build_injection
from headroom.memory.types import Memory, NewMemory
from headroom.transforms import RollingWindowTransform, default_counter

_TEXT = (
    "the user asked about deploying python services on kubernetes with postgres and redis "
    "while travelling to porto next month for a conference about distributed systems and "
    "latency budgets in payment platforms at a fintech startup with a small team"
)
WORDS = _TEXT.split()
BUDGET = 4000
_NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" ({rng.randrange(10**6)})"


def conversation(turns: int, rng: random.Random) -> list[dict[str, Any]]:
    """A system prompt, ``turns`` user/assistant pairs of ~40 tokens each, a new question."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for _ in range(turns):
        messages.append({"role": "user", "content": _sentence(rng, 30)})
        messages.append({"role": "assistant", "content": _sentence(rng, 30)})
    messages.append({"role": "user", "content": "What database should I use for payments?"})
    return messages


def _time(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_fit(turns: list[int], calls: int, rng: random.Random) -> list[dict[str, Any]]:
    """fit_messages against RollingWindowTransform.apply, same conversation and budget."""
    counter = default_counter()
    budget = PromptBudget(BUDGET, counter)
    window = RollingWindowTransform(max_tokens=BUDGET, token_counter=counter)
    memories = [
        (Memory(f"id{i}", _sentence(rng, 10), "fact", _NOW, _NOW), 0.9 - i / 20) for i in range(5)
    ]
    context = build_injection(memories, max_tokens=300)
    rows = []
    for n in turns:
        messages = conversation(n, rng)
        window.apply(messages)  # fill the counter's cache, as a running session has it

        def fit(messages: list[dict[str, Any]] = messages) -> object:
            return fit_messages(messages, instructed=True, context=context, budget=budget)

        def win(messages: list[dict[str, Any]] = messages) -> object:
            return window.apply(messages)

        fit_times: list[float] = []
        win_times: list[float] = []
        with CpuWatch() as watch:
            for i in range(calls):  # interleaved, the order alternating
                pair = (fit, win) if i % 2 == 0 else (win, fit)
                for fn in pair:
                    elapsed = _time(fn, 1)[0]
                    (fit_times if fn is fit else win_times).append(elapsed)
        rows.append(
            {
                "turns": n,
                "counter": counter.name,
                "fit_us": {k: v * 1e6 for k, v in percentiles(fit_times, (50, 99)).items()},
                "window_us": {k: v * 1e6 for k, v in percentiles(win_times, (50, 99)).items()},
                "ratio_p50": statistics.median(fit_times) / statistics.median(win_times),
                "others_share": watch.report.others_share,
            }
        )
    return rows


def bench_prepare(
    turns: list[int], calls: int, memories: int, rng: random.Random, folder: Path
) -> list[dict[str, Any]]:
    """Core.prepare with and without the budget, interleaved, on a real MiniLM store."""
    embedder = get_embedder(threads=1)
    base = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")  # never called
    path = folder / "memory.db"
    plain = with_fast_memory(base, user_id="u", db_path=path, embedder=embedder, min_score=-1.0)
    budgeted = with_fast_memory(
        base,
        user_id="u",
        db_path=path,
        embedder=embedder,
        min_score=-1.0,
        max_prompt_tokens=BUDGET,
    )
    store = plain._core.store
    items = [NewMemory(_sentence(rng, 12)) for _ in range(memories)]
    for start in range(0, len(items), 256):
        store.add_many("u", items[start : start + 256], dedup=False)
    rows = []
    for n in turns:
        messages = conversation(n, rng)
        questions = [f"{_sentence(rng, 8)}?" for _ in range(calls)]
        with_times: list[float] = []
        without_times: list[float] = []
        with CpuWatch() as watch:
            for i, question in enumerate(questions):
                request = {"messages": [*messages[:-1], {"role": "user", "content": question}]}
                order = (budgeted, plain) if i % 2 == 0 else (plain, budgeted)
                for client in order:
                    t0 = time.perf_counter()
                    client._core.prepare(dict(request), "on")
                    elapsed = time.perf_counter() - t0
                    (with_times if client is budgeted else without_times).append(elapsed)
        p_with = percentiles(with_times, (50, 99))
        p_without = percentiles(without_times, (50, 99))
        rows.append(
            {
                "turns": n,
                "with_ms": {k: v * 1e3 for k, v in p_with.items()},
                "without_ms": {k: v * 1e3 for k, v in p_without.items()},
                "added_p50_ms": (p_with["p50"] - p_without["p50"]) * 1e3,
                "ratio_p50": p_with["p50"] / p_without["p50"],
                "others_share": watch.report.others_share,
            }
        )
    plain.flush()
    return rows


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench budget", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="turns 10,100; 40 calls")
    parser.add_argument("--turns", help="comma-separated conversation lengths (10,100,1000)")
    parser.add_argument("--calls", type=int, help="measured calls per length (default 200)")
    parser.add_argument("--memories", type=int, default=1000, help="memories of the user")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    turns = [int(t) for t in (args.turns or ("10,100" if args.quick else "10,100,1000")).split(",")]
    calls = args.calls or (40 if args.quick else 200)
    if calls < 2 or any(t < 0 for t in turns) or args.memories < 1:
        parser.error("--calls must be >= 2, turns >= 0 and --memories >= 1")
    rng = random.Random(args.seed)

    fit_rows = bench_fit(turns, calls, rng)
    print(f"fit_messages vs RollingWindowTransform.apply, budget {BUDGET}, p50/p99 in us")
    print(
        format_table(
            [
                "turns",
                "counter",
                "fit p50",
                "fit p99",
                "window p50",
                "window p99",
                "ratio",
                "others",
            ],
            [
                [
                    r["turns"],
                    r["counter"],
                    r["fit_us"]["p50"],
                    r["fit_us"]["p99"],
                    r["window_us"]["p50"],
                    r["window_us"]["p99"],
                    r["ratio_p50"],
                    _share(r["others_share"]),
                ]
                for r in fit_rows
            ],
        )
    )
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as folder:
        prep_rows = bench_prepare(turns, calls, args.memories, rng, Path(folder))
    print(
        f"\nCore.prepare (MiniLM, 1 thread, {args.memories} memories) with and without "
        f"max_prompt_tokens={BUDGET}, p50/p99 in ms"
    )
    print(
        format_table(
            [
                "turns",
                "with p50",
                "with p99",
                "without p50",
                "without p99",
                "added p50",
                "ratio",
                "others",
            ],
            [
                [
                    r["turns"],
                    r["with_ms"]["p50"],
                    r["with_ms"]["p99"],
                    r["without_ms"]["p50"],
                    r["without_ms"]["p99"],
                    r["added_p50_ms"],
                    r["ratio_p50"],
                    _share(r["others_share"]),
                ]
                for r in prep_rows
            ],
        )
    )
    payload = {
        "machine": machine_info(),
        "budget": BUDGET,
        "calls": calls,
        "memories": args.memories,
        "fit": fit_rows,
        "prepare": prep_rows,
    }
    path = write_json("budget-quick" if args.quick else "budget", payload)
    print(f"wrote {path}")
    return 0
