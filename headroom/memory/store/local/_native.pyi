"""Type stub of the compiled core (native/python/binding.cc); the contract is the "native API"
section of docs/architecture.md, the file format docs/log-format.md, the durability promises
docs/durability.md.

The ``_…Dict`` TypedDicts and the ``_Entry`` alias exist only in this stub (the module returns
plain dicts and takes plain tuples): import them under ``typing.TYPE_CHECKING``.
"""

import builtins
from collections.abc import Sequence
from typing import Literal, TypedDict

import numpy as np
import numpy.typing as npt

FORMAT_VERSION: int
INT64_MIN: int
INT64_MAX: int
# Op codes.
ADD: int
UPDATE: int
DELETE: int
CLEAR: int
PURGE: int
PENDING: int
DONE: int
CONFIG: int
REVECTOR: int

# (op, user, memory_id, category, source, created_at_us, text, metadata_json, model_id,
#  vector[, ts_us]); vector None for no vector; ts_us 0 or absent: the time of the commit.
_Entry = (
    tuple[int, str, str, int, int, int, str, str, str, npt.NDArray[np.float32] | None]
    | tuple[int, str, str, int, int, int, str, str, str, npt.NDArray[np.float32] | None, int]
)
_SyncMode = Literal["always", "interval", "off"]
_FaultOp = Literal["write", "fsync", "truncate"]
_ImageMode = Literal["drop", "torn", "zero", "keep"]

class _KernelsDict(TypedDict):
    crc32c: str  # "sse4.2" or "portable"
    dot: str  # "avx2+fma" or "portable"

class _MemoryDict(TypedDict):
    id: str
    user: str
    text: str
    category: int
    source: int
    created_at: int
    updated_at: int
    metadata: str
    model: str
    seq: int
    version: int

class _HistoryDict(_MemoryDict):
    op: str  # "ADD", "UPDATE", "DELETE", "CLEAR" or "REVECTOR"

class _RecordDict(TypedDict):
    seq: int
    ts: int
    op: int
    user: str
    id: str
    category: int
    source: int
    created_at: int
    text: str
    metadata: str
    model: str
    vector: npt.NDArray[np.float32] | None

class _JobDict(TypedDict):
    id: str
    user: str
    text: str
    created_at: int
    seq: int

class _CompactDict(TypedDict):
    bytes_before: int
    bytes_after: int
    records_before: int
    records_after: int
    entries_before: int
    entries_after: int

class _RecoveryDict(TypedDict):
    torn_tail_bytes: int
    corrupt_bytes: int
    corrupt_records: int
    segments: int
    damaged_segments: list[str]

class _StatsDict(TypedDict):
    users: int
    memories: int
    pending: int
    entries: int
    records: int
    skipped_entries: int
    bytes: int
    segments: int
    last_seq: int
    generation: int
    fsyncs: int

def crc32c(b: bytes, /) -> int:
    """CRC32C of bytes (unmasked)."""

def kernels() -> _KernelsDict:
    """The kernels in use (SIMD ones picked for this CPU, or "portable")."""

def _force_portable_kernels(portable: bool) -> None:
    """Tests only: the portable CRC32C and dot kernels (True) or the CPU's best (False)."""

# --- a simulated power loss (tests only; docs/durability.md) ---------------------------------

def _powerloss_enable(root: str) -> None: ...
def _powerloss_disable() -> None: ...
def _powerloss_enabled() -> bool: ...
def _powerloss_crash_at(step: int) -> None: ...
def _powerloss_crash() -> None: ...
def _powerloss_crashed() -> bool: ...
def _powerloss_steps() -> int: ...
def _powerloss_last_sync() -> int: ...
def _powerloss_image(dir: str, out: str = "", mode: _ImageMode = "drop", seed: int = 0) -> bool: ...

class Records:
    """Every entry of the live segments in log order (Log.records())."""

    def __iter__(self) -> Records: ...
    def __next__(self) -> _RecordDict: ...

class _LexiconHeader(TypedDict):
    user: str
    covered_seq: int
    generation: int
    vector_sum: npt.NDArray[np.float64] | None
    vector_count: int
    vector_seq: int

class Lexicon:
    """One user's BM25 index over pre-tokenized memories (native/src/lexicon.h); scores equal
    ``ranking.LexicalIndex``'s to the bit. Not thread-safe: the caller holds a lock."""

    def __init__(self, k1: float = 1.2, b: float = 0.3) -> None: ...
    @property
    def k1(self) -> float: ...
    @property
    def b(self) -> float: ...
    @property
    def total_length(self) -> int: ...
    @property
    def vocabulary(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, memory_id: object) -> bool: ...
    def add(self, label: int, memory_id: str, created_us: int, tokens: Sequence[str]) -> None: ...
    def remove(self, label: int) -> bool: ...
    def remove_id(self, memory_id: str) -> bool: ...
    def created_at(self, memory_id: str) -> int | None: ...
    def created_many(self, memory_ids: Sequence[str]) -> builtins.list[int | None]: ...
    def id_of(self, label: int) -> str | None: ...
    def scores(self, tokens: Sequence[str], keys: Sequence[str]) -> builtins.list[float]: ...
    def group_scores(
        self, tokens: Sequence[str], groups: Sequence[Sequence[str]]
    ) -> builtins.list[float]: ...
    def top(
        self, tokens: Sequence[str], k: int, budget: int
    ) -> builtins.list[tuple[str, float]]: ...
    def to_bytes(
        self,
        user: str,
        covered_seq: int,
        generation: int,
        vector_sum: npt.NDArray[np.float64] | None = None,
        vector_count: int = 0,
        vector_seq: int = 0,
    ) -> bytes: ...
    @property
    def in_place(self) -> bool: ...
    @staticmethod
    def from_bytes(
        data: bytes | bytearray | memoryview, full: bool = True
    ) -> tuple[Lexicon, _LexiconHeader]: ...
    @staticmethod
    def from_file(path: str, full: bool = True) -> tuple[Lexicon, _LexiconHeader]: ...
    @staticmethod
    def read_header(path: str) -> _LexiconHeader: ...

class Log:
    """One store directory: the append-only log, replayed into the live state."""

    def __init__(
        self,
        path: str,
        sync: _SyncMode = "interval",
        sync_interval_ms: int = 100,
        segment_bytes: int = 67108864,
    ) -> None: ...
    def append(self, entries: builtins.list[_Entry]) -> builtins.list[int]: ...
    def refresh(self) -> int: ...
    def get(self, user: str, memory_id: str) -> _MemoryDict | None: ...
    def list(
        self, user: str, categories: int = 0, t_min: int = ..., t_max: int = ...
    ) -> builtins.list[_MemoryDict]: ...
    def history(self, user: str, memory_id: str) -> builtins.list[_HistoryDict]: ...
    def count(self, user: str) -> int: ...
    def users(self) -> builtins.list[str]: ...
    def user_seq(self, user: str) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def generation(self) -> int: ...
    def search(
        self,
        user: str,
        query: npt.NDArray[np.float32],
        k: int,
        categories: int = 0,
        t_min: int = ...,
        t_max: int = ...,
        pack: bool = True,
    ) -> builtins.list[tuple[str, float]]: ...
    def vectors(self, user: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]: ...
    def vector_sum(self, user: str) -> tuple[npt.NDArray[np.float64], int, int]: ...
    def changes(
        self, user: str, since_seq: int
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.float32]]: ...
    def resolve(
        self, user: str, labels: Sequence[int] | npt.NDArray[np.uint64]
    ) -> builtins.list[tuple[str, int, int] | None]: ...
    def pending(self) -> builtins.list[_JobDict]: ...
    def config(self) -> dict[str, str]: ...
    def records(self) -> Records: ...
    def compact(self) -> _CompactDict: ...
    def flush(self) -> None: ...
    @property
    def recovery(self) -> _RecoveryDict: ...
    def stats(self) -> _StatsDict: ...
    @property
    def failed(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def abandon(self) -> None: ...
    def __enter__(self) -> Log: ...
    def __exit__(self, *args: object) -> Literal[False]: ...
    def _set_fault(self, op: _FaultOp, countdown: int, errno: int) -> None: ...
