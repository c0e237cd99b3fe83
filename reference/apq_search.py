"""APQ/MAQEE search pieces: exposure, exposure-weighted sensitivity, BOP-budgeted
bit allocation and the risk-controlled choice of exit thresholds.

Paper: Amortized-Precision Quantization / Mutual Adaptive Quantization with
Early Exiting (../shared/seeds/003). The paper's text gives the ideas, not
the formulas; the formulas below are ours:

* exposure ``e_i`` = fraction of (search-split) calibration images that run
  block ``i`` under thresholds ``tau``  (layer-wise stochastic exposure);
* sensitivity ``s_i(b)`` = mean KL(p_top || p_{i,b}) of the final softmax when
  only block ``i`` is at widths ``b`` (all others at the top candidate);
* amortized objective ``sum_i e_i s_i(b_i)`` minimised subject to expected
  BOPs ``fixed + sum_i e_i BOPs_i(b_i) <= budget`` (greedy: repeatedly take
  the step with the least objective increase per BOP saved);
* risk: for unlabeled data, ``acc(fp32) - acc(model) <= P(pred != fp32 pred)``,
  so a Clopper-Pearson upper bound at confidence ``1 - delta`` on the held-out
  disagreement rate bounds the accuracy drop. Thresholds are tested in a
  fixed sequence from the most conservative to the most aggressive and the
  walk stops at the first failure ("Learn then Test", Angelopoulos et al.
  2021: fixed-sequence testing controls the error of the whole walk without
  splitting ``delta``); several BOP budgets are several walks, so ``delta``
  is split among them (Bonferroni).
"""

from __future__ import annotations

import numpy as np
from simulator import significance


__all__ = ["exit_depths", "exposure", "allocate_bits", "clopper_pearson_upper", "fixed_sequence_walk", "pareto_front"]


def exit_depths(first_exit: np.ndarray, after_blocks, depth: int) -> np.ndarray:
    """Blocks executed per image from the index of its first exit (``E`` = none)."""
    table = np.array([a + 1 for a in after_blocks] + [depth], dtype=np.int64)
    return table[np.asarray(first_exit)]


def exposure(depths: np.ndarray, depth: int) -> np.ndarray:
    """``e_i`` = fraction of images that execute block ``i`` (``i < depth``)."""
    return (np.asarray(depths)[:, None] > np.arange(depth)[None, :]).mean(axis=0)


def allocate_bits(exp: np.ndarray, sens: np.ndarray, cost: np.ndarray, budget: float) -> list[int] | None:
    """Greedy multiple-choice knapsack: option per block minimising ``sum e_i s_i`` under the budget.

    ``sens[i, c]``, ``cost[i, c]`` (BOPs of block ``i`` at candidate ``c``;
    candidate 0 the most expensive), ``budget`` on ``sum_i e_i cost[i, c_i]``
    (the caller has subtracted the fixed part). None when infeasible.
    """
    depth, n_cand = sens.shape
    choice = [0] * depth
    spent = float(exp @ cost[np.arange(depth), choice])
    while spent > budget * (1 + 1e-12):
        best, best_rate = None, np.inf
        for i in range(depth):
            for c in range(n_cand):
                saved = exp[i] * (cost[i, choice[i]] - cost[i, c])
                if saved <= 0:
                    continue
                rate = max(exp[i] * (sens[i, c] - sens[i, choice[i]]), 0.0) / saved
                if rate < best_rate:
                    best, best_rate = (i, c), rate
        if best is None:
            return None
        i, c = best
        spent -= exp[i] * (cost[i, choice[i]] - cost[i, c])
        choice[i] = c
    return choice


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided upper ``1 - delta`` confidence bound on a binomial rate from ``k`` of ``n``
    (`simulator.significance.clopper_pearson_upper`; 1 when there is nothing to bound)."""
    return 1.0 if n == 0 or k >= n else significance.clopper_pearson_upper(k, n, delta)


def fixed_sequence_walk(disagreements: list[int], n: int, risk_bound: float, delta: float) -> int:
    """Number of leading candidates certified: walk while the upper bound stays <= ``risk_bound``."""
    passed = 0
    for k in disagreements:
        if clopper_pearson_upper(k, n, delta) > risk_bound:
            break
        passed += 1
    return passed


def pareto_front(points: list[dict], acc: str = "agreement", cost: str = "mean_bops") -> list[dict]:
    """Points not dominated in (higher ``acc``, lower ``cost``), sorted by cost."""
    front = []
    for p in sorted(points, key=lambda p: (p[cost], -p[acc])):
        if not front or p[acc] > front[-1][acc]:
            front.append(p)
    return front
