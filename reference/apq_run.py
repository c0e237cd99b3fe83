"""The APQ/MAQEE search driver (see `reference.recipes.apq` for the steps and
`reference.apq_search` for the formulas and the risk control).

Every candidate model is run once by the integer simulator with all exits
computed and never taken ("profile"); exit decisions for any threshold are
then applied offline, which is exact because images are independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reference.apq_search import (allocate_bits, block_bops, bops_per_image, clopper_pearson_upper,
                                  exit_depths, exposure, fixed_sequence_walk, pareto_front)
from reference.exits import apply_thresholds
from simulator.executor import IntegerExecutor
from simulator.progress import Progress, track

__all__ = ["Profile", "profile", "search"]


@dataclass(frozen=True)
class Profile:
    """Per image: exit confidence codes [n, E], exit predictions [n, E], final predictions and probabilities."""

    conf: np.ndarray
    exit_pred: np.ndarray
    final_pred: np.ndarray
    final_prob: np.ndarray


def profile(q, images) -> Profile:
    """Run ``q`` (its exits must never fire) in the simulator and collect every exit's output."""
    r = IntegerExecutor(q).run(images)
    e = len(q.exits)
    conf = np.stack([r.codes[f"exits.{j}.confidence"][:, 0] for j in range(e)], 1) if e else np.zeros((len(images), 0))
    pred = np.stack([r.codes[f"exits.{j}.logits"].argmax(1) for j in range(e)], 1) if e else conf
    z = r.logits - r.logits.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return Profile(conf.astype(np.int64), pred.astype(np.int64), r.predictions, prob)


def _kl(p, q) -> float:
    return float(np.mean(np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=1)))


class _Searcher:
    def __init__(self, model, calib, variants, exits, p, assemble, threshold_code):
        self.assemble, self.code = assemble, threshold_code
        self.variants, self.exits, self.p = variants, exits, p
        self.keys, self.calib = list(variants), calib
        self.depth = len(variants[self.keys[0]].blocks)
        self.after = [e.after_block for e in exits]
        perm = np.random.default_rng(p.seed).permutation(len(calib))
        n_h = int(round(len(calib) * p.holdout_fraction))
        self.hold, self.srch = perm[:n_h], perm[n_h:]
        with torch.no_grad():
            self.ref = model(torch.as_tensor(calib)).argmax(1).numpy()   # fp32 full-depth predictions
        self._cache = {}
        self.cost = np.stack([block_bops(variants[k])[0] for k in self.keys], 1)     # [depth, cands]
        self.full_bops = float(bops_per_image(variants[self.keys[0]], np.array([self.depth]))[0])

    def prof(self, choice) -> Profile:
        if choice not in self._cache:
            self._cache[choice] = profile(self.assemble(self.variants, choice, self.exits), self.calib)
        return self._cache[choice]

    def sensitivity(self) -> np.ndarray:
        """KL of the final softmax (search split) with only block i at candidate c."""
        top = self.prof((0,) * self.depth).final_prob[self.srch]
        sens = np.zeros(self.cost.shape)
        trials = [(i, c) for i in range(self.depth) for c in range(1, len(self.keys))]
        for i, c in track(trials, f"apq sensitivity: {self.depth} blocks x {len(self.keys) - 1} widths", unit="model"):
            ch = tuple(c if b == i else 0 for b in range(self.depth))
            sens[i, c] = _kl(top, self.prof(ch).final_prob[self.srch])
        return sens

    def outcome(self, choice, tau, rows):
        pr = self.prof(choice)
        codes = [self.code(tau)] * len(self.exits)
        pred, first = apply_thresholds(pr.conf[rows], pr.exit_pred[rows], pr.final_pred[rows], codes)
        depths = exit_depths(first, self.after, self.depth)
        q = self.assemble(self.variants, choice, self.exits)
        return pred, depths, float(bops_per_image(q, depths).mean())

    def allocate(self, tau, budget, sens):
        """Exposure -> allocation, twice (exposure re-measured on the allocated model)."""
        choice = (0,) * self.depth
        for _ in range(2):
            _, depths, mean_bops = self.outcome(choice, tau, self.srch)
            e = exposure(depths, self.depth)
            fixed = mean_bops - float(e @ self.cost[np.arange(self.depth), list(choice)])
            new = allocate_bits(e, sens, self.cost, budget * self.full_bops - fixed)
            if new is None:
                return None
            choice = tuple(new)
        return choice


def search(model, calib, variants, exits, p, assemble, threshold_code):
    """Joint threshold x bit-width search with fixed-sequence risk control; returns (choice, taus, report).

    ``assemble(variants, choice, exits[, taus])`` builds a candidate QuantizedViT
    and ``threshold_code`` maps a confidence threshold to its integer code; the
    recipe (`reference.recipes.apq`) passes its own, so this driver never
    imports the recipe that calls it (no import cycle).
    """
    s = _Searcher(model, calib, variants, exits, p, assemble, threshold_code)
    sens = s.sensitivity() if len(s.keys) > 1 else np.zeros(s.cost.shape)
    delta = (1.0 - p.confidence) / len(p.bop_budgets)
    n_h, points = len(s.hold), []
    taus = (1.0,) + tuple(p.threshold_grid)                  # most conservative first
    bar = Progress(len(p.bop_budgets) * len(taus), f"apq search: {len(p.bop_budgets)} BOP budgets x "
                   f"{len(taus)} thresholds", unit="point")
    for budget in p.bop_budgets:
        seq = []
        for tau in taus:
            bar.update()
            choice = s.allocate(tau, budget, sens)
            if choice is None:
                continue                                          # infeasible on the search split: not tested
            pred, depths, mean_bops = s.outcome(choice, tau, s.hold)
            k = int((pred != s.ref[s.hold]).sum())
            seq.append({"budget": budget, "threshold": tau, "block_bits": [list(s.keys[c]) for c in choice],
                        "disagreements": k, "agreement": 1.0 - k / max(n_h, 1),
                        "upper_bound": clopper_pearson_upper(k, n_h, delta), "mean_bops": mean_bops,
                        "bops_fraction": mean_bops / s.full_bops, "mean_depth": float(depths.mean()),
                        "choice": list(choice)})
        passed = fixed_sequence_walk([pt["disagreements"] for pt in seq], n_h, p.risk_bound, delta)
        for i, pt in enumerate(seq):
            pt["certified"] = i < passed
        points += seq
    bar.close()
    ok = [pt for pt in points if pt["certified"]]
    best = min(ok, key=lambda pt: pt["mean_bops"]) if ok else None
    choice = tuple(best["choice"]) if best else (0,) * s.depth
    tau = best["threshold"] if best else 1.0
    report = {"certified": best is not None, "chosen": best, "pareto": pareto_front(points),
              "candidates": len(points), "n_search": int(len(s.srch)), "n_holdout": int(n_h),
              "risk_bound": p.risk_bound, "confidence": p.confidence, "delta_per_walk": delta,
              "full_depth_bops": s.full_bops, "sensitivity": sens.tolist(), "models_profiled": len(s._cache)}
    return choice, [tau] * len(exits), report
