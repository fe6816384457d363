"""The lexical index behind hybrid search: BM25 top-k equals brute force, common terms capped."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from headroom.memory.ranking import COMMON_TERM_MIN_DF, LexicalIndex

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
    n = COMMON_TERM_MIN_DF * 3
    for i in range(n):
        index.add(f"m{i}", "user likes " + " ".join(rng.choices(WORDS, k=3)))
    index.add("rare", "user likes zanzibar")
    top = index.top("user zanzibar", 5)
    assert top[0][0] == "rare"
    assert abs(top[0][1] - index.scores("user zanzibar", ["rare"])[0]) < 1e-9
    # A query of common terms only yields no lexical candidates (dense search covers it).
    assert index.top("user likes", 5) == []
