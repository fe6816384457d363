"""Secure delete: after PURGE and a compaction, no byte of a purged memory's text (any version)
or vector remains in any file under the store, while everything kept is still there.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from headroom.memory.store.local import _native as N
from tests._native_helpers import add, op, store_bytes, update

USERS = [f"user{k}" for k in range(10)]


def test_purge_and_compact_leave_no_byte_of_deleted_memories(tmp_path: Path) -> None:
    db = tmp_path / "db"
    rng = random.Random(99)
    nrng = np.random.default_rng(99)
    markers = [f"MARK{rng.getrandbits(96):024x}" for _ in range(1000)]
    vecs = nrng.standard_normal((1000, 16)).astype(np.float32)
    owner = {m: USERS[(i // 2) % 10] for i, m in enumerate(markers)}
    # Memories of user9 go with a whole-user purge; of the rest, every other one is purged.
    doomed = {m for i, m in enumerate(markers) if owner[m] == "user9" or i % 2 == 1}
    kept_markers = [m for m in markers if m not in doomed]
    assert len(doomed) == 550  # every other memory, plus the rest of user9's
    extra: dict[str, tuple[str, np.ndarray]] = {}  # second versions: marker -> (text, vector)

    with N.Log(str(db), sync="off", segment_bytes=64 << 10) as log:
        for start in range(0, 1000, 50):
            log.append(
                [
                    add(owner[m], m, f"the secret {m}", vecs[i])
                    for i, m in enumerate(markers[start : start + 50], start)
                ]
            )
        # A second version for every tenth memory, so history must go too (or stay).
        for i in range(0, 1000, 10):
            m = markers[i]
            text, v = f"version two of {m} V2{m[4:]}", nrng.standard_normal(16).astype(np.float32)
            log.append([update(owner[m], m, text, v)])
            extra[m] = (text, v)
        # Background jobs mentioning a doomed memory of user9 go with the user.
        log.append([op(N.PENDING, "user9", "job9", f'{{"about": "{markers[9]}"}}')])
        for start in range(0, 1000, 100):
            chunk = [m for m in markers[start : start + 100] if m in doomed and owner[m] != "user9"]
            log.append([op(N.PURGE, owner[m], m) for m in chunk])
        log.append([op(N.PURGE, "user9")])
        assert len(list(db.glob("seg-*.log"))) > 1
        res = log.compact()
        assert res["entries_after"] == len(kept_markers) + len(
            [m for m in extra if m not in doomed]
        )
        assert log.users() == USERS[:9] and log.pending() == []

    blob = store_bytes(db)
    for i, m in enumerate(markers):
        alive = m not in doomed
        assert (m.encode() in blob) == alive, m
        assert (vecs[i].tobytes() in blob) == alive, m
        if m in extra:
            text, v = extra[m]
            assert (text.encode() in blob) == alive and (v.tobytes() in blob) == alive, m
    names = sorted(p.name for p in db.iterdir())
    assert len(names) == 2 and names[0] == "LOCK" and names[1].startswith("seg-")

    with N.Log(str(db)) as log:  # and the kept ones are whole after reopen
        live = {m["id"]: m for u in USERS for m in log.list(u)}
        assert set(live) == set(kept_markers)
        for m in kept_markers:
            want = extra[m][0] if m in extra else f"the secret {m}"
            assert live[m]["text"] == want
            assert len(log.history(owner[m], m)) == (2 if m in extra else 1)


def test_compaction_removes_vector_packs_of_purged_memories(tmp_path: Path) -> None:
    # Searches write vector packs (packs/*.vpk, copies of a user's vectors); a PURGE and the
    # compaction after it must leave no purged vector in any of them, and packs written after
    # the compaction hold only what was kept.
    db = tmp_path / "db"
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((2, 160, 16)).astype(np.float32)
    q = rng.standard_normal(16).astype(np.float32)
    with N.Log(str(db), sync="off") as log:
        for n in range(160):
            log.append([add(u, f"m{n}", f"t{n}", vecs[k][n]) for k, u in enumerate(USERS[:2])])
    with N.Log(str(db), sync="off") as log:
        for u in USERS[:2]:
            log.search(u, q, 3)
        assert len(list((db / "packs").glob("*.vpk"))) == 2
        assert vecs[0][1].tobytes() in store_bytes(db / "packs")
        log.append([op(N.PURGE, "user0", f"m{n}") for n in range(1, 160, 2)])
        log.append([op(N.PURGE, "user1")])
        log.compact()
        assert list((db / "packs").iterdir()) == []
        hits = log.search("user0", q, 3)
        kept = {f"m{n}": vecs[0][n] for n in range(0, 160, 2)}
        assert [h[0] for h in hits] == sorted(kept, key=lambda m: -float(kept[m] @ q))[:3]
        assert len(list((db / "packs").glob("*.vpk"))) == 1
    blob = store_bytes(db)
    for n in range(160):
        assert (vecs[0][n].tobytes() in blob) == (n % 2 == 0), n
        assert vecs[1][n].tobytes() not in blob, n
