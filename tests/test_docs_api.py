"""docs/architecture.md lists the API of MemoryStore and of the Backend protocol; the listing is
the code's, to the parameter, default and return annotation, and no public method is missing.

A listing is a ```python block after a ``<!-- api: dotted.path.Class -->`` marker, holding one
``def name(params) -> ret: ...`` per public method (``self``/``cls`` left out).
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
_LISTING = re.compile(r"<!-- api: ([\w.]+) -->\s*```python\n(.*?)```", re.S)


def _listings() -> dict[str, str]:
    return dict(_LISTING.findall(DOC.read_text(encoding="utf-8")))


def _signature(node: ast.FunctionDef) -> str:
    """``name(params) -> ret`` without self/cls, decorators or body, normalised by ast."""
    bare = copy.deepcopy(node)
    if bare.args.args and bare.args.args[0].arg in ("self", "cls"):
        bare.args.args = bare.args.args[1:]
    bare.body = [ast.Expr(ast.Constant(...))]
    bare.decorator_list = []
    return ast.unparse(bare)


def _public_methods(dotted: str) -> dict[str, str]:
    module, name = dotted.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    methods = {}
    for node in tree.body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.FunctionDef):
            continue
        if node.name.startswith("_") and node.name != "import_":
            continue
        if any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
            continue
        methods[node.name] = _signature(node)
    return methods


def test_the_doc_has_both_listings() -> None:
    assert set(_listings()) == {
        "headroom.memory.store.store.MemoryStore",
        "headroom.memory.store.backend.Backend",
    }


@pytest.mark.parametrize("dotted", sorted(_listings()))
def test_each_listing_is_the_code(dotted: str) -> None:
    listed = {
        node.name: _signature(node)
        for node in ast.parse(_listings()[dotted]).body
        if isinstance(node, ast.FunctionDef)
    }
    real = _public_methods(dotted)
    assert sorted(listed) == sorted(real), "methods missing from or extra in the doc"
    for name, signature in real.items():
        assert listed[name] == signature, f"{dotted}.{name}: the doc says {listed[name]}"


def test_the_check_sees_a_drifted_signature() -> None:
    doc = ast.parse("def search(user_id: str, query: str, top_k: int = 3) -> list: ...").body[0]
    real = _public_methods("headroom.memory.store.store.MemoryStore")["search"]
    assert isinstance(doc, ast.FunctionDef) and _signature(doc) != real
