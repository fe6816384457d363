"""A minimal ONNX writer: serialises the few message types our graph needs, without ``onnx``.

ONNX models are protobuf (``onnx.proto``, proto2 syntax). This module writes the wire format
directly for ModelProto, GraphProto, NodeProto, AttributeProto (int, float, ints), TensorProto
(inline int64/float data, raw bytes, or external data), ValueInfoProto and OperatorSetIdProto,
with the same function names and arguments as ``onnx.helper`` for the subset used. Fields are
written in field-number order and repeated fields exactly as ``onnx``'s own serialiser writes
them (dims and ints unpacked; float_data and int64_data packed), so the bytes are identical to
those of the same model built with ``onnx.helper``: ``tests/test_embedder_graph.py`` checks it.

Every ``make_*`` function returns the serialised message as ``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# onnx.TensorProto.DataType values and TensorProto.DataLocation.EXTERNAL.
FLOAT = 1
UINT8 = 2
INT8 = 3
INT32 = 6
INT64 = 7
EXTERNAL = 1
# AttributeProto.AttributeType values.
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7
_VARINT, _FIXED32, _LEN = 0, 5, 2


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _tag(field, _VARINT) + _varint(value)


def _bytes(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode("utf-8"))


def _attribute(name: str, value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
        raise TypeError(f"attribute {name}: unsupported value {value!r}")
    if isinstance(value, int):
        return _str(1, name) + _int(3, value) + _int(20, _ATTR_INT)
    if isinstance(value, float):
        return _str(1, name) + _tag(2, _FIXED32) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"attribute {name}: only lists of ints are supported")
    return _str(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)


def make_node(
    op_type: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str | None = None,
    domain: str | None = None,
    **attributes: object,
) -> bytes:
    """NodeProto; attributes are written sorted by name, as ``onnx.helper.make_node`` does."""
    out = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    if name is not None:
        out += _str(3, name)
    out += _str(4, op_type)
    out += b"".join(_bytes(5, _attribute(k, v)) for k, v in sorted(attributes.items()))
    if domain is not None:
        out += _str(7, domain)
    return out


def make_tensor(name: str, data_type: int, dims: Sequence[int], vals: Sequence[float]) -> bytes:
    """TensorProto with inline data (``float_data`` or ``int64_data``, packed)."""
    if data_type == FLOAT:
        field, payload = 4, struct.pack(f"<{len(vals)}f", *vals)
    elif data_type == INT64:
        field, payload = 7, b"".join(_varint(int(v)) for v in vals)
    else:
        raise TypeError(f"unsupported tensor data type {data_type}")
    out = b"".join(_int(1, d) for d in dims) + _int(2, data_type)
    if len(vals):
        out += _bytes(field, payload)
    return out + _str(8, name)


def make_raw_tensor(name: str, data_type: int, dims: Sequence[int], raw: bytes) -> bytes:
    """TensorProto with ``raw`` (little-endian) in ``raw_data``, as ``make_tensor(raw=True)``."""
    return b"".join(_int(1, d) for d in dims) + _int(2, data_type) + _str(8, name) + _bytes(9, raw)


def make_external_tensor(
    name: str, data_type: int, dims: Sequence[int], location: str, offset: int, length: int
) -> bytes:
    """TensorProto whose data is ``length`` bytes at ``offset`` in the file ``location``."""
    entries = (("location", location), ("offset", str(offset)), ("length", str(length)))
    out = b"".join(_int(1, d) for d in dims) + _int(2, data_type) + _str(8, name)
    out += b"".join(_bytes(13, _str(1, k) + _str(2, v)) for k, v in entries)
    return out + _int(14, EXTERNAL)


def make_tensor_value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> bytes:
    """ValueInfoProto of a tensor; an int dimension is fixed, a str one symbolic."""
    dims = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def make_graph(
    nodes: Sequence[bytes],
    name: str,
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializer: Sequence[bytes] = (),
) -> bytes:
    """GraphProto."""
    return (
        b"".join(_bytes(1, n) for n in nodes)
        + _str(2, name)
        + b"".join(_bytes(5, t) for t in initializer)
        + b"".join(_bytes(11, i) for i in inputs)
        + b"".join(_bytes(12, o) for o in outputs)
    )


def make_opsetid(domain: str, version: int) -> bytes:
    """OperatorSetIdProto."""
    return _str(1, domain) + _int(2, version)


def make_model_bytes(
    graph: bytes,
    opset_imports: Sequence[bytes],
    ir_version: int,
    producer_name: str,
    producer_version: str,
) -> bytes:
    """The serialised ModelProto."""
    return (
        _int(1, ir_version)
        + _str(2, producer_name)
        + _str(3, producer_version)
        + _bytes(7, graph)
        + b"".join(_bytes(8, o) for o in opset_imports)
    )
