"""``get_embedder``: one shared embedder per configuration per process.

The store calls this; every store and wrapper in a process that asks for the same
configuration gets the same instance, so the model is loaded once per process.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import InvalidInputError
from .base import Embedder
from .minilm import MiniLMEmbedder
from .openai_embedder import DEFAULT_MODEL, OpenAIEmbedder
from .resolve import MODEL_ID, MODEL_NAME

#: Names that select the local MiniLM model.
LOCAL_MODELS = frozenset({MODEL_NAME, MODEL_ID})

_lock = threading.Lock()
_instances: dict[tuple[Any, ...], Embedder] = {}


def _key(use_local: bool, model: str, client: Any, opts: dict[str, Any]) -> tuple[Any, ...]:
    try:
        items = tuple(sorted((k, v) for k, v in opts.items()))
        hash(items)
    except TypeError:
        raise InvalidInputError("embedder options must be hashable values") from None
    return (use_local, model, id(client) if client is not None else None, items)


def get_embedder(
    use_local: bool = True,
    model: str = MODEL_NAME,
    client: Any = None,
    **opts: Any,
) -> Embedder:
    """The process-wide embedder for this configuration (created on first request).

    ``use_local=True``: :class:`MiniLMEmbedder` (``model`` must be ``all-MiniLM-L6-v2``);
    ``opts`` go to its constructor (``model_path``, ``threads``, ``cache_size``, ...).
    ``use_local=False``: :class:`OpenAIEmbedder` through ``client`` (or a default
    ``openai.OpenAI()``); ``model`` defaults to ``text-embedding-3-small`` when it names the
    local model; ``opts`` go to its constructor (``dimensions``, ``batch_size``, ...).
    Nothing is loaded or called here: the model loads on the first ``embed``.
    Raises InvalidInputError for an unknown local model or unhashable options.
    """
    if not isinstance(model, str) or not model:
        raise InvalidInputError(f"model must be a non-empty str; got {model!r}")
    if use_local and model not in LOCAL_MODELS:
        raise InvalidInputError(
            f"unknown local embedding model {model!r}; the local model is {MODEL_NAME} "
            "(get_embedder(use_local=False, model=...) selects an API model)"
        )
    if model in LOCAL_MODELS:
        model = MODEL_NAME if use_local else DEFAULT_MODEL
    key = _key(use_local, model, client, opts)
    with _lock:
        embedder = _instances.get(key)
        if embedder is None:
            if use_local:
                embedder = MiniLMEmbedder(**opts)
            else:
                embedder = OpenAIEmbedder(client, model=model, **opts)
            _instances[key] = embedder
        return embedder


def clear_embedders() -> None:
    """Forget the shared instances (tests; after changing ``HEADROOM_MODEL_PATH``)."""
    with _lock:
        _instances.clear()
