"""`static`: the baseline post-training quantization formulas (the calibrator is
`reference.recipes.static_graph`, which freezes a `QuantizedGraph` with them).

Per-output-channel symmetric weights, per-tensor symmetric activations
(softmax outputs unsigned at ``2**-a_bits``), calibrated by minmax, percentile
or MSE search on the float model's boundary tensors; a ``residual_bits``
residual stream; patch embed and head operands at ``edge_bits``. Every
rescaling between tensors is frozen here as a dyadic ``(mult, shift)``;
LayerScale gammas are folded into the preceding linear layer.

Every graph calibrator reuses `freeze_linear`, `freeze_layernorm`, `Scales` and `RESIDUAL_HEADROOM`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reference.calibration import BoundaryStats
from reference.quantizers import QParams, calibrate, code_range, dyadic, quantize, weight_scales
from reference.recipes.config import RecipeConfig
from simulator.int_nonlinear import LN_FRAC_BITS
from simulator.qvit import LayerNormQ, Linear

__all__ = ["freeze_linear", "freeze_layernorm", "Scales", "RESIDUAL_HEADROOM"]

RESIDUAL_HEADROOM = 1.25   # residual stream / logits: room beyond the calibrated max
ACC_BITS = 32


def _np(t) -> np.ndarray:
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def freeze_linear(w, b, in_scale: float, in_bits: int, w_bits: int, out_scale, out_bits: int,
                  w_method: str, residual_scale: float | None = None, res_bits: int = 0,
                  gamma=None) -> Linear:
    """Quantize ``y = x W^T + b`` (times LayerScale ``gamma``) between frozen scales.

    ``out_scale`` scalar or per-output-channel; ``out_bits = 0`` means a Q12
    fixed-point output (``out_scale = 2**-12``) for the GELU unit.
    """
    w, b = _np(w), (np.zeros(_np(w).shape[0]) if b is None else _np(b))
    if gamma is not None:
        g = _np(gamma)
        w, b = w * g[:, None], b * g
    s_w = weight_scales(w, w_bits, w_method)
    w_q = quantize(w, QParams(s_w[:, None], w_bits)).astype(np.int8)
    acc_scale = in_scale * s_w
    lo, hi = code_range(ACC_BITS)
    bias_q = np.clip(np.floor(b / acc_scale + 0.5), lo, hi).astype(np.int64)
    out_scale = np.broadcast_to(np.asarray(out_scale, dtype=np.float64), s_w.shape).copy()
    mult, shift = dyadic(acc_scale / out_scale)
    res_mult, res_shift = (0, 0)
    if residual_scale is not None:
        rm, rs = dyadic(residual_scale / float(out_scale[0]))
        res_mult, res_shift = int(rm), int(rs)
    return Linear(w_q=w_q, bias_q=bias_q, w_scale=s_w, w_bits=w_bits, in_bits=in_bits,
                  in_scale=float(in_scale), out_mult=mult, out_shift=shift, out_bits=out_bits,
                  out_scale=out_scale, res_mult=res_mult, res_shift=res_shift, res_bits=res_bits)


def freeze_layernorm(ln: torch.nn.LayerNorm, in_scale: float, in_bits: int, out_scale: float,
                     out_bits: int) -> LayerNormQ:
    """Fold gamma, beta and the output scale into ``G_c``, ``B_c`` and one shift.

    ``G_c = round(gamma_c / s_out * 2**K)``, ``B_c = round(beta_c / s_out * 2**(12+K))``,
    ``out_shift = 12 + K`` with K chosen so max |G_c| < 2**30; ``eps_q =
    round(eps * D**2 / s_in**2)`` (the variance is formed as D**2 * var of codes).
    """
    gamma = _np(ln.weight) if ln.weight is not None else np.ones(ln.normalized_shape[0])
    beta = _np(ln.bias) if ln.bias is not None else np.zeros_like(gamma)
    d = gamma.size
    gmax = max(float(np.abs(gamma).max()) / out_scale, 1e-12)
    k = int(np.clip(30 - math.ceil(math.log2(gmax)), 0, 40))
    g = np.floor(gamma / out_scale * 2.0 ** k + 0.5).astype(np.int64)
    bq = np.floor(beta / out_scale * 2.0 ** (LN_FRAC_BITS + k) + 0.5).astype(np.int64)
    eps_q = int(min(math.floor(ln.eps * d * d / in_scale ** 2 + 0.5), 1 << 61))
    return LayerNormQ(eps_q=eps_q, gamma_mult=g, beta_q=bq, out_shift=LN_FRAC_BITS + k,
                      in_bits=in_bits, in_scale=float(in_scale), out_bits=out_bits,
                      out_scale=float(out_scale), gamma=gamma, beta=beta, eps=float(ln.eps))


class Scales:
    """Per-tensor activation scales from boundary statistics, per the recipe."""

    def __init__(self, stats: dict[str, BoundaryStats], cfg: RecipeConfig):
        self.stats, self.cfg = stats, cfg

    def act(self, name: str, bits: int, method: str | None = None) -> float:
        qp = calibrate(self.stats[name].values(), bits, method or self.cfg.act_calibration,
                       percentile=self.cfg.percentile)
        return float(qp.scale)

    def residual(self, name: str) -> float:
        hi = code_range(self.cfg.residual_bits)[1]
        return max(self.stats[name].amax * RESIDUAL_HEADROOM, 1e-8) / hi


