"""`apq`: early-exit ViT with amortized-precision bit allocation (APQ) and a
risk-bounded joint search of exit thresholds and per-block bit-widths (MAQEE).

Paper: ../shared/seeds/003 (abstract only; the formulas are ours, see
`reference.apq_search`). Steps of `build`:

1. exit heads (`reference.exits`): the bundled file for ``vit_digits``
   (trained with labels on the frozen backbone), else fitted on the
   unlabeled calibration images by distillation from the final head;
2. one static freeze per bit candidate (`freeze_static`, shared calibration
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

Every model evaluation runs the integer simulator (bit-exact with the
fake-quant executor, tests/simulator/test_exits.py), computing all exits
once per allocation; thresholds are then applied offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from reference.apq_run import search   # the search driver (simulator runs)
from reference.calibration import collect_boundaries
from reference.exits import (DEFAULT_EXITS_PATH, ExitHeads, class_tokens, default_exits_after,
                             fit_exit_heads, load_exit_heads)
from reference.quantizers import calibrate, code_range, dyadic
from reference.recipes.config import RecipeConfig
from reference.recipes.static import freeze_layernorm, freeze_linear, freeze_static, RESIDUAL_HEADROOM
from reference.vit_float import check_supported, vit_arch
from simulator.errors import InputError
from simulator.exit_graph import never_exit_code
from simulator.int_nonlinear import EXP_FRAC_BITS
from simulator.qvit import ExitHead, QuantizedViT, SoftmaxQ

__all__ = ["APQParams", "parse_params", "build", "CONF_BITS", "threshold_code"]

CONF_BITS = 12


@dataclass(frozen=True)
class APQParams:
    exit_heads: str = "auto"            # auto | distill | path to a heads .safetensors
    exits_every: int = 2                # distilled heads: after every N blocks
    threshold: object = "search"        # "search" or a fixed shared tau in (0, 1]
    allocation: str = "apq"             # apq | uniform (recipe w_bits/a_bits everywhere)
    bit_candidates: tuple = ((8, 8), (6, 6), (4, 8), (4, 4))
    bop_budgets: tuple = (1.0, 0.5, 0.35, 0.25)
    threshold_grid: tuple = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
    risk_bound: float = 0.02
    confidence: float = 0.9
    holdout_fraction: float = 0.5
    seed: int = 0


def _err(where, field, msg):
    return InputError(f"{where}: params.{field}: {msg}")


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_params(d: dict, where: str = "recipe") -> APQParams:
    """Validate ``params`` of an apq recipe into `APQParams` (one-line errors)."""
    known = APQParams.__dataclass_fields__
    for k in d:
        if k not in known:
            raise _err(where, k, f"unknown apq parameter (expected one of {', '.join(known)})")
    v = {**{k: f.default for k, f in known.items()}, **d}
    if not isinstance(v["exit_heads"], str):
        raise _err(where, "exit_heads", "expected 'auto', 'distill' or a path")
    if v["allocation"] not in ("apq", "uniform"):
        raise _err(where, "allocation", f"expected 'apq' or 'uniform', got {v['allocation']!r}")
    t = v["threshold"]
    if t != "search" and not (_num(t) and 0 < t <= 1):
        raise _err(where, "threshold", f"expected 'search' or a number in (0, 1], got {t!r}")
    for k, lo, hi in (("risk_bound", 0, 1), ("confidence", 0, 1), ("holdout_fraction", 0, 1)):
        if not (_num(v[k]) and lo < v[k] < hi):
            raise _err(where, k, f"expected a number in ({lo}, {hi}), got {v[k]!r}")
    for k in ("exits_every", "seed"):
        if isinstance(v[k], bool) or not isinstance(v[k], int) or v[k] < (1 if k == "exits_every" else 0):
            raise _err(where, k, f"expected a {'positive' if k == 'exits_every' else 'non-negative'} integer")
    bc = v["bit_candidates"]
    if (not isinstance(bc, (list, tuple)) or not bc or
            any(not isinstance(p, (list, tuple)) or len(p) != 2 or
                any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in p) for p in bc)):
        raise _err(where, "bit_candidates", f"expected a list of [w_bits, a_bits] pairs in 2..8, got {bc!r}")
    for k, lo, hi in (("bop_budgets", 0, 1), ("threshold_grid", 0, 1)):
        s = v[k]
        if not isinstance(s, (list, tuple)) or not s or any(not (_num(x) and lo < x <= hi) for x in s):
            raise _err(where, k, f"expected a non-empty list of numbers in ({lo}, {hi}], got {s!r}")
    v["bit_candidates"] = tuple(tuple(p) for p in bc)
    v["bop_budgets"], v["threshold_grid"] = tuple(v["bop_budgets"]), tuple(sorted(v["threshold_grid"], reverse=True))
    return APQParams(**v)


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


def freeze_exits(model, heads: ExitHeads, calib, q: QuantizedViT, cfg: RecipeConfig,
                 taus) -> tuple[ExitHead, ...]:
    """Quantize every exit head between the residual scale of its block and its own logit scale."""
    toks, _ = class_tokens(model, calib)
    eb_w, eb_a, rb = (cfg.edge_bits or cfg.w_bits), (cfg.edge_bits or cfg.a_bits), cfg.residual_bits
    out = []
    with torch.no_grad():
        for j, a in enumerate(heads.after):
            s_x = float(q.blocks[a].fc2.out_scale[0])
            n = heads.norms[j](toks[a])
            logits = heads.heads[j](n)
            s_n = float(calibrate(n.double().numpy(), eb_a, cfg.act_calibration, percentile=cfg.percentile).scale)
            s_l = max(float(logits.abs().max()) * RESIDUAL_HEADROOM, 1e-8) / code_range(rb)[1]
            norm = freeze_layernorm(heads.norms[j], s_x, rb, s_n, eb_a)
            head = freeze_linear(heads.heads[j].weight, heads.heads[j].bias, s_n, eb_a, eb_w, s_l, rb,
                                 cfg.weight_calibration)
            m, k = dyadic(s_l * math.log2(math.e) * 2.0 ** EXP_FRAC_BITS)
            conf = SoftmaxQ(in_mult=int(m), in_shift=int(k), in_scale=s_l, out_bits=CONF_BITS)
            out.append(ExitHead(after_block=int(a), norm=norm, head=head, confidence=conf,
                                threshold_q=threshold_code(taus[j]), logit_scale=s_l))
    return tuple(out)


def assemble(variants: dict, choice, exits, taus=None) -> QuantizedViT:
    """Block ``i`` from ``variants[choice[i]]``, edges from the first, exits with thresholds ``taus``."""
    keys = list(variants)
    base = variants[keys[0]]
    blocks = tuple(variants[keys[c]].blocks[i] for i, c in enumerate(choice))
    if taus is not None:
        exits = tuple(replace(e, threshold_q=threshold_code(t)) for e, t in zip(exits, taus))
    meta = {**base.meta, "block_bits": [list(keys[c]) for c in choice]}
    return replace(base, blocks=blocks, exits=exits, meta=meta)


def build(model: torch.nn.Module, calib_images: np.ndarray, cfg: RecipeConfig,
          model_name: str = "model") -> QuantizedViT:
    """Calibrate on ``calib_images``, fit/load exits, search (or fix) thresholds and widths, freeze."""
    p = parse_params(cfg.params, where=f"recipe {cfg.label}")
    check_supported(model)
    arch = vit_arch(model)
    calib = np.asarray(calib_images[: cfg.calib_images], dtype=np.float32)
    heads = _heads(model, calib, p, model_name)
    stats = collect_boundaries(model, calib)
    cands = ((cfg.w_bits, cfg.a_bits),) if p.allocation == "uniform" else p.bit_candidates
    variants = {b: freeze_static(model, stats, cfg.with_bits(*b), arch, model_name, len(calib)) for b in cands}
    first = variants[cands[0]]
    never = [1.0] * len(heads.after)
    exits = freeze_exits(model, heads, calib, first, cfg, never)
    depth = arch["depth"]
    if p.threshold != "search":
        taus = [float(p.threshold)] * len(exits)
        q = assemble(variants, [0] * depth, exits, taus)
    else:
        choice, taus, report = search(model, calib, variants, exits, p, assemble, threshold_code)
        q = assemble(variants, choice, exits, taus)
        q = replace(q, meta={**q.meta, "apq": report})
    meta = {**q.meta, "recipe": "apq", "exit_after_blocks": list(heads.after), "exit_thresholds": list(taus),
            "exit_threshold_codes": [e.threshold_q for e in q.exits], "apq_params": _jsonable(p)}
    return replace(q, meta=meta)


def _jsonable(p: APQParams) -> dict:
    return {k: (list(map(list, v)) if k == "bit_candidates" else list(v) if isinstance(v, tuple) else v)
            for k, v in p.__dict__.items()}

