"""`apq`: early-exit ViT with amortized-precision bit allocation (APQ) and a
risk-bounded joint search of exit thresholds and per-block bit-widths (MAQEE).

Paper: ../shared/seeds/003 (abstract only; the formulas are ours, see
`reference.apq_search`). This module keeps the recipe's params, the exit
heads and the confidence threshold code; the calibrator is
`reference.recipes.apq_graph` (search: `reference.recipes.apq_graph_search`).
Steps:

1. exit heads (`reference.exits`): the bundled file for ``vit_digits``
   (trained with labels on the frozen backbone), else fitted on the
   unlabeled calibration images by distillation from the final head;
2. one static freeze per bit candidate (shared calibration
   statistics); the residual stream scales do not depend on the widths, so a
   block can be taken from any candidate: that is the per-block allocation;
3. exits frozen at the edge width: integer LayerNorm + linear -> 16-bit logit
   codes, confidence = max code of the integer softmax of those codes
   (``CONF_BITS`` wide), exit when it reaches ``threshold_q = ceil(tau * 2**CONF_BITS)``;
4. search (``threshold: search``): calibration images split (seeded) into a
   search part and a held-out part; for every shared threshold ``tau`` (most
   conservative first) and BOP budget: exposure under ``tau`` -> exposure-
   weighted allocation -> exposure re-measured on the allocated model ->
   re-allocation; held-out disagreement with the fp32 full-depth model gives
   a Clopper-Pearson bound; the cheapest certified point is frozen and the
   Pareto set (held-out agreement vs mean BOPs) goes into ``meta["apq"]``.

Every model evaluation runs the graph's integer simulator (bit-exact with
the fake-quant executor, tests/reference/test_graph_exits.py), block by block
with the blocks' outputs cached per width prefix and each image run only as
far as it goes (`reference.recipes.apq_profiles`). The per-block sensitivities
are second-order estimates from one float pass (``sensitivity: linearized``,
on the first ``sensitivity_images`` search images) or measured, one model run
per (block, width) (``measured``).
"""

from __future__ import annotations

import math


from reference.exits import (DEFAULT_EXITS_PATH, ExitHeads, class_tokens, default_exits_after,
                             fit_exit_heads, load_exit_heads)
from reference.recipes import params as _params
from simulator.errors import InputError
from simulator.graph_exits import never_exit_code

__all__ = ["APQParams", "parse_params", "CONF_BITS", "threshold_code"]

CONF_BITS = 12


APQParams = _params.APQParams
parse_params = _params.parse_apq


def threshold_code(tau: float) -> int:
    """``ceil(tau * 2**CONF_BITS)``; tau = 1 never exits (the top code is 2**CONF_BITS - 1)."""
    return min(math.ceil(tau * (1 << CONF_BITS)), never_exit_code(CONF_BITS))


def _heads(model, calib, p: APQParams, model_name: str) -> ExitHeads:
    if p.exit_heads == "auto" and model_name == "vit_digits":
        return load_exit_heads(DEFAULT_EXITS_PATH, model)
    if p.exit_heads in ("auto", "distill"):
        after = default_exits_after(len(model.blocks), p.exits_every)
        if not after:
            raise InputError(f"model {model_name}: depth {len(model.blocks)} leaves no block for an exit "
                             f"every {p.exits_every} blocks")
        toks, final = class_tokens(model, calib)
        heads = ExitHeads.like_final(model, after)
        return fit_exit_heads(heads, [toks[a] for a in after], final, "kl", seed=p.seed)
    return load_exit_heads(p.exit_heads, model)


