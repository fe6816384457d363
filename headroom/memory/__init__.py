"""headroom.memory: persistent memory for LLM applications.

Public API::

    from headroom.memory import with_fast_memory, with_memory
    client = with_fast_memory(OpenAI(), user_id="alice")

Exports: ``with_fast_memory``, ``with_memory`` (wrap an OpenAI-compatible client),
``MemoryStore`` (the store itself), ``Memory`` / ``MemoryVersion`` (the values handed out),
``MemoryEvent`` (what an observer receives), ``CATEGORIES``, the ``errors`` module and its
classes. Names are imported on first use, so importing a submodule (say ``errors``) does not
load the store, the compiled core or the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import (
    BlockParseError,
    EmbedderError,
    EmbeddingModelMismatchError,
    HeadroomMemoryError,
    InvalidCategoryError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidTextError,
    InvalidTypeError,
    InvalidUserIdError,
    InvalidVectorError,
    MemoryNotFoundError,
    ModelNotFoundError,
    StoreClosedError,
    StoreCorruptionError,
    StoreError,
    StoreFailedError,
    StoreVersionError,
)
from .types import CATEGORIES, Memory, MemoryVersion

if TYPE_CHECKING:
    from .pipeline import MemoryEvent
    from .store import MemoryStore
    from .wrapper import AsyncMemoryClient, MemoryClient, with_fast_memory, with_memory

_LAZY = {
    "with_fast_memory": "wrapper",
    "with_memory": "wrapper",
    "MemoryClient": "wrapper",
    "AsyncMemoryClient": "wrapper",
    "MemoryStore": "store",
    "MemoryEvent": "pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CATEGORIES",
    "AsyncMemoryClient",
    "BlockParseError",
    "EmbedderError",
    "EmbeddingModelMismatchError",
    "HeadroomMemoryError",
    "InvalidCategoryError",
    "InvalidInputError",
    "InvalidMetadataError",
    "InvalidTextError",
    "InvalidTypeError",
    "InvalidUserIdError",
    "InvalidVectorError",
    "Memory",
    "MemoryClient",
    "MemoryEvent",
    "MemoryNotFoundError",
    "MemoryStore",
    "MemoryVersion",
    "ModelNotFoundError",
    "StoreClosedError",
    "StoreCorruptionError",
    "StoreError",
    "StoreFailedError",
    "StoreVersionError",
    "errors",
    "with_fast_memory",
    "with_memory",
]
