"""The compiled lexical index (native ``Lexicon``) against the Python reference and a brute force.

- Property tests: any sequence of adds, replacements and removals fed to both the compiled
  ``Lexicon`` and ``ranking.LexicalIndex`` gives the same ``scores``, ``top`` and
  ``group_scores`` to the last bit of a float64 (the candidate walk with small budgets too),
  and the scores equal a brute-force float64 BM25 computed from scratch from the final corpus.
- Snapshots: bytes round-trip to an index that answers and grows exactly as the original; any
  changed byte or truncation is refused (CRC32C / structure).
- The local backend: a fresh store handle loads the snapshot and tokenizes only the log's tail;
  a damaged, foreign-generation or forgotten user's snapshot is never used.
"""

from __future__ import annotations

import errno
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headroom.memory.errors import StoreCorruptionError
from headroom.memory.store import ranking
from headroom.memory.store.local import lexical
from headroom.memory.store.local.engine import _native
from headroom.memory.store.ranking import LexicalIndex, tokenize
from headroom.memory.store.store import MemoryStore, NewMemory
from tests.store_helpers import HashEmbedder

K1, B = 1.2, 0.3

#: Words that collide after stemming, stop words, possessives, digits, mixed case.
VOCAB = [
    "garden", "gardens", "gardening", "Python", "python", "running", "runs", "cities", "city",
    "boxes", "Caroline's", "caroline", "the", "and", "of", "tea", "teas", "coffee", "2023",
    "42", "blue", "zebra", "zebras", "violin", "parked", "park", "User", "user", "likes",
]  # fmt: skip

texts = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=12).map(" ".join)
queries = st.lists(st.sampled_from([*VOCAB, "unseen"]), min_size=0, max_size=6).map(" ".join)
#: (key number, text) to add, or (key number, None) to remove.
ops = st.lists(st.tuples(st.integers(0, 14), st.one_of(st.none(), texts)), max_size=40)


def _bits(values: list[float]) -> list[str]:
    return [float(v).hex() for v in values]


class Pair:
    """The compiled index and the Python reference, fed the same operations."""

    def __init__(self) -> None:
        self.native: Any = _native.Lexicon(K1, B)
        self.python = LexicalIndex(K1, B)
        self.texts: dict[str, str] = {}
        self.label = 0
        self.labels: dict[str, int] = {}

    def apply(self, key: str, text: str | None) -> None:
        if text is None:
            label = self.labels.pop(key, None)
            assert self.native.remove(label if label is not None else 10**9) == (label is not None)
            self.python.remove(key)
            self.texts.pop(key, None)
            return
        self.label += 1
        self.labels[key] = self.label
        self.native.add(self.label, key, 1000 + self.label, tokenize(text))
        self.python.add(key, text)
        self.texts[key] = text

    def check(self, query: str, budget: int, k: int, groups: list[list[str]]) -> None:
        keys = [*sorted(self.texts), "unknown"]
        tokens = tokenize(query)
        assert len(self.native) == len(self.python)
        assert _bits(self.native.scores(tokens, keys)) == _bits(self.python.scores(query, keys))
        assert _bits(self.native.group_scores(tokens, groups)) == _bits(
            self.python.group_scores(query, groups)
        )
        saved = ranking.CANDIDATE_POSTINGS_BUDGET
        ranking.CANDIDATE_POSTINGS_BUDGET = budget
        try:
            want = self.python.top(query, k)
        finally:
            ranking.CANDIDATE_POSTINGS_BUDGET = saved
        got = self.native.top(tokens, k, budget)
        assert [(key, s.hex()) for key, s in got] == [(key, s.hex()) for key, s in want]


def brute_scores(docs: dict[str, str], query: str, keys: list[str]) -> list[float]:
    """BM25 from scratch over the final corpus, in float64, in the documented order."""
    toks = {key: tokenize(text) for key, text in docs.items()}
    n = len(toks)
    terms = tokenize(query)
    if not n or not terms:
        return [0.0] * len(keys)
    avg = sum(len(t) for t in toks.values()) / n or 1.0
    out = []
    for key in keys:
        doc = toks.get(key)
        total = 0.0
        if doc is not None:
            for term in terms:
                tf = doc.count(term)
                if tf:
                    df = sum(1 for d in toks.values() if term in d)
                    idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
                    norm = K1 * (1 - B + B * len(doc) / avg)
                    total += idf * (tf * (K1 + 1) / (tf + norm))
        out.append(total)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, queries, st.sampled_from([0, 1, 3, 8, 2000]), st.integers(0, 12), st.data())
def test_the_compiled_index_equals_the_python_reference_to_the_bit(
    steps: list[tuple[int, str | None]], query: str, budget: int, k: int, data: st.DataObject
) -> None:
    pair = Pair()
    for number, text in steps:
        pair.apply(f"k{number}", text)
    keys = [*sorted(pair.texts), "gone"]
    groups = data.draw(st.lists(st.lists(st.sampled_from(keys), max_size=5), max_size=4))
    pair.check(query, budget, k, groups)
    # And both equal BM25 computed from scratch over the final corpus.
    assert _bits(pair.native.scores(tokenize(query), keys)) == _bits(
        brute_scores(pair.texts, query, keys)
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, ops, queries, st.sampled_from([1, 3, 2000]), st.integers(1, 8))
def test_a_snapshot_answers_and_grows_exactly_as_the_index_it_was_taken_of(
    before: list[tuple[int, str | None]],
    after: list[tuple[int, str | None]],
    query: str,
    budget: int,
    k: int,
) -> None:
    pair = Pair()
    for number, text in before:
        pair.apply(f"k{number}", text)
    data = pair.native.to_bytes("user-1", pair.label, 7)
    loaded, meta = _native.Lexicon.from_bytes(data)
    assert (meta["user"], meta["covered_seq"], meta["generation"]) == ("user-1", pair.label, 7)
    assert meta["vector_sum"] is None and meta["vector_count"] == 0
    assert len(loaded) == len(pair.native)
    assert loaded.vocabulary == pair.native.vocabulary
    assert loaded.total_length == pair.native.total_length
    assert loaded.to_bytes("user-1", pair.label, 7) == data
    pair.native = loaded
    for key, label in pair.labels.items():
        assert loaded.id_of(label) == key and loaded.created_at(key) == 1000 + label
    created = [1000 + label for label in pair.labels.values()]
    assert loaded.created_many([*pair.labels, "nobody"]) == [*created, None]
    # Later adds and removals keep the walk order of the reference (postings in insertion order).
    for number, text in after:
        pair.apply(f"k{number}", text)
    pair.check(query, budget, k, [sorted(pair.texts)])


def test_removing_most_documents_renumbers_without_changing_any_answer() -> None:
    pair = Pair()
    words = ["tea", "coffee", "zebra", "violin", "garden", "python"]
    for i in range(3000):
        pair.apply(f"k{i}", " ".join(words[j % 6] for j in range(i % 7 + 1)))
    for i in range(0, 3000, 4):
        pair.apply(f"k{i}", None)
    for i in range(1, 3000, 4):
        pair.apply(f"k{i}", None)
    for i in range(3000, 3100):
        pair.apply(f"k{i}", "zebra garden tea")
    for budget in (0, 50, 2000):
        pair.check("zebra tea violin coffee", budget, 20, [["k2", "k3"], ["k3002"]])


def test_a_mapped_snapshot_serves_in_place_through_removals_renumbering_and_a_replaced_file(
    tmp_path: Path,
) -> None:
    # The index read in place from its file (the base) with writes in an overlay answers as
    # the reference through removals of most base documents (the renumbering that moves the
    # base into memory), and keeps answering after the file is replaced by a new snapshot.
    pair = Pair()
    words = ["tea", "coffee", "zebra", "violin", "garden", "python"]
    for i in range(3000):
        pair.apply(f"k{i}", " ".join(words[j % 6] for j in range((i * 7) % 5, i % 7 + 1)))
    path = tmp_path / "u.lex"
    path.write_bytes(pair.native.to_bytes("u", pair.label, 0))
    loaded, meta = _native.Lexicon.from_file(str(path))
    assert loaded.in_place and meta["covered_seq"] == pair.label
    assert str(path) in Path("/proc/self/maps").read_text()
    pair.native = loaded
    groups = [["k2", "k3"], ["k2999"]]
    pair.check("zebra tea violin coffee", 40, 20, groups)
    tmp = tmp_path / "u.lex.tmp"
    tmp.write_bytes(_native.Lexicon().to_bytes("u", 1, 0))
    tmp.replace(path)  # as a new snapshot replaces it: the mapped one stays readable
    for i in range(0, 3000, 4):
        pair.apply(f"k{i}", None)
    pair.apply("k1", "violin violin python")
    assert loaded.in_place  # 751 removed: still below the renumbering point
    pair.check("zebra tea violin coffee python", 40, 20, groups)
    for i in range(2, 3000, 4):
        pair.apply(f"k{i}", None)
    assert not loaded.in_place  # renumbered: every live document moved into memory
    for i in range(3000, 3100):
        pair.apply(f"k{i}", "zebra garden tea")
    for budget in (0, 50, 2000):
        pair.check("zebra tea violin coffee python", budget, 20, groups)
    with pytest.raises(FileNotFoundError):
        _native.Lexicon.from_file(str(tmp_path / "missing.lex"))


def test_the_snapshot_keeps_the_vector_sum_and_refuses_every_damaged_byte() -> None:
    lex = _native.Lexicon()
    lex.add(3, "a", 11, tokenize("User keeps zebras in the garden"))
    lex.add(4, "b", 12, tokenize("User plays the violin"))
    data = lex.to_bytes("u", 4, 0, np.array([1.5, -2.0]), 2, 4)
    _, meta = _native.Lexicon.from_bytes(data)
    assert meta["vector_sum"].tolist() == [1.5, -2.0]
    assert (meta["vector_count"], meta["vector_seq"]) == (2, 4)
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(StoreCorruptionError):
                _native.Lexicon.from_bytes(bytes(bad))
    for cut in range(len(data)):
        with pytest.raises(StoreCorruptionError):
            _native.Lexicon.from_bytes(data[:cut])
    with pytest.raises(StoreCorruptionError):
        _native.Lexicon.from_bytes(data + b"\0")


def test_a_snapshot_with_a_valid_checksum_but_bad_structure_is_refused() -> None:
    # The CRC is recomputed after the edit, so only the structural checks can catch it.
    lex = _native.Lexicon()
    lex.add(3, "a", 11, ["zebra", "garden", "zebra"])
    data = bytearray(lex.to_bytes("u", 3, 0))
    # The documents follow the header (128 B), the user id padded to 8, the vector sum (none),
    # the term table (16 B per term) and the postings (8 B per entry); a document's token
    # length is at +24 in its record.
    terms, entries = struct.unpack_from("<I", data, 56)[0], struct.unpack_from("<Q", data, 96)[0]
    length_at = 128 + 8 + 16 * terms + 8 * entries + 24
    assert struct.unpack_from("<I", data, length_at)[0] == 3
    struct.pack_into("<I", data, length_at, 4)
    with pytest.raises(StoreCorruptionError, match="length"):
        _native.Lexicon.from_bytes(_reseal(data))


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _reseal(data: bytearray) -> bytes:
    """Snapshot bytes with their checksum recomputed: only the structural checks can refuse."""
    struct.pack_into("<I", data, 12, _mask(_native.crc32c(bytes(data[16:]))))
    return bytes(data)


# --- the local backend ----------------------------------------------------------------------------

N = lexical.SNAPSHOT_MIN_MEMORIES + 44


def _texts(prefix: str, n: int) -> list[str]:
    animals = ["zebras", "otters", "herons", "lynxes", "bison", "moles", "wrens"]
    return [f"{prefix} note {i} about {animals[i % 7]} and item{i}" for i in range(n)]


def _counting_tokenize(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def counted(text: str) -> list[str]:
        seen.append(text)
        return tokenize(text)

    monkeypatch.setattr(lexical, "tokenize", counted)
    return seen


def _snapshotted(db: Path) -> Path:
    """A store of N memories for user "u", searched once and closed: its one lexical snapshot."""
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.add_many("u", [NewMemory(t) for t in _texts("a", N)], dedup=False)
        store.search("u", "zebras", top_k=3)
    (path,) = (db / "indexes").glob("*.lex")
    return path


def _fresh_results(db: Path, query: str, user: str = "u") -> list[tuple[str, float]]:
    """The search from an index built from the whole log (no snapshot read)."""
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.backend._lexical._directory = None
        return [(m.id, s) for m, s in store.search(user, query, top_k=8)]


def test_a_fresh_handle_loads_the_snapshot_and_tokenizes_only_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        added = store.add_many("u", [NewMemory(t) for t in _texts("a", N)], dedup=False)
        ids = [m.id for m in added.added]
        store.search("u", "zebras", top_k=3)  # builds the index and snapshots it
    snapshots = list((db / "indexes").glob("*.lex"))
    assert len(snapshots) == 1
    with MemoryStore(db, embedder=HashEmbedder(32)) as other:  # the tail: never searched here
        other.add_many("u", [NewMemory(t) for t in _texts("tail", 3)], dedup=False)
        other.delete("u", ids[0])
        other.update("u", ids[1], "a note about otters, updated")
    seen = _counting_tokenize(monkeypatch)
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        got = [(m.id, s) for m, s in store.search("u", "otters item12", top_k=8)]
        indexed = [t for t in seen if t != "otters item12"]
        assert sorted(indexed) == sorted([*_texts("tail", 3), "a note about otters, updated"])
    monkeypatch.undo()
    assert got == _fresh_results(db, "otters item12")


def test_indexes_are_served_from_mapped_snapshots_once_written(tmp_path: Path) -> None:
    # A large user's index is mapped from the snapshot its build wrote; a small user's is
    # written at close only, and the next handle maps it. Answers are those of a fresh build.
    db = tmp_path / "db"
    small = lexical.SNAPSHOT_AT_CLOSE_MIN_MEMORIES + 8
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.add_many("big", [NewMemory(t) for t in _texts("a", N)], dedup=False)
        store.add_many("small", [NewMemory(t) for t in _texts("b", small)], dedup=False)
        store.add_many("tiny", [NewMemory(t) for t in _texts("c", 3)], dedup=False)
        for user in ("big", "small", "tiny"):
            store.search(user, "zebras", top_k=3)
        backend: Any = store.backend
        assert backend.ranking("big").lexicon.in_place
        assert not backend.ranking("small").lexicon.in_place
        assert len(list((db / "indexes").glob("*.lex"))) == 1
    assert len(list((db / "indexes").glob("*.lex"))) == 2  # small's at close; tiny's never
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        backend = store.backend
        got = {user: store.search(user, "otters item3", top_k=8) for user in ("big", "small")}
        assert backend.ranking("small").lexicon.in_place
        assert not backend.ranking("tiny").lexicon.in_place
        maps = Path("/proc/self/maps").read_text()
        assert sum(1 for line in maps.splitlines() if line.endswith(".lex")) == 2
    for user, results in got.items():
        assert [(m.id, s) for m, s in results] == _fresh_results(db, "otters item3", user)


def test_a_damaged_snapshot_is_detected_rebuilt_and_reported_by_verify(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db"
    path = _snapshotted(db)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        assert store.backend.verify()["bad_snapshots"] == 1
        got = [(m.id, s) for m, s in store.search("u", "herons item7", top_k=8)]
    assert "damaged lexical snapshot" in caplog.text
    assert got == _fresh_results(db, "herons item7")
    _native.Lexicon.from_bytes(path.read_bytes())  # written again, intact
    path.write_bytes(b"HRLEXICN" + bytes(200))
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        report = store.backend.verify(repair=True)
        assert report["bad_snapshots"] == 1 and report["repaired"]
        assert not path.exists()


def test_a_snapshot_of_another_generation_or_a_forgotten_user_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    path = _snapshotted(db)
    old = path.read_bytes()
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.compact()
        assert not path.exists()  # compaction drops every snapshot
    path.write_bytes(old)  # a snapshot from before the compaction
    seen = _counting_tokenize(monkeypatch)
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.search("u", "zebras", top_k=3)
    assert len(seen) >= N  # built from the log again
    monkeypatch.undo()
    assert _native.Lexicon.from_bytes(path.read_bytes())[1]["generation"] == 1
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.forget("u")
        assert not path.exists()


def test_a_snapshot_is_written_only_after_the_log_entries_it_covers_are_fsynced(
    tmp_path: Path,
) -> None:
    # The log's next fsync fails: the snapshot, which must follow it, is not written (and the
    # search still answers: the state is held in memory).
    with MemoryStore(tmp_path / "db", embedder=HashEmbedder(32), sync="off") as store:
        store.add_many("u", [NewMemory(t) for t in _texts("a", N)], dedup=False)
        store.backend.log._set_fault("fsync", 1, errno.EIO)
        assert store.search("u", "zebras", top_k=3)
        assert not list((tmp_path / "db" / "indexes").glob("*.lex"))
        assert store.backend.log.failed


def test_a_snapshot_covering_seqs_the_log_does_not_have_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.add_many("u", [NewMemory(t) for t in _texts("a", N)], dedup=False)
        store.search("u", "zebras", top_k=3)
        seq = store.backend.user_seq("u")
    (path,) = (db / "indexes").glob("*.lex")
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<Q", data, 24)[0] == seq
    struct.pack_into("<Q", data, 24, seq + 10)  # as if it saw entries the log then lost
    path.write_bytes(_reseal(data))
    seen = _counting_tokenize(monkeypatch)
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        store.search("u", "zebras", top_k=3)
    assert len(seen) >= N  # rebuilt from the log
    assert _native.Lexicon.from_bytes(path.read_bytes())[1]["covered_seq"] == seq


def _first_posting_tf_at(data: bytes | bytearray) -> int:
    """Where the first posting entry's tf lies in a snapshot (docs/lexicon-snapshot.md)."""
    user_len, terms, dim = (struct.unpack_from("<I", data, at)[0] for at in (36, 56, 64))
    return 128 + (user_len + 7) // 8 * 8 + 8 * dim + 16 * terms + 4


def test_a_snapshot_served_after_its_bounds_check_is_checked_in_full_and_dropped_if_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A posting's tf raised behind a resealed checksum: every read stays in bounds, so a search
    # serves it at once (full=False); the full check (verify, and a thread started when it is
    # served) finds the disagreement, and the state is dropped and rebuilt from the log.
    db = tmp_path / "db"
    path = _snapshotted(db)
    data = bytearray(path.read_bytes())
    at = _first_posting_tf_at(data)
    struct.pack_into("<I", data, at, struct.unpack_from("<I", data, at)[0] + 1)
    path.write_bytes(_reseal(data))
    _native.Lexicon.from_file(str(path), full=False)
    with pytest.raises(StoreCorruptionError, match="posting differs"):
        _native.Lexicon.from_file(str(path))
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        assert store.backend.verify()["bad_snapshots"] == 1
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        backend: Any = store.backend
        assert len(store.search("u", "zebras item3", top_k=5)) == 5
        backend._lexical.join_checks()
        assert backend._lexical.loaded("u") is None and not path.exists()
        got = [(m.id, s) for m, s in store.search("u", "zebras item3", top_k=8)]
    assert "dropping a damaged lexical snapshot" in caplog.text
    assert got == _fresh_results(db, "zebras item3")
    _native.Lexicon.from_file(str(path))  # written again, intact


def test_a_fresh_handle_takes_the_mean_vector_from_the_snapshot_header_without_the_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db"
    path = _snapshotted(db)
    with MemoryStore(db, embedder=HashEmbedder(32)) as other:  # written after the snapshot
        other.add_many("u", [NewMemory(t) for t in _texts("tail", 3)], dedup=False)
    header = _native.Lexicon.read_header(str(path))
    assert header["user"] == "u" and header["vector_count"] == N
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        backend: Any = store.backend
        (mean,) = backend.early_vector_mean("u", 1)
        assert backend._lexical.loaded("u") is None  # the header and the tail: no index
        assert backend.early_vector_mean("u", N + 4) == (None,)
        # The loaded state sums the same header total and tail: the same bits.
        assert mean is not None and np.array_equal(mean, backend.ranking("u").vector_mean(1))
        assert backend.early_vector_mean("u", 1) is None  # loaded: its mean is at hand
        want = store.embedder.embed([*_texts("a", N), *_texts("tail", 3)]).mean(axis=0)
        assert np.allclose(mean, want, atol=1e-6)
    with MemoryStore(db, embedder=HashEmbedder(32)) as other:  # a removal: a whole new sum
        other.delete("u", other.get_all("u")[0].id)
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:
        assert store.backend.early_vector_mean("u", 1) is None  # the state alone can tell
        results = store.search("u", "zebras item3", top_k=5)
        assert [(m.id, s) for m, s in results] == _fresh_results(db, "zebras item3")[:5]
    path.write_bytes(b"HRLEXICN" + bytes(200))  # damaged: no header served
    with pytest.raises(StoreCorruptionError):
        _native.Lexicon.read_header(str(path))
    with MemoryStore(db, embedder=HashEmbedder(32)) as store:  # the state rebuilt, reported
        assert store.backend.early_vector_mean("u", 1) is None
        assert len(store.search("u", "zebras item3", top_k=5)) == 5
    assert "damaged lexical snapshot" in caplog.text
