"""The torch fake-quant op set of the graph walk, and its executor.

`FakeQuantOps(qgraph)` has the same methods as the numba op set
(`simulator.int_ops.IntOps`) and computes the same formulas (see its
docstring) on torch tensors, with the stage functions of `reference.fakequant`
(GEMM output stage, integer LayerNorm, softmax, GELU; on large tensors fused
by TorchInductor, `reference.fused_stages`) and the vectorised fixed-point
primitives of `reference.tensor_primitives` -- the very source the numba
kernels compile. GEMMs: `reference.fakequant.exact_int_matmul`. Codes travel
in the narrowest integer dtype of their quantizer's range (`code_dtype`);
every arithmetic consumer widens to int64 first.
Every code equals the numba op set's (tested). ``two_scaled`` quantizers
(TSPTQ V-2SF): `reference.two_scaled_fq` writes the words and decodes them
in front of the reading GEMM, as `simulator.int_ops` does.

Post-softmax encodings of the static recipe's ``softmax:`` option
(`simulator.softmax_codes`, vectorised): codes at a calibrated ``2**-f``, or
``log2`` codes decoded to ``2**(S - c)`` in front of ``attn @ V``.

``nonlinear="float"`` replaces the integer LayerNorm, softmax and
activations by their float64 functions between the same quantizers (the
"fake-quant, float nonlinear" mode the papers report, the same formulas as
the removed legacy fake-quant executor's); everything else stays integer.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reference.fakequant import ACC_HI, ACC_LO, exact_int_matmul, softmax_stage
from reference.fused_stages import FusedStages, code_dtype, in_row_chunks
from reference import two_scaled_fq as v2sf
from reference import igq_graph_ops
from reference.tensor_primitives import (requantize, round_half_up, round_half_up_consuming, rounding_mean, saturate,
                                         vectorised)
from reference.tensor_primitives import SOFTMAX_RECIP_BITS, exp2_neg
from simulator import softmax_codes
from simulator import ir
from simulator.int_nonlinear import GELU_FRAC_BITS
from simulator.graph_exits import ExitRecorder
from simulator.graph_trace import graph_layer_ops
from simulator.inputs import check_graph_images
from reference.fakequant_predicted import predict_log2
from simulator.predicted_graph import leaving, observing, with_predicted_scales
from simulator.qgraph import QuantizedGraph
from simulator.results import CodeDigests, CodeStore, RunResult
from simulator.trace import Trace
from simulator.walk import Leave, walk
from simulator.windows import gather, merge_window_heads, split_window_heads, token_index, window_scores

__all__ = ["FakeQuantOps", "GraphFakeQuantExecutor"]


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _codes(v: torch.Tensor, qz) -> torch.Tensor:
    """Float values already divided by the scale -> saturated codes (round half up), narrow dtype."""
    return saturate(round_half_up(v), qz.lo, qz.hi).to(code_dtype(qz.lo, qz.hi))


def _codes_of_temporary(v: torch.Tensor, lo, hi, dtype) -> torch.Tensor:
    """``saturate(round_half_up(v), lo, hi)`` in ``dtype`` for a float64 temporary ``v`` (overwritten)."""
    return round_half_up_consuming(v).clamp_(lo, hi).to(dtype)


def _scaled_float64(x: torch.Tensor, scale) -> torch.Tensor:
    """``float64(x) * scale`` as a new tensor, in one pass: a float64 0-d (or per-channel) factor
    makes the product float64, and each element is the same IEEE product as ``x.double() * scale``
    (integer codes convert to float64 exactly)."""
    return torch.mul(x, scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale), dtype=torch.float64))


def _float_layernorm_codes(x, in_scale, gamma, beta, eps, out_scale, lo, hi, dtype):
    y = F.layer_norm(_scaled_float64(x, in_scale), (x.shape[-1],), gamma, beta, eps)
    return _codes_of_temporary(y.div_(out_scale), lo, hi, dtype)


def _float_softmax_codes(acc, in_scale, out_mult, lo, hi, dtype):
    return _codes_of_temporary(torch.softmax(_scaled_float64(acc, in_scale), dim=-1).mul_(out_mult), lo, hi, dtype)


def _float_activation_codes(h, function, out_scale, lo, hi, dtype):
    return _codes_of_temporary(_FLOAT_ACT[function](_scaled_float64(h, 2.0 ** -GELU_FRAC_BITS)).div_(out_scale),
                               lo, hi, dtype)


_FLOAT_ACT = {"gelu_erf": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
              "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


class FakeQuantOps:
    """Torch integer kernels for every op kind; ``overflows[op name]`` counts saturated accumulators."""

    def __init__(self, qg: QuantizedGraph, nonlinear: Literal["integer", "float"] = "integer",
                 compile: bool | None = None):
        if nonlinear not in ("integer", "float"):
            raise ValueError(f"nonlinear must be 'integer' or 'float', got {nonlinear!r}")
        self.qg, self.q, self.p, self.float = qg, qg.quantizers, qg.params, nonlinear == "float"
        self.stages = FusedStages(compile)
        self.overflows: dict[str, int] = {}
        self._w: dict[str, tuple] = {}
        self._const: dict[tuple, torch.Tensor] = {}  # (op name, field) -> int64 tensor of the frozen params
        self.groups: dict[str, torch.Tensor] = {}     # group index per grouped tensor (this batch)

    def _ints(self, op_name: str, params, field: str) -> torch.Tensor:
        """``params.<field>`` as an int64 tensor, cached for the frozen params (per-image ones,
        `simulator.predicted_graph`, are other objects and converted each call)."""
        if params is not self.qg.params.get(op_name):
            return _t(getattr(params, field))
        key = (op_name, field)
        if key not in self._const:
            self._const[key] = _t(getattr(params, field))
        return self._const[key]

    def _count(self, name: str, n: int) -> None:
        if n:
            self.overflows[name] = self.overflows.get(name, 0) + int(n)

    def _operand(self, t: str, x):
        qz = self.q[t]
        if qz.kind == "log2":
            return vectorised(softmax_codes.log2_operand)(x.long(), qz.bits)
        return v2sf.decode_operand(qz, x) if qz.kind == "two_scaled" else x

    def _gemm(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The int32 accumulators of ``a @ b`` (overflows counted and saturated); int32, or float32
        holding integers of magnitude <= 2**24, or int64 -- consumers widen with ``.long()``."""
        acc = exact_int_matmul(a, b)
        if acc.dtype != torch.int64:      # int_mm / bounded float32: inside int32 by construction
            return acc
        self._count(name, int(((acc < ACC_LO) | (acc > ACC_HI)).sum()))
        return saturate(acc, ACC_LO, ACC_HI)

    def _grouped(self, op, x):
        """Grouped codes (`reference.igq_graph_ops`); keeps the group map."""
        codes, self.groups[op.outputs[0]] = igq_graph_ops.grouped_output(
            op, self.p[op.name], self.q[op.outputs[0]], x, "float" if self.float else "integer")
        return codes

    def patchify(self, op: ir.Patchify, images):
        qz = self.q[op.outputs[0]]
        ph, pw = op.patch_size
        b, c, h, w = images.shape
        gh, gw = op.grid(h, w)
        x = images.double()
        if op.pad:
            x = F.pad(x, (0, gw * pw - w, 0, gh * ph - h))
        x = x[:, :, :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw)
        p = x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)
        return _codes(p / float(qz.scale), qz)

    def linear(self, op: ir.Linear, x, residual=None):
        lin, qz = self.p[op.name], self.q[op.outputs[0]]
        if op.name not in self._w:
            self._w[op.name] = (torch.from_numpy(np.ascontiguousarray(lin.w_q.T, dtype=np.int8)), _t(lin.bias_q))
        (w8, bias), mult, shift = self._w[op.name], self._ints(op.name, lin, "out_mult"), self._ints(op.name, lin, "out_shift")
        x = self._operand(op.inputs[0], x)
        if self.q[op.inputs[0]].kind == "grouped":
            x = igq_graph_ops.grouped_operand(x, self.groups[op.inputs[0]], self.q[op.inputs[0]])
        acc = self._gemm(op.name, x, w8)
        dt = code_dtype(qz.lo, qz.hi)
        if residual is None:
            y, over = self.stages.linear_codes(acc, bias, mult, shift, qz.lo, qz.hi, dt)
        else:
            y, over = self.stages.residual_linear_codes(acc, bias, mult, shift, residual, lin.res_mult, lin.res_shift,
                                                        qz.lo, qz.hi, dt)
        self._count(op.name, int(over))
        return y

    head = linear

    def layer_norm(self, op: ir.LayerNorm, x):
        ln, qz = self.p[op.name], self.q[op.outputs[0]]
        if qz.kind == "grouped":
            return self._grouped(op, x)
        if self.float:        # float64 LayerNorm between the same quantizers, in row blocks (no big temporaries)
            gamma, beta = (torch.tensor(np.array(v, dtype=np.float64)) for v in (ln.gamma, ln.beta))
            return in_row_chunks(_float_layernorm_codes, (x, ln.in_scale, gamma, beta, ln.eps, ln.out_scale, qz.lo,
                                                          qz.hi, code_dtype(qz.lo, qz.hi)), (0,))
        return self.stages.layernorm_codes(x, ln.eps_q, self._ints(op.name, ln, "gamma_mult"),
                                           self._ints(op.name, ln, "beta_q"), ln.out_shift, qz.lo, qz.hi,
                                           code_dtype(qz.lo, qz.hi))

    def token_concat(self, op: ir.TokenConcat, x):
        qz = self.q[op.outputs[0]]
        dt = torch.promote_types(x.dtype, code_dtype(qz.lo, qz.hi))
        tok = self._ints(op.name, self.p[op.name], "codes").to(dt)
        return torch.cat([tok.expand(x.shape[0], -1, -1), x.to(dt)], dim=1)

    def add_const(self, op: ir.AddConst, x):
        qz = self.q[op.outputs[0]]
        return saturate(x.long() + self._ints(op.name, self.p[op.name], "codes"), qz.lo, qz.hi).to(code_dtype(qz.lo, qz.hi))

    def split(self, op: ir.Split, acc):
        parts = torch.split(acc, list(op.sizes), dim=-1)
        return tuple(self.stages.linear_codes(a, 0, _t(rq.mult), _t(rq.shift), self.q[t].lo, self.q[t].hi,
                                              code_dtype(self.q[t].lo, self.q[t].hi))[0]
                     for a, t, rq in zip(parts, op.outputs, self.p[op.name]))

    def split_heads(self, op: ir.SplitHeads, x):
        if op.windows > 1:
            return split_window_heads(op, x)
        b, t, c = x.shape
        n, h = len(op.outputs), op.num_heads
        return tuple(x.reshape(b, t, n, h, c // (n * h)).permute(2, 0, 3, 1, 4).unbind(0))

    def merge_heads(self, op: ir.MergeHeads, x):
        if op.windows > 1:
            if op.inputs[0] in self.groups:
                raise ValueError(f"{op.name}: channel groups across attention windows are not defined")
            return merge_window_heads(op, x)
        b, h, t, d = x.shape
        if op.inputs[0] in self.groups:             # channel groups [B, H, d] -> [B, H*d]
            self.groups[op.outputs[0]] = self.groups[op.inputs[0]].reshape(b, h * d)
        return x.transpose(1, 2).reshape(b, t, h * d)

    def matmul(self, op: ir.MatMul, a, b):
        qz = self.q[op.outputs[0]]
        acc = self._gemm(op.name, self._operand(op.inputs[0], a), b.transpose(-2, -1) if op.transpose_b else b)
        kinds = (self.q[op.inputs[0]].kind, self.q[op.inputs[1]].kind, qz.kind)
        if qz.kind == "accumulator" and "grouped" not in kinds:
            return acc
        rq = self.p[op.name]
        if "grouped" in kinds:
            codes, gidx = igq_graph_ops.grouped_matmul(op, rq, self.q[op.inputs[0]], self.q[op.inputs[1]], qz,
                                                       self.groups.get(op.inputs[0]), acc.long())
            if gidx is not None:
                self.groups[op.outputs[0]] = gidx
            return codes
        return self.stages.requantized_codes(acc, rq.mult, rq.shift, qz.lo, qz.hi, code_dtype(qz.lo, qz.hi))

    def gather_tokens(self, op: ir.GatherTokens, x):
        return gather(x, torch.from_numpy(token_index(op)))

    def window_bias(self, op: ir.WindowBias, acc):
        wb = self.p[op.name]
        b, wh, n, _ = acc.shape
        h = op.num_heads
        a = acc.long().reshape(b, wh // h, h, n, n)
        m, bias = _t(wb.masked)[None, :, None], _t(wb.bias_q)[None, None]
        raw = a + bias
        self._count(op.name, int((((raw < ACC_LO) | (raw > ACC_HI)) & (m == 0)).sum()))
        return window_scores(a, bias, m, int(wb.mask_add)).reshape(acc.shape)

    def softmax(self, op: ir.Softmax, acc):
        sm, qz = self.p[op.name], self.q[op.outputs[0]]
        plain = qz.kind not in ("two_scaled", "grouped", "log2") and not sm.fine_exp
        if plain and not self.float:
            return self.stages.softmax_codes(acc, sm.in_mult, sm.in_shift, sm.out_bits, code_dtype(qz.lo, qz.hi))
        acc = acc.long()
        if qz.kind == "two_scaled":
            return v2sf.softmax_words(sm, acc, "float" if self.float else "integer")
        if qz.kind == "grouped":
            return self._grouped(op, acc)
        if not plain:
            return self._softmax_codes(sm, acc, qz)
        return in_row_chunks(_float_softmax_codes, (acc, sm.in_scale, float(1 << sm.out_bits), qz.lo, qz.hi,
                                                    code_dtype(qz.lo, qz.hi)), (0,))

    def _softmax_codes(self, sm, acc, qz):
        """Calibrated power-of-two codes or log2 codes (`simulator.softmax_codes`)."""
        if self.float:
            p = torch.softmax(acc.double() * sm.in_scale, dim=-1)
            if qz.kind == "log2":       # clip(round(-log2 p), 0, top); p = 0 -> top
                c = round_half_up(-torch.log2(p.clamp_min(2.0 ** -1000))).long()
                return saturate(c, 0, qz.hi)
            return _codes(p * 2.0 ** sm.fine_exp, qz)
        e = exp2_neg(-requantize(acc - acc.amax(-1, keepdim=True), sm.in_mult, sm.in_shift))
        recip = (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)
        if qz.kind == "log2":
            return vectorised(softmax_codes.log2_code)(e, recip, sm.out_bits)
        return vectorised(softmax_codes.softmax_pow2_codes)(e, recip, sm.fine_exp, sm.out_bits)

    def activation(self, op: ir.Activation, h):
        g, qz = self.p[op.name], self.q[op.outputs[0]]
        if qz.kind not in ("two_scaled", "grouped") and not self.float:
            stage = self.stages.quick_gelu_codes if op.function == "quick_gelu" else self.stages.gelu_codes
            return stage(h, g.out_mult, g.out_shift, qz.lo, qz.hi, code_dtype(qz.lo, qz.hi))
        if qz.kind not in ("two_scaled", "grouped"):
            return in_row_chunks(_float_activation_codes, (h, op.function, g.out_scale, qz.lo, qz.hi,
                                                           code_dtype(qz.lo, qz.hi)), (0,))
        h = h.long()
        if qz.kind == "two_scaled":
            return v2sf.activation_words(op.function, g, h, "float" if self.float else "integer")
        return self._grouped(op, h)

    def add(self, op: ir.Add, *xs):
        rs, qz = self.p[op.name], self.q[op.outputs[0]]
        total = sum(requantize(x.long(), int(m), int(k)) for x, m, k in zip(xs, rs.mult, rs.shift))
        return saturate(total, qz.lo, qz.hi)

    mean = add

    def pool(self, op: ir.Pool, x):
        if op.mode == "token":
            return x[:, op.index]
        rows = x[:, op.num_prefix_tokens:].long()
        return rounding_mean(rows.sum(dim=1), rows.shape[1])

    def exit(self, op: ir.Exit, logits):
        e = self.p[op.name]
        c = e.confidence
        if self.float:
            conf = _codes(torch.softmax(logits.double() * c.in_scale, dim=-1) * (1 << c.out_bits),
                          self.q[op.outputs[0]]).long().amax(-1)
        else:
            conf = softmax_stage(logits.long(), c.in_mult, c.in_shift, c.out_bits).amax(-1)
        return Leave(conf[:, None], (conf >= e.threshold_q).numpy())


class GraphFakeQuantExecutor:
    """``GraphFakeQuantExecutor(qgraph, nonlinear="integer").run(images)`` -> `RunResult` (codes of every tensor).

    ``compile``: the hot integer stages fused by TorchInductor (`reference.fused_stages.FusedStages`):
    None ("auto", default) for the calls on large tensors, True for all, False for none (eager, in
    row blocks). The integers are the same in every mode (tested)."""

    def __init__(self, qg: QuantizedGraph, nonlinear: Literal["integer", "float"] = "integer",
                 compile: bool | None = None):
        self.qg, self.nonlinear, self.compile = qg, nonlinear, compile

    @torch.no_grad()
    def run(self, images, batch_size: int = 64, keep_codes: bool | str = True) -> RunResult:
        """Run the walk over ``images`` in batches. ``keep_codes``: True keeps every tensor's codes
        (``RunResult.codes``), ``"digest"`` only their per-image digests (``RunResult.digests``,
        `simulator.results.CodeDigests`), False neither."""
        g = self.qg.graph
        images = torch.as_tensor(check_graph_images(images, self.qg))   # shape, real dtype, finite values
        base = FakeQuantOps(self.qg, self.nonlinear, self.compile)
        ops = with_predicted_scales(base, lambda x, sp: predict_log2(x, sp)[1].numpy(), torch.cat)
        codes: dict[str, list] = {}
        digests = CodeDigests() if keep_codes == "digest" else None

        def keep(name, t):
            if name == g.input:
                return
            if digests is not None:        # digested as the walk makes it (floats hold integer codes)
                digests.add(name, t.numpy())
                return
            keep_t = t if not (t.is_floating_point() or t.dtype == torch.bool) else t.long()
            codes.setdefault(name, []).append(keep_t.numpy().copy())   # own integer dtype (`CodeStore`)

        exits = ExitRecorder(self.qg, len(images))
        outs = []
        for s in range(0, len(images), batch_size):
            outs.append(walk(g, ops, images[s:s + batch_size], observing(ops, keep if keep_codes else None),
                             leaving(ops, exits.at(s)))[self.qg.output])
            for t, gidx in (exits.group_maps(base.groups, s, len(outs[-1])) if keep_codes else {}).items():
                keep(t + ".groups", torch.as_tensor(gidx))    # IGQ group maps (reference.igq_graph_ops)
            base.groups.clear()
        empty = (0, *ir.tensor_shapes(g)[self.qg.output][1:])          # no images: the output's shape
        lc = torch.cat(outs).long().numpy() if outs else np.zeros(empty, np.int64)
        layers = graph_layer_ops(self.qg)
        trace = Trace(model=self.qg.meta.get("model", "model"), recipe=self.qg.meta.get("label", "static"),
                      layers=[r for r, _ in layers], n_images=len(images), overflows=dict(ops.overflows))
        logits = exits.finish(trace, [i for _, i in layers], lc)
        return RunResult(logits=logits, logit_codes=lc, trace=trace, codes=CodeStore(codes), digests=digests)
