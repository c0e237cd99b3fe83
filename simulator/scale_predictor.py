"""ScalePredictor in fixed point: statistic -> polynomial -> per-image dyadic multipliers.

ScalePredictor (seeds/001, 000) predicts every deep activation scale of an
image from one range statistic of a shallow tensor with a Taylor-motivated
polynomial. Here the whole predictor is integer arithmetic, written with
Python operators only (like `simulator.int_nonlinear`), so the torch
fake-quant executor and the numba kernels (compiled in `simulator.jit`) run
the same source:

1. Statistic ``S`` of an image: the ``rank``-th smallest ``|code|`` of the
   residual-stream codes ``x0`` (after patch embed + position), ``rank =
   min(N * permille // 1000, N - 1)`` -- an integer percentile (permille
   1000 = max |code|). Each executor selects it exactly (sort).
2. Normalisation to Q15 on [-1, 1] (values outside the calibration spread
   saturate, so the polynomial is never extrapolated)::

       x = saturate(rounding_rshift((S - center) << 15, norm_shift), -2**15, 2**15)

3. Horner in Q15 with bounded-width coefficients (|c_k| < 2**23) and a
   saturating accumulator (|h| <= 2**23 - 1), then a clamp of the result to
   ``+-LOG2_LIMIT`` (8 octaves)::

       h = c3;  h = sat(rrshift(h * x, 15) + c_k)  for k = 2, 1, 0
       d = sat(h, -LOG2_LIMIT, LOG2_LIMIT)       # log2(s_pred / s_static) in Q15

   Degrees below 3 have zero high coefficients (evaluated exactly).
4. How a predicted scale enters a dyadic multiplier: a requantization
   ``M * 2**-k`` from a tensor at scale ``s_in`` to one at ``s_out`` is frozen
   with the static scales; with per-image scales ``s * 2**d`` its real factor
   gains ``2**(d_in - d_out)``. For a gain exponent ``g`` in Q15
   (``g = d_in - d_out``; ``-d_out`` for LayerNorm/GELU outputs, ``d_in`` for
   layers whose output stays static) write ``-g = q * 2**15 + r`` with
   ``0 <= r < 2**15``; then ``2**(g / 2**15) = 2**-q * 2**(-r / 2**15)`` and
   the mantissa ``m = rrshift(exp2_neg(r), 15)`` in ``[2**14 - 8, 2**15]``
   (Q15, the softmax unit's own 2**-f polynomial; relative error of
   ``m * 2**(-15 - q)`` against ``2**(g / 2**15)`` below 3e-4)::

       M' = rrshift(M * m, 15)        (< 2**31 when M < 2**31)
       k' = saturate(k + q, 0, 62)

   LayerNorm's folded ``G_c``, ``B_c`` and ``out_shift`` are updated the same
   way (the recipe bounds ``|B_c| < 2**46`` so ``B_c * m`` stays in int64).
"""

from simulator.fixedpoint import rounding_rshift, saturate
from simulator.int_nonlinear import exp2_neg

__all__ = [
    "PRED_FRAC_BITS", "COEF_LIMIT", "HORNER_LIMIT", "LOG2_LIMIT", "MAX_DEGREE", "PREDICTED_BOUNDARIES",
    "normalise_statistic", "horner_log2", "gain_mantissa", "gain_shift", "scale_multiplier",
    "scale_shift", "statistic_rank",
]

PRED_FRAC_BITS = 15                      # x, coefficients and log2 ratios in Q15
PRED_ONE = 1 << PRED_FRAC_BITS
COEF_LIMIT = (1 << 23) - 1               # |c_k| <= COEF_LIMIT (24-bit signed coefficients)
HORNER_LIMIT = (1 << 23) - 1             # Horner accumulator saturates here (|h * x| < 2**38)
LOG2_LIMIT = 8 << PRED_FRAC_BITS         # predicted |log2(s_pred / s_static)| <= 8 octaves
MAX_DEGREE = 3
MAX_SHIFT = 62
#: The per-block activation boundaries whose scales are predicted, in coefficient order.
PREDICTED_BOUNDARIES = ("norm1", "q", "k", "v", "attn_out", "norm2", "gelu")


def statistic_rank(n, permille):
    """Index into the sorted |codes| of an ``n``-element tensor: ``min(n*permille//1000, n-1)``."""
    r = n * permille // 1000
    return r - (r - (n - 1)) * (r > n - 1)


def normalise_statistic(stat, center, norm_shift):
    """``x = (S - center) / 2**norm_shift`` in Q15, saturated to ``[-1, 1]``."""
    return saturate(rounding_rshift((stat - center) << PRED_FRAC_BITS, norm_shift), -PRED_ONE, PRED_ONE)


def horner_log2(x, c0, c1, c2, c3):
    """``c0 + x (c1 + x (c2 + x c3))`` in Q15, saturating; the predicted log2 ratio."""
    h = c3
    h = saturate(rounding_rshift(h * x, PRED_FRAC_BITS) + c2, -HORNER_LIMIT, HORNER_LIMIT)
    h = saturate(rounding_rshift(h * x, PRED_FRAC_BITS) + c1, -HORNER_LIMIT, HORNER_LIMIT)
    h = saturate(rounding_rshift(h * x, PRED_FRAC_BITS) + c0, -HORNER_LIMIT, HORNER_LIMIT)
    return saturate(h, -LOG2_LIMIT, LOG2_LIMIT)


def gain_mantissa(g):
    """Q15 mantissa ``m`` in ``[2**14 - 8, 2**15]`` of ``2**(g / 2**15)`` (see `gain_shift`)."""
    r = (-g) & (PRED_ONE - 1)
    return rounding_rshift(exp2_neg(r), 15)


def gain_shift(g):
    """``q = floor(-g / 2**15)``: ``2**(g / 2**15) ~= gain_mantissa(g) * 2**(-15 - q)``."""
    return (-g) >> PRED_FRAC_BITS


def scale_multiplier(mult, shift, g):
    """Dyadic ``(mult, shift)`` times ``2**(g / 2**15)``: ``(rrshift(M*m, 15), sat(k + q, 0, 62))``.

    ``g`` may be a scalar or broadcast against ``mult``; returns the multiplier
    only -- the shift is `scale_shift` (two functions so each has one result).
    """
    return rounding_rshift(mult * gain_mantissa(g), 15)


def scale_shift(shift, g):
    """The shift half of `scale_multiplier`: ``saturate(k + q, 0, 62)``."""
    return saturate(shift + gain_shift(g), 0, MAX_SHIFT)
