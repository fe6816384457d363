"""Both kernel paths: the SIMD CRC32C and dot kernels picked for this CPU and the portable ones
(forced by HEADROOM_PORTABLE_KERNELS=1 at load, or by the test-only switch
``_native._force_portable_kernels``) write the same bytes, read each other's stores, and rank
search results the same. .ci/native-checks also runs every log test under the portable kernels.

Scores: the AVX2 kernel sums with fused multiply-adds in 32 lanes, the portable one in 4 scalar
accumulators, so a score may differ in its last bits (never in the ranking, unless two scores
are within that rounding); the tests bound the difference instead of asking for equal floats.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from headroom.memory.store.local import _native as N
from tests._native_helpers import segments

TS = 1_700_000_000_000_000  # explicit write times: the bytes must not depend on the clock
AT_LOAD = N.kernels()


@pytest.fixture(autouse=True)
def _restore_kernels() -> Iterator[None]:
    yield
    N._force_portable_kernels(AT_LOAD == {"crc32c": "portable", "dot": "portable"})


def write_store(db: Path, dim: int) -> None:
    rng = np.random.default_rng(7)
    with N.Log(str(db), sync="off", segment_bytes=64 << 10) as log:
        for b in range(40):
            batch: list[tuple[object, ...]] = []
            for i in range(5):
                n = 5 * b + i
                v = rng.standard_normal(dim).astype(np.float32)
                batch.append(
                    (
                        N.ADD,
                        f"u{n % 3}",
                        f"m{n}",
                        1 + n % 3,
                        2,
                        n,
                        f"text {n}",
                        "{}",
                        "m",
                        v,
                        TS + n,
                    )
                )
            log.append(batch)
        log.append([(N.DELETE, "u0", "m0", 0, 0, 0, "", "", "", None, TS + 999)])
        log.compact()


def searches(db: Path, dim: int) -> list[list[tuple[str, float]]]:
    rng = np.random.default_rng(11)
    with N.Log(str(db)) as log:
        assert log.recovery["corrupt_bytes"] == 0 and log.recovery["torn_tail_bytes"] == 0
        out = []
        for _ in range(20):
            q = rng.standard_normal(dim).astype(np.float32)
            for u in ("u0", "u1", "u2"):
                out.append(log.search(u, q, 10))
        return out


def same_ranking(a: list[tuple[str, float]], b: list[tuple[str, float]], dim: int) -> None:
    tol = 1e-5 * dim  # unit-variance vectors: the rounding of a.b stays far below this
    assert len(a) == len(b)
    scores = [s for _, s in a]
    for k, ((ia, sa), (ib, sb)) in enumerate(zip(a, b, strict=True)):
        assert abs(sa - sb) <= tol, (k, sa, sb)
        if ia != ib:  # only a near-tie may swap places
            near = [abs(scores[j] - sa) for j in (k - 1, k + 1) if 0 <= j < len(scores)]
            assert near and min(near) <= 2 * tol, (k, a, b)


@pytest.mark.parametrize("dim", [7, 64, 384])
def test_both_kernels_write_the_same_bytes_and_rank_the_same(tmp_path: Path, dim: int) -> None:
    results = {}
    for portable in (False, True):
        N._force_portable_kernels(portable)
        if portable:
            assert N.kernels() == {"crc32c": "portable", "dot": "portable"}
        db = tmp_path / f"db-{portable}"
        write_store(db, dim)
        results[portable] = (
            [p.read_bytes() for p in segments(db)],
            searches(db, dim),
            N.crc32c(b"123456789"),
        )
    assert results[False][0] == results[True][0]  # byte for byte, CRCs included
    assert results[False][2] == results[True][2] == 0xE3069283
    for a, b in zip(results[False][1], results[True][1], strict=True):
        same_ranking(a, b, dim)
    # And each kernel reads what the other wrote (the stores are the same bytes, but read
    # them crosswise anyway, through the other kernel's CRC check).
    N._force_portable_kernels(True)
    cross = searches(tmp_path / "db-False", dim)
    assert [[i for i, _ in r] for r in cross] == [[i for i, _ in r] for r in results[True][1]]


def test_crc_kernels_agree_on_every_length_and_alignment() -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    cases = [data[o : o + n] for o in range(8) for n in (0, 1, 7, 8, 9, 63, 4096, 12289, 39_000)]
    N._force_portable_kernels(True)
    portable = [N.crc32c(c) for c in cases]
    N._force_portable_kernels(False)
    assert [N.crc32c(c) for c in cases] == portable


def test_the_environment_variable_forces_the_portable_kernels_at_load() -> None:
    N._force_portable_kernels(False)
    best = N.kernels()
    code = "from headroom.memory.store.local import _native as N; print(N.kernels())"
    # The child imports the very module this process runs (an instrumented copy, say).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code]
    for value, expected in (("1", {"crc32c": "portable", "dot": "portable"}), ("0", best)):
        env["HEADROOM_PORTABLE_KERNELS"] = value
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(expected)
