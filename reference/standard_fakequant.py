"""A conventional PyTorch fake-quant model built from a `QuantizedGraph`.

What users usually mean by "PyTorch fake-quant" (torch.ao, brevitas, NNCF
exports): the float model in float32, with
``torch.fake_quantize_per_tensor_affine`` (``_per_channel_affine`` where the
graph's scale is per channel: the qkv output) on every tensor that holds
codes, using the graph's frozen scales and zero point 0, weights fake-quantized
per output channel at the graph's weight scales, biases fake-quantized to
int32 at ``s_in s_w`` (what QDQ, TensorRT and onnxruntime do; a float bias
differs from the integer model by up to ``s_in s_w / 2`` -- many LSBs of a
16-bit residual stream at W4A4), and
float LayerNorm / softmax / GELU between the quantizers. It shares no formula
with the simulator: torch rounds half to even (``nearbyint``), requantizes by
dividing by the float32 scale, rounds a fused residual sum once. The ONNX QDQ
export (`simulator.onnx_export`) is the same function written as ONNX.

    model = StandardFakeQuantModel(qg)          # nn.Module, float32
    logits = model(images)                      # [B, classes]
    logits, codes = model.run(images)           # codes: round(value / scale) per quantized tensor

Built on the one walk (`simulator.walk`) with `reference.float_ops.FloatOps`
for the float function: every op's output passes through the fake quantizer
of its tensor (views -- ``split_heads``, ``merge_heads``, token pooling --
and ``accumulator`` / ``fixed_point`` tensors pass unchanged). Quantizer kinds
with no standard-op form (``two_scaled``, ``grouped``, ``predicted``) are
refused with one line.
"""

from __future__ import annotations

import numpy as np
import torch

from reference.float_ops import FloatOps
from simulator.errors import InputError
from simulator.inputs import check_graph_images
from simulator.qgraph import QuantizedGraph, Quantizer
from simulator.walk import walk

__all__ = ["StandardFakeQuantOps", "StandardFakeQuantModel", "fake_quantize"]

_VIEWS = ("split_heads", "merge_heads")
_PASS_KINDS = ("accumulator", "fixed_point")


def fake_quantize(x: torch.Tensor, qz: Quantizer) -> torch.Tensor:
    """``torch.fake_quantize_per_{tensor,channel}_affine`` with ``qz``'s scale, zero point 0 and code range."""
    if qz.kind in _PASS_KINDS:
        return x
    if qz.kind != "static":
        raise InputError(f"standard fake-quant: a {qz.kind!r} quantizer has no torch.fake_quantize form")
    scale = np.asarray(qz.scale, dtype=np.float64)
    if scale.ndim == 0:
        return torch.fake_quantize_per_tensor_affine(x, float(scale), 0, qz.lo, qz.hi)
    s = torch.tensor(scale, dtype=torch.float32)
    return torch.fake_quantize_per_channel_affine(x, s, torch.zeros(len(s), dtype=torch.int32), x.dim() - 1,
                                                  qz.lo, qz.hi)


class StandardFakeQuantOps:
    """Op set: `FloatOps` (float32) with fake-quantized weights, then the fake quantizer of each output."""

    def __init__(self, qg: QuantizedGraph, weights: str = "float"):
        """``weights="float"``: the float weights and biases, fake-quantized by torch (half to even; a weight
        on a tie may get the other code than the frozen graph's); ``"frozen"``: the graph's own codes times
        their scales (per-op comparisons: only the ops' arithmetic differs)."""
        if weights not in ("float", "frozen"):
            raise ValueError(f"weights must be 'float' or 'frozen', got {weights!r}")
        self.float = FloatOps(qg.graph, torch.float32)
        self.qg, self.q = qg, qg.quantizers
        for t, qz in qg.quantizers.items():
            if qz.kind not in ("static",) + _PASS_KINDS:
                raise InputError(f"standard fake-quant: tensor {t} has a {qz.kind!r} quantizer, which has no "
                                 "torch.fake_quantize form; build it from a static recipe")
        for op in qg.graph.ops:
            if op.kind == "exit":
                raise InputError(f"standard fake-quant: {op.name} is an early exit (APQ); not supported")
            if op.kind in ("linear", "head"):          # per-output-channel weights at the graph's scales
                lin, params = qg.params[op.name], self.float.params[op.name]
                s = torch.tensor(np.asarray(lin.w_scale, np.float64), dtype=torch.float32)
                lo, hi = -(1 << (lin.w_bits - 1)), (1 << (lin.w_bits - 1)) - 1
                zero = torch.zeros(len(s), dtype=torch.int32)
                if weights == "frozen":
                    params["weight"] = torch.tensor(np.asarray(lin.w_q, np.float64) * np.asarray(lin.w_scale)[:, None],
                                                    dtype=torch.float32)
                    params["bias"] = torch.tensor(np.asarray(lin.bias_q, np.float64) * lin.in_scale
                                                  * np.asarray(lin.w_scale), dtype=torch.float32)
                    continue
                params["weight"] = torch.fake_quantize_per_channel_affine(params["weight"], s, zero, 0, lo, hi)
                s_acc = torch.tensor(lin.in_scale * np.asarray(lin.w_scale, np.float64), dtype=torch.float32)
                params["bias"] = torch.fake_quantize_per_channel_affine(params["bias"], s_acc, zero, 0,
                                                                        -(1 << 31), (1 << 31) - 1)

    def __getattr__(self, kind: str):
        """The float kernel of op kind ``kind`` followed by the output quantizers."""
        kernel = getattr(self.float, kind)
        if kind in _VIEWS:
            return kernel

        def quantized(op, *xs):
            out = kernel(op, *xs)
            if op.kind == "pool" and op.mode == "token":      # a row of a quantized tensor
                return out
            outs = out if isinstance(out, tuple) else (out,)
            res = tuple(fake_quantize(y, self.q[t]) for y, t in zip(outs, op.outputs))
            return res if isinstance(out, tuple) else res[0]
        return quantized


class StandardFakeQuantModel(torch.nn.Module):
    """``forward(images) -> logits`` (float32); ``run(images)`` also returns the codes of every quantized tensor."""

    def __init__(self, qg: QuantizedGraph):
        super().__init__()
        self.qg = qg
        self.ops = StandardFakeQuantOps(qg)

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        return self.run(images, keep_codes=False)[0]

    @torch.no_grad()
    def run(self, images, keep_codes: bool = True) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        g = self.qg.graph
        x = torch.as_tensor(check_graph_images(images, self.qg), dtype=torch.float32)
        codes: dict[str, np.ndarray] = {}

        def keep(name, t):
            qz = self.q_of(name)
            if qz is not None and qz.kind == "static":
                s = torch.tensor(np.asarray(qz.scale, np.float64), dtype=torch.float32)
                codes[name] = torch.round(t / s).long().numpy()

        out = walk(g, self.ops, x, keep if keep_codes else None)
        return out[self.qg.output], codes

    def q_of(self, name: str) -> Quantizer | None:
        return self.qg.quantizers.get(name)


def per_op_differences(qg: QuantizedGraph, codes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Teacher-forced comparison: each op of the standard model run on the *simulator's* input codes
    (dequantized), its output codes minus the simulator's, per quantized output tensor (views skipped).
    ``codes``: `RunResult.codes` of the integer executor (every tensor; the images are not needed
    but ``codes[graph.input]`` must hold the float images)."""
    ops = StandardFakeQuantOps(qg, weights="frozen")
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for op in qg.graph.ops:
            if op.kind in _VIEWS or (op.kind == "pool" and op.mode == "token"):
                continue
            xs = []
            for t in op.inputs:
                if t == qg.graph.input:
                    xs.append(torch.as_tensor(codes[t], dtype=torch.float32))
                    continue
                s = np.asarray(qg.quantizers[t].scale, np.float64)
                xs.append(torch.as_tensor(codes[t] * s, dtype=torch.float32))
            res = getattr(ops, op.kind)(op, *xs)
            res = res if isinstance(res, tuple) else (res,)
            for y, t in zip(res, op.outputs):
                qz = qg.quantizers[t]
                if qz.kind != "static":
                    continue
                s = torch.tensor(np.asarray(qz.scale, np.float64), dtype=torch.float32)
                out[t] = torch.round(y / s).long().numpy() - codes[t]
    return out
