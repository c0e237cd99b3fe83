"""The APQ/MAQEE threshold x bit-width search on the graph.

The APQ search driver (the removed per-model `reference.apq_run`'s steps, order and report)
with candidates assembled as quantized graphs (`apq_graph.Candidates`),
profiled by the graph integer executor and costed from the graph's trace;
every formula comes from `reference.apq_search` (exposure, greedy
allocation, Clopper-Pearson bound, fixed-sequence walk, Pareto front).
Each candidate is run once with every exit computed and never taken; the
exit decisions for any threshold are applied offline (images are
independent), exactly as the old driver does.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from reference.apq_search import (allocate_bits, clopper_pearson_upper, exit_depths, exposure,
                                  fixed_sequence_walk, pareto_front)
from reference.exits import apply_thresholds
from simulator.graph_trace import graph_layer_ops, graph_layers
from simulator.int_ops import GraphIntegerExecutor

__all__ = ["search_graph", "block_bops", "bops_per_image"]


def block_bops(qg, depth: int) -> np.ndarray:
    """BOPs per image of each block (records ``blocks.{i}.*``) of a quantized graph."""
    out = np.zeros(depth)
    for r in graph_layers(qg):
        m = re.match(r"blocks\.(\d+)\.", r.name)
        if m:
            out[int(m.group(1))] += r.bops
    return out


def bops_per_image(qg, depths: np.ndarray) -> np.ndarray:
    """BOPs of each image that executed ``depths[i]`` blocks: the records of the ops up to its exit."""
    layers = graph_layer_ops(qg)
    left = np.full(len(depths), len(qg.graph.ops))
    for i, op in enumerate(qg.graph.ops):
        if op.kind == "exit":
            left[np.asarray(depths) == op.after_block + 1] = i
    ran = np.array([i for _, i in layers])[None, :] <= left[:, None]
    return ran.astype(np.float64) @ np.array([r.bops for r, _ in layers], dtype=np.float64)


def _kl(p, q) -> float:
    return float(np.mean(np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=1)))


class _Searcher:
    def __init__(self, model, calib, cands, p):
        self.c, self.p, self.calib = cands, p, calib
        self.depth, self.after, self.n_exits = cands.depth, cands.after, len(cands.after)
        perm = np.random.default_rng(p.seed).permutation(len(calib))
        n_h = int(round(len(calib) * p.holdout_fraction))
        self.hold, self.srch = perm[:n_h], perm[n_h:]
        with torch.no_grad():
            self.ref = model(torch.as_tensor(calib)).argmax(1).numpy()   # fp32 full-depth predictions
        self._cache, self._bops = {}, {}
        self.cost = np.stack([block_bops(v, self.depth) for v in cands.variants], 1)     # [depth, cands]
        self.full_bops = float(sum(r.bops for r in graph_layers(cands.variants[0])))

    def prof(self, choice):
        """Exit confidence codes, exit and final predictions, final probabilities (every exit computed)."""
        if choice not in self._cache:
            r = GraphIntegerExecutor(self.c.build(choice)).run(self.calib)
            conf = np.stack([r.codes[f"exits.{j}.confidence"][:, 0] for j in range(self.n_exits)], 1)
            pred = np.stack([r.codes[f"exits.{j}.logits"].argmax(1) for j in range(self.n_exits)], 1)
            z = r.logits - r.logits.max(1, keepdims=True)
            self._cache[choice] = (conf.astype(np.int64), pred.astype(np.int64), r.predictions,
                                   np.exp(z) / np.exp(z).sum(1, keepdims=True))
        return self._cache[choice]

    def sensitivity(self) -> np.ndarray:
        """KL of the final softmax (search split) with only block i at candidate c."""
        top = self.prof((0,) * self.depth)[3][self.srch]
        sens = np.zeros(self.cost.shape)
        for i in range(self.depth):
            for c in range(1, len(self.c.keys)):
                ch = tuple(c if b == i else 0 for b in range(self.depth))
                sens[i, c] = _kl(top, self.prof(ch)[3][self.srch])
        return sens

    def outcome(self, choice, tau, rows):
        from reference.recipes.apq import threshold_code
        conf, pred, final, _ = self.prof(choice)
        codes = [threshold_code(tau)] * self.n_exits
        out, first = apply_thresholds(conf[rows], pred[rows], final[rows], codes)
        depths = exit_depths(first, self.after, self.depth)
        if choice not in self._bops:
            self._bops[choice] = self.c.build(choice)
        return out, depths, float(bops_per_image(self._bops[choice], depths).mean())

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


def search_graph(model, calib, cands, p):
    """Joint threshold x bit-width search with fixed-sequence risk control; returns (choice, taus, report)."""
    s = _Searcher(model, calib, cands, p)
    sens = s.sensitivity() if len(cands.keys) > 1 else np.zeros(s.cost.shape)
    delta = (1.0 - p.confidence) / len(p.bop_budgets)
    n_h, points = len(s.hold), []
    taus = (1.0,) + tuple(p.threshold_grid)                  # most conservative first
    for budget in p.bop_budgets:
        seq = []
        for tau in taus:
            choice = s.allocate(tau, budget, sens)
            if choice is None:
                continue                                          # infeasible on the search split: not tested
            pred, depths, mean_bops = s.outcome(choice, tau, s.hold)
            k = int((pred != s.ref[s.hold]).sum())
            seq.append({"budget": budget, "threshold": tau, "block_bits": [list(cands.keys[c]) for c in choice],
                        "disagreements": k, "agreement": 1.0 - k / max(n_h, 1),
                        "upper_bound": clopper_pearson_upper(k, n_h, delta), "mean_bops": mean_bops,
                        "bops_fraction": mean_bops / s.full_bops, "mean_depth": float(depths.mean()),
                        "choice": list(choice)})
        passed = fixed_sequence_walk([pt["disagreements"] for pt in seq], n_h, p.risk_bound, delta)
        for i, pt in enumerate(seq):
            pt["certified"] = i < passed
        points += seq
    ok = [pt for pt in points if pt["certified"]]
    best = min(ok, key=lambda pt: pt["mean_bops"]) if ok else None
    choice = tuple(best["choice"]) if best else (0,) * s.depth
    tau = best["threshold"] if best else 1.0
    report = {"certified": best is not None, "chosen": best, "pareto": pareto_front(points),
              "candidates": len(points), "n_search": int(len(s.srch)), "n_holdout": int(n_h),
              "risk_bound": p.risk_bound, "confidence": p.confidence, "delta_per_walk": delta,
              "full_depth_bops": s.full_bops, "sensitivity": sens.tolist(), "models_profiled": len(s._cache)}
    return choice, [tau] * s.n_exits, report
