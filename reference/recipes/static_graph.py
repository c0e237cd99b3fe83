"""`static` on the lowered graph: calibrate with the float walk, freeze a `QuantizedGraph`.

Phase 2 of issue 13. The float walk (`reference.float_ops`, float32, batches
of 64) feeds `reference.calibration.BoundaryStats` through ``keep``; every
op is then frozen with the formulas of the old recipe
(`reference.recipes.static`: `freeze_linear`, `freeze_layernorm`, `Scales`,
residual headroom, edge bits), so on a plain ViT the codes equal the removed
legacy executor's at every boundary (recorded: tests/reference/test_legacy_golden.py).

One module, not a package: the static recipe is one mechanism (quantizer
placement + freezing); a package pays off once a recipe has its own
kernels, search and docs (tsptq, igq, ... when they are ported).

Quantizer placement (`assign_quantizers`), decided per *owner* tensor: a
tensor read only by ``token_concat`` / ``add_const`` / ``merge_heads``
shares the quantizer of that op's output (the patch embedding is written
straight at ``x0``'s scale; ``attn @ v`` straight at ``attn_out``'s), a
pooled row and a gathered token (Swin's windows, patch merging) share
their input's, and the parts of ``split_heads`` (q, k, v)
each own a per-tensor scale, which makes the qkv linear's output scale
per channel. Owners get, in this order of rules:

=============================================  ==================================
owner tensor                                   quantizer
=============================================  ==================================
patchify output (``input``)                    signed, ``edge_bits`` (else a_bits)
Swin scores (``window_bias`` output)           the ``q k^T`` accumulator's quantizer
softmax output                                 unsigned a_bits at ``2**-a_bits``; with
                                               ``params.softmax`` (`softmax_quantizer`):
                                               calibrated ``2**-f``, or log2 codes
linear read by a ``split`` (ViT-22B in_proj)   int32 accumulator at ``s_in s_w`` per channel
read only by a softmax (``q k^T``)             int32 accumulator at ``s_q s_k scale``
read only by an activation (``fc1``)           Q12 fixed point (GELU unit input)
residual stream: made by head / add / mean /   signed ``residual_bits`` at
token concat / position add / a linear with    ``1.25 max|x| / (2**(b-1) - 1)``
a fused residual or read by a LayerNorm; or
read as a residual operand
anything else (LayerNorm, activation, q/k/v,   signed a_bits (``edge_bits`` when it
``attn_out``)                                  feeds the head), calibrated scale
=============================================  ==================================

``params: {softmax: {quantizer: uniform|log2, scale: fixed|calibrated, bits: 2..4}}``
(`reference.recipes.params.parse_static`; docs/recipes/static.md) replaces the fixed
post-softmax scale: ``calibrated`` takes the scale ``s`` the recipe's ``act_calibration``
gives the softmax output's samples (unsigned, a_bits) and restricts it to the power of two
``2**-f``, ``f`` in {floor(-log2 s), floor(-log2 s) + 1} with the lower squared error on the
same samples (clamped to [0, 62]); the softmax op's ``SoftmaxQ.fine_exp = f`` (the field
TSPTQ's V-2SF fine scale uses) and its kernel is `simulator.softmax_codes.softmax_pow2_codes`.
``log2`` gives the softmax output a ``log2`` quantizer (scale ``2**-S`` of the decoded
operand, `simulator.softmax_codes`); the ``attn @ V`` matmul is frozen with the same static
formula on that scale. Without the option (or with the defaults) nothing changes.

Statistics are gathered for every owner tensor, in walk order, with one
seeded generator -- the same set and order as the old `float_boundaries`,
so the sampled values (and so percentile/MSE scales) are the same.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from reference.calibration import BoundaryStats
from reference.degenerate import check_boundary_ranges
from reference.float_ops import FloatOps
from reference.quantizers import QParams, mse_search, calibrate, dyadic, quantize, weight_scales
from reference.recipes.params import SoftmaxOption, parse_static
from reference.recipes.config import RecipeConfig
from reference.recipes.static import Scales, freeze_layernorm, freeze_linear
from simulator import ir
from simulator.errors import InputError
from simulator.progress import track
from simulator.int_nonlinear import EXP_FRAC_BITS, GELU_FRAC_BITS, GELU_INPUT_LIMIT
from simulator.softmax_codes import log2_shift
from simulator.qgraph import ChannelRequant, ConstCodes, QuantizedGraph, Quantizer, RescaleSum
from simulator.qvit import GeluQ, Linear, Requant, SoftmaxQ
from simulator.walk import walk
from simulator.windows import WindowBiasQ, masked_pairs

__all__ = ["quantize_graph", "freeze_graph", "assign_quantizers", "collect_graph_stats", "owners", "freeze_op",
           "consumers", "calibrate_static", "freeze_window_bias",
           "shape_only_graph", "softmax_quantizer", "softmax_option"]

_SHARING = ("token_concat", "add_const", "merge_heads")   # their input is written at their output's scale
_RESIDUAL_MAKERS = ("head", "add", "mean", "token_concat", "add_const")


def _consumers(graph: ir.Graph) -> dict[str, list[tuple[ir.Op, int]]]:
    cons: dict[str, list] = {}
    for op in graph.ops:
        for i, t in enumerate(op.inputs):
            cons.setdefault(t, []).append((op, i))
    return cons


def owners(graph: ir.Graph) -> dict[str, str]:
    """Tensor -> the tensor whose quantizer it shares (itself for owners)."""
    cons, prod = _consumers(graph), graph.producers()
    own: dict[str, str] = {}
    for t in reversed(graph.tensor_names()):
        c = cons.get(t, [])
        if len(c) == 1 and c[0][1] == 0 and c[0][0].kind in _SHARING:
            own[t] = own[c[0][0].outputs[0]]
        else:
            own[t] = t
    for t in graph.tensor_names():
        p = prod.get(t)
        if p is not None and p.kind in ("pool", "gather_tokens"):     # rows / tokens of their input
            own[t] = own[p.inputs[0]]
    return own


def stat_names(graph: ir.Graph) -> list[str]:
    """Owner tensors (in walk order) whose calibration statistics are gathered."""
    own, cons = owners(graph), _consumers(graph)
    return [t for t in graph.tensor_names()[1:] if own[t] == t
            and not any(o.kind in ("split_heads", "split") for o, _ in cons.get(t, []))]


@torch.no_grad()
def collect_graph_stats(graph: ir.Graph, images: np.ndarray, names, batch_size: int = 64,
                        max_samples: int = 1 << 16, seed: int = 0) -> dict[str, BoundaryStats]:
    """The float32 walk over ``images``; `BoundaryStats` of each tensor in ``names`` (an `InputError`
    naming the layer when a range overflows float32 or is exactly zero: `reference.degenerate`)."""
    rng = np.random.default_rng(seed)
    stats: dict[str, BoundaryStats] = {}
    names = set(names)
    ops = FloatOps(graph, torch.float32)

    def keep(name, t):
        if name in names:
            stats.setdefault(name, BoundaryStats(max_samples, rng)).add(t)

    for s in track(range(0, len(images), batch_size), f"calibrating on {len(images)} images", unit="batch"):
        walk(graph, ops, torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32)), keep)
    check_boundary_ranges(stats, len(images))   # overflowing / all-zero layers: one line naming the layer
    return stats


def softmax_option(cfg: RecipeConfig) -> SoftmaxOption:
    """The static recipe's ``params.softmax`` (defaults for every other recipe: their params are theirs)."""
    if cfg.recipe != "static" or "softmax" not in cfg.params:     # (recipes reuse static with their params)
        return SoftmaxOption()
    return parse_static({"softmax": cfg.params["softmax"]}, f"recipe {cfg.label}").softmax


def pow2_exponent(values: np.ndarray, bits: int, method: str, percentile: float) -> int:
    """``f`` of the calibrated power-of-two post-softmax scale ``2**-f`` (module docstring)."""
    s = float(calibrate(values, bits, method, signed=False, percentile=percentile).scale)
    lo = int(np.clip(np.floor(-np.log2(s)), 0, 62))
    cands = [QParams(2.0 ** -f, bits, signed=False) for f in sorted({lo, min(lo + 1, 62)})]
    return int(round(-np.log2(mse_search(np.asarray(values, np.float64), cands).scale)))


def softmax_quantizer(t: str, cfg: RecipeConfig, stats: dict | None) -> Quantizer:
    """Quantizer of the softmax output ``t`` per the recipe's ``params.softmax`` (``stats`` None: no
    statistics, as for a shape-only graph -- the calibrated option keeps the fixed scale's exponent)."""
    opt, ab = softmax_option(cfg), cfg.a_bits
    if opt.quantizer == "log2":
        b = opt.log2_bits(ab)
        return Quantizer("log2", 2.0 ** -log2_shift(b), b, signed=False)
    if opt.scale == "calibrated" and stats is not None:
        f = pow2_exponent(stats[t].values(), ab, cfg.act_calibration, cfg.percentile)
        return Quantizer("static", 2.0 ** -f, ab, signed=False)
    return Quantizer("static", 2.0 ** -ab, ab, signed=False)


class _Placement:
    """Quantizer of every tensor, computed on first use (in walk order, like the old recipe)."""

    def __init__(self, graph: ir.Graph, sc: Scales, cfg: RecipeConfig):
        self.g, self.sc, self.cfg = graph, sc, cfg
        self.own, self.cons, self.prod = owners(graph), _consumers(graph), graph.producers()
        self.q: dict[str, Quantizer] = {}
        self.edge_a = cfg.edge_bits or cfg.a_bits

    def __call__(self, t: str) -> Quantizer:
        o = self.own[t]
        if o not in self.q:
            self.q[o] = self._owner(o)
        return self.q[o]

    def _feeds_head(self, t: str) -> bool:
        return any(op.kind == "head" or (op.kind == "pool" and self._feeds_head(op.outputs[0]))
                   for op, _ in self.cons.get(t, []))

    def _residual(self, t: str, p: ir.Op, cons) -> bool:
        if p.kind in _RESIDUAL_MAKERS or any((op.kind == "linear" and i == 1) or op.kind == "add"
                                             for op, i in cons):
            return True
        return p.kind == "linear" and (len(p.inputs) == 2 or any(op.kind == "layer_norm" for op, _ in cons))

    def _owner(self, t: str) -> Quantizer:
        p, cons, cfg = self.prod[t], self.cons.get(t, []), self.cfg
        ab = cfg.a_bits
        if p.kind == "linear" and any(op.kind == "split" for op, _ in cons):
            w = self.g.params[p.name]["weight"]       # int32 accumulators, per-channel scale s_in * s_w
            s_in = float(self(p.inputs[0]).scale)
            return Quantizer("accumulator", s_in * weight_scales(w, cfg.w_bits, cfg.weight_calibration), 32)
        if p.kind == "patchify":
            return Quantizer("static", self.sc.act(t, self.edge_a), self.edge_a)
        if p.kind == "softmax":
            return softmax_quantizer(t, cfg, self.sc.stats)
        if p.kind == "window_bias":                   # Swin scores: the q k^T accumulator's scale
            return self(p.inputs[0])
        if cons and all(op.kind in ("softmax", "window_bias") for op, _ in cons):
            a, b = self(p.inputs[0]), self(p.inputs[1])
            return Quantizer("accumulator", float(a.scale) * float(b.scale) * p.scale, 32)
        if cons and all(op.kind == "activation" for op, _ in cons):
            return Quantizer("fixed_point", 2.0 ** -GELU_FRAC_BITS, GELU_INPUT_LIMIT.bit_length() + 1)
        if any(op.kind == "split_heads" for op, _ in cons):
            parts = [self(x) for x in cons[0][0].outputs]
            width = ir.tensor_shapes(self.g)[t][-1] // len(parts)
            return Quantizer("static", np.repeat([float(q.scale) for q in parts], width), parts[0].bits)
        if self._residual(t, p, cons):
            return Quantizer("static", self.sc.residual(t), cfg.residual_bits)
        bits = self.edge_a if self._feeds_head(t) else ab
        return Quantizer("static", self.sc.act(t, bits), bits)


def assign_quantizers(graph: ir.Graph, sc: Scales, cfg: RecipeConfig,
                      fixed: dict[str, Quantizer] | None = None) -> dict[str, Quantizer]:
    """Tensor -> `Quantizer` for every tensor but the images (see the module docstring). ``fixed``:
    quantizers of owner tensors given from outside (an imported QDQ model, `reference.onnx_import`);
    the quantizers derived from them (qkv output, ``q k^T`` accumulator) follow."""
    place = _Placement(graph, sc, cfg)
    place.q.update(fixed or {})
    return {t: place(t) for t in graph.tensor_names()[1:]}


def _freeze_op(op: ir.Op, g: ir.Graph, q: dict, cfg: RecipeConfig, prod) -> object | None:
    gp = g.params.get(op.name, {})
    k = op.kind
    if k in ("linear", "head"):
        qi, qo = q[op.inputs[0]], q[op.outputs[0]]
        edge = k == "head" or prod[op.inputs[0]].kind == "patchify"
        w_bits = (cfg.edge_bits or cfg.w_bits) if edge else cfg.w_bits
        res = q[op.inputs[1]] if len(op.inputs) == 2 else None
        return freeze_linear(gp["weight"], gp["bias"], float(qi.scale), qi.bits, w_bits, qo.scale,
                             0 if qo.kind == "fixed_point" else qo.bits, cfg.weight_calibration,   # acc: M = 1
                             residual_scale=None if res is None else float(res.scale),
                             res_bits=0 if res is None else res.bits)
    if k == "layer_norm":
        qi, qo = q[op.inputs[0]], q[op.outputs[0]]
        ln = SimpleNamespace(weight=gp["weight"], bias=gp["bias"], eps=op.eps, normalized_shape=gp["weight"].shape)
        return freeze_layernorm(ln, float(qi.scale), qi.bits, float(qo.scale), qo.bits)
    if k in ("token_concat", "add_const"):
        qo = q[op.outputs[0]]
        return ConstCodes(quantize(gp["tokens" if k == "token_concat" else "value"], QParams(qo.scale, qo.bits)))
    if k == "matmul" and q[op.outputs[0]].kind != "accumulator":
        qa, qb, qo = q[op.inputs[0]], q[op.inputs[1]], q[op.outputs[0]]
        m, s = dyadic(float(qa.scale) * float(qb.scale) * op.scale / float(qo.scale))
        return Requant(mult=int(m), shift=int(s), out_bits=qo.bits, out_scale=float(qo.scale))
    if k == "split":
        acc, parts, start = np.asarray(q[op.inputs[0]].scale), [], 0
        for t, size in zip(op.outputs, op.sizes):
            m, sh = dyadic(acc[start:start + size] / np.broadcast_to(q[t].scale, (size,)))
            parts.append(ChannelRequant(mult=np.asarray(m, np.int64), shift=np.asarray(sh, np.int64)))
            start += size
        return tuple(parts)
    if k == "window_bias":
        return freeze_window_bias(gp["bias"], gp["mask"], float(q[op.inputs[0]].scale))
    if k == "softmax":
        s_in = float(q[op.inputs[0]].scale)
        m, s = dyadic(s_in * math.log2(math.e) * 2.0 ** EXP_FRAC_BITS)
        qo = q[op.outputs[0]]
        f = int(round(-math.log2(float(qo.scale)))) if qo.kind == "static" and qo.scale != 2.0 ** -qo.bits else 0
        return SoftmaxQ(in_mult=int(m), in_shift=int(s), in_scale=s_in, out_bits=qo.bits, fine_exp=f)
    if k == "activation":
        qo = q[op.outputs[0]]
        m, s = dyadic(2.0 ** -GELU_FRAC_BITS / float(qo.scale))
        return GeluQ(out_mult=int(m), out_shift=int(s), out_bits=qo.bits, out_scale=float(qo.scale))
    if k in ("add", "mean"):
        n = len(op.inputs) if k == "mean" else 1
        s_out = float(q[op.outputs[0]].scale)
        m, s = dyadic(np.array([float(q[t].scale) / (n * s_out) for t in op.inputs]))
        return RescaleSum(mult=np.asarray(m, np.int64), shift=np.asarray(s, np.int64))
    return None      # patchify (its quantizer says all), views, pooling


def freeze_window_bias(bias: np.ndarray, mask: np.ndarray, acc_scale: float, mask_add: int = 0) -> WindowBiasQ:
    """Swin's relative position bias as int32 codes of the scores' accumulator scale
    (``round_half_up(bias / s_acc)``, saturated), the mask as 0/1 (`simulator.windows.window_scores`)."""
    return WindowBiasQ(bias_q=quantize(bias, QParams(acc_scale, 32)), masked=masked_pairs(mask).astype(np.uint8),
                       mask_add=int(mask_add))


freeze_op, consumers = _freeze_op, _consumers     # for calibrators that refreeze the ops they rewrite


def freeze_graph(graph: ir.Graph, stats: dict[str, BoundaryStats], cfg: RecipeConfig,
                 model_name: str = "model", n_calib: int = 0) -> QuantizedGraph:
    """Quantizers from ``stats`` and the frozen integer params of every op."""
    q = assign_quantizers(graph, Scales(stats, cfg), cfg)
    prod = graph.producers()
    params = {op.name: p for op in graph.ops if (p := _freeze_op(op, graph, q, cfg, prod)) is not None}
    meta = {"model": model_name, "recipe": cfg.recipe, "label": cfg.label, "w_bits": cfg.w_bits,
            "a_bits": cfg.a_bits, "residual_bits": cfg.residual_bits, "edge_bits": cfg.edge_bits,
            "calibration": {"weights": cfg.weight_calibration, "activations": cfg.act_calibration,
                            "images": int(n_calib)}}
    return QuantizedGraph(graph=graph, quantizers=q, params=params, meta=meta)


def calibrate_static(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                     image_size: tuple[int, int] | None = None):
    """Lower ``model`` (or take an `ir.Graph`) and calibrate the static recipe on the first
    ``cfg.calib_images`` of ``calib_images``: ``(calib, stats, static QuantizedGraph)``, the base
    every mechanism rewrites."""
    if isinstance(model, ir.Graph):
        graph = model
    else:
        from reference.lowering import lower
        graph = lower(model, image_size=image_size) if image_size else lower(model)
    calib = np.asarray(calib_images)[: cfg.calib_images]
    ir.check_images(graph, calib.shape)
    stats = collect_graph_stats(graph, calib, stat_names(graph))
    return calib, stats, freeze_graph(graph, stats, cfg, model_name, len(calib))


def quantize_graph(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                   image_size: tuple[int, int] | None = None) -> QuantizedGraph:
    """Lower ``model`` (a timm ViT, or an already lowered `ir.Graph`), calibrate the static recipe on
    the first ``cfg.calib_images`` of ``calib_images`` and freeze it (other recipes and mechanisms:
    `reference.recipes.composed.quantize_graph`)."""
    if cfg.recipe != "static" or cfg.mechanisms:
        raise InputError(f"recipe {cfg.label}: static_graph.quantize_graph implements 'static' only "
                         "(reference.quantize_graph dispatches every graph recipe)")
    return calibrate_static(model, calib_images, cfg, model_name, image_size)[2]


class _UnitScales:
    """Every calibrated scale is 1.0: quantizer placement and widths without statistics."""

    stats = None

    def act(self, name: str, bits: int, method: str | None = None) -> float:
        return 1.0

    def residual(self, name: str) -> float:
        return 1.0


def shape_only_graph(graph: ir.Graph, cfg: RecipeConfig, model_name: str = "model") -> QuantizedGraph:
    """The static recipe's quantizer placement and bit-widths on ``graph`` with unit scales and
    zero weight codes (zero-strided broadcasts, no memory): everything `simulator.graph_trace`
    reads, for costing a model from its shapes alone (``simulate cost``). Not runnable."""
    q = assign_quantizers(graph, _UnitScales(), cfg)
    prod = graph.producers()
    params = {}
    for op in graph.ops:
        if op.kind not in ("linear", "head"):
            continue
        n, k = graph.params[op.name]["weight"].shape
        edge = op.kind == "head" or prod[op.inputs[0]].kind == "patchify"
        qi, qo = q[op.inputs[0]], q[op.outputs[0]]
        res = q[op.inputs[1]] if len(op.inputs) == 2 else None
        z = np.zeros(n, dtype=np.int64)
        params[op.name] = Linear(w_q=np.broadcast_to(np.int8(0), (n, k)), bias_q=z, w_scale=np.ones(n),
                                 w_bits=(cfg.edge_bits or cfg.w_bits) if edge else cfg.w_bits, in_bits=qi.bits,
                                 in_scale=1.0, out_mult=z, out_shift=z,
                                 out_bits=0 if qo.kind == "fixed_point" else qo.bits, out_scale=np.ones(n),
                                 res_bits=0 if res is None else res.bits)
    meta = {"model": model_name, "recipe": "shapes", "label": f"shapes_w{cfg.w_bits}a{cfg.a_bits}",
            "w_bits": cfg.w_bits, "a_bits": cfg.a_bits, "residual_bits": cfg.residual_bits,
            "edge_bits": cfg.edge_bits}
    return QuantizedGraph(graph=graph, quantizers=q, params=params, meta=meta)
