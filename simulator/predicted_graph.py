"""ScalePredictor on the graph: per-image multipliers for ``predicted`` quantizers.

A tensor with a ``predicted`` quantizer (`simulator.qgraph.PredictedScale`)
holds codes at a per-image scale ``s * 2**(d / 2**15)``. ``d`` (Q15 log2) is
predicted once per image when the predictor's source tensor (``x0``) is
produced: ``S`` = the ``permille``-th order statistic of ``|codes|``,
``x = normalise_statistic(S, center, norm_shift)``, ``d = horner_log2(x, c0..c3)``
(`simulator.scale_predictor`; numba kernel `simulator.predicted_scales.predict_log2`,
torch twin `reference.fakequant_predicted.predict_log2`).

Every frozen requantization ``M 2**-k`` from a tensor at ``s_in`` to one at
``s_out`` then gains ``2**(g / 2**15)`` with ``g = d_in - d_out`` (``d`` = 0
for static tensors, ``d_a + d_b`` for a ``q k^T`` accumulator, ``d_in`` for a
linear's int32 accumulator), entering as ``M' = rrshift(M m, 15)``,
``k' = sat(k + q, 0, 62)`` (`scale_multiplier` / `scale_shift`)::

    linear/head   out_mult, out_shift (per channel)   d_in - d_out; residual: d_res - d_out
    layer_norm    G, B (shift 0), out_shift           -d_out (LayerNorm is scale invariant)
    matmul        mult, shift (into codes)            d_a + d_b - d_out
    softmax       in_mult, in_shift                   d_in (the accumulator's)
    activation    out_mult, out_shift                 -d_out (its Q12 input is static)
    split         part mult, shift (per channel)      d_acc - d_part
    add / mean    mult_i, shift_i                     d_i - d_out

A zero gain is exactly the identity (``m = 2**15``, ``q = 0``). The biases
stay at their static scale, as in the old executor. In float-nonlinear mode
the scale fields the float functions read are rescaled by the real factor
``m 2**(-15 - q)`` the integer gain stands for.

`PredictedOps(base, predict, concat)` wraps an op set (numba `IntOps` or torch
`FakeQuantOps`): ops whose multipliers change run per image through the base
op set's own method with that image's params; everything else is the base
op set's batched call. `observing(ops, keep)` feeds the walk's tensors to it.
Numpy only (the per-image params are numpy for both op sets).
"""

from __future__ import annotations

import dataclasses
from collections import ChainMap
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from simulator.scale_predictor import gain_mantissa, gain_shift, scale_multiplier, scale_shift

__all__ = ["PredictedOps", "with_predicted_scales", "observing", "leaving", "predicted_tensors", "varying_tensors",
           "rewritten_ops", "predictor_records", "gain_factor"]

_REWRITTEN = ("linear", "head", "layer_norm", "matmul", "softmax", "activation", "split", "add", "mean")


def predicted_tensors(qg) -> dict[str, Any]:
    """Tensor -> its `PredictedScale`, for every ``predicted`` quantizer of ``qg``."""
    return {t: qz.predictor for t, qz in qg.quantizers.items() if qz.kind == "predicted"}


def varying_tensors(qg) -> set[str]:
    """Tensors whose scale is per image: predicted ones and the accumulators computed from them."""
    pred, out = predicted_tensors(qg), set()
    for op in qg.graph.ops:
        for t in op.outputs:
            qz = qg.quantizers.get(t)
            if t in pred:
                out.add(t)
            elif qz is not None and qz.kind == "accumulator" and op.kind in ("matmul", "linear", "window_bias") and \
                    any(x in out for x in op.inputs[:2 if op.kind == "matmul" else 1]):
                out.add(t)      # window_bias (Swin scores): its bias codes stay at the static scale, like biases
    return out


def rewritten_ops(qg, varying: set[str] | None = None) -> list:
    """Ops with frozen multipliers that read or write a per-image scale (they run per image).
    A linear into an int32 accumulator (ViT-22B's in_proj, before its ``split``) is not one:
    the accumulator's scale moves with its input, so its gain is 0."""
    varying = varying_tensors(qg) if varying is None else varying
    acc_linear = lambda op: op.kind == "linear" and qg.quantizers[op.outputs[0]].kind == "accumulator"  # noqa: E731
    return [op for op in qg.graph.ops if op.kind in _REWRITTEN and op.name in qg.params and not acc_linear(op)
            and any(t in varying for t in op.inputs + op.outputs)]


def gain_factor(g) -> np.ndarray:
    """The real factor ``m * 2**(-15 - q)`` an integer gain ``g`` (Q15 log2) stands for."""
    g = np.asarray(g, dtype=np.int64)
    return np.ldexp(gain_mantissa(g).astype(np.float64), (-15 - gain_shift(g)).astype(np.int64))


def _scaled(mult, shift, g):
    return (np.asarray(scale_multiplier(np.asarray(mult, np.int64), shift, g), np.int64),
            np.asarray(scale_shift(np.asarray(shift, np.int64), g), np.int64))


def _scalar(a):
    return int(np.asarray(a).reshape(-1)[0]) if np.ndim(a) else int(a)


class PredictedOps:
    """Op set wrapper: per-image multipliers for ops that read or write a predicted-scale tensor."""

    def __init__(self, base, predict: Callable, concat: Callable):
        self.base, self._predict, self._concat = base, predict, concat
        qg = base.qg
        self._pred = predicted_tensors(qg)
        self._prod = qg.graph.producers()
        self._sources: dict[str, list[str]] = {}
        for t, p in self._pred.items():
            self._sources.setdefault(p.source, []).append(t)
        self._d: dict[str, np.ndarray] = {}
        self._rows = np.zeros(0, dtype=np.int64)     # batch index of each running image (early exits)
        self._varying = varying_tensors(qg)
        self._touch = {op.name for op in rewritten_ops(qg, self._varying)}

    # --- the per-image log2 ratios --------------------------------------------------
    def observe(self, name: str, arr) -> None:
        """Called with every tensor the walk produces: predicts ``d`` for the tensors ``name`` is the source of."""
        ts = self._sources.get(name)
        if not ts:
            return
        self._rows = np.arange(len(arr))
        groups: dict[tuple, list[str]] = {}
        for t in ts:
            p = self._pred[t]
            groups.setdefault((p.permille, p.center, p.norm_shift), []).append(t)
        for (permille, center, norm_shift), members in groups.items():
            rows = [np.asarray(self._pred[t].coeffs, np.int64).reshape(-1, 4) for t in members]
            sp = SimpleNamespace(permille=permille, center=center, norm_shift=norm_shift,
                                 coeffs=np.ascontiguousarray(np.concatenate(rows)))
            d = np.asarray(self._predict(arr, sp), dtype=np.int64)      # [B, total rows]
            start = 0
            for t, r in zip(members, rows):
                per_tensor = np.asarray(self._pred[t].coeffs).ndim == 1
                self._d[t] = d[:, start] if per_tensor else d[:, start:start + len(r)]
                start += len(r)

    def leave(self, rows) -> None:
        """Images ``rows`` (batch indices, `simulator.walk`'s ``on_leave``) left at an early exit:
        drop their ``d`` so the per-image ones stay aligned with the running rows."""
        stay = ~np.isin(self._rows, np.asarray(rows))
        self._rows = self._rows[stay]
        self._d = {t: d[stay] for t, d in self._d.items()}

    def log2(self, t: str):
        """Per-image ``d`` of tensor ``t``: int64 [B] or [B, C]; None when its scale is static."""
        if t in self._pred:
            return self._d[t]
        if t not in self._varying:
            return None
        p = self._prod[t]
        if p.kind in ("linear", "window_bias"):
            return self.log2(p.inputs[0])
        a, b = self.log2(p.inputs[0]), self.log2(p.inputs[1])
        return a if b is None else b if a is None else a + b

    def _gain(self, i: int, plus, minus):
        """``d_plus - d_minus`` of image ``i`` (0 when both are static)."""
        g = 0
        for t, sign in [(t, 1) for t in plus] + [(t, -1) for t in minus]:
            d = self.log2(t)
            if d is not None:
                g = g + sign * d[i]
        return np.asarray(g, dtype=np.int64)

    # --- per-image params (`rewrite`) and the per-image loop -------------------------
    def params_for(self, op, i: int):
        """The frozen params of ``op`` rewritten for image ``i``'s predicted scales."""
        p, k, ins, out = self.base.qg.params[op.name], op.kind, op.inputs, op.outputs
        rep = dataclasses.replace
        if k in ("linear", "head"):
            g = self._gain(i, ins[:1], out)
            m, s = _scaled(p.out_mult, p.out_shift, g)
            p = rep(p, out_mult=m, out_shift=s, out_scale=p.out_scale / gain_factor(g))
            if len(ins) == 2:
                g = self._gain(i, ins[1:], out)
                p = rep(p, res_mult=_scalar(scale_multiplier(p.res_mult, p.res_shift, g)),
                        res_shift=_scalar(scale_shift(p.res_shift, g)))
            return p
        if k == "layer_norm":
            if self.log2(ins[0]) is not None:
                raise ValueError(f"{op.name}: a LayerNorm input cannot have a predicted scale")
            g = self._gain(i, (), out)
            return rep(p, gamma_mult=_scaled(p.gamma_mult, 0, g)[0], beta_q=_scaled(p.beta_q, 0, g)[0],
                       out_shift=_scalar(scale_shift(p.out_shift, g)), out_scale=p.out_scale / float(gain_factor(g)))
        if k in ("matmul", "activation"):
            g = self._gain(i, ins, out)
            if k == "matmul":
                return rep(p, mult=_scalar(scale_multiplier(p.mult, p.shift, g)), shift=_scalar(scale_shift(p.shift, g)),
                           out_scale=p.out_scale / float(gain_factor(g)))
            return rep(p, out_mult=_scalar(scale_multiplier(p.out_mult, p.out_shift, g)),
                       out_shift=_scalar(scale_shift(p.out_shift, g)), out_scale=p.out_scale / float(gain_factor(g)))
        if k == "softmax":
            g = self._gain(i, ins, ())
            return rep(p, in_mult=_scalar(scale_multiplier(p.in_mult, p.in_shift, g)),
                       in_shift=_scalar(scale_shift(p.in_shift, g)), in_scale=p.in_scale * float(gain_factor(g)))
        if k == "split":
            parts = []
            for t, rq in zip(out, p):          # d_acc is per tensor; d_t per tensor or per channel of t
                m, s = _scaled(rq.mult, rq.shift, self._gain(i, ins, (t,)))
                parts.append(rep(rq, mult=m, shift=s))
            return tuple(parts)
        g = np.array([self._gain(i, (t,), out) for t in ins])                 # add / mean
        m, s = _scaled(p.mult, p.shift, g)
        return rep(p, mult=m, shift=s)

    def _per_image(self, fn, op, xs):
        """``fn`` image by image with that image's params; IGQ group maps (``base.groups``, per
        batch) are sliced to the image for reading and the ones ``op`` writes concatenated."""
        base_params, groups = self.base.p, getattr(self.base, "groups", None)
        results, written = [], {}
        try:
            for i in range(len(xs[0])):
                self.base.p = ChainMap({op.name: self.params_for(op, i)}, base_params)
                view = None if groups is None else {t: g[i:i + 1] for t, g in groups.items()}
                if view is not None:
                    self.base.groups = dict(view)
                results.append(fn(op, *(x[i:i + 1] for x in xs)))
                for t in op.outputs if view is not None else ():
                    if t in self.base.groups and self.base.groups[t] is not view.get(t):
                        written.setdefault(t, []).append(self.base.groups[t])
        finally:
            self.base.p = base_params
            if groups is not None:
                self.base.groups = groups
        for t, maps in written.items():
            groups[t] = self._concat(maps)
        if isinstance(results[0], tuple):
            return tuple(self._concat([r[j] for r in results]) for j in range(len(results[0])))
        return self._concat(results)

    def __getattr__(self, name: str):
        fn = getattr(self.base, name)
        if name not in _REWRITTEN:
            return fn

        def run(op, *xs):
            return self._per_image(fn, op, xs) if op.name in self._touch else fn(op, *xs)
        return run


def with_predicted_scales(ops, predict: Callable, concat: Callable):
    """``ops`` wrapped in `PredictedOps` when its graph has ``predicted`` quantizers, else ``ops``."""
    return PredictedOps(ops, predict, concat) if predicted_tensors(ops.qg) else ops


def leaving(ops, on_leave: Callable | None) -> Callable | None:
    """The walk's ``on_leave``, also telling `PredictedOps.leave` (``on_leave`` itself for other op sets)."""
    if not isinstance(ops, PredictedOps):
        return on_leave

    def both(op, rows):
        ops.leave(rows)
        if on_leave is not None:
            on_leave(op, rows)
    return both


def observing(ops, keep: Callable | None) -> Callable | None:
    """The walk's ``keep``, also feeding `PredictedOps.observe` (``keep`` itself for other op sets)."""
    if not isinstance(ops, PredictedOps):
        return keep

    def both(name, arr):
        ops.observe(name, arr)
        if keep is not None:
            keep(name, arr)
    return both


def _words(op, p, varying: set[str]) -> int:
    """Multiplier words of ``op`` rewritten per image (32-bit each)."""
    k = op.kind
    if k in ("linear", "head"):
        res = len(op.inputs) == 2 and (op.inputs[1] in varying or op.outputs[0] in varying)
        varies = op.inputs[0] in varying or op.outputs[0] in varying
        return (np.size(p.out_mult) if varies else 0) + int(res)
    if k == "layer_norm":
        return 2 * np.size(p.gamma_mult)
    if k == "split":
        return int(sum(op.sizes))
    if k in ("add", "mean"):
        return len(op.inputs)
    return 1       # matmul, softmax, activation: one scalar multiplier


def predictor_records(qg) -> list:
    """Trace records of the predictor per image (kind ``scale_predictor``), as the old
    `simulator.predicted_scales.predictor_records`: ``scale_predictor.statistic`` scans the
    source codes; ``scale_predictor.multipliers`` = ``degree`` Horner steps per predicted
    boundary (``meta["scale_predictor"]["boundaries"]``) + every multiplier word rewritten."""
    from simulator import ir
    from simulator.trace import LayerRecord

    pred = predicted_tensors(qg)
    if not pred:
        return []
    first = next(iter(pred.values()))
    nb = len(qg.meta.get("scale_predictor", {}).get("boundaries", pred))
    varying = varying_tensors(qg)
    words = sum(_words(op, qg.params[op.name], varying) for op in rewritten_ops(qg, varying))
    shape = ir.tensor_shapes(qg.graph, batch=1)[first.source]
    n = int(np.prod(shape[1:]))
    return [LayerRecord(name="scale_predictor.statistic", kind="scale_predictor", elements=n, rows=1,
                        in_bits=qg.quantizers[first.source].bits, out_bits=0),
            LayerRecord(name="scale_predictor.multipliers", kind="scale_predictor",
                        elements=nb * first.degree + words, rows=nb, in_bits=32, out_bits=32)]
