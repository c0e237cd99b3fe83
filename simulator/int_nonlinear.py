"""Integer-only softmax, GELU and LayerNorm: constants and element functions.

Like `simulator.fixedpoint`, everything here is written with Python operators
only, so the torch fake-quant executor (vectorised over tensors) and the numba
kernels (scalar loops, `simulator.kernels`) evaluate the *same* source. The
row reductions (max, sum, mean, variance) are done by each caller.

Fixed-point formats are model independent ("shift constants that need no
per-model hand tuning", ANCHORS.md): the per-model part is only the dyadic
multiplier that brings an accumulator into the format, frozen in the
`QuantizedGraph`.

Softmax (after I-BERT's integer exp, Kim et al. ICML 2021, and I-ViT's
Shiftmax, Li & Gu ICCV 2023, but base 2 with log2(e) folded into the input
multiplier): with logits ``x`` and row maximum ``m``,

    t = requantize(acc - max(acc), M_in, k_in)   # (x - m) * log2(e) in Q15, <= 0
    u = -t = q * 2**15 + r                       # integer q >= 0, fraction r in [0, 2**15)
    2**-u = 2**-q * p(r),  p(f) = 1 + f*(c1 + f*(c2 + f*c3)) ~= 2**-f  (|err| <= 1.2e-4)
    e = (p(r) << 15) >> q     (Q30, rounding shift)
    out = (e * floor(2**62 / sum(e))) >> (62 - b)   # codes of softmax at scale 2**-b

GELU: ``GELU(x) = x * (1 + erf(x / sqrt 2)) / 2`` with, for ``v = min(|x|, c) - c``,
``erf(|x|/sqrt 2) ~= 1 + v*(a1 + v*(a2 + v*a3))``, c = 3.3 (least-squares fit,
max |GELU error| 0.0023; I-BERT's second-order erf with c = 1.769*sqrt 2 has
0.018). Input and output in Q12.

LayerNorm (I-BERT/I-ViT style, with an exact integer square root instead of a
float one): for a token of D codes x_c,

    S1 = sum x,  V = D * sum x**2 - S1**2          (= D**2 * var)
    std = max(isqrt(V + eps_q), 1)                 (~ D * sigma; never 0)
    n_c = ((D * x_c - S1) * floor(2**48 / std)) >> (48 - 12)   # (x - mu)/sigma in Q12
    y_c = (n_c * G_c + B_c) >> out_shift           # gamma, beta and output scale folded
"""

from simulator.fixedpoint import rounding_rshift, saturate

__all__ = [
    "EXP_FRAC_BITS", "SOFTMAX_RECIP_BITS", "GELU_FRAC_BITS", "GELU_INPUT_LIMIT",
    "LN_FRAC_BITS", "LN_RECIP_BITS", "exp2_neg", "softmax_scale_codes",
    "gelu_q12", "ln_normalize", "ln_affine",
]

# --- softmax -----------------------------------------------------------------
EXP_FRAC_BITS = 15                 # t = (x - max) * log2(e) in Q15
EXP_OUT_BITS = 30                  # e = 2**-u in Q30 (e <= 2**30)
SOFTMAX_RECIP_BITS = 62            # floor(2**62 / sum e)
# p(f) ~= 2**-f on [0, 1): c1 = -0.69183707, c2 = 0.23211577, c3 = -0.04039805 (Q15)
EXP2_C1 = -22670                   # round(-0.69183707 * 2**15)
EXP2_C2 = 7606                     # round( 0.23211577 * 2**15)
EXP2_C3 = -1324                    # round(-0.04039805 * 2**15)
EXP2_MAX_SHIFT = 62


def exp2_neg(u):
    """``2**(-u / 2**15)`` in Q30 for ``u >= 0`` (u in Q15); 0 once u >= 62."""
    q = u >> EXP_FRAC_BITS
    r = u & ((1 << EXP_FRAC_BITS) - 1)
    p = rounding_rshift(EXP2_C3 * r, EXP_FRAC_BITS) + EXP2_C2
    p = rounding_rshift(p * r, EXP_FRAC_BITS) + EXP2_C1
    p = rounding_rshift(p * r, EXP_FRAC_BITS) + (1 << EXP_FRAC_BITS)
    q = saturate(q, 0, EXP2_MAX_SHIFT)
    return rounding_rshift(p << (EXP_OUT_BITS - EXP_FRAC_BITS), q)


def softmax_scale_codes(e, recip, out_bits):
    """Softmax codes at scale ``2**-out_bits``: ``e * recip >> (62 - out_bits)``.

    ``recip = floor(2**62 / sum(e))`` per row; ``e <= sum(e)`` keeps the
    product below 2**62. Saturates to ``[0, 2**out_bits - 1]`` (a probability
    of exactly 1.0 becomes the top code).
    """
    out = rounding_rshift(e * recip, SOFTMAX_RECIP_BITS - out_bits)
    return saturate(out, 0, (1 << out_bits) - 1)


# --- GELU --------------------------------------------------------------------
GELU_FRAC_BITS = 12                # GELU input/output in Q12
GELU_INPUT_LIMIT = (1 << 24) - 1   # |x| < 4096.0 after the fc1 output stage
GELU_ERF_BITS = 16                 # erf evaluated in Q16
GELU_CLIP = 13517                  # round(3.3 * 2**12): erf(|x|/sqrt2) = 1 beyond
GELU_A1 = 1577                     # round(0.02405921 * 2**16)
GELU_A2 = 2976                     # round(0.04541591 * 2**16)
GELU_A3 = 2696                     # round(0.04114263 * 2**16)


def gelu_q12(x):
    """GELU of a Q12 value (``|x| <= GELU_INPUT_LIMIT``), result in Q12."""
    ax = x * ((x > 0) * 2 - 1)
    v = saturate(ax, 0, GELU_CLIP) - GELU_CLIP
    h = rounding_rshift(GELU_A3 * v, GELU_FRAC_BITS) + GELU_A2
    h = rounding_rshift(h * v, GELU_FRAC_BITS) + GELU_A1
    h = rounding_rshift(h * v, GELU_FRAC_BITS) + (1 << GELU_ERF_BITS)
    erf = h * (x > 0) - h * (x < 0)
    return rounding_rshift(x * ((1 << GELU_ERF_BITS) + erf), GELU_ERF_BITS + 1)


# --- LayerNorm -----------------------------------------------------------------
LN_FRAC_BITS = 12                  # normalised value (x - mu) / sigma in Q12
LN_RECIP_BITS = 48                 # floor(2**48 / std)


def ln_normalize(dx, recip):
    """``(x - mu) / sigma`` in Q12 from ``dx = D*x - S1`` and ``recip = floor(2**48/std)``."""
    return rounding_rshift(dx * recip, LN_RECIP_BITS - LN_FRAC_BITS)


def ln_affine(n, gamma_mult, beta_q, out_shift, lo, hi):
    """Output codes ``saturate((n * G + B) >> out_shift)`` with gamma/beta/scale folded."""
    return saturate(rounding_rshift(n * gamma_mult + beta_q, out_shift), lo, hi)
