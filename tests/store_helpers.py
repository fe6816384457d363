"""Helpers for store tests: a deterministic embedder for plumbing tests (not for quality).

Where retrieval quality matters, tests use the real MiniLM embedder instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from headroom.memory.errors import InvalidTypeError


class HashEmbedder:
    """Maps each text to a fixed pseudo-random unit vector (same text, same vector)."""

    def __init__(self, dim: int = 384, model_id: str = "test/hash") -> None:
        self._dim = dim
        self._model_id = f"{model_id}-{dim}"
        self.calls = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        rows = []
        for text in texts:
            if not isinstance(text, str):
                raise InvalidTypeError(f"texts must be str; got {type(text).__name__}")
            seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace")).digest()[:8])
            vec = np.random.default_rng(seed).standard_normal(self._dim).astype(np.float32)
            rows.append(vec / np.linalg.norm(vec))
        return np.ascontiguousarray(
            np.stack(rows) if rows else np.empty((0, self._dim), np.float32)
        )


def native_log(store: Any) -> Any:
    """The compiled ``Log`` under a MemoryStore (for the native test hooks, e.g. ``_set_fault``).

    The one place tests reach into the store's internals for it: when the store's layout
    changes, only this line changes.
    """
    return store.backend.log
