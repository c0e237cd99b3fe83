"""IGQ-ViT group-size allocation under a BOP budget (Moon et al., CVPR 2024, Sec. 3.3): the
discrepancy `logit_kl`; the allocation itself runs on the graph (`reference.recipes.igq_graph_allocation`).

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


import numpy as np
import torch


__all__ = ["logit_kl"]


def logit_kl(ref_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p_ref || p_q) of the softmax distributions of two logit arrays."""
    lp = torch.log_softmax(torch.as_tensor(ref_logits, dtype=torch.float64), -1)
    lq = torch.log_softmax(torch.as_tensor(q_logits, dtype=torch.float64), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


