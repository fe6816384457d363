"""Reads the header of a ``.safetensors`` file: tensor names, dtypes, shapes and byte offsets.

The format (specified by the huggingface/safetensors project) is an 8-byte little-endian
header length, a JSON header, then the raw tensor bytes. Offsets in the header are relative to
the end of the header; :func:`read_header` turns them into absolute file offsets, which is what
an ONNX external-data reference needs. Nothing here reads tensor data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError

#: A header larger than this is not a model we know how to read (the MiniLM one is 11 KB).
_MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file: ``offset`` and ``length`` are absolute bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header; ``fingerprint`` identifies the layout (header bytes and file size)."""

    tensors: dict[str, TensorInfo]
    file_size: int
    fingerprint: str


def read_header(path: Path) -> SafetensorsHeader:
    """Parse the header of ``path``; raise ModelNotFoundError if it is missing or malformed.

    Every tensor's byte range is checked to lie inside the file, so a graph built from the
    result never points outside it.
    """
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            file_size = path.stat().st_size
            if len(raw_len) != 8:
                raise ValueError("file shorter than 8 bytes")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
                raise ValueError(f"header length {header_len} is implausible")
            raw = f.read(header_len)
        header = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read safetensors weights {path}: {exc}") from None
    base = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = (int(x) for x in spec["data_offsets"])
        if not 0 <= start <= end or base + end > file_size:
            raise ModelNotFoundError(f"tensor {name} of {path} lies outside the file")
        tensors[name] = TensorInfo(
            name=name,
            dtype=str(spec["dtype"]),
            shape=tuple(int(d) for d in spec["shape"]),
            offset=base + start,
            length=end - start,
        )
    digest = hashlib.sha256(raw + str(file_size).encode()).hexdigest()[:16]
    return SafetensorsHeader(tensors=tensors, file_size=file_size, fingerprint=digest)
