"""IGQ-ViT group counts under a BOP budget on the graph (Moon et al., CVPR 2024, Sec. 3.3).

The old recipe's allocation (`reference.recipes.igq_allocation`, same
discrepancy, sensitivities, greedy and error) over the graph: KL of the
graph fake-quant executor's (integer mode) logits against the float
forward, BOPs = GEMM BOPs of `simulator.graph_trace.graph_layers` + the
grouping overhead `simulator.igq.overhead_bops`; the budget is ``bop_budget``
x the all-G=1 (static) BOPs. Sites are visited in walk order, which on a
plain ViT is the old order (block by block: norm1, attn, attn_out, norm2,
gelu), so ties break alike and the choice equals the old one.
"""

from __future__ import annotations

import numpy as np
import torch

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.float_ops import FloatOps
from reference.recipes.config import RecipeConfig
from reference.recipes.igq_allocation import logit_kl
from simulator import ir
from simulator.errors import InputError
from simulator.graph_trace import graph_layers
from simulator.igq import overhead_bops
from simulator.progress import track
from simulator.qgraph import QuantizedGraph
from simulator.walk import walk

__all__ = ["graph_total_bops", "allocate_graph", "greedy"]


def graph_total_bops(qg: QuantizedGraph) -> int:
    """BOPs per image: GEMM BOPs + grouping overhead in BOP-equivalents."""
    layers = graph_layers(qg)
    return int(sum(r.bops for r in layers)) + int(overhead_bops(layers))


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


def allocate_graph(builder, model, images: np.ndarray, cfg: RecipeConfig) -> QuantizedGraph:
    """Per-site G for ``cfg.params.bop_budget`` (``builder``: `igq_graph.GraphGroupBuilder`)."""
    params, sites, cands = builder.params, list(builder.sites), builder.params.candidates
    static_bops = graph_total_bops(builder.build({}))
    base = {k: cands[0] for k in sites}
    min_bops = graph_total_bops(builder.build(base))
    budget = params.bop_budget * static_bops
    if budget < min_bops:
        raise InputError(f"recipe {cfg.label}: params.bop_budget: {params.bop_budget:g} x static BOPs "
                         f"({budget:.4g}) is below the minimum achievable {min_bops / static_bops:.6g} "
                         f"({min_bops} BOPs per image, every layer at G={cands[0]})")
    ref = _reference_logits(model, builder.static.graph, images)

    def kl_of(groups):
        run = GraphFakeQuantExecutor(builder.build(groups)).run(images, keep_codes=False)
        return logit_kl(ref, run.logits)

    kl_base = kl_of(base)
    extra = {(k, g): graph_total_bops(builder.build({**base, k: g})) - min_bops for k in sites for g in cands}
    kl = {}
    for k, g in track([(k, g) for k in sites for g in cands],
                      f"igq allocation ({cfg.label}): sensitivity of {len(sites)} sites x {len(cands)} G "
                      f"on {len(images)} images", unit="trial"):
        kl[(k, g)] = kl_base if g == cands[0] else kl_of({**base, k: g})
    qg = builder.build(greedy(sites, cands, kl, extra, min_bops, budget))
    meta = dict(qg.meta, igq_allocation={"bop_budget": params.bop_budget, "static_bops": int(static_bops),
                                         "bops": int(graph_total_bops(qg)), "min_bops": int(min_bops),
                                         "kl_all_min": kl_base, "images": int(len(images))})
    return QuantizedGraph(graph=qg.graph, quantizers=qg.quantizers, params=qg.params, meta=meta)
