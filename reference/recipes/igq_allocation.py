"""IGQ-ViT group-size allocation under a BOP budget (Moon et al., CVPR 2024, Sec. 3.3).

The paper picks each layer's group count from a candidate set to minimise
the discrepancy between the quantized and full-precision predictions under
a BOP constraint. Ours:

* discrepancy = mean KL(softmax(fp32 logits) || softmax(quantized logits))
  over ``allocation_images`` calibration images, the quantized model run by
  the integer-nonlinear fake-quant executor (the datapath the simulator
  reproduces);
* sensitivities: one evaluation per (site, candidate G) with every other
  site at the smallest candidate; assumed additive;
* greedy: from all-smallest, repeatedly apply the single upgrade (any site
  to any larger candidate) with the largest KL decrease per extra BOP that
  still fits the budget; stop when none does;
* BOPs = GEMM BOPs + grouping overhead in BOP-equivalents
  (`simulator.igq.overhead_bops`); the budget is ``bop_budget`` x the static
  (all G = 1) BOPs. A budget below the all-smallest-candidate BOPs is an
  `InputError` naming that minimum.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from reference.fakequant import FakeQuantExecutor
from reference.recipes.config import RecipeConfig
from simulator.errors import InputError
from simulator.graph import static_layers
from simulator.igq import SITES, overhead_bops
from simulator.progress import track
from simulator.qvit import QuantizedViT

__all__ = ["allocate", "logit_kl", "total_bops"]


def total_bops(q: QuantizedViT) -> int:
    """BOPs per image of the full graph: GEMM BOPs + grouping overhead (`simulator.igq.overhead_bops`)."""
    layers = static_layers(q)
    return int(sum(r.bops for r in layers)) + int(overhead_bops(layers))


def logit_kl(ref_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p_ref || p_q) of the softmax distributions of two logit arrays."""
    lp = torch.log_softmax(torch.as_tensor(ref_logits, dtype=torch.float64), -1)
    lq = torch.log_softmax(torch.as_tensor(q_logits, dtype=torch.float64), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def allocate(builder, images: np.ndarray, cfg: RecipeConfig) -> QuantizedViT:
    """Per-site group counts for ``cfg.params.bop_budget``; returns the frozen model."""

    params = builder.params
    sites = [(i, s) for i in range(len(builder.q.blocks)) for s in SITES]
    cands = params.candidates
    g_min = cands[0]
    static_bops = total_bops(builder.build({}))
    base = {k: g_min for k in sites}
    min_bops = total_bops(builder.build(base))
    budget = params.bop_budget * static_bops
    if budget < min_bops:
        raise InputError(f"recipe {cfg.label}: params.bop_budget: {params.bop_budget:g} x static BOPs "
                         f"({budget:.4g}) is below the minimum achievable {min_bops / static_bops:.6g} "
                         f"({min_bops} BOPs per image, every layer at G={g_min})")
    with torch.no_grad():
        ref = builder.model(torch.as_tensor(np.asarray(images, dtype=np.float32))).double().numpy()

    def kl_of(groups):
        return logit_kl(ref, FakeQuantExecutor(builder.build(groups), "integer").run(images, keep_codes=False).logits)

    kl_base = kl_of(base)
    extra_bops = {(k, g): total_bops(builder.build({**base, k: g})) - min_bops for k in sites for g in cands}
    kl = {}
    trials = [(k, g) for k in sites for g in cands]
    for k, g in track(trials, f"igq allocation ({cfg.label}): sensitivity of {len(sites)} sites x {len(cands)} G "
                              f"on {len(images)} images", unit="trial"):
        kl[(k, g)] = kl_base if g == g_min else kl_of({**base, k: g})
    choice, used = dict(base), min_bops
    while True:
        best, best_gain = None, 0.0
        for k in sites:
            cur = choice[k]
            for g in cands:
                if g <= cur:
                    continue
                d_bops = extra_bops[(k, g)] - extra_bops[(k, cur)]
                gain = kl[(k, cur)] - kl[(k, g)]
                if used + d_bops > budget or gain <= 0:
                    continue
                rate = gain / max(d_bops, 1)
                if rate > best_gain:
                    best, best_gain = (k, g, d_bops), rate
        if best is None:
            break
        k, g, d_bops = best
        choice[k], used = g, used + d_bops
    q = builder.build(choice)
    meta = dict(q.meta, igq_allocation={"bop_budget": params.bop_budget, "static_bops": int(static_bops),
                                        "bops": int(total_bops(q)), "min_bops": int(min_bops),
                                        "kl_all_min": kl_base, "images": int(len(images))})
    return dataclasses.replace(q, meta=meta)
