"""A bounded, thread-safe LRU map from text to its (read-only) vector."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt


class VectorCache:
    """Keeps the ``capacity`` most recently used vectors; ``capacity`` 0 disables it.

    Stored vectors are made read-only, so a caller can never corrupt the cache through an
    array it was given (callers get copies written into their own output array anyway).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        self.capacity = capacity
        self._data: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> npt.NDArray[np.float32] | None:
        """The vector for ``key`` (marking it most recently used), or None."""
        if not self.capacity:
            return None
        with self._lock:
            vec = self._data.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return vec

    def put(self, key: str, vector: npt.NDArray[np.float32]) -> None:
        """Store a copy of ``vector`` under ``key``, evicting the least recently used."""
        if not self.capacity:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.flags.writeable = False
        with self._lock:
            self._data[key] = stored
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        """True when ``key`` is cached; unlike :meth:`get`, neither marks it used nor counts."""
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
