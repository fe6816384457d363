"""The retrievers the suite compares, all over one conversation's memory units at a time.

Contract of every retriever: ``fit(units)`` indexes one user's memories (replacing what it
held); ``rank(question, depth)`` returns up to ``depth`` unit positions, best first. Query
vectors come from the (cached) embedder, so ``rank`` timings exclude embedding except for
:class:`StoreRetriever` inside ``CachedEmbedder.bypass()``.

- :class:`BM25Retriever`: rank_bm25's Okapi BM25 over lower-cased word tokens (the baseline).
- :class:`DenseRetriever`: exact cosine over MiniLM vectors (the plain dense baseline).
- :class:`HybridRetriever`: dense top-``pool`` (the query centred on the units' mean vector,
  as the store centres it on the user's) plus lexical top-``pool``, reordered by
  :func:`headroom.memory.store.ranking.rerank` (or a sweep's variant of it,
  :mod:`bench.locomo.variants`); exactly what the store can do on its candidate set.
- :class:`StoreDenseRetriever`: the same store searched with ``hybrid=False`` (dense only).
- :class:`StoreRetriever`: memories ingested with ``MemoryStore.add_many`` (dia_ids, speaker and
  session in metadata, the session date as ``created_at``) and queried with
  ``MemoryStore.search``, the same call the wrapper makes for injection.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bench.locomo.data import Unit
from bench.locomo.variants import STORE, Variant, rerank_variant, rewrite_query
from headroom.memory.embedders.base import Embedder
from headroom.memory.store.hybrid import CENTRING_MIN_MEMORIES, centred_query
from headroom.memory.store.ranking import Candidate, LexicalIndex, RankConfig

_WORDS = re.compile(r"\w+")


class Retriever(Protocol):
    """What the suite needs of a retriever (see the module docstring)."""

    name: str

    def fit(self, user: str, units: Sequence[Unit]) -> None: ...

    def rank(self, question: str, depth: int) -> list[int]: ...


class BM25Retriever:
    """rank_bm25's BM25Okapi over plain lower-cased word tokens."""

    name = "bm25"

    def __init__(self) -> None:
        self._bm25: Any = None

    @staticmethod
    def available() -> bool:
        """True when rank_bm25 (the ``bench`` extra) is installed."""
        return importlib.util.find_spec("rank_bm25") is not None

    def fit(self, user: str, units: Sequence[Unit]) -> None:
        bm25_module = importlib.import_module("rank_bm25")  # untyped; the ``bench`` extra
        self._bm25 = bm25_module.BM25Okapi([_WORDS.findall(u.text.lower()) for u in units])

    def rank(self, question: str, depth: int) -> list[int]:
        assert self._bm25 is not None, "fit first"
        scores = np.asarray(self._bm25.get_scores(_WORDS.findall(question.lower())))
        return [int(i) for i in np.argsort(-scores, kind="stable")[:depth]]


class DenseRetriever:
    """Exact cosine similarity over the embedder's vectors (rows are unit length)."""

    def __init__(self, embedder: Embedder, rewrite: bool = False) -> None:
        self.embedder = embedder
        self.rewrite = rewrite
        self.name = "dense+rewrite" if rewrite else "dense"
        self._matrix: npt.NDArray[np.float32] = np.empty((0, embedder.dim), np.float32)
        self._centroid: npt.NDArray[np.float32] | None = None

    def fit(self, user: str, units: Sequence[Unit]) -> None:
        self._matrix = self.embedder.embed([u.text for u in units])
        self._centroid = (
            self._matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
            if len(units) >= CENTRING_MIN_MEMORIES
            else None
        )

    def scores(self, question: str, centroid_weight: float = 0.0) -> npt.NDArray[np.float32]:
        """Cosine of the question (rewritten if asked) against every unit; with a
        ``centroid_weight``, centred on the units' mean as the store's hybrid search does."""
        text = rewrite_query(question) if self.rewrite else question
        q = self.embedder.embed([text])[0]
        q, offset = centred_query(q, self._centroid, centroid_weight)
        result: npt.NDArray[np.float32] = self._matrix @ q + np.float32(offset)
        return result

    def rank(self, question: str, depth: int) -> list[int]:
        return [int(i) for i in np.argsort(-self.scores(question), kind="stable")[:depth]]


@dataclass(frozen=True)
class HybridSetting:
    """One configuration of the hybrid ranker: the library's weights, a bench-only variant
    (fusion, entity term), pool size, query rewriting."""

    name: str
    config: RankConfig
    variant: Variant = STORE
    pool: int = 50
    rewrite: bool = False
    exact_dense: bool = False  # score lexical-only candidates exactly instead of the floor
    bm25_b: float = 0.3


class HybridRetriever:
    """Dense and lexical candidates reordered by :func:`bench.locomo.variants.rerank_variant`
    (the library's ``rerank`` for the store's variant)."""

    def __init__(self, embedder: Embedder, setting: HybridSetting) -> None:
        self.setting = setting
        self.name = setting.name
        self._dense = DenseRetriever(embedder, rewrite=setting.rewrite)
        self._lexical = LexicalIndex(b=setting.bm25_b)
        self._units: Sequence[Unit] = ()

    def fit(self, user: str, units: Sequence[Unit]) -> None:
        self._dense.fit(user, units)
        self._lexical = LexicalIndex(b=self.setting.bm25_b)
        self._lexical.add_many((str(i), u.text) for i, u in enumerate(units))
        self._units = units

    def rank(self, question: str, depth: int) -> list[int]:
        s = self.setting
        dense = self._dense.scores(question, s.config.centroid_weight)
        top = np.argsort(-dense, kind="stable")[: s.pool]
        chosen = [int(i) for i in top]
        seen = set(chosen)
        for key, _ in self._lexical.top(question, s.pool):
            if int(key) not in seen:
                chosen.append(int(key))
                seen.add(int(key))
        in_dense = {int(i) for i in top}
        cands = [
            Candidate(
                str(i),
                float(dense[i]) if (i in in_dense or s.exact_dense) else None,
                self._units[i].created_at,
            )
            for i in chosen
        ]
        # Texts and speakers: read by the entity term only.
        units = [self._units[i] for i in chosen] if s.variant.entity_weight else []
        texts, speakers = [u.text for u in units], [u.speaker for u in units]
        order = rerank_variant(question, cands, self._lexical, s.config, s.variant, texts, speakers)
        return [chosen[pos] for pos, _ in order[:depth]]


class StoreRetriever:
    """The public store API end to end: ``add_many`` to ingest, ``search`` to rank."""

    name = "store"

    def __init__(self, embedder: Embedder, folder: Path | str) -> None:
        """A store at ``folder``: a directory, or a PostgreSQL URL."""
        from headroom.memory.store.store import MemoryStore

        self.store = MemoryStore.open(str(folder), embedder=embedder)
        self._user = ""
        self._fitted: dict[str, int] = {}
        #: Seconds spent ingesting (``add_many``, embedding included) since the store opened.
        self.ingest_s = 0.0

    def fit(self, user: str, units: Sequence[Unit]) -> None:
        """Ingest ``units`` as ``user``'s memories, unless that user already holds exactly them."""
        from headroom.memory.store.store import NewMemory

        self._user = user
        key = hash(tuple(u.text for u in units))
        if self._fitted.get(user) == key:
            return
        t0 = time.perf_counter()
        self.store.clear(user, hard=True)
        items = [
            NewMemory(
                u.text,
                "fact",
                {"dia_ids": list(u.dia_ids), "speaker": u.speaker, "session": u.session, "unit": i},
                u.created_at,
            )
            for i, u in enumerate(units)
        ]
        self.store.add_many(user, items, source="import", dedup=False)
        self._fitted[user] = key
        self.ingest_s += time.perf_counter() - t0

    @property
    def user(self) -> str:
        """The user id of the conversation last fitted."""
        return self._user

    def rank(self, question: str, depth: int) -> list[int]:
        hits = self.store.search(self._user, question, top_k=depth)
        return [int(m.metadata["unit"]) for m, _ in hits]

    def close(self) -> None:
        """Close the store (flushes and releases its files)."""
        self.store.close()


class StoreDenseRetriever:
    """``MemoryStore.search(..., hybrid=False)`` on the same store: the dense-only diagnostic."""

    name = "store, hybrid=False"

    def __init__(self, store: StoreRetriever) -> None:
        self.inner = store

    @staticmethod
    def supported(store: StoreRetriever) -> bool:
        """True when this checkout's ``MemoryStore.search`` takes ``hybrid=``."""
        return "hybrid" in inspect.signature(store.store.search).parameters

    def fit(self, user: str, units: Sequence[Unit]) -> None:
        self.inner.fit(user, units)

    def rank(self, question: str, depth: int) -> list[int]:
        hits = self.inner.store.search(self.inner.user, question, top_k=depth, hybrid=False)
        return [int(m.metadata["unit"]) for m, _ in hits]
