"""`tsptq` on the lowered graph: TSPTQ-ViT (Tai & Wu, 2023) as a calibrator
that rewrites a static `QuantizedGraph`.

It starts from the static calibration (`reference.recipes.static_graph`:
same quantizers, same frozen ops) and rewrites only the tensors it owns,
with the searches and freezing formulas of the old per-model recipe
(`reference.recipes.tsptq`: `search_softmax`, `search_gelu`,
`search_outliers`, `freeze_layernorm`, `freeze_linear`):

* **V-2SF** on every softmax output and every activation output (any of
  ``gelu_erf``, ``gelu_tanh``, ``quick_gelu``) whose readers are all GEMMs
  reading it as their first operand (``matmul`` ``attn @ v``, ``linear``
  ``fc2``): its quantizer becomes ``two_scaled`` (`simulator.qgraph`) with
  fine scale ``2**-f`` (softmax, unsigned fine region) or ``s`` (activation,
  signed fine region) and ratio ``2**r``; the producer's params carry
  ``(fine_exp, ratio_shift)`` / ``(M, k, ratio_shift)`` and each reader is
  refrozen at the fine scale (`static_graph.freeze_op`, the static formula).
  A tensor read by anything else (a LayerNorm, a residual) stays static.
* **O-2SF** on every LayerNorm whose readers are all ``linear`` ops (first
  operand) with a code or Q12 output: outlier channels get ``s * 2**r_o``,
  folded into the LayerNorm's integer gain/bias (``gamma 2**-r_o``,
  ``beta 2**-r_o``) and into the readers' weight columns (``W 2**r_o``, before
  per-output-channel weight quantization). The LayerNorm output's quantizer
  is ``static`` per channel (``s * 2**shift_c``); no runtime shift remains.
  The final norm (read by the head) and qk-norms (read by matmuls) stay static,
  as do norms feeding ViT-22B's fused in_proj (its int32 accumulators'
  per-channel scale would change with the input's).

Searches read float32 tensors of the graph's float walk in batches of 64, as
the old recipe reads `float_boundaries`: the LayerNorm outputs over all
calibration images, the V-2SF tensors (and their GEMM's other operand or
weight) over the first ``objective_images``. On the default model the codes
equal the removed legacy `tsptq` executor's at every shared boundary
(recorded: tests/reference/test_legacy_golden.py).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import torch

from reference.float_ops import FloatOps
from reference.quantizers import dyadic
from reference.recipes.config import RecipeConfig
from reference.recipes.mechanisms import register_mechanism
from reference.recipes.static import freeze_layernorm, freeze_linear
from reference.recipes.static_graph import calibrate_static, consumers, freeze_op, owners
from reference.recipes.tsptq import TsptqParams, parse_params, search_gelu, search_outliers, search_softmax
from simulator import ir
from simulator.errors import InputError
from simulator.int_nonlinear import GELU_FRAC_BITS
from simulator.qgraph import QuantizedGraph, Quantizer
from simulator.progress import track
from simulator.qvit import GeluQ
from simulator.walk import walk

__all__ = ["quantize_graph_tsptq", "two_scale", "two_scaled_claims", "v2sf_tensors", "o2sf_norms"]


def _sole_owner(graph: ir.Graph, t: str) -> bool:
    return sum(o == t for o in owners(graph).values()) == 1


def v2sf_tensors(graph: ir.Graph) -> list[str]:
    """Softmax / activation outputs read only as the first operand of GEMMs."""
    cons = consumers(graph)
    out = []
    for op in graph.ops:
        if op.kind not in ("softmax", "activation"):
            continue
        t = op.outputs[0]
        c = cons.get(t, [])
        if c and all(o.kind in ("matmul", "linear") and i == 0 for o, i in c) and _sole_owner(graph, t):
            out.append(t)
    return out


def o2sf_norms(graph: ir.Graph, qg_static: QuantizedGraph) -> list[ir.LayerNorm]:
    """LayerNorms whose output is read only as the input of linears with code / Q12 outputs."""
    cons, q = consumers(graph), qg_static.quantizers
    out = []
    for op in graph.ops:
        if op.kind != "layer_norm":
            continue
        t = op.outputs[0]
        c = cons.get(t, [])
        if (c and all(o.kind == "linear" and i == 0 and q[o.outputs[0]].kind in ("static", "fixed_point")
                      for o, i in c) and _sole_owner(graph, t) and np.ndim(q[t].scale) == 0):
            out.append(op)
    return out


@torch.no_grad()
def _float_tensors(graph: ir.Graph, images: np.ndarray, first, n_first: int, rows, batch_size: int = 64):
    """One float32 walk: ``(values of the tensors ``first`` over the first ``n_first`` images, values of
    ``rows`` over all images as [rows, last dim])`` -- the walk stops after ``n_first`` images when
    ``rows`` is empty."""
    first, rows = set(first), set(rows)
    out_first: dict = {}
    out_rows: dict = {}
    ops = FloatOps(graph, torch.float32)
    n = len(images) if rows else min(n_first, len(images)) if first else 0
    for s in range(0, n, batch_size):
        take = max(0, min(batch_size, n_first - s))        # rows of this batch within the first n_first

        def keep(name, t):
            if name in first and take:
                out_first.setdefault(name, []).append(t[:take].float().numpy())
            if name in rows:
                out_rows.setdefault(name, []).append(t.float().reshape(-1, t.shape[-1]).numpy())

        walk(graph, ops, torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32)), keep)
    return ({k: np.concatenate(v) for k, v in out_first.items()}, {k: np.concatenate(v) for k, v in out_rows.items()})


def _softmax(t, op, c, q, p, fl, stats, params):
    """V-2SF on a softmax output: fine ``2**-f``, coarse ``2**-(f-r)``."""
    bits = q[t].bits
    if params.objective == "output":
        v = fl.get(c[0][0].inputs[1]) if len(c) == 1 and c[0][0].kind == "matmul" else None
        f, r, _ = search_softmax(fl[t], bits, params.max_ratio_shift, v=v)
    else:
        f, r, _ = search_softmax(stats[t].values(), bits, params.max_ratio_shift)
    q[t] = Quantizer("two_scaled", 2.0 ** -f, bits, signed=False, ratio_shift=r)
    p[op.name] = dataclasses.replace(p[op.name], fine_exp=f, ratio_shift=r)
    return {"fine_exp": f, "ratio_shift": r}


def _activation(t, op, c, q, p, g, fl, stats, params):
    """V-2SF on an activation output: fine ``s`` (signed), coarse ``s * 2**r`` (unsigned)."""
    bits = q[t].bits
    w = None
    if params.objective == "output" and len(c) == 1 and c[0][0].kind == "linear":
        w = np.asarray(g.params[c[0][0].name]["weight"], dtype=np.float32)
    x = fl[t].reshape(-1, w.shape[1]) if w is not None else stats[t].values()
    s, r, _ = search_gelu(x, bits, params.max_ratio_shift, w=w, amax=stats[t].amax)
    m, k = dyadic(2.0 ** -GELU_FRAC_BITS / s)
    if int(k) + r > 62:
        raise InputError(f"{t}: two-scaled fine shift {int(k)} + ratio {r} exceeds 62")
    q[t] = Quantizer("two_scaled", float(s), bits, signed=True, ratio_shift=r)
    p[op.name] = GeluQ(out_mult=int(m), out_shift=int(k), out_bits=bits, out_scale=float(s), ratio_shift=r)
    return {"fine_scale": float(s), "ratio_shift": r}


def _o2sf(op, readers, q, p, g, x, cfg: RecipeConfig, params: TsptqParams):
    """O-2SF on a LayerNorm: outlier channels at ``s * 2**r_o`` folded into gain/bias and the readers' weights."""
    lnq, gp, t = p[op.name], g.params[op.name], op.outputs[0]
    ab = lnq.out_bits
    s, shifts, _ = search_outliers(x, ab, params.outlier_thresholds, params.max_outlier_shift, cfg.act_calibration)
    f = 2.0 ** -shifts.astype(np.float64)
    d = len(f)
    gamma = np.ones(d) if gp.get("weight") is None else np.asarray(gp["weight"], np.float64)
    beta = np.zeros(d) if gp.get("bias") is None else np.asarray(gp["bias"], np.float64)
    scaled = SimpleNamespace(weight=gamma * f, bias=beta * f, eps=op.eps, normalized_shape=(d,))
    p[op.name] = dataclasses.replace(freeze_layernorm(scaled, lnq.in_scale, lnq.in_bits, s, ab), channel_shift=shifts)
    for c, _ in readers:
        lin, lp, qo = p[c.name], g.params[c.name], q[c.outputs[0]]
        res = q[c.inputs[1]] if len(c.inputs) == 2 else None
        p[c.name] = freeze_linear(np.asarray(lp["weight"], np.float64) / f[None, :], lp["bias"], s, ab, lin.w_bits,
                                  qo.scale, 0 if qo.kind == "fixed_point" else qo.bits, cfg.weight_calibration,
                                  residual_scale=None if res is None else float(res.scale),
                                  res_bits=0 if res is None else res.bits)
    q[t] = Quantizer("static", s * 2.0 ** shifts if shifts.any() else s, ab)
    return {"outliers": int(np.count_nonzero(shifts)), "shift": int(shifts.max(initial=0)), "fine_scale": s}


def two_scale(base: QuantizedGraph, calib: np.ndarray, stats: dict, cfg: RecipeConfig,
              params: TsptqParams, owned=None) -> QuantizedGraph:
    """Rewrite the quantizers / params of ``base`` (a static calibration on ``calib``) with V-2SF and O-2SF;
    only the tensors in ``owned`` when given (`reference.recipes.mechanisms`)."""
    g = base.graph
    mine = (lambda t: True) if owned is None else owned.__contains__
    cons, prod = consumers(g), g.producers()
    q, p, info = dict(base.quantizers), dict(base.params), {}
    v2sf = [t for t in v2sf_tensors(g)
            if mine(t) and (params.softmax if prod[t].kind == "softmax" else params.gelu)]
    norms = [op for op in o2sf_norms(g, base) if mine(op.outputs[0])] if params.layernorm else []
    objective = []
    if params.objective == "output" and v2sf:
        objective = v2sf + [c[0][0].inputs[1] for t in v2sf if len(c := cons[t]) == 1 and c[0][0].kind == "matmul"]
    fl, fl_ln = _float_tensors(g, calib, objective, params.objective_images, [op.outputs[0] for op in norms])
    for t in track(v2sf, f"tsptq ({cfg.label}): V-2SF search of {len(v2sf)} tensors", unit="tensor"):
        op, c = prod[t], cons[t]
        info[t] = (_softmax(t, op, c, q, p, fl, stats, params) if op.kind == "softmax"
                   else _activation(t, op, c, q, p, g, fl, stats, params))
        for reader, _ in c:
            p[reader.name] = freeze_op(reader, g, q, cfg, prod)
    for op in track(norms, f"tsptq ({cfg.label}): O-2SF search of {len(norms)} LayerNorms", unit="norm"):
        t = op.outputs[0]
        info[t] = _o2sf(op, cons[t], q, p, g, fl_ln[t], cfg, params)
    meta = {**base.meta, "recipe": cfg.recipe,
            "tsptq": {"params": {k: (list(v) if isinstance(v, tuple) else v)
                                 for k, v in dataclasses.asdict(params).items()}, "tensors": info}}
    return QuantizedGraph(graph=g, quantizers=q, params=p, meta=meta)


def quantize_graph_tsptq(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                         image_size: tuple[int, int] | None = None) -> QuantizedGraph:
    """Lower ``model`` (or take an `ir.Graph`), calibrate the static recipe on the first
    ``cfg.calib_images`` of ``calib_images``, then apply TSPTQ-ViT (``cfg.params``)."""
    if cfg.recipe != "tsptq":
        raise InputError(f"recipe {cfg.recipe!r}: quantize_graph_tsptq implements 'tsptq' only")
    params = parse_params(cfg.params)
    calib, stats, base = calibrate_static(model, calib_images, cfg, model_name, image_size)
    return two_scale(base, calib, stats, cfg, params)


def two_scaled_claims(qg: QuantizedGraph, params: TsptqParams) -> dict[str, str]:
    """The tensors `two_scale` would rewrite on static ``qg``: tensor -> ``"v2sf"`` / ``"o2sf"``."""
    g, prod = qg.graph, qg.graph.producers()
    out = {t: "v2sf" for t in v2sf_tensors(g) if (params.softmax if prod[t].kind == "softmax" else params.gelu)}
    if params.layernorm:
        out.update({op.outputs[0]: "o2sf" for op in o2sf_norms(g, qg)})
    return out


def _two_scaled_ranks(qg: QuantizedGraph, params: TsptqParams) -> dict[str, int]:
    return {t: 2 if how == "v2sf" else 0 for t, how in two_scaled_claims(qg, params).items()}


@register_mechanism("two_scaled", claims=_two_scaled_ranks)
def _two_scaled_step(qg: QuantizedGraph, ctx, params: TsptqParams, cfg: RecipeConfig, owned) -> QuantizedGraph:
    return two_scale(qg, ctx.images, ctx.stats, cfg, params, owned)
