"""The package's layers: every module imports only its own layer and the layers below it.

Read from the source with ``ast`` (imports inside functions and under TYPE_CHECKING count), so
the picture in docs/architecture.md stays true. Bottom to top:

    errors, types, process  <  embedders  <  store  <  protocol  <  client  <  server, mcp
    <  cli  <  the package

and inside store: backend < ranking < the backends (local, postgres) < hybrid < store.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "headroom" / "memory"

#: Rank of each layer: a module may import modules of its own rank or lower.
RANKS: dict[str, float] = {
    "errors": 0,
    "types": 0,
    "process": 0,
    "embedders": 1,
    "store.backend": 2.0,
    "store.ranking": 2.1,
    "store.local": 2.2,
    "store.postgres": 2.2,
    "store.hybrid": 2.3,
    "store.store": 2.4,
    "store": 2.5,
    "protocol": 3,
    "client": 4,
    "server": 5,
    "mcp": 5,
    "cli": 6,
    "": 9,  # the package itself (its lazy public names)
}

#: Third-party modules only some layers may import.
RESTRICTED = {
    "openai": ("client", "embedders", "cli"),
    "hnswlib": ("store.local",),
    "onnxruntime": ("embedders",),
    "psycopg": ("store.postgres",),
    "psycopg_pool": ("store.postgres",),
    "mcp": ("mcp", "cli"),
    "starlette": ("server",),
    "uvicorn": ("server", "mcp", "cli"),
    "httpx2": ("server",),
}


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    """The longest key of RANKS that ``module`` (relative to headroom.memory) falls in."""
    best = ""
    for key in RANKS:
        if key and (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    return best


def _imports(relative: Path, source: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in one file of the package."""
    module = _module_name(relative)
    package = module.split(".") if relative.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                up = package[: len(package) - (node.level - 1)]
                base = ".".join(
                    ["headroom", "memory", *up, *([node.module] if node.module else [])]
                )
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _check(relative: Path, source: str) -> list[str]:
    """What one file (path relative to the package) imports against the layering."""
    own = _layer(_module_name(relative))
    problems = []
    for line, name in _imports(relative, source):
        where = f"headroom/memory/{relative}:{line} imports {name}"
        if name.startswith("headroom.memory"):
            target = name.removeprefix("headroom.memory").lstrip(".")
            if target.endswith("_native") and own != "store.local":
                problems.append(f"{where}: only store.local may use the compiled core")
            if RANKS[_layer(target)] > RANKS[own]:
                problems.append(f"{where}: layer {own or 'package'} is below {_layer(target)}")
        top = name.split(".")[0]
        if top in RESTRICTED and not any(own.startswith(k) for k in RESTRICTED[top]):
            problems.append(f"{where}: only {', '.join(RESTRICTED[top])} may import {top}")
    return problems


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += _check(path.relative_to(PACKAGE), path.read_text(encoding="utf-8"))
    return problems


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert _violations() == []


def test_every_module_belongs_to_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path.relative_to(PACKAGE))
        assert module == "" or _layer(module), f"{module} is in no layer of RANKS"


@pytest.mark.parametrize(
    ("source", "path", "problem"),
    [
        ("from ..client import wrapper\n", "store/bad.py", "layer store is below client"),
        ("from ..store.local import _native\n", "protocol/bad.py", "compiled core"),
        ("import openai\n", "store/bad.py", "may import openai"),
        ("from .. import cli\n", "client/bad.py", "layer client is below cli"),
        (
            "from ..hybrid import X\n",
            "store/local/bad.py",
            "layer store.local is below store.hybrid",
        ),
        ("from . import store\n", "store/backend.py", "layer store.backend is below store.store"),
    ],
)
def test_the_check_catches_an_upward_import(source: str, path: str, problem: str) -> None:
    assert any(problem in p for p in _check(Path(path), source))
