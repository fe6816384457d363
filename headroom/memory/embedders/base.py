"""The embedder protocol: text in, L2-normalised float32 vectors out.

The store depends on this protocol only; it never knows which model or runtime is behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors.

    Contract:
    - ``embed(texts)`` returns a C-contiguous ``float32`` array of shape ``(len(texts), dim)``
      whose rows are L2-normalised (an all-zero row is allowed only where the model itself
      gives one). Row ``i`` depends on ``texts[i]`` alone: batching never changes a vector.
    - A non-string element raises ``InvalidTypeError``; empty strings and very long texts are
      embedded (long texts truncated by the model's own rule), never an error.
    - ``model_id`` names the model exactly enough that two embedders with the same id give the
      same vectors (the store records it and refuses to mix models); ``dim`` is the row length.
    - Safe to call from many threads at once.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def embed_queries(embedder: Embedder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Vectors of search queries: ``embedder.embed_query(texts)`` where it has one, else ``embed``.

    An embedder may embed queries differently from the texts it stores (``MiniLMEmbedder``'s
    ``query_mode``); the vectors keep the ``embed`` contract and are compared with stored ones.
    """
    query = getattr(embedder, "embed_query", None)
    vectors: npt.NDArray[np.float32] = embedder.embed(texts) if query is None else query(texts)
    return vectors


def query_cached(embedder: Embedder, text: str) -> bool:
    """True when :func:`embed_queries` of ``[text]`` would be answered from ``embedder``'s cache
    without running the model (its ``query_cache``, as ``MiniLMEmbedder`` has); False for an
    embedder without one. A hint: the entry may be evicted before the embedding asks for it.
    """
    cache = getattr(embedder, "query_cache", None)
    return cache is not None and text in cache
