"""The ``wrapper`` bench suite: its workload, scripted endpoint, pre-fill and a real small run.

Everything is real: the openai SDK over HTTP to the suite's own endpoint on 127.0.0.1, stores
on disk, MiniLM for the end-to-end run, and headroom-ai 0.2.15 in its venv for the anchor test
(skipped when bench/.venvs/headroom-ai is not installed).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from bench import bench_wrapper as bw
from bench.corpus import Corpus
from headroom.memory import with_fast_memory
from headroom.memory.embedders import get_embedder
from headroom.memory.errors import InvalidInputError
from headroom.memory.protocol.block import MEMORY_INSTRUCTION
from headroom.memory.store.store import MemoryStore


def synthetic_corpus(n: int, seed: int = 1) -> Corpus:
    """``n`` distinct sentences (each a valid block memory) with random unit vectors."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sentences = [f"The user keeps note number {i} about project {i * 7}." for i in range(n)]
    return Corpus(
        sentences, np.ascontiguousarray(vectors), "sentence-transformers/all-MiniLM-L6-v2"
    )


def small_config(tmp_path: Path, **changes: Any) -> bw.Config:
    cfg = bw.parse_args(["--sizes", "100", "--calls", "6", "--no-anchor"])
    return dataclasses.replace(cfg, results_dir=tmp_path, **changes)


@pytest.fixture
def llm() -> Iterator[bw.BenchLLM]:
    server = bw.BenchLLM(
        turns=(),
        blocks={
            "Which database should I use?": (
                ("The user runs PostgreSQL in production.", "fact"),
                ("The user prefers managed services.", "preference"),
            )
        },
    )
    server.start()
    yield server
    server.stop()


# --- workload -----------------------------------------------------------------------------------


def test_workload_sentences_are_disjoint_and_users_nested(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, sizes=(10, 40), calls=6)
    corpus = synthetic_corpus(bw.needed_sentences(cfg))
    work = bw.build_workload(cfg, corpus)
    assert len(work.memories) == 40 and work.vectors.shape == (40, 384)
    row = corpus.sentences.index(work.memories[3])
    assert np.array_equal(work.vectors[3], corpus.vectors[row])
    seen: set[str] = set(work.memories)
    for script in work.scripts.values():
        assert len(script.calls) == 6 and len(script.part_queries) == cfg.parts
        assert [len(b) for b in script.blocks] == [1, 2, 3, 1, 2, 3]
        assert [len(b) for b in script.apply_blocks][:3] == [1, 2, 3]
        texts = [
            *script.warmup,
            *(t for b in script.warmup_blocks for t, _ in b),
            *script.calls,
            *script.part_queries,
            *(t for b in script.blocks for t, _ in b),
            *(t for b in script.apply_blocks for t, _ in b),
        ]
        assert len(set(texts)) == len(texts)
        assert not seen & set(texts)
        seen |= set(texts)


def test_workload_leaves_out_sentences_the_store_refuses(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, sizes=(10, 40), calls=6)
    corpus = synthetic_corpus(bw.needed_sentences(cfg) + 2)
    sentences = list(corpus.sentences)
    sentences[5] = "Files looking like ( \x00 [nonzero] )+ may be guessed to be UTF16BE."
    sentences[9] = "   "
    work = bw.build_workload(cfg, Corpus(sentences, corpus.vectors, corpus.model_id))
    used = [*work.memories]
    for script in work.scripts.values():
        used += [*script.warmup, *script.calls, *script.part_queries]
        used += [t for b in (*script.blocks, *script.apply_blocks) for t, _ in b]
    assert sentences[5] not in used and sentences[9] not in used
    assert not bw.is_memory_text(sentences[5]) and bw.is_memory_text(sentences[0])


def test_workload_refuses_a_corpus_too_small(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, sizes=(10,), calls=6)
    with pytest.raises(InvalidInputError, match="too small"):
        bw.build_workload(cfg, synthetic_corpus(30))


def test_bad_arguments_are_typed_errors_and_exit_2(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        bw.parse_args(["--sizes", "10,x"])
    with pytest.raises(InvalidInputError):
        bw.parse_args(["--calls", "1"])
    assert bw.main(["--sizes", "0"]) == 2


def test_is_fact_keeps_short_sentences_only() -> None:
    assert bw.is_fact("The user prefers short answers to long ones.")
    assert not bw.is_fact("Too short here.")
    assert not bw.is_fact(" ".join(["word"] * 31))


# --- scripted endpoint --------------------------------------------------------------------------


def test_endpoint_answers_in_the_format_the_instruction_asks_for(llm: bw.BenchLLM) -> None:
    client = openai.OpenAI(base_url=llm.base_url, api_key="k", max_retries=0)
    query = "Which database should I use?"
    ours = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": MEMORY_INSTRUCTION},
            {"role": "user", "content": query},
        ],
    )
    text = ours.choices[0].message.content or ""
    assert text.startswith(bw.ANSWER) and 50 <= len(bw.ANSWER.split()) <= 70
    assert '<memory>{"add":' in text and "PostgreSQL" in text
    theirs = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": f"<context>\n- a note\n</context>\n\n{query}"}],
    )
    body = (theirs.choices[0].message.content or "").split("<memory>")[1].split("</memory>")[0]
    assert [m["content"] for m in json.loads(body)["memories"]] == [
        "The user runs PostgreSQL in production.",
        "The user prefers managed services.",
    ]
    unknown = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert (unknown.choices[0].message.content or "").endswith('<memory>{"memories": []}</memory>')


def test_wrapped_call_hides_the_block_and_stores_it(llm: bw.BenchLLM, tmp_path: Path) -> None:
    corpus = synthetic_corpus(20)
    texts = [*corpus.sentences, "Which database should I use?"]
    texts += ["The user runs PostgreSQL in production.", "The user prefers managed services."]
    vectors = np.concatenate([corpus.vectors, synthetic_corpus(3, seed=2).vectors])
    embedder = bw.CorpusEmbedder(texts, vectors, corpus.model_id)
    bw.prefill(tmp_path / "db", corpus.sentences, corpus.vectors, corpus.model_id)
    client = openai.OpenAI(base_url=llm.base_url, api_key="k", max_retries=0)
    wrapped = with_fast_memory(client, user_id=bw.USER, db_path=tmp_path / "db", embedder=embedder)
    response = wrapped.chat.completions.create(**bw._request("Which database should I use?"))
    assert response.choices[0].message.content == bw.ANSWER
    assert wrapped.flush(timeout=30)
    assert len(wrapped.memory.get_all()) == 22
    MemoryStore.open(tmp_path / "db").close()


# --- pre-fill -----------------------------------------------------------------------------------


def test_corpus_embedder_serves_rows_and_refuses_other_texts() -> None:
    corpus = synthetic_corpus(5)
    embedder = bw.CorpusEmbedder(corpus.sentences, corpus.vectors, corpus.model_id)
    got = embedder.embed([corpus.sentences[3], corpus.sentences[0]])
    assert got.dtype == np.float32 and np.array_equal(got, corpus.vectors[[3, 0]])
    assert embedder.dim == 384 and embedder.model_id == corpus.model_id
    with pytest.raises(InvalidInputError, match="not a corpus sentence"):
        embedder.embed(["something else"])
    with pytest.raises(InvalidInputError):
        bw.CorpusEmbedder(corpus.sentences[:2], corpus.vectors, corpus.model_id)


def test_prefill_gives_the_user_every_memory_with_its_vector(tmp_path: Path) -> None:
    corpus = synthetic_corpus(60)
    seconds = bw.prefill(tmp_path / "db", corpus.sentences, corpus.vectors, corpus.model_id)
    assert set(seconds) == {"add_many_s", "first_search_s", "close_s"}
    embedder = bw.CorpusEmbedder(corpus.sentences, corpus.vectors, corpus.model_id)
    with MemoryStore(tmp_path / "db", embedder=embedder) as store:
        assert store.stats(bw.USER)["total_chunks"] == 60
        for i in (0, 17, 59):
            (memory, score), *_ = store.search(bw.USER, corpus.vectors[i], top_k=1)
            assert memory.text == corpus.sentences[i] and score == pytest.approx(1.0, abs=1e-5)


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_run_measures_every_figure(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    payload = bw.run(cfg, progress=lambda _: None)
    written = json.loads((tmp_path / "wrapper.json").read_text())
    assert written["ours"]["100"]["size"] == 100
    result = payload["ours"]["100"]
    stats, checks = result["stats"], result["checks"]
    for name in bw.ROW_ORDER:
        assert name in stats, name
        assert math.isfinite(stats[name]["p50"]) and stats[name]["p99"] >= stats[name]["p50"]
    assert stats["critical path (wrapped - bare)"]["n"] == 6
    assert stats["store path: flush, block of 3"]["n"] == 2
    assert stats["part: query embedding"]["p50"] > 0
    assert stats[bw.FP32_BASELINE]["n"] == 6
    figures = payload["issue16"]["100"]
    ratio = stats[bw.CRITICAL]["p50"] / stats[bw.FP32_BASELINE]["p50"]
    assert figures["critical p50 / fp32 p50"] == pytest.approx(ratio)
    assert figures["gap ms, vector cached"] == stats[bw.GAP_CACHED]["p50"]
    assert checks["leaked_block_text"] == 0
    assert checks["memories_in_blocks"] == 12
    script = bw.build_workload(cfg, _corpus_for(cfg)).scripts[100]
    applied = sum(len(b) for b in (*script.warmup_blocks, *script.apply_blocks))
    # every block memory is a new memory or supersedes a near-duplicate of one
    assert 100 + 12 <= checks["memories_after"] <= 100 + 12 + applied
    assert checks["embedder_threads"] == 1
    assert 0 < checks["injected_per_call"] <= 5  # top_k=5 above the relevance floor
    assert payload["targets"] == []  # no 10k user in this run
    assert payload["anchor"] == {
        "ran": False,
        "why_not": "not asked for (--no-anchor)",
        "version": None,
        "cpu": None,
        "stats": {},
        "samples": {},
    }


def _stats(**p50: float) -> dict[str, dict[str, float]]:
    return {name: {"n": 10.0, "p50": v, "p99": 2 * v} for name, v in p50.items()}


def test_issue16_figures_and_targets_at_10k() -> None:
    stats = _stats(
        **{
            bw.CRITICAL: 3.0,
            bw.FP32_BASELINE: 4.0,
            bw.GAP_CACHED: 0.6,
            bw.GAP_EMBEDDED: 0.5,
            "store path: flush, block of 3": 12.0,
            "store path: apply, 3 memories": 9.0,
        }
    )
    figures = bw.issue16_figures(stats)
    assert figures == {
        "critical p50 / fp32 p50": 0.75,
        "critical p99 / fp32 p99": 0.75,
        "gap ms, vector cached": 0.6,
        "gap ms, embedded": 0.5,
    }
    result = bw.OursResult(10_000, {}, stats, {}, {}, {})
    rows = {r["target"]: r for r in bw.targets({10_000: result})}
    assert rows["critical path p50 / one fp32 embedding p50 (issue 16)"]["passed"]
    assert not rows["hybrid - dense search p50, vector cached (issue 16)"]["passed"]
    assert rows["hybrid - dense search p50, embedding included (issue 16)"]["passed"]  # at most
    assert rows["critical path p99 (issue 4)"]["value"] == 6.0
    assert not rows["store path p50, 3 memories (flush)"]["passed"]
    assert rows["store path p50, 3 memories (apply)"]["passed"]
    # Without the baseline rows there is no ratio, and the target row says NaN (failed).
    del stats[bw.FP32_BASELINE]
    assert "critical p50 / fp32 p50" not in bw.issue16_figures(stats)
    rows = {r["target"]: r for r in bw.targets({10_000: result})}
    assert not rows["critical path p50 / one fp32 embedding p50 (issue 16)"]["passed"]


def test_the_fp32_baseline_runs_the_model_each_time() -> None:
    embedder = get_embedder(threads=1)
    query = "Which database should I use for a small project?"
    bw.time_fp32_embedding(embedder, query)
    misses = embedder.cache.misses
    assert bw.time_fp32_embedding(embedder, query) > 0
    assert embedder.cache.misses == misses + 1  # the cache was emptied: no hit


def _corpus_for(cfg: bw.Config) -> Corpus:
    from bench.corpus import load_corpus

    return load_corpus(bw.needed_sentences(cfg))


def test_small_run_on_postgres_measures_the_same_figures(tmp_path: Path) -> None:
    # --backend postgres: our store is a fresh database on the postgres suite's own server.
    cfg = bw.parse_args(["--sizes", "100", "--calls", "6", "--no-anchor", "--backend", "postgres"])
    cfg = dataclasses.replace(cfg, results_dir=tmp_path)
    assert cfg.name == "wrapper-postgres"
    payload = bw.run(cfg, progress=lambda _: None)
    assert json.loads((tmp_path / "wrapper-postgres.json").read_text())["config"]["backend"] == (
        "postgres"
    )
    result = payload["ours"]["100"]
    stats, checks = result["stats"], result["checks"]
    for name in bw.ROW_ORDER:
        assert name in stats, name
    assert checks["backend"] == "postgres (TCP 127.0.0.1)"
    assert checks["leaked_block_text"] == 0 and 0 < checks["injected_per_call"] <= 5
    assert checks["memories_after"] >= 100 + 12
    assert checks["postgres_server_cpu_s"]["parts"] > 0
    with pytest.raises(InvalidInputError):
        bw.parse_args(["--url", "postgresql://x@/db"])  # --url needs --backend postgres
