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
from reference.perturbation_kl import perturbation_kl
from reference.recipes.apq_profiles import BlockProfiles, supported
from simulator.graph_trace import graph_layer_ops, graph_layers
from simulator.int_ops import GraphIntegerExecutor
from simulator.progress import Progress, track

__all__ = ["search_graph", "block_bops", "bops_per_image"]


def block_bops(qg, depth: int) -> np.ndarray:
    """BOPs per image of each block (records ``blocks.{i}.*``) of a quantized graph."""
    out = np.zeros(depth)
    for r in graph_layers(qg):
        m = re.match(r"blocks\.(\d+)\.", r.name)
        if m:
            out[int(m.group(1))] += r.bops
    return out


def bops_per_image(qg, depths: np.ndarray, layers=None) -> np.ndarray:
    """BOPs of each image that executed ``depths[i]`` blocks: the records of the ops up to its exit
    (``layers``: `graph_layer_ops(qg)` when the caller keeps it)."""
    layers = graph_layer_ops(qg) if layers is None else layers
    left = np.full(len(depths), len(qg.graph.ops))
    for i, op in enumerate(qg.graph.ops):
        if op.kind == "exit":
            left[np.asarray(depths) == op.after_block + 1] = i
    ran = np.array([i for _, i in layers])[None, :] <= left[:, None]
    return ran.astype(np.float64) @ np.array([r.bops for r, _ in layers], dtype=np.float64)


def _kl(p, q) -> float:
    return float(np.mean(np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=1)))


class _WholeRuns:
    """Profiles by whole-graph integer runs (every exit computed, never taken): graphs that
    `apq_profiles.BlockProfiles` cannot cut. The same interface."""

    def __init__(self, cands, calib):
        self.c, self.calib, self._cache, self.choices, self.segments_run = cands, calib, {}, set(), 0

    def _prof(self, choice):
        if choice not in self._cache:
            n = len(self.c.after)
            r = GraphIntegerExecutor(self.c.build(choice)).run(self.calib)
            self.segments_run += len(self.calib) * (self.c.depth + 2)
            self._cache[choice] = (np.stack([r.codes[f"exits.{j}.confidence"][:, 0] for j in range(n)], 1),
                                   np.stack([r.codes[f"exits.{j}.logits"].argmax(1) for j in range(n)], 1),
                                   r.logit_codes)
        return self._cache[choice]

    def final_logit_codes(self, choice, rows):
        self.choices.add(tuple(choice))
        return self._prof(tuple(choice))[2][rows]

    def outcome(self, choice, code, rows, final=True):
        self.choices.add(tuple(choice))
        conf, pred, lc = self._prof(tuple(choice))
        return apply_thresholds(conf[rows], pred[rows], lc[rows].argmax(1), [code] * conf.shape[1])


class _Searcher:
    def __init__(self, model, calib, cands, p):
        self.c, self.p, self.calib = cands, p, calib
        self.depth, self.after, self.n_exits = cands.depth, cands.after, len(cands.after)
        perm = np.random.default_rng(p.seed).permutation(len(calib))
        n_h = int(round(len(calib) * p.holdout_fraction))
        self.hold, self.srch = perm[:n_h], perm[n_h:]
        with torch.no_grad():
            self.ref = model(torch.as_tensor(calib)).argmax(1).numpy()   # fp32 full-depth predictions
        self.profiles = (BlockProfiles(cands, calib) if supported(cands.egraph, cands.depth)
                         else _WholeRuns(cands, calib))
        self._bops = {}
        self.cost = np.stack([block_bops(v, self.depth) for v in cands.variants], 1)     # [depth, cands]
        self.full_bops = float(sum(r.bops for r in graph_layers(cands.variants[0])))
        self.out_scale = float(cands.variants[0].quantizers[cands.variants[0].output].scale)

    def final_probs(self, choice, rows) -> np.ndarray:
        """Softmax of the dequantized final logits (full depth, exits not taken) of ``rows``."""
        z = self.profiles.final_logit_codes(choice, rows).astype(np.float64) * self.out_scale
        z = z - z.max(1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    def sensitivity(self) -> np.ndarray:
        """``sens[i, c]``: KL of the final softmax (search split) with only block i at candidate c
        (`params.sensitivity`: measured, or its second-order estimate, `linearized_sensitivity`)."""
        if self.p.sensitivity == "linearized" and isinstance(self.profiles, BlockProfiles):
            return linearized_sensitivity(self.c, self.profiles, self.calib, self.srch[: self.p.sensitivity_images])
        top = self.final_probs((0,) * self.depth, self.srch)
        sens = np.zeros(self.cost.shape)
        for i, c in track([(i, c) for i in range(self.depth) for c in range(1, len(self.c.keys))],
                          "apq: measured block sensitivities", unit="model"):
            ch = tuple(c if b == i else 0 for b in range(self.depth))
            sens[i, c] = _kl(top, self.final_probs(ch, self.srch))
        return sens

    def outcome(self, choice, tau, rows, final=True):
        from reference.recipes.apq import threshold_code
        pred, first = self.profiles.outcome(choice, threshold_code(tau), rows, final)
        depths = exit_depths(first, self.after, self.depth)
        if choice not in self._bops:
            qg = self.c.build(choice)
            self._bops[choice] = (qg, graph_layer_ops(qg))
        qg, layers = self._bops[choice]
        return pred, depths, float(bops_per_image(qg, depths, layers).mean())

    def allocate(self, tau, budget, sens):
        """Exposure -> allocation, twice (exposure re-measured on the allocated model)."""
        choice = (0,) * self.depth
        for _ in range(2):
            _, depths, mean_bops = self.outcome(choice, tau, self.srch, final=False)
            e = exposure(depths, self.depth)
            fixed = mean_bops - float(e @ self.cost[np.arange(self.depth), list(choice)])
            new = allocate_bits(e, sens, self.cost, budget * self.full_bops - fixed)
            if new is None:
                return None
            choice = tuple(new)
        return choice


def linearized_sensitivity(cands, profiles, calib, rows) -> np.ndarray:
    """``sens[i, c]`` = the second-order logit KL (`reference.perturbation_kl`, float model gradients at
    block i's output) of the change of block i's output when block i runs at candidate c instead of
    the top candidate, both from the top model's exact integer input codes (`apq_profiles`)."""
    depth, n_c = cands.depth, len(cands.keys)
    sens = np.zeros((depth, n_c))
    if n_c == 1 or not len(rows):
        return sens
    top = (0,) * depth
    outs = [profiles.segs[i + 1].outputs[0] for i in range(depth)]

    def deltas(i):
        s = np.float32(cands.variants[0].quantizers[outs[i]].scale)

        def at(x, start):
            r = rows[start:start + len(x)]
            ref = profiles.residual(top[:i + 1], r).astype(np.float32) * s
            return np.stack([profiles.residual(top[:i] + (c,), r).astype(np.float32) * s - ref
                             for c in range(1, n_c)])
        return at

    kl = perturbation_kl(cands.graph, calib[rows], {outs[i]: deltas(i) for i in range(depth)},
                         desc=f"apq: linearized sensitivities of {depth} blocks x {n_c - 1} widths")
    for i in range(depth):
        sens[i, 1:] = kl[outs[i]]
    return sens


def search_graph(model, calib, cands, p):
    """Joint threshold x bit-width search with fixed-sequence risk control; returns (choice, taus, report,
    search cost: sensitivity mode, profile engine, segment passes)."""
    s = _Searcher(model, calib, cands, p)
    sens = s.sensitivity() if len(cands.keys) > 1 else np.zeros(s.cost.shape)
    delta = (1.0 - p.confidence) / len(p.bop_budgets)
    n_h, points = len(s.hold), []
    taus = (1.0,) + tuple(p.threshold_grid)                  # most conservative first
    bar = Progress(len(p.bop_budgets) * len(taus), f"apq: {len(p.bop_budgets)} budgets x {len(taus)} thresholds",
                   unit="point")
    for budget in p.bop_budgets:
        seq = []
        for tau in taus:
            bar.update()
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
    bar.close()
    ok = [pt for pt in points if pt["certified"]]
    best = min(ok, key=lambda pt: pt["mean_bops"]) if ok else None
    choice = tuple(best["choice"]) if best else (0,) * s.depth
    tau = best["threshold"] if best else 1.0
    report = {"certified": best is not None, "chosen": best, "pareto": pareto_front(points),
              "candidates": len(points), "n_search": int(len(s.srch)), "n_holdout": int(n_h),
              "risk_bound": p.risk_bound, "confidence": p.confidence, "delta_per_walk": delta,
              "full_depth_bops": s.full_bops, "sensitivity": sens.tolist(), "models_profiled": len(s.profiles.choices)}
    cost = {"sensitivity": p.sensitivity if isinstance(s.profiles, BlockProfiles) else "measured",
            "profiles": "blocks" if isinstance(s.profiles, BlockProfiles) else "whole runs",
            "segment_passes": s.profiles.segments_run / max(len(calib), 1) / (s.depth + 2)}
    return choice, [tau] * s.n_exits, report, cost
