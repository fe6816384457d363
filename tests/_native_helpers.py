"""Helpers for the tests of the compiled core: entry builders, file surgery, and a reader of
the log format written from docs/log-format.md alone (pure Python, no compiled code), so the
tests check that the spec is complete enough to read a store without our library.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headroom.memory.store.local import _native as N

# --- entries -------------------------------------------------------------------------------


def vec(*values: float) -> np.ndarray:
    """A float32 vector."""
    return np.array(values, dtype=np.float32)


def add(
    user: str,
    mid: str,
    text: str,
    v: np.ndarray | None = None,
    category: int = 2,
    created_at: int = 0,
    meta: str = "{}",
    source: int = 2,
    model: str = "test-model",
) -> tuple[object, ...]:
    """An ADD entry tuple."""
    return (N.ADD, user, mid, category, source, created_at, text, meta, model, v)


def update(
    user: str, mid: str, text: str, v: np.ndarray | None = None, category: int = 0
) -> tuple[object, ...]:
    """An UPDATE entry tuple (category 0 keeps the old one)."""
    return (N.UPDATE, user, mid, category, 0, 0, text, "", "test-model", v)


def op(
    code: int,
    user: str = "",
    mid: str = "",
    text: str = "",
    created_at: int = 0,
    v: np.ndarray | None = None,
) -> tuple[object, ...]:
    """Any other entry tuple."""
    return (code, user, mid, 0, 0, created_at, text, "", "test-model" if v is not None else "", v)


# --- files ---------------------------------------------------------------------------------


def segments(db: Path) -> list[Path]:
    """The segment files of a store, oldest first."""
    return sorted(db.glob("seg-*.log"))


def store_bytes(db: Path) -> bytes:
    """Every byte of every file under the store directory, concatenated."""
    out = bytearray()
    for root, _dirs, files in os.walk(db):
        for name in sorted(files):
            out += Path(root, name).read_bytes()
    return bytes(out)


def patch(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# --- an independent reader of the format (docs/log-format.md) ------------------------------

_POLY = 0x82F63B78
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (_POLY if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli), bit-reflected, init and final xor 0xFFFFFFFF."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _TABLE[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """LevelDB's CRC mask: rotate right by 15 bits and add 0xa282ead8."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


SEGMENT_MAGIC = b"HRMEMLOG"
SYNC_MAGIC = 0xE1A9C3B7
FRAME_HEADER = 13
ENTRY_FIXED = 52


@dataclass
class Header:
    version: int
    size: int
    number: int
    replaces: int
    seq_floor: int
    generation: int


@dataclass
class Frame:
    offset: int
    length: int  # payload length
    entries: list[dict[str, object]]

    @property
    def end(self) -> int:
        return self.offset + FRAME_HEADER + self.length


def read_header(data: bytes) -> Header:
    """Parse and check a segment header (ValueError when damaged)."""
    if data[:8] != SEGMENT_MAGIC:
        raise ValueError("bad magic")
    version, size = struct.unpack_from("<II", data, 8)
    (stored,) = struct.unpack_from("<I", data, size - 4)
    if mask(crc32c(data[: size - 4])) != stored:
        raise ValueError("bad header crc")
    number, replaces, seq_floor, generation = struct.unpack_from("<QQQI", data, 16)
    return Header(version, size, number, replaces, seq_floor, generation)


def decode_payload(p: bytes) -> list[dict[str, object]]:
    """Decode a BATCH payload into entry dicts (ValueError when malformed)."""
    (count,) = struct.unpack_from("<I", p, 0)
    off = 4
    out = []
    for _ in range(count):
        seq, ts, created, opc, cat, src, dtype, dim, *lens = struct.unpack_from(
            "<QqqBBBBI5I", p, off
        )
        off += ENTRY_FIXED
        fields = []
        for n in lens:
            fields.append(p[off : off + n].decode("utf-8"))
            off += n
        vector = None
        if dtype == 1:
            vector = np.frombuffer(p[off : off + 4 * dim], dtype="<f4").copy()
            off += 4 * dim
        user, mid, text, meta, model = fields
        out.append(
            {
                "seq": seq,
                "ts": ts,
                "created_at": created,
                "op": opc,
                "category": cat,
                "source": src,
                "user": user,
                "id": mid,
                "text": text,
                "metadata": meta,
                "model": model,
                "vector": vector,
            }
        )
    if off != len(p):
        raise ValueError("trailing bytes in payload")
    return out


def frames(path: Path) -> Iterator[Frame]:
    """Valid frames of a segment, in order, resynchronising past damage like the spec says."""
    data = path.read_bytes()
    header = read_header(data)
    pos = header.size
    while pos + FRAME_HEADER <= len(data):
        magic, length, ftype, stored = struct.unpack_from("<IIBI", data, pos)
        ok = (
            magic == SYNC_MAGIC
            and ftype == 1
            and 4 <= length <= 64 << 20
            and pos + FRAME_HEADER + length <= len(data)
        )
        if ok:
            payload = data[pos + FRAME_HEADER : pos + FRAME_HEADER + length]
            ok = mask(crc32c(payload, crc32c(bytes([ftype])))) == stored
        if ok:
            try:
                entries = decode_payload(payload)
            except (ValueError, struct.error, UnicodeDecodeError):
                ok = False
        if ok:
            yield Frame(pos, length, entries)
            pos += FRAME_HEADER + length
        else:
            pos += 1


def read_store(db: Path) -> list[dict[str, object]]:
    """Every entry of the live segments, in log order, read without the compiled core."""
    segs = [(p, read_header(p.read_bytes())) for p in segments(db)]
    replaced = max((h.replaces for _p, h in segs), default=0)
    out: list[dict[str, object]] = []
    for p, h in segs:
        if h.number > replaced:
            for fr in frames(p):
                out.extend(fr.entries)
    return out
