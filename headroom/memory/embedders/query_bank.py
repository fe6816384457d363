"""Query vectors of a fixed list of texts, cached on disk beside the model's graphs.

A *bank* is the ``embed_query`` vectors of texts a library embeds in every process (the
relevance rule's generic messages): derived data, so it is kept in the model cache, under
``<cache root>/graphs/bank-<name>-<key>.bin``, and rebuilt whenever it is missing or bad.

The key (:func:`bank_key`) covers everything the vectors depend on besides the texts:
:meth:`.MiniLMEmbedder.vector_key` (model id, the weights' layout fingerprint, the graph
version, the query path actually run, truncation, threads, batch size, the onnxruntime
version) and the texts themselves. Only :class:`.MiniLMEmbedder` banks are cached; any other
embedder computes its vectors every time (:func:`query_vectors`).

File layout (little-endian): magic ``HRQB``, format version (u32), rows (u32), dim (u32), the
key (32 bytes), ``rows * dim`` float32, then the SHA-256 of everything before it. Written to
a temporary file, fsynced and renamed (:func:`.graph_cache.write_atomic`); a file whose
checksum, key or shape does not match is ignored and written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .base import Embedder
from .graph_cache import write_atomic
from .minilm import MiniLMEmbedder
from .resolve import cache_root

MAGIC = b"HRQB"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sIII32s")
_DIGEST = 32


def bank_key(embedder: MiniLMEmbedder, texts: Sequence[str]) -> bytes:
    """The SHA-256 naming ``texts``' query vectors under ``embedder`` (see the module)."""
    h = hashlib.sha256()
    for part in (*embedder.vector_key(), "\x00texts", *texts):
        data = part.encode("utf-8", "surrogatepass")
        h.update(struct.pack("<Q", len(data)) + data)
    return h.digest()


def bank_path(name: str, key: bytes) -> Path:
    """Where the bank ``name`` with ``key`` is or would be."""
    return cache_root() / "graphs" / f"bank-{name}-{key.hex()[:32]}.bin"


def encode(key: bytes, vectors: npt.NDArray[np.float32]) -> bytes:
    """The file bytes of ``vectors`` under ``key``."""
    rows, dim = vectors.shape
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, rows, dim, key)
    body += np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, key: bytes, rows: int) -> npt.NDArray[np.float32] | None:
    """The vectors in ``data`` if it is a whole bank of ``rows`` rows under ``key``, else None."""
    if len(data) < _HEADER.size + _DIGEST:
        return None
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        return None
    magic, version, n, dim, stored_key = _HEADER.unpack_from(body)
    if (magic, version, n, stored_key) != (MAGIC, FORMAT_VERSION, rows, key):
        return None
    if len(body) != _HEADER.size + 4 * n * dim:
        return None
    vectors = np.frombuffer(body, dtype="<f4", offset=_HEADER.size).reshape(n, dim)
    return vectors.astype(np.float32)  # a writable, native-order copy


def load(name: str, key: bytes, rows: int) -> npt.NDArray[np.float32] | None:
    """The bank ``name`` from the cache; None when it is absent, unreadable or bad."""
    try:
        data = bank_path(name, key).read_bytes()
    except OSError:
        return None
    return decode(data, key, rows)


def query_vectors(
    embedder: Embedder,
    name: str,
    texts: Sequence[str],
    compute: Callable[[], npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    """``texts``' query vectors: ``compute()``, or for a :class:`.MiniLMEmbedder` the bank on
    disk when it has a good one (``compute()`` then runs only to build it; the result is
    written, an unwritable cache not being an error).

    ``compute`` must return ``embed_queries(embedder, texts)``'s vectors. A loaded bank's
    vectors are also put in the embedder's query cache, as computing them would have.
    """
    if not isinstance(embedder, MiniLMEmbedder):
        return compute()
    key = bank_key(embedder, texts)
    vectors = load(name, key, len(texts))
    if vectors is None:
        vectors = np.ascontiguousarray(compute(), dtype=np.float32)
        with contextlib.suppress(OSError):
            write_atomic(bank_path(name, key), encode(key, vectors))
        return vectors
    for text, vector in zip(texts, vectors, strict=True):
        embedder.query_cache.put(text, vector)
    return vectors
