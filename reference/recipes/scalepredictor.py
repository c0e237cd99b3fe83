"""`scalepredictor`: per-image activation scales predicted from a shallow range statistic:
params, the statistic and the fit; the calibrator is `reference.recipes.scalepredictor_graph`.

ScalePredictor (seeds/001, 000: "the range of shallow-layer activations of an
image predicts the optimal scales of its deeper layers"). Our design, where
the paper gives no details (ANCHORS.md: no public code):

* Extraction point and statistic: the residual-stream codes ``x0`` (patch
  embed + class token + position, before block 0), statistic = the
  ``permille``-th per-mille order statistic of ``|code|`` (default 999, the
  99.9th percentile; 1000 = max). Chosen from reports/scale_premise: x0 p99.9
  had the best median held-out R² at A4 among the statistics available before
  block 0 (all of them are weak on the digits model; see the report).
* Target: log2(s_oracle / s_static) per predicted boundary (norm1, q, k, v,
  attn_out, norm2, gelu of every block), where s_oracle is the image's own
  MSE-optimal scale (``calibrate(x_image, a_bits, "mse")`` on the float
  model's tensor) and s_static the static recipe's scale. Predicting log2 makes
  the correction multiplicative and keeps it in the integer domain as a shift
  plus a Q15 mantissa (`simulator.scale_predictor`).
* Fit: least squares (``numpy.polynomial.polynomial.polyfit``) of that target
  on the normalised statistic x in [-1, 1] over the calibration images, degree
  ``degree`` (0..3; 0 = static: all coefficients 0, codes identical to the
  static recipe). Coefficients frozen as Q15 integers of 24 bits.

``params``: ``degree`` (int 0..3, default 2), ``permille`` (int 500..1000,
default 999).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reference.recipes import params as _params
from simulator.fixedpoint import round_half_up, rounding_rshift
from simulator.qvit import LayerNormQ
from simulator.scale_predictor import COEF_LIMIT, MAX_DEGREE, PRED_FRAC_BITS, normalise_statistic, statistic_rank

__all__ = ["ScalePredictorParams", "parse_params", "x0_statistic"]

BETA_LIMIT_BITS = 46        # |B_c| < 2**46 so B_c * mantissa (<= 2**15) stays below 2**61


ScalePredictorParams = _params.ScalePredictorParams
parse_params = _params.parse_scalepredictor


def x0_statistic(x0_codes: np.ndarray, permille: int) -> np.ndarray:
    """The integer statistic of each image's x0 codes [N, T, D] (sorted |code| at the rank)."""
    a = np.sort(np.abs(x0_codes.reshape(len(x0_codes), -1).astype(np.int64)), axis=1)
    return a[:, statistic_rank(a.shape[1], permille)]


def _bound_beta(ln: LayerNormQ) -> LayerNormQ:
    """Drop low bits of G, B and out_shift until ``|B_c| < 2**BETA_LIMIT_BITS`` (gain headroom)."""
    top = int(np.abs(ln.beta_q).max(initial=0))
    extra = max(0, top.bit_length() - BETA_LIMIT_BITS)
    extra = min(extra, ln.out_shift)
    if extra == 0:
        return ln
    return dataclasses.replace(ln, gamma_mult=rounding_rshift(ln.gamma_mult, extra),
                               beta_q=rounding_rshift(ln.beta_q, extra), out_shift=ln.out_shift - extra)


def _fit(stats: np.ndarray, target: np.ndarray, degree: int) -> tuple[int, int, np.ndarray]:
    """(center, norm_shift, Q15 coefficients [nb, 4]) of the least-squares fit."""
    center = int(np.median(stats))
    spread = int(np.abs(stats - center).max(initial=0))
    norm_shift = (max(spread, 1) - 1).bit_length()          # ceil(log2(spread)): |x| <= 1 on calib
    x = normalise_statistic(stats.astype(np.int64), center, norm_shift) / float(1 << PRED_FRAC_BITS)
    coeffs = np.zeros((target.shape[1], MAX_DEGREE + 1), dtype=np.int64)
    if degree > 0 and len(np.unique(x)) > degree:
        c = np.polynomial.polynomial.polyfit(x, target / float(1 << PRED_FRAC_BITS), degree)  # [deg+1, nb]
        cq = round_half_up(c.T * (1 << PRED_FRAC_BITS)).astype(np.int64)
        coeffs[:, :degree + 1] = np.clip(cq, -COEF_LIMIT, COEF_LIMIT)
    return center, norm_shift, coeffs


