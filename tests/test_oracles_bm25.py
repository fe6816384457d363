"""LexicalIndex (store/ranking.py) against an independent BM25: rank_bm25.

The oracle is ``rank_bm25.BM25Okapi`` fed the same tokens (``ranking.tokenize``: our tokenizer
and stemmer are what is indexed, so both sides must see the same terms) with our parameters
(k1=1.2, b=0.3). rank_bm25 contributes the corpus statistics (document frequencies, document
lengths, the average length) and the Okapi term weight
``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))``, summed over the query's tokens
(a repeated query token counts again, on both sides).

The IDF differs, and no rank_bm25 variant has ours: BM25Okapi uses ``log((N - df + 0.5) /
(df + 0.5))`` floored at ``epsilon * mean idf`` when negative, BM25L ``log((N + 1) / (df +
0.5))``, BM25Plus ``log((N + 1) / df)``. Ours is the Lucene form ``log(1 + (N - df + 0.5) /
(df + 0.5))`` (never negative, no floor), so the oracle replaces BM25Okapi's IDF table with
that formula, written here from the formula over rank_bm25's own document frequencies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rank_bm25 import BM25Okapi

from headroom.memory.store.ranking import LexicalIndex, tokenize

K1, B = 1.2, 0.3

#: Words that collide after stemming, stop words, possessives, digits, mixed case.
VOCAB = [
    "garden", "gardens", "gardening", "Python", "python", "pythons", "running", "runs",
    "cities", "city", "boxes", "box", "Caroline's", "caroline", "the", "and", "is", "of",
    "tea", "teas", "coffee", "2023", "42", "blue", "zebra", "zebras", "violin", "parked",
    "park", "User", "user", "likes", "liked", "walked", "walk",
]  # fmt: skip


class LuceneIdfOkapi(BM25Okapi):  # type: ignore[misc]
    """rank_bm25's Okapi scoring with the IDF ``log(1 + (N - df + 0.5) / (df + 0.5))``."""

    def _calc_idf(self, nd: dict[str, int]) -> None:
        n = self.corpus_size
        for word, df in nd.items():
            self.idf[word] = math.log(1.0 + (n - df + 0.5) / (df + 0.5))


texts = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=10).map(" ".join)
corpora = st.lists(texts, min_size=1, max_size=12)
queries = st.lists(st.sampled_from([*VOCAB, "unseen", "nowhere"]), min_size=1, max_size=5).map(
    " ".join
)


def _oracle(docs: list[str]) -> Any:
    tokens = [tokenize(d) for d in docs]
    assume(any(tokens))  # rank_bm25 divides by the average length: at least one token
    return LuceneIdfOkapi(tokens, k1=K1, b=B)


def _index(docs: list[str]) -> LexicalIndex:
    index = LexicalIndex()
    assert (index.k1, index.b) == (K1, B)
    index.add_many((f"d{i}", d) for i, d in enumerate(docs))
    return index


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora, queries)
def test_scores_equal_rank_bm25_okapi_with_the_lucene_idf(docs: list[str], query: str) -> None:
    oracle = _oracle(docs)
    index = _index(docs)
    want = oracle.get_scores(tokenize(query))
    got = index.scores(query, [f"d{i}" for i in range(len(docs))] + ["unknown"])
    np.testing.assert_allclose(got[:-1], want, rtol=1e-9, atol=1e-12)
    assert got[-1] == 0.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora, corpora, st.data(), queries)
def test_incremental_adds_removes_and_replacements_score_as_a_fresh_corpus(
    docs: list[str], others: list[str], data: st.DataObject, query: str
) -> None:
    # Build by adds, removals and re-adds of the same keys with new texts; the oracle sees
    # only the final corpus, built from scratch.
    index = LexicalIndex()
    final: dict[str, str] = {}
    for i, text in enumerate(docs + others):
        key = f"k{i % (len(docs) + 1)}"
        index.add(key, text)
        final[key] = text
    for key in data.draw(st.lists(st.sampled_from(sorted(final)), max_size=4, unique=True)):
        if len(final) > 1:
            index.remove(key)
            del final[key]
    index.remove("never-added")
    keys = sorted(final)
    assert len(index) == len(keys)
    oracle = _oracle([final[k] for k in keys])
    want = oracle.get_scores(tokenize(query))
    np.testing.assert_allclose(index.scores(query, keys), want, rtol=1e-9, atol=1e-12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora, queries, st.integers(1, 15))
def test_top_is_the_oracles_top_k_over_the_matching_documents(
    docs: list[str], query: str, k: int
) -> None:
    # Small corpora stay under CANDIDATE_POSTINGS_BUDGET, where top() claims the exact top-k.
    oracle = _oracle(docs)
    want = oracle.get_scores(tokenize(query))
    terms = set(tokenize(query))
    matching = [i for i, d in enumerate(docs) if terms & set(tokenize(d))]
    ranked = sorted(matching, key=lambda i: -want[i])[:k]
    got = _index(docs).top(query, k)
    assert len(got) == len(ranked)
    np.testing.assert_allclose([s for _, s in got], [want[i] for i in ranked], rtol=1e-9)
    for key, score in got:  # each key's score is its own (ties may order keys either way)
        assert math.isclose(score, want[int(key[1:])], rel_tol=1e-9)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora, queries, st.data())
def test_group_scores_follow_their_documented_formula(
    docs: list[str], query: str, data: st.DataObject
) -> None:
    # Documented: a group's term counts are summed over its keys, each distinct query term
    # counts once, saturates with k1 and has no length normalisation; IDF as above.
    oracle = _oracle(docs)
    keys = [f"d{i}" for i in range(len(docs))]
    groups = data.draw(st.lists(st.lists(st.sampled_from([*keys, "gone"]), max_size=5), max_size=4))
    by_key: dict[str, dict[str, int]] = dict(zip(keys, oracle.doc_freqs, strict=True))
    by_key["gone"] = {}
    want = []
    for group in groups:
        total = 0.0
        for term in dict.fromkeys(tokenize(query)):
            tf = sum(by_key[key].get(term, 0) for key in group)
            if tf:
                total += oracle.idf[term] * tf * (K1 + 1) / (tf + K1)
        want.append(total)
    got = _index(docs).group_scores(query, groups)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
