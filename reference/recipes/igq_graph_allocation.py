"""IGQ-ViT group counts under a BOP budget on the graph (Moon et al., CVPR 2024, Sec. 3.3).

The old recipe's allocation (`reference.recipes.igq_allocation`, same
discrepancy, greedy and error) over the graph: KL of the graph fake-quant
executor's (integer mode) logits against the float forward, BOPs = GEMM BOPs
of `simulator.graph_trace.graph_layers` + the grouping overhead
`simulator.igq.overhead_bops`; the budget is ``bop_budget`` x the all-G=1
(static) BOPs. Sites are visited in walk order, which on a plain ViT is the
old order (block by block: norm1, attn, attn_out, norm2, gelu), so ties
break alike.

Per-site sensitivities, ``kl[(site, G)]`` = the KL with that site at G and
every other at the smallest candidate (``params.sensitivity``):

* ``measured`` (the old recipe): one fake-quant pass per (site, G) -- 1 +
  sites x (candidates - 1) passes over ``allocation_images`` (121 on the
  digits model);
* ``linearized`` (default): the all-smallest KL ``kl_base`` is measured by
  one fake-quant pass, and each site's change by the second-order logit KL
  of its own quantization error (`reference.perturbation_kl`, one float
  forward + one backward per class): ``kl[(k, G)] = kl_base + KL2(dx_k(G)) -
  KL2(dx_k(G_min))``, where ``dx_k(G)`` is the grouped quantizer of site k at
  G applied to the float model's tensor minus that tensor
  (`grouped_values`: the float-nonlinear executor's grouping rule,
  `reference.igq_fakequant.group_quantize_float`, between the same frozen
  group scales). The per-site contributions are additive by construction --
  the assumption the greedy makes of the measured ones too.
"""

from __future__ import annotations

import numpy as np
import torch

import dataclasses

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.float_ops import FloatOps
from reference.perturbation_kl import perturbation_kl
from reference.recipes.config import RecipeConfig
from reference.recipes.igq_allocation import logit_kl
from simulator import ir
from simulator.errors import InputError
from simulator.graph_trace import graph_layer_ops, graph_layers
from simulator.igq import overhead_bops
from simulator.igq_graph import group_quantizer
from simulator.progress import track
from simulator.qgraph import QuantizedGraph
from simulator.walk import walk

__all__ = ["graph_total_bops", "allocate_graph", "greedy", "grouped_values", "linearized_sensitivities",
           "site_extra_bops"]


def graph_total_bops(qg: QuantizedGraph) -> int:
    """BOPs per image: GEMM BOPs + grouping overhead in BOP-equivalents."""
    layers = graph_layers(qg)
    return int(sum(r.bops for r in layers)) + int(overhead_bops(layers))


def site_extra_bops(builder, base: dict, cands) -> dict:
    """``(site, G) -> BOPs per image of base with that site at G, minus base's`` (as `graph_total_bops`
    of the two builds), re-costing only the ops that write or read the site's tensors."""
    g = builder.static.graph
    shapes = list(ir.op_shapes(g, batch=1))
    base_qg = builder.build(base, refreeze=False)

    def bops(qg, only):
        layers = [r for r, _ in graph_layer_ops(qg, only, shapes)]
        return int(sum(r.bops for r in layers)) + int(overhead_bops(layers))

    out = {}
    for site in builder.sites:
        members = {t for t in builder.own if builder.own[t] == site}
        only = {i for i, op in enumerate(g.ops) if members & (set(op.inputs) | set(op.outputs))}
        ref = bops(base_qg, only)
        for c in cands:
            out[(site, c)] = bops(builder.build({**base, site: c}, refreeze=False), only) - ref
    return out


def greedy(sites, cands, kl: dict, extra_bops: dict, used: int, budget: float) -> dict:
    """From every site at ``cands[0]``, apply the upgrade with the largest KL decrease per extra
    BOP that fits the budget, until none does (the old recipe's rule, strict ``>`` ties)."""
    choice = {k: cands[0] for k in sites}
    while True:
        best, best_gain = None, 0.0
        for k in sites:
            for g in (g for g in cands if g > choice[k]):
                d_bops = extra_bops[(k, g)] - extra_bops[(k, choice[k])]
                gain = kl[(k, choice[k])] - kl[(k, g)]
                if used + d_bops > budget or gain <= 0:
                    continue
                if gain / max(d_bops, 1) > best_gain:
                    best, best_gain = (k, g, d_bops), gain / max(d_bops, 1)
        if best is None:
            return choice
        k, g, d_bops = best
        choice[k], used = g, used + d_bops


@torch.no_grad()
def _reference_logits(model, graph: ir.Graph, images: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if isinstance(model, torch.nn.Module):
        return model(x).double().numpy()
    return walk(graph, FloatOps(graph, torch.float32), x)[graph.outputs[0]].double().numpy()


def grouped_values(x: np.ndarray, gqs, rows: bool) -> np.ndarray:
    """``[len(gqs), *x.shape]``: real values of float ``x`` through each grouped quantizer in ``gqs``
    (`simulator.igq.GroupQuantizer`s of one scale), in ``x``'s dtype: per image, each channel (over
    the tokens) or row (``rows``) takes the finest group whose codes of its extremes stay in
    ``[lo, hi]``, then ``clamp(round_half_up(x / (scale 2**-e_g)), lo, hi)`` at that group's scale --
    the float-nonlinear executor's rule (`reference.igq_fakequant.group_quantize_float`, in numpy; a
    test checks they agree). The clamp is ``np.clip``, the same clamp as
    `simulator.fixedpoint.saturate` (as `reference.quantizers.mse_search` ranks, for speed)."""
    dim = -1 if rows else -2
    x = np.asarray(x)
    out = np.empty((len(gqs), *x.shape), dtype=x.dtype)
    if not gqs:
        return out
    u = x / x.dtype.type(gqs[0].scale)
    ext = (u.max(axis=dim), u.min(axis=dim))
    for c, gq in enumerate(gqs):
        g = np.full(ext[0].shape, gq.groups - 1, dtype=np.int64)
        for j in range(gq.groups - 2, -1, -1):
            e = 2.0 ** int(gq.exps[j])
            fit = (_round_half_up(ext[0] * e) <= gq.hi) & (_round_half_up(ext[1] * e) >= gq.lo)
            g[fit] = j
        up = np.expand_dims((2.0 ** np.asarray(gq.exps, dtype=np.float64)[g]).astype(x.dtype), dim)
        v = np.multiply(u, up, out=out[c])
        np.clip(_round_half_up(v), gq.lo, gq.hi, out=v)
        v *= x.dtype.type(gq.scale) / up
    return out


def _round_half_up(v: np.ndarray) -> np.ndarray:
    """`simulator.fixedpoint.round_half_up`'s formula, ``floor(v) + (v - floor(v) >= 0.5)``, with
    numpy's ``floor`` for its ``v // 1`` (equal for finite floats; ~10x faster on float arrays)."""
    f = np.floor(v)
    f += (v - f) >= 0.5
    return f


def linearized_sensitivities(builder, images: np.ndarray, cands, label: str) -> dict:
    """``(site, G) -> KL2(dx_site(G))`` (module docstring), every site from one float pass; candidates
    whose exponents coincide (few distinct channel ranges) are evaluated once."""
    s = builder.static
    prod = s.graph.producers()
    distinct = {site: list(dict.fromkeys(builder.exps(site, g) for g in cands)) for site in builder.sites}

    def candidates(site):
        member, rows = builder.sites[site]
        op = prod[member]
        gqs = [group_quantizer(op, s.params[op.name], dataclasses.replace(s.quantizers[site], kind="grouped",
                                                                           exps=e, rows=rows))
               for e in distinct[site]]
        def deltas(x, _):
            v = grouped_values(x.numpy(), gqs, rows)
            v -= x.numpy()
            return v
        return deltas

    kl = perturbation_kl(s.graph, images, {site: candidates(site) for site in builder.sites},
                         desc=f"igq allocation ({label}): linearized KL of {len(builder.sites)} sites x "
                              f"{len(cands)} G")
    return {(site, g): float(kl[site][distinct[site].index(builder.exps(site, g))])
            for site in builder.sites for g in cands}


def allocate_graph(builder, model, images: np.ndarray, cfg: RecipeConfig) -> QuantizedGraph:
    """Per-site G for ``cfg.params.bop_budget`` (``builder``: `igq_graph.GraphGroupBuilder`)."""
    params, sites, cands = builder.params, list(builder.sites), builder.params.candidates
    static_bops = graph_total_bops(builder.build({}, refreeze=False))
    base = {k: cands[0] for k in sites}
    min_bops = graph_total_bops(builder.build(base, refreeze=False))
    budget = params.bop_budget * static_bops
    if budget < min_bops:
        raise InputError(f"recipe {cfg.label}: params.bop_budget: {params.bop_budget:g} x static BOPs "
                         f"({budget:.4g}) is below the minimum achievable {min_bops / static_bops:.6g} "
                         f"({min_bops} BOPs per image, every layer at G={cands[0]})")
    extra = site_extra_bops(builder, base, cands)
    if params.sensitivity == "linearized":
        lin = linearized_sensitivities(builder, images, cands, cfg.label)
        kl = {(k, g): lin[(k, g)] for k in sites for g in cands}       # the greedy reads differences only
        report = {"kl_all_min_linearized": float(sum(lin[(k, cands[0])] for k in sites))}
    else:
        kl = _measured_sensitivities(builder, model, images, base, cands, cfg.label)
        report = {"kl_all_min": kl[(sites[0], cands[0])] if sites else 0.0}
    qg = builder.build(greedy(sites, cands, kl, extra, min_bops, budget))
    meta = dict(qg.meta, igq_allocation={"bop_budget": params.bop_budget, "static_bops": int(static_bops),
                                         "bops": int(graph_total_bops(qg)), "min_bops": int(min_bops),
                                         **report, "images": int(len(images)), "sensitivity": params.sensitivity})
    return QuantizedGraph(graph=qg.graph, quantizers=qg.quantizers, params=qg.params, meta=meta)


def _measured_sensitivities(builder, model, images: np.ndarray, base: dict, cands, label: str) -> dict:
    """The old recipe's ``kl[(site, G)]``: one fake-quant pass per (site, G) (G = cands[0]: the all-smallest
    pass, measured once)."""
    ref = _reference_logits(model, builder.static.graph, images)

    def kl_of(groups):
        run = GraphFakeQuantExecutor(builder.build(groups)).run(images, keep_codes=False)
        return logit_kl(ref, run.logits)

    kl_base = kl_of(base)
    kl = {}
    for k, g in track([(k, g) for k in builder.sites for g in cands],
                      f"igq allocation ({label}): sensitivity of {len(builder.sites)} sites x {len(cands)} G "
                      f"on {len(images)} images", unit="trial"):
        kl[(k, g)] = kl_base if g == cands[0] else kl_of({**base, k: g})
    return kl
