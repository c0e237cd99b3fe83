"""`igq`: IGQ-ViT (Moon, Kim, Cheon, Ham, CVPR 2024) on top of the static recipe: params and
the group-exponent choice; the calibrator is `reference.recipes.igq_graph` (the ``groups``
mechanism, allocation in `reference.recipes.igq_graph_allocation`).

What we follow from the paper:

* Sec. 3.2: for every input instance the channels of each linear layer's
  input (here: norm1 -> qkv, attn_out -> proj, norm2 -> fc1, GELU -> fc2) are
  split into G groups of similar range, one quantizer per group, and the
  rows of each softmax attention map are grouped the same way. Patch embed
  and head keep the static quantizers (8-bit edge layers, one token at the
  head).
* Sec. 3.3: the number of groups per layer is chosen from a candidate set to
  minimise the discrepancy (KL divergence of the logits) between quantized
  and full-precision predictions under a BOP budget that counts the
  grouping overhead.

What is ours (hardware-minded; see `simulator.igq` and docs/recipes/igq.md):

* group scales are power-of-two fractions ``s_top * 2**-e`` of the static
  scale ``s_top`` (so groups differ by shifts only, G = 1 is the static
  recipe bit for bit); the exponents are chosen per layer and G on the
  calibration set by exhaustive search minimising the estimated absolute
  quantization noise ``sum_c min(4**-e(c), 4 * hi**2 * 4**-n_c)`` (a channel
  needing exponent n_c whose group exponent is e(c) <= n_c has noise ~ its
  group's scale squared, or its own power if it rounds to zero);
* the per-instance assignment is the finest non-clipping group, computed in
  integers from the wide intermediate before final quantization;
* allocation: per-layer sensitivities (that layer at G, every other layer at
  the smallest candidate) are assumed additive, then a greedy search raises
  the layer with the best KL decrease per extra BOP while the budget allows;
  the sensitivities are the second-order estimate of each layer's KL from one
  float pass (``sensitivity: linearized``, `reference.perturbation_kl`) or one
  fake-quant pass per (layer, G) (``measured``).

Recipe ``params`` (exactly one of ``groups`` / ``bop_budget``)::

    groups: 4              # fixed G for every grouped boundary, or
    bop_budget: 1.02       # total BOPs per image <= 1.02 x static (G = 1) BOPs
    candidates: [1, 2, 4, 8, 16]
    max_exp: 15            # finest group scale >= s_top * 2**-max_exp
    allocation_images: 64  # calibration images used for the KL allocation
    sensitivity: linearized  # or measured (one fake-quant pass per layer and G)
"""

from __future__ import annotations

import numpy as np

from reference.recipes import params as _params
from reference.recipes.config import RecipeConfig

__all__ = ["IgqParams", "parse_params", "choose_exps"]

GROUP_CHOICES = _params.GROUP_CHOICES
IgqParams = _params.IgqParams
def parse_params(cfg: RecipeConfig) -> IgqParams:
    """Validate ``cfg.params`` into `IgqParams` (see `reference.recipes.params`)."""
    return _params.parse_igq(cfg.params, f"recipe {cfg.label}")


# --- calibration of group exponents ----------------------------------------------------------
def choose_exps(amax: np.ndarray, scale: float, hi: int, groups: int, max_exp: int) -> np.ndarray:
    """Group exponents (finest first, last 0) for per-instance channel maxima ``amax``.

    ``n_c = floor(log2(scale * (hi + 0.5) / amax_c))`` clipped to [0, max_exp]
    is the finest exponent at which the channel does not clip; with the
    exponent set E, a channel lands in ``e(c) = max{e in E: e <= n_c}`` and
    costs ``min(4**-e(c), 4 * hi**2 * 4**-n_c)``; E minimises the total over
    the subsets of 1..max_exp of its size (ties: the lexicographically first
    subset, as enumerating them in order would keep). Fewer than ``groups``
    exponents when max_exp + 1 < groups.

    Exact and fast: the cost is a sum over consecutive runs of levels (each
    run takes its first level's exponent), so a dynamic program over (run
    start, runs left) finds the optimum in O(groups * max_exp**2) steps, in
    integers (every term scaled by ``4**max_exp``: no rounding, exact ties).
    """
    a = np.asarray(amax, dtype=np.float64).ravel()
    with np.errstate(divide="ignore"):
        n = np.floor(np.log2(scale * (hi + 0.5) / np.where(a > 0, a, np.inf)))
    n = np.clip(np.nan_to_num(n, posinf=max_exp), 0, max_exp).astype(np.int64)
    hist = [int(v) for v in np.bincount(n, minlength=max_exp + 1)]
    k = min(groups, max_exp + 1) - 1
    if k == 0:
        return np.zeros(1, dtype=np.int64)
    top = max_exp + 1
    own = [4 * hi * hi * 4 ** (max_exp - lv) for lv in range(top)]      # 4 hi^2 4^-l, x 4^max_exp

    runs = {}                 # (start, stop) -> levels [start, stop) at exponent `start`, x 4^max_exp
    for s0 in range(top):
        acc, step = 0, 4 ** (max_exp - s0)
        for s1 in range(s0, top):
            acc += hist[s1] * min(step, own[s1])
            runs[(s0, s1 + 1)] = acc
    best: dict[tuple[int, int], tuple[int, int | None]] = {}        # (runs left after start, start) -> (cost, next)
    for left in range(k + 1):
        for start in range(top - 1, -1, -1):
            if left == 0:
                best[(0, start)] = (runs[(start, top)], None)
                continue
            options = [(runs[(start, nxt)] + best[(left - 1, nxt)][0], nxt)
                       for nxt in range(start + 1, top - left + 1) if (left - 1, nxt) in best]
            if options:
                best[(left, start)] = min(options)        # least cost, then the smallest next exponent
    exps, state = [0], (k, 0)
    while best[state][1] is not None:
        exps.append(best[state][1])
        state = (state[0] - 1, best[state][1])
    return np.array(sorted(exps, reverse=True), dtype=np.int64)
