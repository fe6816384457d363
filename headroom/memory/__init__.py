"""headroom.memory: persistent memory for LLM applications.

Public API::

    from headroom.memory import with_fast_memory, with_memory
    client = with_fast_memory(OpenAI(), user_id="alice")

Exports: ``with_fast_memory`` and ``with_memory`` (wrap an OpenAI-compatible client),
``MemoryStore`` (the store itself), ``Memory`` and ``MemoryVersion`` (the values handed out),
``MemoryEvent`` (what an observer receives), ``HeadroomMemoryError`` (the base of every error
this library raises) and the ``errors`` module, where every typed error lives. Names are
imported on first use, so importing a submodule (say ``errors``) does not load the store, the
compiled core or the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import HeadroomMemoryError
from .types import Memory, MemoryVersion

if TYPE_CHECKING:
    from .client.wrapper import with_fast_memory, with_memory
    from .protocol.pipeline import MemoryEvent
    from .store.store import MemoryStore

_LAZY = {
    "with_fast_memory": "client.wrapper",
    "with_memory": "client.wrapper",
    "MemoryStore": "store.store",
    "MemoryEvent": "protocol.pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "HeadroomMemoryError",
    "Memory",
    "MemoryEvent",
    "MemoryStore",
    "MemoryVersion",
    "errors",
    "with_fast_memory",
    "with_memory",
]
