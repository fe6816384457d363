"""The engine's hnswlib path against the exact compiled scan, on 20k MiniLM vectors.

The vectors: the 966 reference embeddings of the shared data (sentence-transformers'
all-MiniLM-L6-v2), the real model's embeddings of every distinct LoCoMo observation, and,
to reach 20k without embedding 20k texts on the test machine (about 3 minutes on 2 cores),
normalised mixtures of two of those real vectors (mostly the first: each lies between two
real sentences, so the set keeps MiniLM's anisotropy and clusters, which uniform random
vectors do not have). The queries are the real model's embeddings of LoCoMo questions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from headroom.memory.store.store import MemoryStore, NewMemory

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("HEADROOM_SHARED_DIR", REPO_ROOT.parent / "shared"))
LOCOMO = SHARED_DIR / "data" / "locomo" / "locomo_dev.json"
REFERENCE = SHARED_DIR / "data" / "minilm_reference"

TOTAL = 20_000
ANN_THRESHOLD = 1_000  # far below TOTAL: the user is searched through hnswlib
QUERIES = 200
K = 10
RARE = 7  # memories in the "context" category: a filter hnswlib alone comes back short on


class LookupEmbedder:
    """Gives each known text its precomputed vector (the store never embeds anything else)."""

    def __init__(self, vectors: dict[str, npt.NDArray[np.float32]]) -> None:
        self.vectors = vectors

    @property
    def model_id(self) -> str:
        return "test/minilm-lookup"

    @property
    def dim(self) -> int:
        return 384

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def _locomo() -> tuple[list[str], list[str]]:
    if not LOCOMO.is_file() or not (REFERENCE / "embeddings.npy").is_file():
        pytest.skip(f"LoCoMo or the reference embeddings not found in {SHARED_DIR}")
    samples = json.loads(LOCOMO.read_text("utf-8"))
    facts = sorted(
        {
            fact[0]
            for sample in samples
            for session in sample["observation"].values()
            for speaker_facts in session.values()
            for fact in speaker_facts
        }
    )
    questions = sorted({qa["question"] for sample in samples for qa in sample["qa"]})
    return facts, questions


@pytest.fixture(scope="module")
def corpus() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    from headroom.memory.embedders import get_embedder

    facts, questions = _locomo()
    reference = np.load(REFERENCE / "embeddings.npy").astype(np.float32)
    embedder = get_embedder()
    rng = np.random.default_rng(2024)
    asked = [questions[i] for i in rng.choice(len(questions), QUERIES, replace=False)]
    real = np.concatenate([reference, embedder.embed(facts)])
    queries = embedder.embed(asked)
    # Distinct real vectors only (the reference set holds some LoCoMo facts too).
    real = real[np.unique(np.round(real, 4), axis=0, return_index=True)[1]]
    assert len(real) > 2_400
    n_mix = TOTAL - len(real)
    first = rng.integers(0, len(real), n_mix)
    second = rng.integers(0, len(real), n_mix)
    weight = rng.uniform(0.55, 0.9, n_mix)[:, None].astype(np.float32)
    mixed = weight * real[first] + (1 - weight) * real[second]
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    vectors = np.ascontiguousarray(np.concatenate([real, mixed]), np.float32)
    assert vectors.shape == (TOTAL, 384)
    return vectors, np.ascontiguousarray(queries, np.float32)


def _recall(got: list[list[str]], want: list[list[str]]) -> float:
    hits = sum(len(set(g) & set(w)) for g, w in zip(got, want, strict=True))
    return hits / sum(len(w) for w in want)


@pytest.mark.slow
@pytest.mark.needs_data
def test_hnswlib_recall_against_the_exact_compiled_scan_on_20k_minilm_vectors(
    tmp_path: Path, corpus: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    vectors, queries = corpus
    texts = [f"memory {i}" for i in range(TOTAL)]
    embedder = LookupEmbedder(dict(zip(texts, vectors, strict=True)))
    rng = np.random.default_rng(7)
    categories = np.where(rng.random(TOTAL) < 0.3, "preference", "fact").astype(object)
    rare = rng.choice(TOTAL, RARE, replace=False)
    categories[rare] = "context"
    base = datetime(2023, 1, 1, tzinfo=timezone.utc)
    items = [
        NewMemory(text, str(cat), created_at=base + timedelta(minutes=i))
        for i, (text, cat) in enumerate(zip(texts, categories, strict=True))
    ]
    db = tmp_path / "db"
    with MemoryStore(db, embedder=embedder, ann_threshold=10**9, sync="off") as store:
        store.add_many("big", items, dedup=False)

    def run(store: MemoryStore, **filters: object) -> list[list[str]]:
        return [[m.text for m, _ in store.search("big", q, top_k=K, **filters)] for q in queries]

    window = {"since": base + timedelta(minutes=5000), "until": base + timedelta(minutes=5014)}
    # The exact compiled scan: the same store opened with a threshold the user is below.
    with MemoryStore(db, embedder=embedder, ann_threshold=10**9) as exact_store:
        exact = run(exact_store)
        exact_pref = run(exact_store, category="preference")
        exact_rare = run(exact_store, category="context")
        exact_window = run(exact_store, **window)
    # The compiled scan is exact: it agrees with numpy (up to float ties at the 10th place).
    scores = queries @ vectors.T
    for row, found in zip(scores, exact, strict=True):
        top = np.sort(row)[::-1][:K]
        found_scores = [row[int(t.split()[1])] for t in found]
        np.testing.assert_allclose(found_scores, top, atol=1e-5)

    with MemoryStore(db, embedder=embedder, ann_threshold=ANN_THRESHOLD) as ann_store:
        ann = run(ann_store)
        ann_pref = run(ann_store, category="preference")
        ann_rare = [
            [m.text for m, _ in ann_store.search("big", q, top_k=K, category="context")]
            for q in queries[:20]
        ]
        ann_window = run(ann_store, **window)
        ann_rare_5 = [
            [m.text for m, _ in ann_store.search("big", q, top_k=5, category="context")]
            for q in queries[:20]
        ]
    # The hnswlib path was taken: its index was built and snapshotted.
    assert list((db / "indexes").glob("*.hnsw"))

    recall = _recall(ann, exact)
    recall_pref = _recall(ann_pref, exact_pref)
    # Measured: 0.9995 and 1.0 (engine.py's threshold note claims >= 0.995 on MiniLM vectors);
    # an index searched at ef=10 instead of index.HNSW_EF_SEARCH=100 gets 0.98 and fails here.
    assert recall >= 0.99, f"recall@{K} of the hnswlib path: {recall:.4f}"
    assert recall_pref >= 0.99, f"recall@{K} with a category filter: {recall_pref:.4f}"
    assert all(len(r) == K for r in ann + ann_pref + ann_window)
    # A filter fewer than k memories pass: every one of them, as the exact scan finds them.
    want_rare = sorted(texts[i] for i in rare)
    assert all(sorted(r) == want_rare for r in ann_rare)
    assert ann_rare == exact_rare[:20]
    # A filter only 15 pass (a time window): k of them, the exact scan's.
    assert ann_window == exact_window
    assert all(len(r) == 5 and r == e[:5] for r, e in zip(ann_rare_5, exact_rare, strict=False))
