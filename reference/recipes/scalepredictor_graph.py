"""`scalepredictor` on the lowered graph: static calibration, then ``predicted`` quantizers.

The graph calibrator of the ScalePredictor recipe (the old per-model one,
`reference.recipes.scalepredictor`, stays importable; its functions are
reused here: `x0_statistic`, `_fit`, `_bound_beta`). Steps:

1. The static recipe on the graph (`reference.recipes.static_graph`).
2. Predicted boundaries (`predicted_boundaries`): every owner tensor with a
   static activation quantizer (signed ``a_bits``) after the statistic's
   source ``x0`` that is written by a LayerNorm, an activation, ``merge_heads``
   (``attn_out``), ``split_heads`` / ``split`` (q, k, v), and is not read by
   a LayerNorm (its eps is frozen at the input scale) nor feeds the head
   (``edge_bits``). On a plain ViT: norm1, q, k, v, attn_out, norm2, gelu of
   every block -- the old recipe's 7 per block. The residual stream, softmax
   outputs, Q12 inputs and accumulators stay static.
3. LayerNorms writing a predicted tensor get ``|B_c| < 2**46`` (gain headroom).
4. The statistic (``permille``-th order statistic of ``|x0 codes|``) of every
   calibration image, from the torch graph executor on the static graph.
5. Target: ``log2(s_oracle / s_static)`` in Q15 per boundary and image, the
   oracle being the MSE-optimal scale of that image's own tensor in the
   float32 graph walk (``calibrate(x_image, a_bits, "mse")``, as
   `reference.scale_premise.oracle_scales` on the float model).
6. Least-squares polynomial of degree ``degree`` per boundary, Q15 (`_fit`).
   Each predicted tensor (and the tensors sharing its quantizer: ``attn.av``,
   pooled rows) gets a ``predicted`` quantizer with its coefficients; the qkv
   output, whose static scale is per channel (q | k | v), gets the parts'
   coefficients per channel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from reference.float_ops import FloatOps
from reference.quantizers import calibrate
from reference.recipes.config import RecipeConfig
from reference.recipes.mechanisms import register_mechanism
from reference.recipes.scalepredictor import _bound_beta, _fit, parse_params, x0_statistic
from reference.recipes.static_graph import _consumers, owners, quantize_graph
from simulator.errors import InputError
from simulator.fixedpoint import round_half_up
from simulator.qgraph import PredictedScale, QuantizedGraph, Quantizer
from simulator.progress import track
from simulator.scale_predictor import LOG2_LIMIT, PRED_FRAC_BITS
from simulator.walk import walk

__all__ = ["quantize_scalepredictor_graph", "predict_scales", "predicted_boundaries", "graph_oracle_log2", "SOURCE"]

SOURCE = "x0"
_WRITERS = ("layer_norm", "activation", "merge_heads", "split_heads", "split")


def _feeds_head(t: str, cons) -> bool:
    return any(op.kind == "head" or (op.kind == "pool" and _feeds_head(op.outputs[0], cons))
               for op, _ in cons.get(t, []))


def predicted_boundaries(qg: QuantizedGraph) -> list[str]:
    """Owner tensors whose scale is predicted, in walk order (see the module docstring)."""
    g = qg.graph
    names = g.tensor_names()
    if SOURCE not in names:
        raise InputError(f"scalepredictor: the graph has no {SOURCE!r} tensor to take the statistic from")
    own, cons, prod = owners(g), _consumers(g), g.producers()
    out = []
    for t in names[names.index(SOURCE) + 1:]:
        o = own[t]
        if o not in out and _eligible(o, qg, cons, prod):
            out.append(o)         # attn.av (written at attn_out's quantizer) brings attn_out in its place
    return out


def _eligible(t: str, qg, cons, prod) -> bool:
    qz = qg.quantizers[t]
    residual = any(op.kind == "add" or (op.kind == "linear" and i == 1) for op, i in cons.get(t, []))
    return (prod[t].kind in _WRITERS and qz.kind == "static" and not residual and qz.signed and qz.bits == qg.meta["a_bits"] and np.ndim(qz.scale) == 0
            and not any(op.kind == "layer_norm" for op, _ in cons.get(t, [])) and not _feeds_head(t, cons))


@torch.no_grad()
def graph_oracle_log2(qg: QuantizedGraph, images: np.ndarray, names: list[str], batch_size: int = 64) -> np.ndarray:
    """Per-image oracle ``log2(s_oracle / s_static)`` in Q15, clamped to +-8 octaves: int64 [N, len(names)]."""
    ops, rows, a_bits = FloatOps(qg.graph, torch.float32), [], qg.meta["a_bits"]
    for s in track(range(0, len(images), batch_size), f"scalepredictor: per-image oracle scales of {len(names)} "
                   f"tensors on {len(images)} images", unit="batch"):
        got: dict[str, np.ndarray] = {}
        keep = lambda n, t: got.__setitem__(n, t.double().numpy()) if n in names else None   # noqa: E731
        walk(qg.graph, ops, torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32)), keep)
        rows += [[calibrate(got[n][i], a_bits, "mse").scale for n in names] for i in range(len(got[names[0]]))]
    static = np.array([float(qg.quantizers[n].scale) for n in names])
    y = round_half_up(np.log2(np.asarray(rows, dtype=np.float64) / static) * (1 << PRED_FRAC_BITS)).astype(np.int64)
    return np.clip(y, -LOG2_LIMIT, LOG2_LIMIT)


def _bounded(qg: QuantizedGraph, names: list[str]) -> QuantizedGraph:
    prod, params = qg.graph.producers(), dict(qg.params)
    for t in names:
        if prod[t].kind == "layer_norm":
            params[prod[t].name] = _bound_beta(params[prod[t].name])
    return dataclasses.replace(qg, params=params)


def _with_predictors(qg: QuantizedGraph, names, coeffs, sp: dict) -> dict[str, Quantizer]:
    own, cons = owners(qg.graph), _consumers(qg.graph)
    row = {t: c for t, c in zip(names, coeffs)}
    q = dict(qg.quantizers)
    pred = lambda qz, c: dataclasses.replace(qz, kind="predicted", predictor=PredictedScale(   # noqa: E731
        coeffs=np.asarray(c, np.int64), **sp))
    for t in qg.graph.tensor_names()[1:]:
        if own[t] in row:
            q[t] = pred(q[t], row[own[t]])
        elif any(op.kind == "split_heads" for op, _ in cons.get(t, [])):
            parts = cons[t][0][0].outputs
            if all(p in row for p in parts):
                width = np.size(q[t].scale) // len(parts)
                q[t] = pred(q[t], np.repeat(np.stack([row[p] for p in parts]), width, axis=0))
    return q


def predict_scales(qg: QuantizedGraph, calib: np.ndarray, cfg: RecipeConfig, params, names: list[str]
                   ) -> QuantizedGraph:
    """Steps 3-6 on ``qg`` (static at ``names``): bound the gains of the LayerNorms writing ``names``,
    fit the predictor on ``calib`` and make ``names`` (and the tensors sharing them) ``predicted``."""
    qg = _bounded(qg, names)
    from reference.fakequant_ops import GraphFakeQuantExecutor
    x0 = GraphFakeQuantExecutor(qg).run(calib).codes[SOURCE]
    stats = x0_statistic(x0, params.permille)
    target = graph_oracle_log2(qg, calib, names) if params.degree > 0 else np.zeros((len(calib), len(names)))
    center, norm_shift, coeffs = _fit(stats, target, params.degree)
    sp = dict(source=SOURCE, permille=params.permille, center=center, norm_shift=norm_shift, degree=params.degree)
    meta = {**qg.meta, "recipe": cfg.recipe, "label": cfg.label,
            "scale_predictor": {"point": SOURCE, "statistic": f"|code| order statistic {params.permille}/1000",
                                "degree": params.degree, "target": "log2(s_oracle / s_static)",
                                "boundaries": names}}
    return dataclasses.replace(qg, quantizers=_with_predictors(qg, names, coeffs, sp), meta=meta)


def quantize_scalepredictor_graph(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                                  image_size: tuple[int, int] | None = None) -> QuantizedGraph:
    """Lower ``model`` (or take an `ir.Graph`), calibrate statically, fit the predictor, freeze."""
    if cfg.recipe != "scalepredictor":
        raise InputError(f"recipe {cfg.recipe!r}: expected 'scalepredictor'")
    params = parse_params(cfg.params)
    qg = quantize_graph(model, calib_images, dataclasses.replace(cfg, recipe="static"), model_name, image_size)
    calib = np.asarray(calib_images)[: cfg.calib_images]
    return predict_scales(qg, calib, cfg, params, predicted_boundaries(qg))


@register_mechanism("predicted", claims=lambda qg, params: dict.fromkeys(predicted_boundaries(qg), -1))
def _predicted_step(qg: QuantizedGraph, ctx, params, cfg: RecipeConfig, owned) -> QuantizedGraph:
    """The ``predicted`` mechanism: the recipe's predictor on the boundaries it owns (the others
    keep the quantizers earlier mechanisms gave them; the walk rewrites the multipliers around
    every predicted tensor per image, whatever the neighbours' kinds)."""
    names = [t for t in predicted_boundaries(qg) if t in owned]
    return predict_scales(qg, ctx.images, cfg, params, names) if names else qg
