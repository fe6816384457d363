"""Stateful property test of the store against a model computed from the operations.

Random sequences of add / update / delete / clear / forget / compact / reopen across several
users; after each step every user's listing and search results equal the model's, the sum of
the user's live vectors (which the hybrid search centres on) equals the model's, and no
result ever belongs to another user.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from headroom.memory.store.store import MemoryStore
from tests.backends import KINDS, BackendKind
from tests.store_helpers import HashEmbedder

USERS = ["alice", "bob", "agent/researcher", "ünïcode user"]
CATEGORIES = ["preference", "fact", "context"]
words = st.sampled_from(
    ["python", "rust", "coffee", "tea", "berlin", "paris", "postgres", "cats", "dogs", "jazz"]
)
texts = st.lists(words, min_size=1, max_size=4).map(" ".join)


class StoreMachine(RuleBasedStateMachine):
    #: The backend under test (one TestCase per backend kind, below).
    kind: BackendKind = KINDS[0]
    #: None: the default (exact search for users this small); a small number forces the
    #: local backend's hnswlib path, its catch-up from the log, and its snapshots.
    ann_threshold: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="hm-stateful-"))
        self.location = self.kind.new_location(self.dir)
        self.embedder = HashEmbedder()
        self.store = self._open()
        self.model: dict[str, dict[str, tuple[str, str]]] = {u: {} for u in USERS}
        self.history: dict[str, int] = {}

    def _open(self) -> MemoryStore:
        return MemoryStore(
            self.location, embedder=self.embedder, sync="off", ann_threshold=self.ann_threshold
        )

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _ids(self) -> list[tuple[str, str]]:
        return [(u, i) for u, mems in self.model.items() for i in mems]

    @rule(user=st.sampled_from(USERS), text=texts, category=st.sampled_from(CATEGORIES))
    def add(self, user: str, text: str, category: str) -> None:
        memory = self.store.add(user, text, category=category)
        assert memory.text == text and memory.category == category and memory.user_id == user
        self.model[user][memory.id] = (text, category)
        self.history[memory.id] = 1

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), text=texts)
    def update(self, data: st.DataObject, text: str) -> None:
        user, memory_id = data.draw(st.sampled_from(self._ids()))
        category = self.model[user][memory_id][1]
        self.store.update(user, memory_id, text)
        self.model[user][memory_id] = (text, category)
        self.history[memory_id] += 1

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        user, memory_id = data.draw(st.sampled_from(self._ids()))
        self.store.delete(user, memory_id)
        del self.model[user][memory_id]

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def delete_wrong_user(self, data: st.DataObject) -> None:
        user, memory_id = data.draw(st.sampled_from(self._ids()))
        other = data.draw(st.sampled_from([u for u in USERS if u != user]))
        try:
            self.store.delete(other, memory_id)
        except KeyError:
            pass
        else:
            raise AssertionError("deleted another user's memory")

    @rule(user=st.sampled_from(USERS))
    def clear(self, user: str) -> None:
        assert self.store.clear(user) == len(self.model[user])
        self.model[user].clear()

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def forget_one(self, data: st.DataObject) -> None:
        user, memory_id = data.draw(st.sampled_from(self._ids()))
        assert self.store.forget(user, [memory_id]) == 1
        del self.model[user][memory_id]
        assert self.store.history(user, memory_id) == []

    @rule()
    def compact(self) -> None:
        self.store.compact()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()

    @invariant()
    def listings_match(self) -> None:
        for user in USERS:
            got = {m.id: (m.text, m.category) for m in self.store.get_all(user)}
            assert got == self.model[user]
            assert all(m.user_id == user for m in self.store.get_all(user))
            assert self.store.stats(user)["total_chunks"] == len(self.model[user])

    @invariant()
    def search_matches(self) -> None:
        query = "python coffee berlin"
        qv = self.embedder.embed([query])[0]
        for user in USERS:
            results = self.store.search(user, query, top_k=3, hybrid=False)
            mems = self.model[user]
            scored = sorted(
                ((float(self.embedder.embed([t])[0] @ qv), i) for i, (t, _) in mems.items()),
                reverse=True,
            )
            want = scored[:3]
            assert len(results) == len(want)
            for (memory, score), (want_score, _) in zip(results, want, strict=True):
                assert memory.id in mems, "a result that is not this user's live memory"
                assert abs(score - want_score) < 1e-4
            got_scores = [s for _, s in results]
            assert got_scores == sorted(got_scores, reverse=True)

    @invariant()
    def hybrid_search_returns_own_live_memories(self) -> None:
        for user in USERS:
            results = self.store.search(user, "tea in paris", top_k=4)
            assert len(results) == min(4, len(self.model[user]))
            assert all(m.id in self.model[user] and m.user_id == user for m, _ in results)
            assert len({m.id for m, _ in results}) == len(results)
            scores = [s for _, s in results]
            assert scores == sorted(scores, reverse=True)

    @invariant()
    def vector_means_match(self) -> None:
        # The mean the hybrid search centres on, kept current from the change feed (added
        # vectors summed in, a full sum again after a removal), equals the model's; the
        # backend's early one (a fresh handle: from the snapshot header) equals the ranking state's.
        for user in USERS:
            texts = [t for t, _ in self.model[user].values()]
            early = self.store.backend.early_vector_mean(user, 1)  # before ranking() is ready
            mean = self.store.backend.ranking(user).vector_mean(1)
            if early is not None:  # the same sum, to the bit
                assert (early[0] is None) == (mean is None)
                assert early[0] is None or np.array_equal(early[0], mean)
            if not texts:
                assert mean is None
                continue
            want = self.embedder.embed(texts).astype(np.float64).mean(axis=0)
            assert mean is not None and np.allclose(mean, want, atol=1e-5)

    @invariant()
    def compiled_vector_sums_match(self) -> None:
        log = getattr(self.store.backend, "log", None)
        if log is None:  # not the local backend
            return
        for user in USERS:
            texts = [t for t, _ in self.model[user].values()]
            total, count, seq = log.vector_sum(user)
            assert count == len(texts) and seq == log.user_seq(user)
            if texts:
                want = self.embedder.embed(texts).astype(np.float64).sum(axis=0)
                assert np.allclose(total, want, atol=1e-5)

    @invariant()
    def history_counts_match(self) -> None:
        # Every live memory has one version per add or update, each with the text written.
        for user, memories in self.model.items():
            for memory_id, (text, _) in memories.items():
                versions = self.store.history(user, memory_id)
                assert len(versions) == self.history[memory_id]
                assert versions[0].operation == "add" and versions[-1].text == text
                assert all(v.operation == "update" for v in versions[1:])

    @invariant()
    def category_filter_returns_k(self) -> None:
        for user in USERS:
            facts = [i for i, (_, c) in self.model[user].items() if c == "fact"]
            results = self.store.search(user, "jazz", top_k=2, category="fact")
            assert len(results) == min(2, len(facts))
            assert all(m.category == "fact" and m.id in facts for m, _ in results)


class AnnStoreMachine(StoreMachine):
    ann_threshold = 3


_settings = settings(max_examples=30, stateful_step_count=35, deadline=None)
StoreMachine.TestCase.settings = _settings
AnnStoreMachine.TestCase.settings = _settings
TestStoreMachine = StoreMachine.TestCase
TestAnnStoreMachine = AnnStoreMachine.TestCase

# The same machine on every other backend of the contract suite.
for _kind in KINDS[1:]:
    _machine = type(f"{_kind.name.title()}StoreMachine", (StoreMachine,), {"kind": _kind})
    _machine.TestCase.settings = _settings
    globals()[f"Test{_machine.__name__}"] = _machine.TestCase
