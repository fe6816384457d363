"""Second-stage ranking of a user's memories: lexical BM25 fused with dense similarity.

The store's search calls this on a small candidate set (its dense top-N, plus the lexical
index's top-N) and keeps the best ``top_k``. Everything here is pure Python over that set and
one per-user inverted index, so it stays well inside the critical-path budget (the query is
embedded once; nothing here embeds).

Contracts:
- :class:`LexicalIndex` is a per-user Okapi BM25 index (k1=1.2, b=0.75) over memory texts,
  keyed by memory id. ``add``/``remove`` keep it exact; it is derived data (rebuilt from the log
  like the vector index).
- :func:`rerank` is pure: same inputs, same output. It returns ``(candidate position, score)``
  pairs, best first, ties broken by candidate position (so by dense rank).
- :func:`rewrite_query` turns a question into the statement-like text the memories are written
  as (no LLM): it only ever removes words, never invents them.
- The fusion weights in :data:`DEFAULT_CONFIG` were chosen by measurement on LoCoMo's tune split
  (``python -m bench locomo --split tune``; bench/README.md lists every setting tried).

Why a hand-written BM25 and not rank_bm25: rank_bm25 rebuilds its whole corpus to add one
document and scores every document on every query; a store needs incremental adds and deletes
and scoring of a given candidate set. The index is ~100 lines with no dependency.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from .errors import InvalidInputError, InvalidTypeError

#: Words that carry no topic. Kept short on purpose: names and content words must survive.
_STOPWORD_TEXT = """
a about after again all also am an and any are as at be been before being both but by can could
did do does doing done during each for from had has have having he her here hers herself him
himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours out over own same she should so some such than that the their theirs
them then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself s t ever kind sort thing
things
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())

_WORD_RE = re.compile(r"[a-z0-9]+")
_SIBILANT_ES = ("ses", "xes", "zes", "ches", "shes")


def _stem(word: str) -> str:
    """A deliberately light suffix stripper (plural, -ing, -ed); leaves short words alone."""
    if len(word) <= 4 or word.isdigit():
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(_SIBILANT_ES):
        return word[:-2]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stop-word-free, lightly stemmed word tokens of ``text``.

    Possessives collapse onto the name (``"Caroline's"`` -> ``"caroline"``).
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a str; got {type(text).__name__}")
    words = _WORD_RE.findall(text.lower().replace("'s ", " ").replace("\u2019s ", " "))
    return [_stem(w) for w in words if w not in STOPWORDS]


class LexicalIndex:
    """Incremental per-user Okapi BM25 index keyed by memory id.

    Not thread-safe by itself: the store guards it with the user's lock, as it does the
    vector index. Adding an existing key replaces its text.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise InvalidInputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1; got k1={k1}, b={b}")
        self.k1 = k1
        self.b = b
        self._docs: dict[str, Counter[str]] = {}
        self._lengths: dict[str, int] = {}
        self._postings: dict[str, dict[str, int]] = {}
        self._total_len = 0

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, key: object) -> bool:
        return key in self._docs

    def add(self, key: str, text: str) -> None:
        """Index ``text`` under ``key`` (replacing what the key held)."""
        if key in self._docs:
            self.remove(key)
        terms = Counter(tokenize(text))
        self._docs[key] = terms
        length = sum(terms.values())
        self._lengths[key] = length
        self._total_len += length
        for term, tf in terms.items():
            self._postings.setdefault(term, {})[key] = tf

    def add_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Index every ``(key, text)`` pair."""
        for key, text in items:
            self.add(key, text)

    def remove(self, key: str) -> None:
        """Forget ``key``; unknown keys are ignored (a delete may race a rebuild)."""
        terms = self._docs.pop(key, None)
        if terms is None:
            return
        self._total_len -= self._lengths.pop(key)
        for term in terms:
            posting = self._postings[term]
            del posting[key]
            if not posting:
                del self._postings[term]

    def _idf(self, term: str) -> float:
        df = len(self._postings.get(term, ()))
        n = len(self._docs)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def _term_score(self, tf: int, length: int, avg: float) -> float:
        return tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * length / avg))

    def scores(self, query: str, keys: Sequence[str]) -> list[float]:
        """BM25 score of each key in ``keys`` for ``query`` (0.0 for an unknown key)."""
        terms = tokenize(query)
        if not terms or not self._docs:
            return [0.0] * len(keys)
        avg = self._total_len / len(self._docs) or 1.0
        idf = {t: self._idf(t) for t in set(terms)}
        out: list[float] = []
        for key in keys:
            doc = self._docs.get(key)
            if doc is None:
                out.append(0.0)
                continue
            length = self._lengths[key]
            out.append(
                sum(idf[t] * self._term_score(doc[t], length, avg) for t in terms if t in doc)
            )
        return out

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best keys by BM25 for ``query``, best first (ties by insertion order)."""
        if k <= 0:
            return []
        terms = tokenize(query)
        if not terms or not self._docs:
            return []
        avg = self._total_len / len(self._docs) or 1.0
        acc: dict[str, float] = {}
        for term in terms:
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = self._idf(term)
            for key, tf in posting.items():
                acc[key] = acc.get(key, 0.0) + idf * self._term_score(tf, self._lengths[key], avg)
        order = {key: i for i, key in enumerate(acc)}
        best = sorted(acc.items(), key=lambda kv: (-kv[1], order[kv[0]]))
        return best[:k]


# --- query analysis --------------------------------------------------------------------------

_QUESTION_LEAD = re.compile(
    r"^\s*(?:(?:what|which|who|whom|whose|when|where|why|how)(?:\s+(?:kind|type|sort)s?\s+of)?"
    r"(?:\s+(?:many|much|long|often|old|far))?"
    r"(?:\s+(?:is|are|was|were|do|does|did|has|have|had|can|could|would|will|might|should))?"
    r"|(?:is|are|was|were|do|does|did|has|have|had|can|could|would|will))\b\s*",
    re.IGNORECASE,
)
_MONTH_TEXT = (
    "january february march april may june july august september october november december"
)
_MONTHS: tuple[str, ...] = tuple(_MONTH_TEXT.split())
_MONTH_RE = re.compile(r"\b(" + "|".join(_MONTHS) + r")\b(?:\s+(\d{4}))?", re.IGNORECASE)
_YEAR_RE = re.compile(r"\b(19\d{2}|20\d{2})\b")
_NAME_RE = re.compile(r"\b([A-Z][a-z]+(?:'s)?)\b")


def rewrite_query(query: str) -> str:
    """The question with its interrogative lead and question mark removed, else unchanged.

    ``"When did Caroline go to the support group?"`` -> ``"Caroline go to the support group"``.
    Never returns an empty string: a query that is only a lead comes back unchanged.
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


def query_time_window(query: str) -> tuple[int, int | None] | None:
    """``(year, month or None)`` the query names (``"in May 2023"``, ``"in 2022"``), else None."""
    month = _MONTH_RE.search(query)
    year = _YEAR_RE.search(query)
    if year is None:
        return None
    m = _MONTHS.index(month.group(1).lower()) + 1 if month else None
    return int(year.group(1)), m


# --- fusion ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One memory in the candidate set.

    ``dense_score`` is the cosine similarity from the vector search, or None when the memory
    came from the lexical side only (it then counts as the lowest dense score in the set).
    ``speaker`` is who the memory is about or who said it, when known.
    """

    key: str
    text: str
    dense_score: float | None = None
    created_at: datetime | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class RankConfig:
    """Weights of the fused score (see :func:`rerank`); defaults are the tuned setting.

    ``fusion`` is ``"linear"`` (dense + lexical_weight * BM25 / max BM25 in the set) or
    ``"rrf"`` (weighted reciprocal-rank fusion with constant ``rrf_k``).
    """

    fusion: str = "linear"
    lexical_weight: float = 0.1
    rrf_k: float = 60.0
    entity_weight: float = 0.0
    date_weight: float = 0.0


DEFAULT_CONFIG = RankConfig()


def _date_matches(created: datetime | None, window: tuple[int, int | None]) -> bool:
    if created is None:
        return False
    year, month = window
    return created.year == year and (month is None or created.month == month)


def _rank_order(values: Sequence[float]) -> list[int]:
    """Positions of ``values`` from highest to lowest, ties by position."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def rerank(
    query: str,
    candidates: Sequence[Candidate],
    lexical: LexicalIndex | None = None,
    config: RankConfig = DEFAULT_CONFIG,
    known_entities: Iterable[str] = (),
) -> list[tuple[int, float]]:
    """Order ``candidates`` for ``query``: ``[(position in candidates, fused score)]``, best first.

    Fused score (linear): ``dense + lexical_weight * bm25 / max_bm25 + entity_weight * [memory
    names an entity of the query] + date_weight * [memory dated in the month/year the query
    names]``. BM25 comes from ``lexical`` (the user's index, for corpus-wide IDF) and is 0 when
    no index is given. With ``fusion="rrf"`` the dense and lexical parts are replaced by
    ``1/(rrf_k + dense rank) + lexical_weight/(rrf_k + lexical rank)``.
    """
    n = len(candidates)
    if n == 0:
        return []
    if config.fusion not in {"linear", "rrf"}:
        raise InvalidInputError(f"fusion must be 'linear' or 'rrf'; got {config.fusion!r}")
    known = [d for d in (c.dense_score for c in candidates) if d is not None]
    floor = min(known) if known else 0.0
    dense = [floor if c.dense_score is None else c.dense_score for c in candidates]
    lex = lexical.scores(query, [c.key for c in candidates]) if lexical is not None else [0.0] * n

    if config.fusion == "linear":
        top_lex = max(lex)
        scores = [
            d + (config.lexical_weight * x / top_lex if top_lex > 0 else 0.0)
            for d, x in zip(dense, lex, strict=True)
        ]
    else:
        scores = [0.0] * n
        for weight, values in ((1.0, dense), (config.lexical_weight, lex)):
            for rank, i in enumerate(_rank_order(values), start=1):
                scores[i] += weight / (config.rrf_k + rank)

    if config.entity_weight:
        entities = query_entities(query, known_entities)
        if entities:
            for i, c in enumerate(candidates):
                words = set(_WORD_RE.findall(c.text.lower()))
                if c.speaker:
                    words.add(c.speaker.lower())
                if entities & words:
                    scores[i] += config.entity_weight
    if config.date_weight:
        window = query_time_window(query)
        if window is not None:
            for i, c in enumerate(candidates):
                if _date_matches(c.created_at, window):
                    scores[i] += config.date_weight
    return sorted(((i, s) for i, s in enumerate(scores)), key=lambda t: (-t[1], t[0]))
