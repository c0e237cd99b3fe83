"""Write a `QuantizedGraph` as a standard ONNX QDQ model (docs/onnx.md).

`export_qdq(qg)` walks the graph once (`simulator.walk`) with `QDQOps`, an
op set whose "tensors" are ONNX value names: every op emits the float ONNX
ops of its float function (``MatMul`` + bias ``Add``, ``LayerNormalization``,
``Softmax``, ``Gelu``, ...) and every tensor that holds codes is followed by
``QuantizeLinear`` -> ``DequantizeLinear`` with the frozen scale and zero
point 0 (per channel on the last axis where the graph has a per-channel
scale: the qkv output, whose q/k/v parts have their own scales). Weights are
stored as their integer codes (``w_q``) behind a per-output-channel
``DequantizeLinear``; biases as the int32 ``bias_q`` at ``s_in s_w``. The
dequantized value keeps the IR tensor's name, so ``onnxruntime`` outputs can
be compared boundary by boundary.

Container types: ``bits`` 8 -> INT8/UINT8, 16 -> INT16/UINT16, 4 -> INT4/UINT4
(opset 21) unless ``int4=False``; any other width goes into the next wider
container behind a ``Clip`` to ``[lo s, hi s]`` (QuantizeLinear saturates to
its type only). Opset 21 (``Gelu`` needs 20, 4/16-bit QDQ 21).

What QDQ cannot say, refused with one line (`InputError`): ``two_scaled``
(per-value choice of two scales), ``grouped`` (per-image channel groups),
``predicted`` (per-image scales), early exits, O-2SF LayerNorm channel
shifts. Tensors of kind ``accumulator`` (``q k^T``, a fused in_proj) and
``fixed_point`` (the Q12 activation input) stay float: the integer graph's
Q12 rounding there has no QDQ equivalent.

Arithmetic differences to the integer simulator (measured in docs/onnx.md):
QuantizeLinear rounds half to even, ours half up; requantization is a float
multiply by the float32 scale, ours a dyadic ``M 2**-k``; a fused residual is
rounded once after the add, ours rescales both operands first; the
nonlinearities are float32 functions, ours integer kernels.
"""

from __future__ import annotations

import numpy as np

from simulator import ir
from simulator.errors import InputError
from simulator.qgraph import QuantizedGraph, Quantizer

__all__ = ["export_qdq", "QDQOps", "OPSET", "EXPORTABLE_KINDS", "save_qdq"]

OPSET = 21
EXPORTABLE_KINDS = ("static", "accumulator", "fixed_point")
_WHY = {"two_scaled": "TSPTQ two-scaled codes choose one of two scales per value",
        "grouped": "IGQ groups choose a scale per channel and image",
        "predicted": "ScalePredictor scales change per image",
        "log2": "log2 softmax codes 2**-c are not a linear QuantizeLinear"}


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise InputError("export-onnx: the onnx package is not installed (pip install -e \".[onnx]\")") from None
    return onnx, TensorProto, helper, numpy_helper


class QDQOps:
    """Op set emitting ONNX nodes; each method takes and returns value names (see the module docstring)."""

    def __init__(self, qg: QuantizedGraph, int4: bool = True):
        self.onnx, self.TP, self.h, self.nh = _onnx()
        self.qg, self.q, self.p, self.g, self.int4 = qg, qg.quantizers, qg.params, qg.graph, int4
        self.nodes, self.inits, self._n = [], [], 0
        self.shapes = ir.tensor_shapes(qg.graph, batch=1)
        readers: dict[str, list] = {}
        for op in qg.graph.ops:
            for t in op.inputs:
                readers.setdefault(t, []).append(op.kind)
        # a tensor read only by merge_heads (sharing its quantizer) is quantized after the view:
        # the same codes, and onnxruntime's QDQ propagation (1.32) fails on DQ -> Transpose -> Reshape
        self.deferred = {t for t, kinds in readers.items() if kinds == ["merge_heads"]}
        for t, qz in qg.quantizers.items():
            if qz.kind not in EXPORTABLE_KINDS:
                raise InputError(f"export-onnx: tensor {t} has a {qz.kind!r} quantizer ({_WHY.get(qz.kind, '')}), "
                                 "which QDQ cannot express; export a static recipe")

    # --- building blocks -------------------------------------------------------------
    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}#{self._n}"

    def const(self, base: str, arr, dtype=None) -> str:
        arr = np.asarray(arr, dtype=dtype) if dtype is not None else np.asarray(arr)
        name = self._name(base)
        self.inits.append(self.nh.from_array(arr, name))
        return name

    def int_const(self, base: str, codes, bits: int, signed: bool) -> str:
        """Integer initializer in the container type of ``bits``."""
        elem, _ = self._container(bits, signed)
        name = self._name(base)
        codes = np.asarray(codes, dtype=np.int64)
        np_type = {self.TP.INT8: np.int8, self.TP.UINT8: np.uint8, self.TP.INT16: np.int16,
                   self.TP.UINT16: np.uint16, self.TP.INT32: np.int32}.get(elem)
        if np_type is not None:
            self.inits.append(self.nh.from_array(codes.astype(np_type), name))
        else:                                     # INT4 / UINT4: onnx packs them
            self.inits.append(self.h.make_tensor(name, elem, codes.shape, codes.reshape(-1).tolist()))
        return name

    def node(self, op_type: str, inputs, base: str, n_out: int = 1, **attrs):
        outs = [self._name(base) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, list(inputs), outs, name=self._name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def _container(self, bits: int, signed: bool):
        TP = self.TP
        if bits == 4 and self.int4:
            return (TP.INT4 if signed else TP.UINT4), 4
        if bits <= 8:
            return (TP.INT8 if signed else TP.UINT8), 8
        if bits <= 16:
            return (TP.INT16 if signed else TP.UINT16), 16
        if bits <= 32 and signed:
            return TP.INT32, 32
        raise InputError(f"export-onnx: {bits}-bit codes have no ONNX QDQ type")

    def qdq(self, qz: Quantizer, value: str, out: str) -> str:
        """``value`` -> QuantizeLinear/DequantizeLinear with ``qz`` -> float value named ``out``."""
        if qz.kind != "static":          # accumulator / fixed point: the float value itself
            return self._rename(value, out)
        scale = np.asarray(qz.scale, dtype=np.float64)
        elem, cbits = self._container(qz.bits, qz.signed)
        per_channel = scale.ndim == 1
        if qz.bits != cbits:           # narrower than its container: clip to the code range first
            lo = self.const(out + ".lo", (qz.lo * scale).astype(np.float32))
            hi = self.const(out + ".hi", (qz.hi * scale).astype(np.float32))
            value = self.node("Min", [self.node("Max", [value, lo], out + ".clip_lo"), hi], out + ".clip")
        s = self.const(out + ".scale", scale.astype(np.float32))
        zp = self.int_const(out + ".zero_point", np.zeros(scale.shape, np.int64), qz.bits, qz.signed)
        axis = {"axis": -1} if per_channel else {}
        q = self.node("QuantizeLinear", [value, s, zp], out + ".q", **axis)
        self.nodes.append(self.h.make_node("DequantizeLinear", [q, s, zp], [out], name=self._name("DQ"), **axis))
        return out

    def _rename(self, value: str, out: str) -> str:
        self.nodes.append(self.h.make_node("Identity", [value], [out], name=self._name("Identity")))
        return out

    def out(self, op: ir.Op, value: str, i: int = 0) -> str:
        t = op.outputs[i]
        if t in self.deferred:
            return self._rename(value, t + ".float")
        return self.qdq(self.q[t], value, t)

    def _batch_shape(self, x: str, rest) -> str:
        b = self.node("Shape", [x], "batch", start=0, end=1)
        return self.node("Concat", [b, self.const("shape", np.asarray(rest, np.int64))], "shape", axis=0)

    # --- op kinds (same names as the other op sets) --------------------------------------
    def patchify(self, op: ir.Patchify, images):
        ph, pw = op.patch_size
        c, (h, w) = self.g.in_chans, self.g.image_size
        gh, gw = op.grid(h, w)
        x = images
        if op.pad and (gh * ph, gw * pw) != (h, w):
            pads = np.asarray([0, 0, 0, 0, 0, 0, gh * ph - h, gw * pw - w], np.int64)
            x = self.node("Pad", [x, self.const("pads", pads)], "pad")
        elif (gh * ph, gw * pw) != (h, w):
            x = self.node("Slice", [x, self.const("starts", np.asarray([0, 0], np.int64)),
                                    self.const("ends", np.asarray([gh * ph, gw * pw], np.int64)),
                                    self.const("axes", np.asarray([2, 3], np.int64))], "crop")
        x = self.node("Reshape", [x, self.const("shape", np.asarray([0, c, gh, ph, gw, pw], np.int64))], "grid")
        x = self.node("Transpose", [x], "patches", perm=[0, 2, 4, 1, 3, 5])
        x = self.node("Reshape", [x, self.const("shape", np.asarray([0, gh * gw, c * ph * pw], np.int64))], "rows")
        return self.out(op, x)

    def linear(self, op: ir.Linear, x, residual=None):
        lin = self.p[op.name]
        w = self.int_const(op.name + ".weight_q", np.asarray(lin.w_q).T, lin.w_bits, True)
        sw = self.const(op.name + ".weight_scale", np.asarray(lin.w_scale, np.float32))
        zw = self.int_const(op.name + ".weight_zp", np.zeros(len(lin.w_scale), np.int64), lin.w_bits, True)
        wf = self.node("DequantizeLinear", [w, sw, zw], op.name + ".weight", axis=1)
        y = self.node("MatMul", [x, wf], op.name + ".matmul")
        bq = self.const(op.name + ".bias_q", np.asarray(lin.bias_q, np.int64).astype(np.int32))
        sb = self.const(op.name + ".bias_scale", (lin.in_scale * np.asarray(lin.w_scale)).astype(np.float32))
        zb = self.const(op.name + ".bias_zp", np.zeros(len(lin.w_scale), np.int32))
        y = self.node("Add", [y, self.node("DequantizeLinear", [bq, sb, zb], op.name + ".bias", axis=0)],
                      op.name + ".biased")
        if residual is not None:
            y = self.node("Add", [y, residual], op.name + ".sum")
        return self.out(op, y)

    head = linear

    def layer_norm(self, op: ir.LayerNorm, x):
        ln = self.p[op.name]
        if ln.channel_shift is not None:
            raise InputError(f"export-onnx: {op.name} has O-2SF channel shifts (TSPTQ), which QDQ cannot express; "
                             "export a static recipe")
        gamma = self.const(op.name + ".weight", np.asarray(ln.gamma, np.float32))
        beta = self.const(op.name + ".bias", np.asarray(ln.beta, np.float32))
        y = self.node("LayerNormalization", [x, gamma, beta], op.name, axis=-1, epsilon=float(op.eps))
        return self.out(op, y)

    def token_concat(self, op: ir.TokenConcat, x):
        qz = self.q[op.outputs[0]]
        codes = np.asarray(self.p[op.name].codes, np.float64)
        tok = self.const(op.name + ".tokens", (codes * float(qz.scale))[None].astype(np.float32))
        tok = self.node("Expand", [tok, self._batch_shape(x, codes.shape)], op.name + ".expand")
        return self._rename(self.node("Concat", [tok, x], op.name, axis=1), op.outputs[0])

    def add_const(self, op: ir.AddConst, x):
        qz = self.q[op.outputs[0]]
        value = np.asarray(self.p[op.name].codes, np.float64) * float(qz.scale)
        return self.out(op, self.node("Add", [x, self.const(op.name + ".value", value.astype(np.float32))], op.name))

    def split(self, op: ir.Split, x):
        parts = self.node("Split", [x, self.const("sizes", np.asarray(op.sizes, np.int64))], op.name,
                          n_out=len(op.sizes), axis=-1)
        return tuple(self.out(op, v, i) for i, v in enumerate(parts))

    def split_heads(self, op: ir.SplitHeads, x):
        n, h = len(op.outputs), op.num_heads
        c = self.shapes[op.inputs[0]][-1]
        y = self.node("Reshape", [x, self.const("shape", np.asarray([0, 0, n, h, c // (n * h)], np.int64))], "heads")
        y = self.node("Transpose", [y], "heads", perm=[2, 0, 3, 1, 4])
        parts = self.node("Split", [y], op.name, n_out=n, axis=0, num_outputs=n) if n > 1 else [y]
        axes = self.const("axes", np.asarray([0], np.int64))
        return tuple(self._rename(self.node("Squeeze", [v, axes], t), t) for v, t in zip(parts, op.outputs))

    def merge_heads(self, op: ir.MergeHeads, x):
        b, h, t, d = self.shapes[op.inputs[0]]
        y = self.node("Transpose", [x], op.name, perm=[0, 2, 1, 3])
        y = self.node("Reshape", [y, self.const("shape", np.asarray([0, 0, h * d], np.int64))], op.name)
        if op.inputs[0] in self.deferred:
            return self.out(op, y)
        return self._rename(y, op.outputs[0])

    def matmul(self, op: ir.MatMul, a, b):
        if op.transpose_b:
            b = self.node("Transpose", [b], op.name + ".bT", perm=[0, 1, 3, 2])
        y = self.node("MatMul", [a, b], op.name)
        if op.scale != 1.0:
            y = self.node("Mul", [y, self.const(op.name + ".scale", np.float32(op.scale))], op.name + ".scaled")
        return self.out(op, y)

    def softmax(self, op: ir.Softmax, x):
        return self.out(op, self.node("Softmax", [x], op.name, axis=-1))

    def activation(self, op: ir.Activation, x):
        if op.function == "quick_gelu":
            s = self.node("Sigmoid", [self.node("Mul", [x, self.const("k", np.float32(1.702))], op.name)], op.name)
            y = self.node("Mul", [x, s], op.name)
        else:
            y = self.node("Gelu", [x], op.name, approximate="none" if op.function == "gelu_erf" else "tanh")
        return self.out(op, y)

    def add(self, op: ir.Add, a, b):
        return self.out(op, self.node("Add", [a, b], op.name))

    def mean(self, op: ir.Mean, *xs):
        s = self.node("Sum", list(xs), op.name)
        return self.out(op, self.node("Mul", [s, self.const("inv_n", np.float32(1.0 / len(xs)))], op.name))

    def pool(self, op: ir.Pool, x):
        if op.mode == "token":
            return self._rename(self.node("Gather", [x, self.const("index", np.int64(op.index))], op.name, axis=1),
                                op.outputs[0])
        t = self.shapes[op.inputs[0]][1]
        rows = self.node("Slice", [x, self.const("starts", np.asarray([op.num_prefix_tokens], np.int64)),
                                   self.const("ends", np.asarray([t], np.int64)),
                                   self.const("axes", np.asarray([1], np.int64))], op.name)
        y = self.node("ReduceMean", [rows, self.const("axes", np.asarray([1], np.int64))], op.name, keepdims=0)
        return self.out(op, y)       # the integer pool rounds the mean to its input's codes

    def exit(self, op: ir.Exit, logits):
        raise InputError(f"export-onnx: {op.name} is an early exit (APQ), which a static ONNX graph cannot take; "
                         "export a recipe without exits")


def export_qdq(qg: QuantizedGraph, int4: bool = True, producer: str = "vit-intsim"):
    """The `onnx.ModelProto` of ``qg`` (checked by `onnx.checker`); input ``images`` [batch, C, H, W] float32."""
    from simulator.walk import walk

    ops = QDQOps(qg, int4=int4)
    onnx, TP, h, _ = ops.onnx, ops.TP, ops.h, ops.nh
    g = qg.graph
    walk(g, ops, g.input)
    shapes = ir.tensor_shapes(g, batch=1)
    inputs = [h.make_tensor_value_info(g.input, TP.FLOAT, ["batch", g.in_chans, *g.image_size])]
    outputs = [h.make_tensor_value_info(t, TP.FLOAT, ["batch", *shapes[t][1:]]) for t in g.outputs]
    graph = h.make_graph(ops.nodes, "quantized_vit", inputs, outputs, initializer=ops.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = 10                      # onnxruntime >= 1.18 reads IR 10 (opset 21)
    meta = {"recipe": str(qg.meta.get("label", "")), "model": str(qg.meta.get("model", ""))}
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    return model


def save_qdq(model, path: str, label: str | None = None) -> None:
    """Write the model atomically (`simulator.atomic_files`)."""
    from simulator.atomic_files import write_bytes

    write_bytes(path, model.SerializeToString(), label)
