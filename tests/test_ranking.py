"""The lexical index behind hybrid search (BM25 top-k equals brute force, common terms capped)
and the session context of the fused ranking."""

from __future__ import annotations

import gc
import random
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headroom.memory.errors import InvalidInputError
from headroom.memory.store.ranking import (
    CANDIDATE_POSTINGS_BUDGET,
    DAY_US,
    DEFAULT_CONFIG,
    Candidate,
    LexicalIndex,
    RankConfig,
    rerank,
    rerank_columns,
    utc_day,
)
from headroom.memory.types import from_timestamp_us

WORDS = ["tea", "coffee", "paris", "berlin", "guitar", "piano", "dogs", "cats", "hiking", "jazz"]


def _brute(index: LexicalIndex, query: str, keys: list[str], k: int) -> list[tuple[str, float]]:
    scores = index.scores(query, keys)
    ranked = sorted(
        ((key, s) for key, s in zip(keys, scores, strict=True) if s > 0),
        key=lambda kv: (-kv[1], keys.index(kv[0])),
    )
    return ranked[:k]


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6), max_size=40),
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
    k=st.integers(1, 10),
)
def test_top_equals_brute_force_for_small_users(docs, query, k) -> None:
    index = LexicalIndex()
    keys = [f"m{i}" for i in range(len(docs))]
    index.add_many(zip(keys, (" ".join(d) for d in docs), strict=True))
    got = index.top(" ".join(query), k)
    want = _brute(index, " ".join(query), keys, k)
    # The same scores in the same order (which of two tied keys comes first is unspecified),
    # and each returned key's score is its true BM25 score.
    assert [round(s, 9) for _, s in got] == [round(s, 9) for _, s in want]
    truth = dict(zip(keys, index.scores(" ".join(query), keys), strict=True))
    assert all(abs(truth[key] - s) < 1e-9 for key, s in got)


def test_common_terms_do_not_generate_candidates_but_still_score() -> None:
    rng = random.Random(3)
    index = LexicalIndex()
    n = CANDIDATE_POSTINGS_BUDGET + 10
    for i in range(n):
        index.add(f"m{i}", "user likes " + " ".join(rng.choices(WORDS, k=3)))
    index.add("rare", "user likes zanzibar")
    top = index.top("user zanzibar", 5)
    assert top[0][0] == "rare"
    assert abs(top[0][1] - index.scores("user zanzibar", ["rare"])[0]) < 1e-9
    # A query of common terms only yields no lexical candidates (dense search covers it).
    assert index.top("user likes", 5) == []


def test_the_candidate_walk_takes_the_rarest_terms_first_within_its_budget() -> None:
    index = LexicalIndex()
    tea = CANDIDATE_POSTINGS_BUDGET // 3  # in many memories, yet within the budget
    jazz = CANDIDATE_POSTINGS_BUDGET - tea  # fits alone, not after tea
    index.add_many((f"t{i}", f"tea note {i}") for i in range(tea))
    index.add_many((f"j{i}", f"jazz note {i}") for i in range(jazz))
    top = index.top("jazz tea", 5)
    # tea is rarer, so it is walked and generates the candidates; jazz only scores them.
    assert len(top) == 5 and all(key.startswith("t") for key, _ in top)
    assert len(index.top("jazz", 5)) == 5  # a term that fits the budget alone is walked


# --- session context -------------------------------------------------------------------------


def test_group_scores_take_a_group_as_one_document() -> None:
    index = LexicalIndex()
    index.add_many(
        [
            ("m1", "son accident road trip"),
            ("m2", "family grand canyon"),
            ("m3", "family dinner"),
            ("m4", "guitar lesson"),
        ]
    )
    got = index.group_scores("family accident family", [["m1", "m2"], ["m3"], ["unknown"], []])
    idf = index._idf
    # Each distinct query term once; a term seen once in a group saturates to exactly its idf.
    assert abs(got[0] - (idf("family") + idf("accident"))) < 1e-12
    assert abs(got[1] - idf("family")) < 1e-12
    assert got[2:] == [0.0, 0.0]
    # Counts add up across the group's memories, saturating like BM25 with no length norm.
    two = index.group_scores("family", [["m2", "m3"]])[0]
    k1 = index.k1
    assert abs(two - idf("family") * 2 * (k1 + 1) / (2 + k1)) < 1e-12


def _accident_candidates() -> tuple[LexicalIndex, list[Candidate]]:
    day1 = datetime(2023, 7, 1, 14, 0, tzinfo=timezone.utc)
    day2 = datetime(2023, 7, 10, 9, 30, tzinfo=timezone.utc)
    texts = {
        "a": "Melanie felt tired after a long week at work",
        "b": "Melanie's kids loved the Grand Canyon",
        "c": "Melanie's son got into an accident on the road trip",
    }
    candidates = [
        Candidate("a", 0.50, day1),
        Candidate("b", 0.47, day2),
        Candidate("c", 0.30, day2),
    ]
    index = LexicalIndex()
    index.add_many(texts.items())
    index.add_many(
        [("f1", "Caroline went hiking"), ("f2", "Caroline paints"), ("f3", "John plays chess")]
    )
    return index, candidates


def test_session_context_lifts_a_memory_whose_day_matches_the_query() -> None:
    # "b" alone matches only the name, like "a"; its day also holds the accident ("c"), so
    # with session context it outranks "a", which it trails on dense similarity.
    index, candidates = _accident_candidates()
    query = "How did Melanie feel about her family after the accident?"
    without = replace(DEFAULT_CONFIG, context_weight=0.0, context_top_weight=0.0)
    keys_without = [candidates[i].key for i, _ in rerank(query, candidates, index, without)]
    keys_with = [candidates[i].key for i, _ in rerank(query, candidates, index)]
    assert keys_without.index("a") < keys_without.index("b")
    assert keys_with.index("b") < keys_with.index("a")
    assert DEFAULT_CONFIG.uses_context and not without.uses_context


def test_session_context_groups_by_day_and_undated_candidates_stand_alone() -> None:
    index, candidates = _accident_candidates()
    candidates[1] = replace(candidates[1], dense_score=0.60)  # "b" (day 2, with "c") is best
    query = "Melanie accident"
    only_top = replace(DEFAULT_CONFIG, lexical_weight=0.0, context_weight=0.0)
    base = replace(only_top, context_top_weight=0.0)
    bonus = only_top.context_top_weight
    plain = dict(rerank(query, candidates, index, base))
    # The best candidate's whole day gains the top bonus ("b" and "c"); day 1 ("a") does not.
    boosted = dict(rerank(query, candidates, index, only_top))
    assert abs(boosted[1] - plain[1] - bonus) < 1e-12
    assert abs(boosted[2] - plain[2] - bonus) < 1e-12
    assert boosted[0] == plain[0]
    # Without dates every candidate is its own group: only the best one gains.
    undated = [replace(c, created_at=None) for c in candidates]
    boosted = dict(rerank(query, undated, index, only_top))
    assert abs(boosted[1] - plain[1] - bonus) < 1e-12
    assert boosted[0] == plain[0] and boosted[2] == plain[2]


#: created_at values (µs) where a day ends, around the epoch, far out, unset (0) and None. The
#: last is 1 µs before a midnight of 2516, which float seconds round onto the next day.
_MAY_2023 = 1_683_000_000_000_000
_EDGES = [None, 0, -1, 1, _MAY_2023 - _MAY_2023 % DAY_US, 2**33 * 1_000_000 - 1]
_EDGES += [199_700 * DAY_US - 1]
_CREATED = st.one_of(
    st.sampled_from(_EDGES),
    st.builds(
        lambda d, e: _MAY_2023 + d * DAY_US + e,
        st.integers(-3, 20),
        st.sampled_from([0, -1, 1, 3_600_000_000]),
    ),
    # years 1 to 9000: far past the 272 years where float seconds keep every µs
    st.integers(-62_135_596_800_000_000, 221_000_000_000_000_000),
)
_QUERY_WORDS = [*WORDS, "may", "2023", "on 13 October, 2023", "in May 2023", "in 2024"]


@settings(max_examples=300, deadline=None)
@given(
    docs=st.lists(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=6), min_size=1, max_size=30
    ),
    rows=st.lists(st.tuples(st.one_of(st.none(), st.floats(-1, 1)), _CREATED), max_size=30),
    query=st.lists(st.sampled_from(_QUERY_WORDS), min_size=1, max_size=4),
    weights=st.sampled_from(
        [
            DEFAULT_CONFIG,
            RankConfig(context_weight=0.0),
            RankConfig(date_weight=0.0, context_top_weight=0.0),
            RankConfig(lexical_weight=0.0),
        ]
    ),
    with_index=st.booleans(),
)
def test_rerank_columns_is_rerank_of_the_candidates_to_the_bit(
    docs, rows, query, weights, with_index
) -> None:
    index = LexicalIndex()
    index.add_many((f"m{i}", " ".join(d)) for i, d in enumerate(docs))
    keys = [f"m{i % (len(docs) + 3)}" for i in range(len(rows))]  # some keys unknown
    dense = [d for d, _ in rows]
    created = [us for _, us in rows]
    candidates = [
        Candidate(k, d, from_timestamp_us(us) if us else None)
        for k, d, us in zip(keys, dense, created, strict=True)
    ]
    text = " ".join(query)
    lexical = index if with_index else None
    want = rerank(text, candidates, lexical, weights)
    got = rerank_columns(text, keys, dense, created, lexical, weights)
    assert [(i, s.hex()) for i, s in got] == [(i, s.hex()) for i, s in want]


@settings(max_examples=300, deadline=None)
@given(us=_CREATED.filter(lambda v: v is not None))
def test_utc_day_is_the_utc_date_of_the_timestamp(us: int) -> None:
    assert utc_day(us) == from_timestamp_us(us).date().toordinal()


def test_rerank_columns_refuses_columns_of_unequal_length() -> None:
    with pytest.raises(InvalidInputError, match="unequal length"):
        rerank_columns("q", ["a", "b"], [0.1], [None, None])
    assert rerank_columns("q", [], [], []) == []


def test_a_large_index_adds_nothing_for_the_garbage_collector_to_walk() -> None:
    # Servers hold many users' indexes; tracked containers would make every full collection
    # walk all of them.
    gc.collect()
    before = len(gc.get_objects())
    index = LexicalIndex()
    index.add_many((f"m{i}", f"User note {i} about topic {i % 37} and more") for i in range(2000))
    gc.collect()
    assert len(index) == 2000
    assert len(gc.get_objects()) - before < 100
