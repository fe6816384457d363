"""Ranking variants only the benchmark tries, built on the library's ranking steps.

The store ranks with :func:`headroom.memory.store.ranking.rerank`: the linear fusion
(:func:`~headroom.memory.store.ranking.fused_scores`) then the date and session-context terms
and the order (:func:`~headroom.memory.store.ranking.rank_scores`). The sweep also tries
options the store does not ship; they live here and reuse those steps, so a variant differs
from the store's ranking only in what it names:

- ``fusion="rrf"``: weighted reciprocal-rank fusion, ``1/(rrf_k + dense rank) +
  lexical_weight/(rrf_k + lexical rank)``, in place of the linear fusion;
- ``entity_weight``: a memory that names an entity of the query (a capitalised word of the
  question, or its speaker) gains ``entity_weight``, before the date term;
- :func:`rewrite_query`: the question without its interrogative lead, for the dense side
  (``HybridSetting.rewrite``, ``DenseRetriever(rewrite=True)``).

bench/README.md has what each of them measured on the tune split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from headroom.memory.store.backend import LexicalScorer
from headroom.memory.store.ranking import (
    STOPWORDS,
    Candidate,
    RankConfig,
    dense_scores,
    fused_scores,
    rank_scores,
    rerank,
)

FUSIONS = ("linear", "rrf")


@dataclass(frozen=True)
class Variant:
    """What a sweep row changes beyond :class:`RankConfig`; the default is the store's ranking."""

    fusion: str = "linear"
    rrf_k: float = 60.0
    entity_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {self.fusion!r}")


STORE = Variant()


def rerank_variant(
    query: str,
    candidates: Sequence[Candidate],
    lexical: LexicalScorer | None,
    config: RankConfig,
    variant: Variant = STORE,
    texts: Sequence[str] = (),
    speakers: Sequence[str | None] = (),
) -> list[tuple[int, float]]:
    """:func:`rerank` with ``variant``'s fusion and entity term; the library's own for STORE.

    ``texts`` and ``speakers`` (one per candidate; speakers may be empty) are read only by the
    entity term.
    """
    if variant == STORE:
        return rerank(query, candidates, lexical, config)
    if variant.fusion == "rrf":
        scores = rrf_scores(query, candidates, lexical, config.lexical_weight, variant.rrf_k)
    else:
        scores = fused_scores(query, candidates, lexical, config)
    if variant.entity_weight:
        add_entity_term(query, texts, speakers, variant.entity_weight, scores)
    return rank_scores(query, candidates, scores, lexical, config)


def _rank_order(values: Sequence[float]) -> list[int]:
    """Positions of ``values`` from highest to lowest, ties by position."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def rrf_scores(
    query: str,
    candidates: Sequence[Candidate],
    lexical: LexicalScorer | None,
    lexical_weight: float,
    rrf_k: float,
) -> list[float]:
    """Weighted reciprocal-rank fusion of the dense and lexical scores, one per candidate.

    Dense scores as the library reads them (a lexical-only candidate gets the set's lowest);
    BM25 from ``lexical`` (all 0 without one). Ranks start at 1, ties by position.
    """
    n = len(candidates)
    dense = dense_scores(candidates)
    lex = lexical.scores(query, [c.key for c in candidates]) if lexical is not None else [0.0] * n
    scores = [0.0] * n
    for weight, values in ((1.0, dense), (lexical_weight, lex)):
        for rank, i in enumerate(_rank_order(values), start=1):
            scores[i] += weight / (rrf_k + rank)
    return scores


_WORD_RE = re.compile(r"[a-z0-9]+")
_NAME_RE = re.compile(r"\b([A-Z][a-z]+(?:'s)?)\b")
_MONTH_TEXT = (
    "january february march april may june july august september october november december"
)
_MONTHS = frozenset(_MONTH_TEXT.split())


def add_entity_term(
    query: str,
    texts: Sequence[str],
    speakers: Sequence[str | None],
    weight: float,
    scores: list[float],
    known: Iterable[str] = (),
) -> None:
    """Add ``weight`` (in place) to each candidate whose text or speaker names an entity of
    ``query`` (:func:`query_entities`); nothing when the query names none."""
    entities = query_entities(query, known)
    if not entities:
        return
    for i, text in enumerate(texts):
        words = set(_WORD_RE.findall(text.lower()))
        speaker = speakers[i] if i < len(speakers) else None
        if speaker:
            words.add(speaker.lower())
        if entities & words:
            scores[i] += weight


_QUESTION_LEAD = re.compile(
    r"^\s*(?:(?:what|which|who|whom|whose|when|where|why|how)(?:\s+(?:kind|type|sort)s?\s+of)?"
    r"(?:\s+(?:many|much|long|often|old|far))?"
    r"(?:\s+(?:is|are|was|were|do|does|did|has|have|had|can|could|would|will|might|should))?"
    r"|(?:is|are|was|were|do|does|did|has|have|had|can|could|would|will))\b\s*",
    re.IGNORECASE,
)


def rewrite_query(query: str) -> str:
    """The question with its interrogative lead and question mark removed, else unchanged.

    ``"When did Caroline go to the support group?"`` -> ``"Caroline go to the support group"``.
    It only ever removes words, never invents them. Never returns an empty string: a query
    that is only a lead comes back unchanged.
    """
    stripped = _QUESTION_LEAD.sub("", query, count=1).strip().rstrip("?").strip()
    return stripped or query


def query_entities(query: str, known: Iterable[str] = ()) -> set[str]:
    """Lower-cased names in ``query``: capitalised words not at the start, plus any ``known``.

    Possessives are folded (``"Melanie's"`` -> ``"melanie"``). Month names are not entities.
    """
    found: set[str] = set()
    for i, match in enumerate(_NAME_RE.finditer(query)):
        word = match.group(1).lower().removesuffix("'s")
        if (i > 0 or match.start() > 0) and word not in STOPWORDS and word not in _MONTHS:
            found.add(word)
    lowered = query.lower()
    for name in known:
        if re.search(rf"\b{re.escape(name.lower())}\b", lowered):
            found.add(name.lower())
    return found
