"""Writes the all-MiniLM-L6-v2 forward pass as an ONNX graph over the untouched safetensors.

The graph is the sentence-transformers pipeline after tokenisation: BERT (6 layers, 384 wide,
12 heads, exact-erf GELU, LayerNorm eps 1e-12, token type 0), mean pooling over the attention
mask, then L2 normalisation (eps 1e-12, as ``torch.nn.functional.normalize``).

Every weight is an *external* initializer pointing at its byte range inside
``model.safetensors``: the graph itself is about 30 KB and nothing is copied. PyTorch stores a
linear layer's weight as ``(out, in)``; each linear layer is one ``Gemm`` with ``transB`` over
the untouched weight, on activations kept 2-D (tokens, hidden) between layers: less CPU per
text than 3-D ``MatMul`` + ``Add`` over transposed weights (bench/README.md). Q, K and V
run as one Gemm over their concatenated weights (folded into a constant at load).

The int8 variant (for search queries) replaces each linear layer by onnxruntime's
``DynamicQuantizeMatMul`` over weights quantized per output channel at build time (numpy,
symmetric, 127 levels each side, held inline: the graph is then about 11 MB).

Inputs: ``input_ids`` and ``attention_mask``, int64 ``(batch, seq)``, seq <= 512.
Output: ``embedding``, float32 ``(batch, 384)``, rows of unit length.

Written with :mod:`.onnx_writer`, so building needs neither ``onnx`` nor ``protobuf``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelNotFoundError
from . import onnx_writer
from .graph_cache import GRAPH_VERSION
from .safetensors_header import SafetensorsHeader, TensorInfo, read_header

OPSET = 20
#: onnxruntime's contrib-op domain (DynamicQuantizeMatMul).
MS = "com.microsoft"
#: How the linear layers run: fp32 Gemm, or int8 (see ``build_graph_bytes``).
LINEAR_KINDS = ("fp32", "int8")
IR_VERSION = 9

_DTYPES = {"F32": onnx_writer.FLOAT, "I64": onnx_writer.INT64}


class _Builder:
    """Accumulates nodes and initializers; names every intermediate value uniquely."""

    def __init__(
        self, helper: Any, header: SafetensorsHeader, weights: str, folder: Path, linear: str
    ):
        self.h = helper
        self.header = header
        self.weights = weights
        self.folder = folder
        self.linear = linear
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self._loaded: set[str] = set()

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.h.make_node(op_type, inputs, [out], **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n: int, **attrs: Any) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, **attrs))
        return outs

    def const(self, value: Any, dtype: Any = np.int64, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        dtype_code = _DTYPES["I64" if arr.dtype == np.int64 else "F32"]
        tensor = self.h.make_tensor(name, dtype_code, arr.shape, arr.flatten().tolist())
        self.inits.append(tensor)
        return name

    def weight(self, key: str, shape: tuple[int, ...] | None = None) -> str:
        """An external initializer for the safetensors tensor ``key``."""
        info: TensorInfo | None = self.header.tensors.get(key)
        if info is None or info.dtype not in _DTYPES:
            raise ModelNotFoundError(f"weights lack tensor {key} (or it is not F32/I64)")
        if shape is not None and info.shape != shape:
            raise ModelNotFoundError(f"tensor {key} has shape {info.shape}, expected {shape}")
        if key not in self._loaded:
            t = self.h.make_external_tensor(
                key, _DTYPES[info.dtype], info.shape, self.weights, info.offset, info.length
            )
            self.inits.append(t)
            self._loaded.add(key)
        return key

    def array(self, key: str) -> npt.NDArray[np.float32]:
        """The safetensors tensor ``key`` read into memory (for weights rewritten at build)."""
        info = self.header.tensors.get(key)
        if info is None or info.dtype != "F32":
            raise ModelNotFoundError(f"weights lack tensor {key} (or it is not F32)")
        count = int(np.prod(info.shape))
        data = np.fromfile(self.folder / self.weights, "<f4", count, offset=info.offset)
        return data.astype(np.float32).reshape(info.shape)

    def linear_layer(self, x: str, prefixes: tuple[str, ...]) -> str:
        """``x @ W.T + b`` for the torch Linear layers ``prefixes`` side by side; ``x`` is 2-D.

        fp32: one Gemm over the untouched weights (several are concatenated at load). int8:
        the weights quantized per output channel at build (symmetric, 127 levels each side),
        the activations per tensor per call (onnxruntime's DynamicQuantizeMatMul: uint8
        activations times int8 weights, int32 sums, scaled back to float with the bias added).
        """
        if self.linear == "fp32":
            ws = [self.weight(f"{p}.weight") for p in prefixes]
            bs = [self.weight(f"{p}.bias") for p in prefixes]
            w = ws[0] if len(ws) == 1 else self.op("Concat", ws, axis=0)
            bias = bs[0] if len(bs) == 1 else self.op("Concat", bs, axis=0)
            return self.op("Gemm", [x, w, bias], transB=1)
        return self.int8_linear(x, prefixes)

    def int8_linear(self, x: str, prefixes: tuple[str, ...]) -> str:
        """``linear_layer`` in int8: one DynamicQuantizeMatMul over weights quantized here."""
        w_f = np.concatenate([self.array(f"{p}.weight") for p in prefixes], axis=0)
        b_f = np.concatenate([self.array(f"{p}.bias") for p in prefixes], axis=0)
        scale, w_q = quantize_per_channel(w_f)
        name = self.name("wq")
        self.inits.append(self.h.make_raw_tensor(name, self.h.INT8, w_q.T.shape, w_q.T.tobytes()))
        w_scale = self.const(scale, np.float32, "wscale")
        bias = self.const(b_f, np.float32, "bias")
        zero = self.name("wzero")
        self.inits.append(self.h.make_raw_tensor(zero, self.h.INT8, (), b"\x00"))
        return self.op("DynamicQuantizeMatMul", [x, name, w_scale, zero, bias], domain=MS)

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
            axis=-1,
            epsilon=eps,
        )


def quantize_per_channel(
    w: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    """Symmetric int8 per row of ``w`` (out, in): ``(scale, q)``, ``w ~= q * scale[:, None]``."""
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return scale, q


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {model_dir / 'config.json'}: {exc}") from None
    return cfg


def build_graph_bytes(
    model_dir: Path,
    weights_name: str = "model.safetensors",
    proto: Any = None,
    linear: str = "fp32",
) -> bytes:
    """Serialised ONNX model for the BERT sentence encoder in ``model_dir``.

    ``proto`` writes the protobuf messages: :mod:`.onnx_writer` by default (no ``onnx``
    package needed); the tests pass an ``onnx.helper`` adapter and compare the bytes.

    ``model_dir`` holds ``config.json`` and ``weights_name``. The external-data locations are
    ``weights_name`` relative to the folder onnxruntime is told to read initializers from.
    ``linear``: ``"fp32"`` (the exact graph, every weight external) or ``"int8"`` (the query
    graph: the linear layers' weights quantized here, per output channel, and held inline;
    embeddings and LayerNorms stay fp32 and external).
    Raises ModelNotFoundError if the files are missing or not a BERT of the expected layout.
    """
    if linear not in LINEAR_KINDS:
        raise ValueError(f"linear must be one of {LINEAR_KINDS}; got {linear!r}")
    helper: Any = proto if proto is not None else onnx_writer
    cfg = _config(model_dir)
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    if cfg.get("hidden_act", "gelu") != "gelu" or hidden % heads:
        raise ModelNotFoundError(f"{model_dir} is not a BERT encoder this builder supports")
    header = read_header(model_dir / weights_name)
    b = _Builder(helper, header, weights_name, model_dir, linear)
    head_dim = hidden // heads

    ids, mask = "input_ids", "attention_mask"
    # Embeddings: word + position + token type 0, then LayerNorm.
    word = b.op("Gather", [b.weight("embeddings.word_embeddings.weight"), ids])
    seq = b.op("Slice", [b.op("Shape", [ids]), b.const([1]), b.const([2])])
    pos_ids = b.op("Slice", [b.weight("embeddings.position_ids"), b.const([0]), seq, b.const([1])])
    pos = b.op("Gather", [b.weight("embeddings.position_embeddings.weight"), pos_ids])
    typ = b.op("Gather", [b.weight("embeddings.token_type_embeddings.weight"), b.const(0)])
    x = b.op("Add", [b.op("Add", [word, pos]), typ])
    x = b.layer_norm(x, "embeddings.LayerNorm", eps)

    # Additive attention bias: 0 where attended, float32 min where padded (as transformers).
    mask_f = b.op("Cast", [mask], to=helper.FLOAT)
    inv = b.op("Sub", [b.const(1.0, np.float32), mask_f])
    bias = b.op("Mul", [inv, b.const(float(np.finfo(np.float32).min), np.float32)])
    bias = b.op("Unsqueeze", [bias, b.const([1, 2])])  # (batch, 1, 1, seq)
    scale = b.const(1.0 / float(np.sqrt(head_dim)), np.float32)
    # Activations stay 2-D (tokens, hidden) between layers, so every linear layer is one Gemm
    # with its bias, on the untouched (out, in) weight (transB); only attention is 4-D.
    batch_seq = b.op("Shape", [ids])
    heads_shape = b.op("Concat", [batch_seq, b.const([3 * heads, head_dim])], axis=0)
    tokens_shape = b.const([-1, hidden])
    x = b.op("Reshape", [x, tokens_shape])

    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        names = tuple(f"{p}.attention.self.{n}" for n in ("query", "key", "value"))
        qkv = b.linear_layer(x, names)  # (tokens, 3 * hidden)
        qkv = b.op("Transpose", [b.op("Reshape", [qkv, heads_shape])], perm=[0, 2, 1, 3])
        q, k, v = b.ops("Split", [qkv], 3, axis=1, num_outputs=3)  # (batch, heads, seq, dim)
        k = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, k]), scale]), bias])
        probs = b.op("Softmax", [scores], axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, tokens_shape])
        attn = b.linear_layer(ctx, (f"{p}.attention.output.dense",))
        x = b.layer_norm(b.op("Add", [attn, x]), f"{p}.attention.output.LayerNorm", eps)
        inter = b.op("Gelu", [b.linear_layer(x, (f"{p}.intermediate.dense",))])
        out = b.linear_layer(inter, (f"{p}.output.dense",))
        x = b.layer_norm(b.op("Add", [out, x]), f"{p}.output.LayerNorm", eps)
    x = b.op("Reshape", [x, b.op("Concat", [batch_seq, b.const([hidden])], axis=0)])

    # Mean pooling over the mask: (batch, 1, seq) @ (batch, seq, hidden) / token count.
    m = b.op("Unsqueeze", [mask_f, b.const([1])])
    summed = b.op("Squeeze", [b.op("MatMul", [m, x]), b.const([1])])
    count = b.op("ReduceSum", [mask_f, b.const([1])], keepdims=1)
    count = b.op("Max", [count, b.const(1e-9, np.float32)])
    mean = b.op("Div", [summed, count])
    norm = b.op("ReduceL2", [mean, b.const([1])], keepdims=1)
    norm = b.op("Max", [norm, b.const(1e-12, np.float32)])
    b.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))

    graph = helper.make_graph(
        b.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info(ids, helper.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info(mask, helper.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding", helper.FLOAT, ["batch", hidden])],
        initializer=b.inits,
    )
    data: bytes = helper.make_model_bytes(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)]
        + ([helper.make_opsetid(MS, 1)] if linear == "int8" else []),
        ir_version=IR_VERSION,
        producer_name="headroom-memory",
        producer_version=str(GRAPH_VERSION),
    )
    return data
