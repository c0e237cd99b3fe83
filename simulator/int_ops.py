"""The numba integer op set of the graph walk, and its executor.

`IntOps(qgraph)` has one method per op kind of `simulator.ir`, named as in
the torch fake-quant op set (`reference.fakequant_ops.FakeQuantOps`); each
reads the op's frozen params (`simulator.qgraph`) and the quantizers of its
tensors. Integer arrays only after the host-side input quantization; GEMMs go
through an exact backend (`simulator.kernels.gemm`), the other ops through
the jitted kernels of `simulator.kernels`. Formulas (one rounding rule, round
half up; one saturation rule) per op kind:

* ``patchify``: ``q = saturate(round_half_up(float64(pixel) / s_in))`` fused
  with patchify (crop to whole patches, or zero-pad first).
* ``linear`` / ``head``: ``saturate(requantize(sat32(x W_q^T + b_q), M_c, k_c)
  [+ requantize(r, M_r, k_r)])``; accumulators saturated to int32 and counted.
* ``layer_norm``: I-BERT-style integer LayerNorm (`simulator.int_nonlinear`).
* ``token_concat``: prefix token codes (at the output scale) before the rows.
* ``add_const``: ``saturate(x + c_q)`` (position embedding codes at x's scale).
* ``split_heads`` / ``merge_heads``: views, codes unchanged.
* ``split`` (ViT-22B's fused in_proj, whose linear keeps int32 accumulators):
  part ``i`` is ``saturate(requantize(acc[..., c], M_c, k_c))`` into that
  part's quantizer (codes for q/k/v, Q12 for the MLP activation).
* ``matmul``: exact ``a @ b(^T)`` saturated to int32 (counted); kept as an
  accumulator when the softmax reads it, else ``saturate(requantize(acc, M, k))``.
* ``softmax``: integer base-2 softmax, unsigned codes at ``2**-b``.
* ``softmax`` with the static recipe's ``softmax:`` option (`simulator.softmax_codes`):
  codes at a calibrated ``2**-f`` (``SoftmaxQ.fine_exp``), or ``log2`` codes that the
  reading ``attn @ V`` decodes to ``2**(S - c)`` (a shift-accumulate, exact GEMM).
* ``activation``: ``gelu_erf`` and ``gelu_tanh`` by the integer erf-GELU,
  ``quick_gelu`` by `simulator.int_activations.quick_gelu_q12`, on the Q12
  output of the preceding linear, then ``saturate(requantize(y, M, k))``.
* ``add`` / ``mean``: ``saturate(sum_i requantize(x_i, M_i, k_i))`` (for mean,
  ``M_i 2**-k_i = s_i / (n s_out)``).
* ``pool``: ``token`` a row; ``avg`` ``rounding_mean(sum_t x_t, n)`` at x's scale.
* ``two_scaled`` quantizers (TSPTQ V-2SF, `simulator.kernels.two_scaled`): a
  softmax / activation writing one emits two-scaled words; a linear / matmul
  reading one decodes them (``m`` or ``m << r``) into its operand first.
* ``gather_tokens`` (Swin window partition / reverse, patch merging): an index
  op on codes (`simulator.windows.token_index`); ``split_heads`` /
  ``merge_heads`` with ``windows`` fold the windows into the attention batch.
* ``window_bias`` (Swin): `simulator.windows.window_scores` on the ``q k^T``
  accumulator: ``sat32(acc + bias_q[h])``, masked pairs the minimum code
  ``-2**31``; saturated unmasked sums are counted.
* ``exit``: ``conf = max_c int_softmax(logits)_c``; rows with ``conf >= threshold_q``
  leave the batch (`simulator.walk.Leave`, `simulator.graph_exits`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator import igq_graph, ir
from simulator.fixedpoint import requantize, saturate
from simulator.graph_exits import ExitRecorder
from simulator.graph_trace import graph_layer_ops
from simulator.int_activations import rounding_mean
from simulator.inputs import check_graph_images
from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.jit import quick_gelu_q12, row_kernel
from simulator.jit import requantize as jrequantize
from simulator.jit import saturate as jsaturate
from simulator.kernels.gemm import default_chooser, int_matmul, saturate_acc
from simulator.kernels.nonlinear import int_gelu, int_layernorm, int_softmax
from simulator.kernels.output_stage import code_dtype, linear_output, quantize_patches, requant_output
from simulator.kernels.softmax_codes import int_softmax_log2, int_softmax_pow2, log2_decode
from simulator.kernels.two_scaled import activation_words, decode_operand, softmax_stage
from simulator.predicted_graph import leaving, observing, with_predicted_scales
from simulator.predicted_scales import predict_log2
from simulator.qgraph import QuantizedGraph
from simulator.results import CodeDigests, CodeStore, RunResult
from simulator.trace import Trace
from simulator.windows import gather, merge_window_heads, split_window_heads, token_index, window_scores
from simulator.windows import ACC_MAX, ACC_MIN

__all__ = ["IntOps", "GraphIntegerExecutor", "int_quick_gelu", "biased_window_scores"]


@row_kernel
def _quick_gelu(h, out_mult, out_shift, lo, hi, out):
    for i in prange(h.shape[0]):
        for j in range(h.shape[1]):
            x = jsaturate(np.int64(h[i, j]), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
            out[i, j] = jsaturate(jrequantize(quick_gelu_q12(x), out_mult, out_shift), lo, hi)


def int_quick_gelu(h: np.ndarray, out_mult: int, out_shift: int, lo: int, hi: int, out_dtype) -> np.ndarray:
    """quick-GELU of Q12 values ``h`` then requantization to signed codes."""
    h2 = h.reshape(-1, h.shape[-1])
    out = np.empty(h2.shape, dtype=out_dtype)
    _quick_gelu(h2, np.int64(out_mult), np.int64(out_shift), np.int64(lo), np.int64(hi), out)
    return out.reshape(h.shape)


def _no_window_groups(op, groups) -> None:
    if op.inputs[0] in groups:
        raise ValueError(f"{op.name}: channel groups across attention windows are not defined")


def biased_window_scores(op: ir.WindowBias, wb, acc: np.ndarray) -> tuple[np.ndarray, int]:
    """`simulator.windows.window_scores` on ``acc`` [B, W*H, N, N] (int64); also the
    number of unmasked scores that saturated."""
    b, wh, n, _ = acc.shape
    h = op.num_heads
    a = acc.reshape(b, wh // h, h, n, n).astype(np.int64)
    m = wb.masked.astype(np.int64)[None, :, None]
    raw = a + wb.bias_q[None, None]
    over = int((((raw < ACC_MIN) | (raw > ACC_MAX)) & (m == 0)).sum())
    return window_scores(a, wb.bias_q[None, None], m, int(wb.mask_add)).reshape(acc.shape), over


def _dtype(qz) -> type:
    if qz.kind in ("two_scaled", "log2"):
        return np.uint8 if qz.bits <= 8 else np.uint16
    if qz.kind not in ("static", "grouped", "predicted"):
        return np.int32 if qz.kind == "fixed_point" else np.int64
    if not qz.signed:
        return np.uint8 if qz.bits <= 8 else np.uint16
    return code_dtype(qz.bits)


class IntOps:
    """Integer kernels for every op kind; ``overflows[op name]`` counts saturated accumulators."""

    def __init__(self, qg: QuantizedGraph, gemm_backend: str = "auto"):
        self.qg, self.backend = qg, gemm_backend
        self.q, self.p = qg.quantizers, qg.params
        self.overflows: dict[str, int] = {}
        self._wt: dict[str, np.ndarray] = {}
        self.groups: dict[str, np.ndarray] = {}       # group index per grouped tensor (this batch)
        self.gemm_used: dict[str, str] = {}           # GEMM shape class -> backend that ran it

    def _count(self, name: str, n: int) -> None:
        if n:
            self.overflows[name] = self.overflows.get(name, 0) + int(n)

    def _operand(self, t: str, x):
        qz = self.q[t]
        if qz.kind == "log2":
            return log2_decode(x, qz.bits)
        return decode_operand(qz, x) if qz.kind == "two_scaled" else x

    def _gemm(self, name, a, b, a_max, b_max):
        acc = int_matmul(a, b, a_max, b_max, self.backend, record=self.gemm_used)
        acc, over = saturate_acc(acc)
        self._count(name, over)
        return acc

    def _grouped(self, op, u):
        """Grouped codes of the wide ``u`` (`simulator.igq_graph`); keeps the group map."""
        qz = self.q[op.outputs[0]]
        codes, self.groups[op.outputs[0]] = igq_graph.grouped_output(op, self.p[op.name], qz, u, _dtype(qz))
        return codes

    def patchify(self, op: ir.Patchify, images):
        qz = self.q[op.outputs[0]]
        ph, pw = op.patch_size
        if op.pad:
            gh, gw = op.grid(*images.shape[2:])
            h, w = images.shape[2:]
            images = np.pad(images, ((0, 0), (0, 0), (0, gh * ph - h), (0, gw * pw - w)))
        return quantize_patches(images, op.patch_size, float(qz.scale), qz.bits)

    def linear(self, op: ir.Linear, x, residual=None):
        lin, qz = self.p[op.name], self.q[op.outputs[0]]
        if op.name not in self._wt:
            self._wt[op.name] = np.array(lin.w_q, order="C").T      # [K, N] view of a writable [N, K]
        lead, qi = x.shape[:-1], self.q[op.inputs[0]]
        x, a_max = self._operand(op.inputs[0], x), qi.max_abs   # two_scaled: decoded, max_abs is its bound
        if qi.kind == "grouped":                    # IGQ channel groups: shifted operand, one GEMM
            x, a_max = igq_graph.grouped_operand(x, self.groups[op.inputs[0]], qi)
        acc = self._gemm(op.name, x.reshape(-1, x.shape[-1]), self._wt[op.name], a_max, 1 << (lin.w_bits - 1))
        r = None if residual is None else residual.reshape(-1, residual.shape[-1])
        out, over = linear_output(acc, lin.bias_q, lin.out_mult, lin.out_shift, qz.lo, qz.hi, _dtype(qz),
                                  res=r, res_mult=lin.res_mult, res_shift=lin.res_shift)
        self._count(op.name, over)
        return out.reshape(*lead, -1)

    head = linear

    def layer_norm(self, op: ir.LayerNorm, x):
        ln, qz = self.p[op.name], self.q[op.outputs[0]]
        if qz.kind == "grouped":
            return self._grouped(op, igq_graph.wide_value(op, ln, x))
        return int_layernorm(np.ascontiguousarray(x), ln.eps_q, ln.gamma_mult, ln.beta_q, ln.out_shift,
                             qz.lo, qz.hi, _dtype(qz))

    def token_concat(self, op: ir.TokenConcat, x):
        tok = self.p[op.name].codes.astype(x.dtype)
        return np.concatenate([np.broadcast_to(tok, (x.shape[0],) + tok.shape), x], axis=1)

    def add_const(self, op: ir.AddConst, x):
        qz = self.q[op.outputs[0]]
        return saturate(x.astype(np.int64) + self.p[op.name].codes, qz.lo, qz.hi).astype(_dtype(qz))

    def split(self, op: ir.Split, acc):
        parts, start = [], 0
        lead = acc.shape[:-1]
        for t, size, rq in zip(op.outputs, op.sizes, self.p[op.name]):
            qz = self.q[t]
            a = np.ascontiguousarray(acc[..., start:start + size]).reshape(-1, size)
            out, _ = linear_output(a, np.zeros(size, np.int64), rq.mult, rq.shift, qz.lo, qz.hi, _dtype(qz))
            parts.append(out.reshape(*lead, size))
            start += size
        return tuple(parts)

    def split_heads(self, op: ir.SplitHeads, x):
        if op.windows > 1:
            return split_window_heads(op, x)
        b, t, c = x.shape
        n, h = len(op.outputs), op.num_heads
        parts = x.reshape(b, t, n, h, c // (n * h)).transpose(2, 0, 3, 1, 4)
        return tuple(parts[i] for i in range(n))

    def merge_heads(self, op: ir.MergeHeads, x):
        if op.windows > 1:
            _no_window_groups(op, self.groups)
            return np.ascontiguousarray(merge_window_heads(op, x))
        b, h, t, d = x.shape
        if op.inputs[0] in self.groups:             # channel groups [B, H, d] -> [B, H*d]
            self.groups[op.outputs[0]] = self.groups[op.inputs[0]].reshape(b, h * d)
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, t, h * d)

    def matmul(self, op: ir.MatMul, a, b):
        qa, qb, qz = self.q[op.inputs[0]], self.q[op.inputs[1]], self.q[op.outputs[0]]
        bt = b.swapaxes(-1, -2) if op.transpose_b else b
        acc = self._gemm(op.name, self._operand(op.inputs[0], a), bt, qa.max_abs, qb.max_abs)
        if qz.kind == "accumulator" and "grouped" not in (qa.kind, qb.kind):
            return acc                              # int32 where the bound allows (`int_matmul`)
        rq = self.p[op.name]
        if "grouped" in (qa.kind, qb.kind, qz.kind):
            u, out = igq_graph.grouped_matmul(op, rq, qa, qb, qz, self.groups.get(op.inputs[0]),
                                              acc.astype(np.int64, copy=False))
            return self._grouped(op, u) if out is None else out.astype(_dtype(qz))
        return requant_output(acc, rq.mult, rq.shift, qz.lo, qz.hi, _dtype(qz))

    def gather_tokens(self, op: ir.GatherTokens, x):
        return np.ascontiguousarray(gather(x, token_index(op)))

    def window_bias(self, op: ir.WindowBias, acc):
        wb = self.p[op.name]
        y, over = biased_window_scores(op, wb, acc)
        self._count(op.name, over)
        return y

    def softmax(self, op: ir.Softmax, acc):
        sm = self.p[op.name]
        if self.q[op.outputs[0]].kind == "two_scaled":
            return softmax_stage(sm, np.ascontiguousarray(acc))
        if self.q[op.outputs[0]].kind == "grouped":
            return self._grouped(op, igq_graph.wide_value(op, sm, acc))
        if self.q[op.outputs[0]].kind == "log2":
            return int_softmax_log2(acc, sm.in_mult, sm.in_shift, sm.out_bits)
        if sm.fine_exp:                             # calibrated power-of-two scale 2**-fine_exp
            return int_softmax_pow2(acc, sm.in_mult, sm.in_shift, sm.fine_exp, sm.out_bits)
        return int_softmax(np.ascontiguousarray(acc), sm.in_mult, sm.in_shift, sm.out_bits)

    def activation(self, op: ir.Activation, h):
        g, qz = self.p[op.name], self.q[op.outputs[0]]
        if qz.kind == "two_scaled":
            return activation_words(op.function, g, h)
        if qz.kind == "grouped":
            return self._grouped(op, igq_graph.wide_value(op, g, h))
        kern = int_quick_gelu if op.function == "quick_gelu" else int_gelu
        return kern(np.ascontiguousarray(h), g.out_mult, g.out_shift, qz.lo, qz.hi, _dtype(qz))

    def add(self, op: ir.Add, *xs):
        rs, qz = self.p[op.name], self.q[op.outputs[0]]
        total = sum(requantize(x.astype(np.int64), int(m), int(k)) for x, m, k in zip(xs, rs.mult, rs.shift))
        return saturate(total, qz.lo, qz.hi).astype(_dtype(qz))

    mean = add

    def pool(self, op: ir.Pool, x):
        if op.mode == "token":
            return np.ascontiguousarray(x[:, op.index])
        rows = x[:, op.num_prefix_tokens:].astype(np.int64)
        return rounding_mean(rows.sum(axis=1), rows.shape[1]).astype(x.dtype)

    def exit(self, op: ir.Exit, logits):
        from simulator.walk import Leave
        e = self.p[op.name]
        c = e.confidence
        conf = int_softmax(np.ascontiguousarray(logits), c.in_mult, c.in_shift, c.out_bits).max(axis=-1)
        conf = conf.astype(np.int64)
        return Leave(conf[:, None], conf >= e.threshold_q)


class GraphIntegerExecutor:
    """``GraphIntegerExecutor(qgraph).run(images)`` -> `RunResult` (codes of every tensor)."""

    def __init__(self, qg: QuantizedGraph, gemm_backend: str = "auto"):
        self.qg, self.backend = qg, gemm_backend
        self.gemm_used: dict[str, str] = {}           # GEMM shape class -> backend, over every run

    def gemm_report(self) -> dict:
        """The GEMM backends of the runs so far: ``{"requested", "classes": {class: {"backend", "source",
        "gops"}}, "cache"}`` (`simulator.kernels.gemm_choice`; source ``requested`` for a fixed backend)."""
        if self.backend != "auto":
            classes = {c: {"backend": n, "source": "requested", "gops": {}} for c, n in sorted(self.gemm_used.items())}
            return {"requested": self.backend, "classes": classes, "cache": None}
        chooser = default_chooser()
        return {"requested": "auto", "classes": chooser.report(self.gemm_used),
                "cache": None if chooser.path is None else str(chooser.path)}

    def run(self, images, batch_size: int = 64, keep_codes: bool | str = True) -> RunResult:
        """Run the walk over ``images`` in batches. ``keep_codes``: True keeps every tensor's codes
        (``RunResult.codes``), ``"digest"`` only their per-image digests (``RunResult.digests``,
        `simulator.results.CodeDigests`), False neither."""
        from simulator.walk import walk
        g = self.qg.graph
        images = check_graph_images(images, self.qg)   # shape, real dtype, finite values
        base = IntOps(self.qg, self.backend)
        ops = with_predicted_scales(base, lambda x, sp: predict_log2(np.asarray(x), sp)[1], np.concatenate)
        codes: dict[str, list] = {}
        digests = CodeDigests() if keep_codes == "digest" else None

        def keep(name, arr):
            if name == g.input:
                return
            arr = np.asarray(arr)
            if digests is not None:        # digested as the walk makes it, nothing kept
                digests.add(name, arr)
            else:                          # a copy in the walk's own integer dtype (`CodeStore`)
                codes.setdefault(name, []).append(arr.copy() if arr.dtype.kind in "iu" else arr.astype(np.int64))

        exits = ExitRecorder(self.qg, len(images))
        outs = []
        for s in range(0, len(images), batch_size):
            outs.append(walk(g, ops, images[s:s + batch_size], observing(ops, keep if keep_codes else None),
                             leaving(ops, exits.at(s)))[self.qg.output])
            for t, gidx in (exits.group_maps(base.groups, s, len(outs[-1])) if keep_codes else {}).items():
                keep(t + ".groups", gidx)               # IGQ group maps (simulator.igq_graph)
            base.groups.clear()
        self.gemm_used.update(base.gemm_used)
        empty = (0, *ir.tensor_shapes(g)[self.qg.output][1:])          # no images: the output's shape
        lc = np.concatenate(outs).astype(np.int64) if outs else np.zeros(empty, np.int64)
        layers = graph_layer_ops(self.qg)
        trace = Trace(model=self.qg.meta.get("model", "model"), recipe=self.qg.meta.get("label", "static"),
                      layers=[r for r, _ in layers], n_images=len(images), overflows=dict(ops.overflows))
        logits = exits.finish(trace, [i for _, i in layers], lc)
        return RunResult(logits=logits, logit_codes=lc, trace=trace, codes=CodeStore(codes), digests=digests)
