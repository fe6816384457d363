"""The embedder the suite uses, with an on-disk cache of corpus vectors.

Contracts:
- :func:`load_embedder` returns the project's own MiniLM embedder (the model the store loads
  by default), with its in-memory query cache off.
- :class:`CachedEmbedder` satisfies the ``Embedder`` protocol and remembers every vector on
  disk under ``bench/results/cache/<model id>/``, keyed by the SHA-256 of the text, so a rerun
  embeds nothing it has embedded before. Inside ``with cached.bypass():`` it calls the model
  every time (for latency measurements of the query path).
- :class:`QueryPath` is MiniLM's query path (``embed_query`` in a ``query_mode``) as an
  ``Embedder`` of its own id, so a ``CachedEmbedder`` over it caches query vectors apart;
  :class:`SplitEmbedder` pairs fp32 memories with such queries, as the store then sees them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import RESULTS_DIR
from headroom.memory.embedders.base import Embedder
from headroom.memory.embedders.minilm import MiniLMEmbedder

CACHE_DIR = RESULTS_DIR / "cache"


def load_embedder(query_mode: str = "fp32") -> MiniLMEmbedder:
    """The store's default local embedder (MiniLM on onnxruntime, one thread) without its LRU.

    The query cache is off so query-path latency is measured with a real embedding; the
    corpus is cached on disk by :class:`CachedEmbedder` instead.
    """
    return MiniLMEmbedder(cache_size=0, query_mode=query_mode)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class CachedEmbedder:
    """An ``Embedder`` that reads vectors from a disk cache and embeds only what is missing."""

    def __init__(self, inner: Embedder, cache_dir: Path | None = None) -> None:
        self.inner = inner
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", inner.model_id)
        self.folder = (cache_dir or CACHE_DIR) / safe
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}
        self._dirty: list[str] = []
        self._bypass = False
        self.hits = 0
        self.misses = 0
        self._load()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def _load(self) -> None:
        keys_file, vec_file = self.folder / "keys.json", self.folder / "vectors.npy"
        if not (keys_file.is_file() and vec_file.is_file()):
            return
        keys = json.loads(keys_file.read_text())
        vectors = np.load(vec_file)
        if vectors.shape != (len(keys), self.dim):
            return  # a stale or torn cache is ignored and rewritten
        self._vectors = {k: vectors[i] for i, k in enumerate(keys)}

    def save(self) -> None:
        """Write the cache if anything was added (atomically: temp files, then rename)."""
        if not self._dirty:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = list(self._vectors)
        matrix = np.stack([self._vectors[k] for k in keys]).astype(np.float32)
        tmp_vec = self.folder / "vectors.tmp.npy"
        np.save(tmp_vec, matrix)
        tmp_keys = self.folder / "keys.tmp.json"
        tmp_keys.write_text(json.dumps(keys))
        tmp_vec.replace(self.folder / "vectors.npy")
        tmp_keys.replace(self.folder / "keys.json")
        self._dirty.clear()

    @contextmanager
    def bypass(self) -> Iterator[None]:
        """Within the block every call goes to the model (nothing read from or added to cache)."""
        self._bypass = True
        try:
            yield
        finally:
            self._bypass = False

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of ``texts``, from the cache where present (see the Embedder protocol)."""
        if self._bypass:
            return self.inner.embed(texts)
        keys = [_key(t) for t in texts]
        missing = sorted({i for i, k in enumerate(keys) if k not in self._vectors})
        if missing:
            fresh = self.inner.embed([texts[i] for i in missing])
            for row, i in enumerate(missing):
                self._vectors[keys[i]] = fresh[row]
                self._dirty.append(keys[i])
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = self._vectors[k]
        return out


class QueryPath:
    """``inner.embed_query`` as an ``Embedder`` whose ``model_id`` names the query mode."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner

    @property
    def model_id(self) -> str:
        return f"{self.inner.model_id}@query-{self.inner.query_mode}"

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.inner.embed_query(texts)


class SplitEmbedder:
    """Stored texts through ``memories``, search queries (``embed_query``) through ``queries``."""

    def __init__(self, memories: CachedEmbedder, queries: CachedEmbedder) -> None:
        self.memories = memories
        self.queries = queries

    @property
    def model_id(self) -> str:
        return self.memories.model_id

    @property
    def dim(self) -> int:
        return self.memories.dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.memories.embed(texts)

    def embed_query(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.queries.embed(texts)

    @contextmanager
    def bypass(self) -> Iterator[None]:
        """Both caches bypassed (see :meth:`CachedEmbedder.bypass`)."""
        with self.memories.bypass(), self.queries.bypass():
            yield

    def save(self) -> None:
        self.memories.save()
        self.queries.save()
