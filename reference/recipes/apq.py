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
from dataclasses import replace

import numpy as np
import torch

from reference.apq_run import search   # the search driver (simulator runs)
from reference.calibration import collect_boundaries
from reference.exits import (DEFAULT_EXITS_PATH, ExitHeads, class_tokens, default_exits_after,
                             fit_exit_heads, load_exit_heads)
from reference.quantizers import calibrate, code_range, dyadic
from reference.recipes import params as _params
from reference.recipes.config import RecipeConfig
from reference.recipes.static import freeze_layernorm, freeze_linear, freeze_static, RESIDUAL_HEADROOM
from reference.vit_float import check_supported, vit_arch
from simulator.errors import InputError
from simulator.exit_graph import never_exit_code
from simulator.int_nonlinear import EXP_FRAC_BITS
from simulator.qvit import ExitHead, QuantizedViT, SoftmaxQ

__all__ = ["APQParams", "parse_params", "build", "CONF_BITS", "threshold_code"]

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

