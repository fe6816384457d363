"""Whether onnxruntime's int8 matmul sums exactly on this CPU (the int8 query graph needs it).

The int8 query graph multiplies uint8 activations by int8 weights. On x86 CPUs with AVX-512
VNNI or AVX-VNNI, and on ARM, onnxruntime sums those products exactly in int32. On x86 CPUs
with AVX2 but no VNNI it adds pairs of products in int16 first (``vpmaddubsw``), which
saturates when both activations and weights are near their largest values, and the vectors
drift. :func:`int8_sums_exact` runs one small ``DynamicQuantizeMatMul`` whose exact answer
needs those pairs, once per process, and says whether it came out exact.
"""

from __future__ import annotations

import functools

import numpy as np

from . import onnx_writer as w

_K, _N = 64, 16


def _probe_model() -> bytes:
    """``A (4, K) @ B (K, N)`` with every weight 127 (scale 1): the exact result is 127 K."""
    b = w.make_raw_tensor("B", w.INT8, (_K, _N), bytes([127]) * (_K * _N))
    scale = w.make_tensor("scale", w.FLOAT, (), [1.0])
    zero = w.make_raw_tensor("zero", w.INT8, (), b"\x00")
    node = w.make_node(
        "DynamicQuantizeMatMul", ["A", "B", "scale", "zero"], ["Y"], domain="com.microsoft"
    )
    graph = w.make_graph(
        [node],
        "int8-probe",
        [w.make_tensor_value_info("A", w.FLOAT, [4, _K])],
        [w.make_tensor_value_info("Y", w.FLOAT, [4, _N])],
        initializer=[b, scale, zero],
    )
    opsets = [w.make_opsetid("", 20), w.make_opsetid("com.microsoft", 1)]
    return w.make_model_bytes(graph, opsets, 9, "headroom-memory", "probe")


@functools.cache
def int8_sums_exact() -> bool:
    """True when uint8 x int8 products are summed without saturation here (cached per process).

    Activations of 1.0 quantize to 255, so each product is 255 * 127 and a pair of them
    (64,770) overflows int16: a saturating kernel returns about 4,112 instead of 8,128.
    False also when the probe cannot run at all (then int8 is not used either).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(_probe_model(), opts, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"A": np.ones((4, _K), np.float32)})
    except Exception:  # onnxruntime raises its own untyped errors
        return False
    return bool(np.allclose(y, 127.0 * _K, rtol=1e-4))
