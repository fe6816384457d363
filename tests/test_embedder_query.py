"""MiniLM's query path (``query_mode``) with the real weights: parity, selection, the store.

``query_mode="int8"`` (the default) embeds search queries with a second graph whose linear
layers run on int8; memories are embedded in fp32 whatever the mode. The parity thresholds
below sit under the figures measured on the shared reference set (int8: mean cosine 0.9936,
minimum 0.9765 against sentence-transformers), so a worse quantization fails them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headroom.memory.embedders import MiniLMEmbedder, clear_embedders, get_embedder, minilm
from headroom.memory.embedders.base import embed_queries
from headroom.memory.embedders.graph_cache import graph_path
from headroom.memory.embedders.int8_probe import int8_sums_exact
from headroom.memory.embedders.minilm import DEFAULT_QUERY_MODE, QUERY_MODES
from headroom.memory.embedders.minilm_graph import quantize_per_channel
from headroom.memory.errors import InvalidInputError, InvalidTypeError
from headroom.memory.store.store import MemoryStore
from headroom.memory.types import NewMemory
from tests import minilm_helpers

pytestmark = minilm_helpers.needs_weights
cache_home = minilm_helpers.cache_home
reference = minilm_helpers.reference
_cos = minilm_helpers.cosines


@pytest.fixture(scope="module")
def int8(cache_home: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_size=0, query_mode="int8")


@pytest.mark.needs_data
def test_int8_queries_stay_close_to_sentence_transformers(
    int8: MiniLMEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, ref = reference
    out = int8.embed_query(texts)
    assert out.dtype == np.float32 and out.shape == (966, 384) and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cos = _cos(out, ref)
    assert cos.mean() >= 0.990, f"mean cosine {cos.mean():.5f}"
    assert cos.min() >= 0.970, f"worst row {int(cos.argmin())}: cosine {cos.min():.5f}"
    # Quantized, not the fp32 graph under another name.
    assert cos.mean() < 0.9999


@pytest.mark.needs_data
def test_memories_stay_exact_in_int8_mode(
    int8: MiniLMEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, ref = reference
    assert _cos(int8.embed(texts[::8]), ref[::8]).min() >= 0.9999
    assert int8.model_id == MiniLMEmbedder().model_id  # the store's vectors are the same model


@pytest.mark.needs_data
def test_int8_query_rows_do_not_depend_on_the_batch(
    int8: MiniLMEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts = reference[0][::40]
    batch = int8.embed_query(texts)
    single = np.vstack([int8.embed_query([t]) for t in texts])
    np.testing.assert_array_equal(batch, single)


def test_fp32_mode_queries_are_the_stored_vectors(cache_home: Path) -> None:
    fp32 = MiniLMEmbedder(cache_size=4, query_mode="fp32")
    assert fp32.query_mode == fp32.query_path == "fp32"
    texts = ["where did I park?", "my sister lives in Lisbon"]
    np.testing.assert_array_equal(fp32.embed_query(texts), fp32.embed(texts))
    assert fp32.cache.hits == 2  # one cache for both paths: the second call was all hits


def test_int8_query_cache_is_its_own(cache_home: Path) -> None:
    emb = MiniLMEmbedder(cache_size=4, query_mode="int8")
    q = emb.embed_query(["what is my dog called?"])
    m = emb.embed(["what is my dog called?"])
    assert emb.cache.hits == 0  # the fp32 call did not read the int8 vector
    assert 0.97 < float(q[0] @ m[0]) < 1.0
    np.testing.assert_array_equal(emb.embed_query(["what is my dog called?"]), q)


def test_int8_is_the_default_where_it_sums_exactly(cache_home: Path) -> None:
    """The default was chosen by the LoCoMo rule (docs/embedder.md); this CPU runs it exactly."""
    assert DEFAULT_QUERY_MODE == "int8" and MiniLMEmbedder().query_mode == "int8"
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    if flags & {"avx512_vnni", "avx_vnni"}:  # int32 dot products: the probe must say exact
        assert int8_sums_exact() is True
    expected = "int8" if int8_sums_exact() else "fp32"
    assert MiniLMEmbedder().query_path == expected


def test_a_cpu_whose_int8_sums_saturate_gets_fp32_queries(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portable path: the probe's verdict (forced here) sends int8 queries to fp32."""
    monkeypatch.setattr(minilm, "int8_sums_exact", lambda: False)
    emb = MiniLMEmbedder(cache_size=0, query_mode="int8")
    assert emb.query_mode == "int8" and emb.query_path == "fp32"
    texts = ["what is my dog called?", "my sister lives in Lisbon"]
    np.testing.assert_array_equal(emb.embed_query(texts), emb.embed(texts))


def test_query_mode_is_validated_and_inputs_are_typed(int8: MiniLMEmbedder) -> None:
    assert QUERY_MODES == ("fp32", "int8")
    for bad in ("int4", "INT8", "", None, 8):
        with pytest.raises(InvalidInputError, match="query_mode"):
            MiniLMEmbedder(query_mode=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        int8.embed_query(["fine", b"bytes"])  # type: ignore[list-item]
    assert int8.embed_query([]).shape == (0, 384)
    assert int8.embed_query([""]).shape == (1, 384)


def test_get_embedder_passes_the_mode(cache_home: Path) -> None:
    clear_embedders()
    try:
        fast = get_embedder(query_mode="int8")
        assert isinstance(fast, MiniLMEmbedder) and fast.query_mode == "int8"
        assert get_embedder(query_mode="int8") is fast
        exact = get_embedder(query_mode="fp32")
        assert isinstance(exact, MiniLMEmbedder) and exact.query_mode == "fp32"
        assert exact is not fast
        with pytest.raises(InvalidInputError, match="query_mode"):
            get_embedder(query_mode="fp16")
    finally:
        clear_embedders()


def test_the_int8_graph_is_cached_beside_the_fp32_one(int8: MiniLMEmbedder) -> None:
    int8.embed_query(["load it"])
    model = int8.resolved
    fp32_path, int8_path = graph_path(model), graph_path(model, "int8")
    assert int8_path.is_file() and int8_path != fp32_path
    assert int8_path.stat().st_size > 5_000_000  # the int8 weights are inside it


def test_quantize_per_channel_round_trips_within_half_a_step() -> None:
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((48, 32)) * rng.uniform(0.01, 3.0, (48, 1))).astype(np.float32)
    w[5] = 0.0  # an all-zero output channel must not divide by zero
    scale, q = quantize_per_channel(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (48,)
    assert int(np.abs(q).max()) == 127 and int(q.min()) >= -127
    err = np.abs(q * scale[:, None] - w)
    assert (err <= scale[:, None] / 2 + 1e-6).all()
    assert (q[5] == 0).all()


def test_store_search_embeds_the_query_with_the_query_path(tmp_path: Path) -> None:
    """Through a real store: memories stored in fp32, the search query on the int8 path."""
    emb = MiniLMEmbedder(cache_size=16, query_mode="int8")
    exact = MiniLMEmbedder(cache_size=0, query_mode="fp32")
    store = MemoryStore(str(tmp_path / "m.db"), embedder=emb)
    memory, query = "My sister Ana lives in Lisbon", "which city does my sister live in?"
    try:
        store.add_many("u1", [NewMemory(memory), NewMemory("I ride a red bicycle")], dedup=False)
        (hit, score), _ = store.search("u1", query, top_k=2, hybrid=False)
        assert hit.text == memory
        assert len(emb.cache) == 2 and len(emb.query_cache) == 1  # memories fp32, query int8
        m = exact.embed([memory])[0]
        assert score == pytest.approx(float(embed_queries(emb, [query])[0] @ m), abs=1e-5)
        assert abs(score - float(exact.embed([query])[0] @ m)) > 1e-5  # not the fp32 query
        assert emb.query_cache.hits == 1  # embed_queries above read the search's entry
    finally:
        store.close()


def test_locomo_split_embedder_caches_queries_apart(cache_home: Path, tmp_path: Path) -> None:
    """The LoCoMo suite's int8 rows: fp32 memories, int8 queries, each cached in its own folder."""
    from bench.locomo.embed import CachedEmbedder, QueryPath, SplitEmbedder

    inner = MiniLMEmbedder(cache_size=0, query_mode="int8")
    split = SplitEmbedder(
        CachedEmbedder(inner, tmp_path), CachedEmbedder(QueryPath(inner), tmp_path)
    )
    text = ["when did I move to Berlin?"]
    np.testing.assert_array_equal(split.embed(text), inner.embed(text))
    np.testing.assert_array_equal(split.embed_query(text), inner.embed_query(text))
    np.testing.assert_array_equal(embed_queries(split, text), inner.embed_query(text))
    split.save()
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == [
        "sentence-transformers_all-MiniLM-L6-v2",
        "sentence-transformers_all-MiniLM-L6-v2_query-int8",
    ]
    assert (split.queries.misses, split.queries.hits) == (1, 1)
    with split.bypass():  # the live query path of the latency runs: no cache involved
        split.embed_query(text)
    assert (split.queries.misses, split.queries.hits) == (1, 1)


def test_the_wrapper_searches_with_the_query_path_of_its_embedder(tmp_path: Path) -> None:
    """``with_fast_memory(..., embedder=MiniLMEmbedder(query_mode=...))`` over real HTTP: the
    user's message is embedded on that embedder's query path (its own cache in int8 mode)."""
    import openai
    from openai_server import ScriptedServer

    from headroom.memory import with_fast_memory
    from headroom.memory.client.background import close_all

    message = "what does my sister do in Lisbon?"
    with ScriptedServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        for mode in QUERY_MODES:
            emb = MiniLMEmbedder(cache_size=16, query_mode=mode)
            wrapped = with_fast_memory(
                client, user_id="alice", db_path=tmp_path / mode, embedder=emb, min_score=-1.0
            )
            wrapped.memory.add("My sister Ana works as an architect in Lisbon")
            server.push("noted")
            wrapped.chat.completions.create(
                model="m", messages=[{"role": "user", "content": message}]
            )
            assert emb.query_cache.get(message) is not None
            exact_hit = emb.cache.get(message) is not None
            assert exact_hit is (mode == "fp32"), mode  # int8 queries never enter fp32's cache
    close_all()


def test_threads_loading_and_embedding_queries_at_once_agree(cache_home: Path) -> None:
    """The int8 session is loaded once however many threads ask first; every vector matches."""
    import threading

    emb = MiniLMEmbedder(cache_size=0, query_mode="int8")
    texts = [f"where did I leave the {thing}?" for thing in ("keys", "bike", "book", "cat")]
    out: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        out[k] = emb.embed_query(texts)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    serial = MiniLMEmbedder(cache_size=0, query_mode="int8").embed_query(texts)
    for k in range(6):
        np.testing.assert_array_equal(out[k], serial)
