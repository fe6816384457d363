"""Storage: ``MemoryStore`` (validation, embedding, dedup policy, ranking) over a backend.

Imports only ``errors``, ``types`` and ``embedders``. ``MemoryStore`` is imported on first use,
so importing ``store.ranking`` alone does not load the compiled core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import MemoryStore


def __getattr__(name: str) -> Any:
    if name != "MemoryStore":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(".store", __name__).MemoryStore


__all__ = ["MemoryStore"]
