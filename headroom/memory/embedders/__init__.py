"""Embedders: text in, L2-normalised float32 vectors out (see :mod:`.base` for the contract).

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 on onnxruntime, local, no torch (the default).
- :class:`OpenAIEmbedder`: OpenAI (or compatible) embeddings through the user's client.
- :func:`get_embedder`: the process-wide shared instance per configuration.
"""

from __future__ import annotations

from .base import Embedder
from .factory import clear_embedders, get_embedder
from .minilm import MiniLMEmbedder
from .openai_embedder import OpenAIEmbedder
from .resolve import ENV_VAR, MODEL_ID, ResolvedModel, cache_root

__all__ = [
    "ENV_VAR",
    "MODEL_ID",
    "Embedder",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "ResolvedModel",
    "cache_root",
    "clear_embedders",
    "get_embedder",
]
