"""A process that exits without closing its store while a snapshot load runs exits cleanly.

The hnswlib snapshot of a user loads on a background thread (engine.py). Killed inside
hnswlib by the interpreter's shutdown (as a daemon thread is), the process aborted with
"terminate called without an active exception"; the loader is waited for instead.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_FILL = """
import sys
import numpy as np
from headroom.memory.store.local.engine import Engine

rng = np.random.default_rng(3)
vecs = rng.standard_normal((400, 16)).astype(np.float32)
engine = Engine(sys.argv[1], ann_threshold=64)
engine.append(
    [(1, "big", f"m{i}", 2, 2, 1_000_000 + i, f"memory {i}", "{}", "test", vecs[i])
     for i in range(400)]
)
engine.search("big", vecs[0], 1)
engine.close()
"""

# The load is made long and spent in the compiled core, releasing the GIL and taking it back
# over and over (the CRC32C of a 1 MiB file, 500 times), so the interpreter reaches its shutdown
# while the loader is in there, as in a real load of a big user's graph.
_EXIT_DURING_LOAD = """
import sys
import threading
from pathlib import Path
import numpy as np
from headroom.memory.store.local import _native
from headroom.memory.store.local import index as index_module
from headroom.memory.store.local.engine import Engine

original = index_module.UserIndex.load.__func__
ballast = Path(sys.argv[1]) / "ballast"
with open(ballast, "wb") as f:
    f.truncate(1 << 20)

def slow_load(cls, *args, **kwargs):
    started.set()
    for _ in range(500):
        _native.crc32c_file(str(ballast))
    return original(cls, *args, **kwargs)

started = threading.Event()
index_module.UserIndex.load = classmethod(slow_load)
engine = Engine(sys.argv[1], ann_threshold=64)
engine.search("big", np.ones(16, np.float32), 5)  # exact scan; the snapshot starts loading
started.wait(30)
print("loading at exit:", any(t.name == "headroom-index-load" for t in threading.enumerate()))
# no close: the interpreter exits with the load under way
"""


def _run(script: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(db)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_exit_during_a_snapshot_load_does_not_abort(tmp_path: Path) -> None:
    db = tmp_path / "db"
    fill = _run(_FILL, db)
    assert fill.returncode == 0, fill.stderr
    assert list((db / "indexes").glob("*.hnsw"))
    done = _run(_EXIT_DURING_LOAD, db)
    assert "loading at exit: True" in done.stdout  # the premise: the exit met the load
    assert done.returncode == 0, done.stderr
    assert "terminate called" not in done.stderr
