"""Second-stage ranking of a user's memories: lexical BM25 fused with dense similarity.

The store's search calls this on a small candidate set (its dense top-N, plus the lexical
index's top-N) and keeps the best ``top_k``. Everything here is pure Python over that set and
one per-user inverted index, so it stays well inside the critical-path budget (the query is
embedded once; nothing here embeds).

Contracts:
- :class:`LexicalIndex` is a per-user Okapi BM25 index (k1=1.2, b=0.3) over memory texts,
  keyed by memory id. ``add``/``remove`` keep it exact; it is derived data (rebuilt from the log
  like the vector index).
- Ranking is two public steps, both pure (same inputs, same output): :func:`fused_scores` (the
  linear fusion of dense and lexical scores) and :func:`rank_scores` (adds the date and
  session-context terms to fused scores and orders the candidates). :func:`rerank` is the two
  in turn. ``rank_scores`` and ``rerank`` return ``(candidate position, score)`` pairs, best
  first, ties broken by candidate position (so by dense rank). Other fusions (the
  benchmark's) feed their own scores to :func:`rank_scores`. :func:`rerank_columns` is
  :func:`rerank` of candidates given as columns (keys, dense scores, ``created_at`` in µs),
  the same pairs to the bit; the search ranks with it.
- Session context: candidates written on the same UTC day (``created_at``) are one group, the
  conversation they came from. A candidate gains from its group's lexical match to the query
  (:meth:`LexicalIndex.group_scores` over the group's candidates only) and from sharing the
  group of the best candidate. It only reads the candidate set, never the rest of the user.
- Centring (``RankConfig.centroid_weight``) is applied by the search, not here: the dense
  scores it hands over are already centred on the user's mean memory (``hybrid.py``).
- :data:`DEFAULT_CONFIG` holds the weights the store ranks with, chosen on LoCoMo's tune split
  (``python -m bench locomo --split tune --sweep``; bench/README.md has every setting tried).

Why a hand-written BM25 and not rank_bm25: rank_bm25 rebuilds its whole corpus to add one
document and scores every document on every query; a store needs incremental adds and deletes
and scoring of a given candidate set. The index is ~100 lines with no dependency.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError, InvalidTypeError
from ..types import from_timestamp_us
from .backend import LexicalScorer

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


@functools.lru_cache(maxsize=1 << 15)
def _stem(word: str) -> str:
    """A deliberately light suffix stripper (plural, -ing, -ed); leaves short words alone.

    Memoised, because a user's vocabulary repeats and stemming dominates the cost of building
    a lexical index; 32k entries (a few MB, shared by the process) hold the vocabulary of a
    100k-memory user (about 25k distinct words).
    """
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

    ``b=0.3``: less length normalisation than the textbook 0.75, because memories are short and
    similar in length (the two values are compared in bench/README.md).

    Not thread-safe by itself: the store guards it with the user's lock, as it does the
    vector index. Adding an existing key replaces its text.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.3) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise InvalidInputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1; got k1={k1}, b={b}")
        self.k1 = k1
        self.b = b
        # Plain dicts of str -> int: the collector does not track them, so a large index adds
        # nothing to the cost of a full garbage collection.
        self._docs: dict[str, dict[str, int]] = {}
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
        tokens = tokenize(text)
        terms: dict[str, int] = {}
        for term in tokens:
            terms[term] = terms.get(term, 0) + 1
        self._docs[key] = terms
        self._lengths[key] = len(tokens)
        self._total_len += len(tokens)
        postings = self._postings
        for term, tf in terms.items():
            posting = postings.get(term)
            if posting is None:
                postings[term] = {key: tf}
            else:
                posting[key] = tf

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
            # Added left to right (not sum(): from Python 3.12 it compensates), the order the
            # compiled Lexicon adds in.
            total = 0.0
            for t in terms:
                if t in doc:
                    total += idf[t] * self._term_score(doc[t], length, avg)
            out.append(total)
        return out

    def group_scores(self, query: str, groups: Sequence[Sequence[str]]) -> list[float]:
        """BM25 of ``query`` against each group of keys taken as one document.

        A group's term counts are the sums over its keys (unknown keys add nothing); each
        distinct query term counts once and saturates with ``k1`` like a memory's, with no
        length normalisation (a group is as long as the candidates it happens to hold). IDF
        is the memory-level IDF of this index. 0.0 for a group that matches no query term.
        """
        terms = list(dict.fromkeys(tokenize(query)))
        if not terms or not self._docs:
            return [0.0] * len(groups)
        idf = {t: self._idf(t) for t in terms}
        k1 = self.k1
        out: list[float] = []
        for keys in groups:
            counts = dict.fromkeys(terms, 0)
            for key in keys:
                doc = self._docs.get(key)
                if doc is not None:
                    for t in terms:
                        counts[t] += doc.get(t, 0)
            total = 0.0
            for t, tf in counts.items():
                if tf:
                    total += idf[t] * tf * (k1 + 1) / (tf + k1)
            out.append(total)
        return out

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best keys by BM25 for ``query``, best first, with their :meth:`scores`.

        Candidate generation walks the query's terms from the rarest up and stops walking
        once the next term's postings would take it past :data:`CANDIDATE_POSTINGS_BUDGET`:
        the terms left (e.g. "user" in "User prefers ...") generate no candidates, though they
        still count in the scores of the keys that are returned. The rarest terms carry the
        most weight, and the walk's cost is bounded by the budget, not by the size of the
        index. While a query's postings fit the budget, the result is the exact BM25 top-k.
        """
        if k <= 0:
            return []
        terms = tokenize(query)
        if not terms or not self._docs:
            return []
        avg = self._total_len / len(self._docs) or 1.0
        # _term_score inlined.
        k1, k1p1, b, lengths = self.k1, self.k1 + 1, self.b, self._lengths
        acc: dict[str, float] = {}
        common: list[str] = []
        walked = 0
        postings = self._postings
        for term in sorted(terms, key=lambda t: len(postings.get(t, ()))):
            posting = postings.get(term)
            if not posting:
                continue
            if common or walked + len(posting) > CANDIDATE_POSTINGS_BUDGET:
                common.append(term)
                continue
            walked += len(posting)
            idf = self._idf(term)
            for key, tf in posting.items():
                part = tf * k1p1 / (tf + k1 * (1 - b + b * lengths[key] / avg))
                acc[key] = acc.get(key, 0.0) + idf * part
        if common and acc:
            extra = [(postings[term], self._idf(term)) for term in common]
            for key in acc:
                norm = k1 * (1 - b + b * lengths[key] / avg)
                more = 0.0
                for posting, idf in extra:
                    count = posting.get(key)
                    if count:
                        more += idf * (count * k1p1 / (count + norm))
                if more:
                    acc[key] += more
        # nlargest is stable: equal scores keep their first-seen order. The returned scores are
        # those of scores() to the bit (the walk above adds the same terms in another order).
        keys = [key for key, _ in heapq.nlargest(k, acc.items(), key=itemgetter(1))]
        exact = zip(keys, self.scores(query, keys), strict=True)
        return sorted(exact, key=lambda pair: -pair[1])


#: Postings a lexical query walks to generate candidates (see LexicalIndex.top): large enough
#: that a user of a few hundred memories always gets the exact top-k, small enough to bound the
#: walk's cost for a user of 100k (bench/README.md has the figures).
CANDIDATE_POSTINGS_BUDGET = 2000


# --- a user's ranking state ------------------------------------------------------------------

#: The sum of a user's live vectors (float64), how many were summed, and the user seq the sum is
#: exact at (0 where the backend does not track it).
VectorTotal = tuple[npt.NDArray[np.float64], int, int]


def mean_vector(vectors: VectorTotal | None, min_count: int) -> npt.NDArray[np.float32] | None:
    """The mean of a vector sum (float32); None below ``min_count`` vectors (or none)."""
    if vectors is None or vectors[1] < max(min_count, 1):
        return None
    return (vectors[0] / vectors[1]).astype(np.float32)


@dataclass
class RankingState:
    """One user's BM25 index (with each memory's label and date) and vector sum, as a backend
    derives them and catches them up from its change feed. Implements
    ``backend.UserRanking``; every method is thread-safe.

    ``vectors`` is replaced as one tuple, never changed in place, so a reader without the lock
    sees a consistent sum and count. ``covered_seq`` is the user seq the state is exact at.
    """

    index: LexicalIndex = field(default_factory=LexicalIndex)
    label_ids: dict[int, str] = field(default_factory=dict)
    #: created_at (µs) of every indexed memory: the ranking's date terms need no row reads.
    created: dict[str, int] = field(default_factory=dict)
    vectors: VectorTotal | None = None
    covered_seq: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best ``(memory id, BM25)`` for ``query``."""
        with self.lock:
            return self.index.top(query, k)

    def scores(self, query: str, keys: Sequence[str]) -> list[float]:
        """BM25 of each memory id in ``keys``."""
        with self.lock:
            return self.index.scores(query, keys)

    def group_scores(self, query: str, groups: Sequence[Sequence[str]]) -> list[float]:
        """BM25 of each group of memory ids taken as one document."""
        with self.lock:
            return self.index.group_scores(query, groups)

    def vector_mean(self, min_count: int) -> npt.NDArray[np.float32] | None:
        """The mean of the user's live vectors; None below ``min_count`` of them."""
        return mean_vector(self.vectors, min_count)

    def created_at(self, memory_id: str) -> int | None:
        """``created_at`` (µs) of an indexed memory."""
        return self.created.get(memory_id)

    def created_many(self, memory_ids: Sequence[str]) -> list[int | None]:
        """``created_at`` (µs) of each memory id (None: not indexed)."""
        created = self.created
        return [created.get(m) for m in memory_ids]

    def add(self, label: int, memory_id: str, text: str, created_us: int) -> None:
        """Index a live version (the caller holds ``lock``)."""
        self.index.add(memory_id, text)
        self.label_ids[int(label)] = memory_id
        self.created[memory_id] = int(created_us)

    def remove(self, label: int) -> None:
        """Forget a version that is no longer live (the caller holds ``lock``)."""
        memory_id = self.label_ids.pop(int(label), None)
        if memory_id is not None:
            self.index.remove(memory_id)
            self.created.pop(memory_id, None)


# --- dates in queries --------------------------------------------------------------------------

_MONTH_TEXT = (
    "january february march april may june july august september october november december"
)
_MONTHS: tuple[str, ...] = tuple(_MONTH_TEXT.split())
_MONTH_ALT = "|".join(_MONTHS)
_DAY_MONTH_RE = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\b", re.IGNORECASE
)
_MONTH_DAY_RE = re.compile(rf"\b({_MONTH_ALT})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b", re.IGNORECASE)
_MONTH_RE = re.compile(rf"\b({_MONTH_ALT})\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"\b(19\d{2}|20\d{2})\b")


@dataclass(frozen=True)
class TimeWindow:
    """A date a query names: a year, optionally a month, optionally a day of that month."""

    year: int
    month: int | None = None
    day: int | None = None


def query_time_window(query: str) -> TimeWindow | None:
    """The date the query names (``"on 13 October, 2023"``, ``"in May 2023"``, ``"in 2022"``).

    A year is required (``"in May"`` alone is too vague to use); None when there is none.
    """
    year = _YEAR_RE.search(query)
    if year is None:
        return None
    day_month = _DAY_MONTH_RE.search(query)
    month_day = _MONTH_DAY_RE.search(query)
    if day_month:
        month, day = day_month.group(2), int(day_month.group(1))
    elif month_day:
        month, day = month_day.group(1), int(month_day.group(2))
    else:
        found = _MONTH_RE.search(query)
        month, day = (found.group(1) if found else None), None
    m = _MONTHS.index(month.lower()) + 1 if month else None
    if m is None or day is None or not 1 <= day <= 31:
        day = None
    return TimeWindow(int(year.group(1)), m, day)


#: Days after a named day (or month end) over which a memory's date match fades to zero:
#: people talk about an event in the sessions that follow it ("last week ...").
TIME_FADE_DAYS = 14


def time_affinity(created: datetime | None, window: TimeWindow) -> float:
    """How well a memory's date fits the named date, from 0.0 to 1.0.

    Day: 1.0 within a day, fading linearly to 0 at :data:`TIME_FADE_DAYS` either side. Month:
    1.0 inside the month, 0.5 up to :data:`TIME_FADE_DAYS` after it. Year: 1.0 inside it.
    """
    if created is None or created.year not in (window.year, window.year + 1):
        return 0.0
    if window.month is None:
        return 1.0 if created.year == window.year else 0.0
    if window.day is not None:
        try:
            target = date(window.year, window.month, window.day)
        except ValueError:
            return 0.0
        delta = abs((created.date() - target).days)
        return max(0.0, 1.0 - max(0, delta - 1) / TIME_FADE_DAYS)
    if (created.year, created.month) == (window.year, window.month):
        return 1.0
    first_next = date(window.year + window.month // 12, window.month % 12 + 1, 1)
    return 0.5 if 0 <= (created.date() - first_next).days < TIME_FADE_DAYS else 0.0


# --- fusion ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One memory in the candidate set.

    ``dense_score`` is the cosine similarity from the vector search, or None when the memory
    came from the lexical side only (it then counts as the lowest dense score in the set).
    ``created_at`` is when the memory was written (None: unknown); only the date term and
    session context read it.
    """

    key: str
    dense_score: float | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class RankConfig:
    """Weights of the ranking (see :func:`fused_scores` and :func:`rank_scores`).

    The defaults are the setting the store ranks with (:data:`DEFAULT_CONFIG`); every weight is
    in the units of the dense cosine, and 0 turns its term off.

    ``lexical_weight``: the lexical part of the linear fusion, ``lexical_weight * BM25 / max
    BM25 in the set``, so the best lexical match gains exactly ``lexical_weight``.

    ``date_weight``: added times :func:`time_affinity` when the query names a date.

    ``context_weight`` and ``context_top_weight`` (session context): a candidate gains
    ``context_weight * (its group's group BM25 / the best group's)`` and ``context_top_weight``
    when it shares the group of the best candidate, where a group is the candidates written on
    the same UTC day: a conversation that matches the query as a whole lifts its memories.

    ``centroid_weight`` (beta) centres the dense side on the user: candidates are scored
    against ``query - beta * centroid``, the centroid being the mean of the user's live memory
    vectors, and ``beta * |centroid|^2`` is added back so an average memory keeps its cosine.
    A memory's dense score is then ``cosine - beta * (memory . centroid - |centroid|^2)``:
    memories that resemble everything the user said ("Caroline values supportive people")
    stop crowding out the ones about what the query asks. The search applies it (the dense
    candidates come from the engine with the centred query); the ranking only sees the
    scores. Users with fewer than ``hybrid.CENTRING_MIN_MEMORIES`` memories are not centred.
    """

    lexical_weight: float = 0.15
    date_weight: float = 0.2
    context_weight: float = 0.1
    context_top_weight: float = 0.04
    centroid_weight: float = 0.6

    @property
    def uses_context(self) -> bool:
        """True when the ranking reads candidates' ``created_at`` for session context."""
        return bool(self.context_weight or self.context_top_weight)


DEFAULT_CONFIG = RankConfig()


def dense_scores(candidates: Sequence[Candidate]) -> list[float]:
    """Each candidate's dense score; one without (lexical only) gets the lowest in the set.

    0.0 for every candidate when none has a dense score.
    """
    return _floor_dense([c.dense_score for c in candidates])


def fused_scores(
    query: str,
    candidates: Sequence[Candidate],
    lexical: LexicalScorer | None = None,
    config: RankConfig = DEFAULT_CONFIG,
) -> list[float]:
    """The linear fusion, one score per candidate: ``dense + lexical_weight * bm25 / max_bm25``.

    ``dense`` is :func:`dense_scores`; BM25 comes from ``lexical`` (the user's index, for
    corpus-wide IDF) and its term is 0 when no index is given or no candidate matches.
    """
    return _fuse(query, [c.key for c in candidates], dense_scores(candidates), lexical, config)


def rank_scores(
    query: str,
    candidates: Sequence[Candidate],
    scores: Sequence[float],
    lexical: LexicalScorer | None = None,
    config: RankConfig = DEFAULT_CONFIG,
) -> list[tuple[int, float]]:
    """Add the date and session-context terms to ``scores`` and order the candidates.

    ``scores`` holds one fused score per candidate (:func:`fused_scores`, or any other fusion
    in the same units); it is not modified. Returns ``[(position in candidates, final score)]``,
    best first, ties by position.

    Date: when the query names a date (:func:`query_time_window`), each candidate gains
    ``date_weight * time_affinity(created_at, that date)``.

    Session context (see :class:`RankConfig`): candidates are grouped by the UTC day of
    ``created_at`` (a candidate without one is a group of its own); each gains
    ``context_weight * group_bm25 / max group_bm25`` (from ``lexical.group_scores`` over the
    groups' keys; skipped without an index or when no group matches), then the group of the
    best candidate so far gains ``context_top_weight``. When every candidate is in one group,
    neither applies (it would not change the order, only inflate every score).
    """
    if len(scores) != len(candidates):
        raise InvalidInputError(
            f"scores must hold one value per candidate: {len(scores)} for {len(candidates)}"
        )
    days = [None if c.created_at is None else c.created_at.date() for c in candidates]
    keys = [c.key for c in candidates]
    return _finish(
        query, keys, scores, days, lambda: [c.created_at for c in candidates], lexical, config
    )


def rerank(
    query: str,
    candidates: Sequence[Candidate],
    lexical: LexicalScorer | None = None,
    config: RankConfig = DEFAULT_CONFIG,
) -> list[tuple[int, float]]:
    """Order ``candidates`` for ``query``: ``[(position in candidates, score)]``, best first.

    :func:`rank_scores` over :func:`fused_scores`; the store's ranking.
    """
    return rank_scores(
        query, candidates, fused_scores(query, candidates, lexical, config), lexical, config
    )


def rerank_columns(
    query: str,
    keys: Sequence[str],
    dense: Sequence[float | None],
    created_us: Sequence[int | None],
    lexical: LexicalScorer | None = None,
    config: RankConfig = DEFAULT_CONFIG,
) -> list[tuple[int, float]]:
    """:func:`rerank` of the candidates ``Candidate(keys[i], dense[i], created)`` given as
    columns, where ``created`` is ``from_timestamp_us(created_us[i])`` (None for None or 0):
    the same pairs to the bit, without building a ``Candidate`` or a datetime per candidate
    (the search's path: the day of a timestamp is :func:`utc_day`; datetimes are made only
    when the query names a date)."""
    if not len(keys) == len(dense) == len(created_us):
        raise InvalidInputError(
            f"columns of unequal length: {len(keys)} keys, {len(dense)} dense scores, "
            f"{len(created_us)} dates"
        )
    scores = _fuse(query, keys, _floor_dense(dense), lexical, config)
    days = [utc_day(us) if us else None for us in created_us]

    def created() -> list[datetime | None]:
        return [from_timestamp_us(us) if us else None for us in created_us]

    return _finish(query, keys, scores, days, created, lexical, config)


#: Microseconds in a day, and the ordinal of the Unix epoch's date.
DAY_US = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: Below this many µs from the epoch (2**33 s, about 272 years) ``from_timestamp_us`` is exact:
#: float seconds keep every microsecond, so the day is integer arithmetic.
_EXACT_US = 2**33 * 1_000_000


def utc_day(created_us: int) -> int:
    """The ordinal of the UTC date of ``from_timestamp_us(created_us)`` (the session context's
    day of a memory)."""
    if -_EXACT_US < created_us < _EXACT_US:
        return created_us // DAY_US + _EPOCH_ORDINAL
    return from_timestamp_us(created_us).date().toordinal()


def _floor_dense(dense: Sequence[float | None]) -> list[float]:
    """:func:`dense_scores` of the candidates' dense scores."""
    known = [d for d in dense if d is not None]
    floor = min(known) if known else 0.0
    return [floor if d is None else d for d in dense]


def _fuse(
    query: str,
    keys: Sequence[str],
    dense: list[float],
    lexical: LexicalScorer | None,
    config: RankConfig,
) -> list[float]:
    """:func:`fused_scores` given the candidates' keys and :func:`dense_scores`."""
    if lexical is None or not keys:
        return dense
    lex = lexical.scores(query, keys)
    top_lex = max(lex)
    if top_lex <= 0:
        return dense
    weight = config.lexical_weight
    return [d + weight * x / top_lex for d, x in zip(dense, lex, strict=True)]


def _finish(
    query: str,
    keys: Sequence[str],
    scores: Sequence[float],
    days: Sequence[Hashable | None],
    created: Callable[[], Sequence[datetime | None]],
    lexical: LexicalScorer | None,
    config: RankConfig,
) -> list[tuple[int, float]]:
    """:func:`rank_scores` given the candidates' keys, their days (None: undated) and their
    ``created_at`` (called only when the query names a date)."""
    if not keys:
        return []
    out = list(scores)
    if config.date_weight:
        window = query_time_window(query)
        if window is not None:
            weight = config.date_weight
            for i, at in enumerate(created()):
                out[i] += weight * time_affinity(at, window)
    if config.uses_context:
        _add_session_context(query, keys, days, lexical, config, out)
    # Best first, ties by position: a reversed sort is stable too.
    order = sorted(range(len(out)), key=out.__getitem__, reverse=True)
    return [(i, out[i]) for i in order]


def _add_session_context(
    query: str,
    keys: Sequence[str],
    days: Sequence[Hashable | None],
    lexical: LexicalScorer | None,
    config: RankConfig,
    scores: list[float],
) -> None:
    """Add the session-context terms of :func:`rank_scores` to ``scores`` in place."""
    groups: dict[object, list[int]] = {}
    for i, day in enumerate(days):
        groups.setdefault(("key", i) if day is None else day, []).append(i)
    if len(groups) < 2:
        return  # one group: the bonuses would lift every candidate alike
    members = list(groups.values())
    if config.context_weight and lexical is not None:
        group_bm25 = lexical.group_scores(query, [[keys[i] for i in m] for m in members])
        best = max(group_bm25)
        if best > 0:
            weight = config.context_weight
            for value, m in zip(group_bm25, members, strict=True):
                if value:
                    bonus = weight * value / best
                    for i in m:
                        scores[i] += bonus
    if config.context_top_weight:
        top = scores.index(max(scores))  # the first best
        day = days[top]
        for i in groups[("key", top) if day is None else day]:
            scores[i] += config.context_top_weight
