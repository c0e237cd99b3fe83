"""Post-softmax encodings of the static recipe's ``softmax:`` option: formulas.

Both start from the integer softmax of `simulator.int_nonlinear` (``e`` in
Q30, ``recip = floor(2**62 / sum e)``; the probability is ``p = e * recip``
in Q62) and use its one rounding rule (`rounding_rshift`, round half up) and
one saturation rule (`saturate`). Python operators only, like
`simulator.fixedpoint`: the numba kernels (`simulator.kernels.softmax_codes`)
and the torch fake-quant op set (`reference.fakequant_ops`) run this source.

**Calibrated uniform** (``softmax: {quantizer: uniform, scale: calibrated}``):
unsigned ``b``-bit codes at a power-of-two scale ``2**-f`` chosen on the
calibration images (`reference.recipes.static_graph`),

    c = saturate(rounding_rshift(p, 62 - f), 0, 2**b - 1)        (0 <= f <= 62)

-- the fixed-scale codes (`softmax_scale_codes`) are the case ``f = b``, and
the same ``(p, fine_exp)`` rounding as TSPTQ's V-2SF fine code.

**log2** (``softmax: {quantizer: log2}``): FQ-ViT's Log-Int-Softmax (Lin et
al., IJCAI 2022, "FQ-ViT: Post-Training Quantization for Fully Quantized
Vision Transformer", Sec. 3.3): ``c = clip(round(-log2 p), 0, 2**b - 1)``,
so that ``attn @ V = sum_j 2**-c_j V_j`` is a shift-accumulate. RepQ-ViT's
log-sqrt(2) quantizer (Li et al., ICCV 2023) is the same family with base
sqrt(2) (``c = clip(round(-2 log2 p), ...)``, odd codes need a sqrt(2)
multiply); only base 2 is implemented here. Exact in integers:

    P = rounding_rshift(p, 62 - F)                 # probability at 2**-F, F = 30
    m = floor_log2(P)                              # P >= 1
    r = m + [P*P >= 2**(2m+1)]                     # = round(log2 P): no ties, 2**(2m+1) is no square
    c = saturate(F - r, 0, 2**b - 1)               # = clip(round(-log2(P 2**-F)), 0, 2**b - 1)

``P = 0`` (p < 2**-31) gives ``r = 0``, ``c = F``, saturated to the top code.
**The top code ``2**b - 1`` means zero** (it collects every probability below
``2**-(2**b - 1.5)``; FQ-ViT likewise maps out-of-range codes to zero), so a
``b``-bit word has ``2**b - 1`` powers of two ``2**0 .. 2**-(2**b - 2)`` and
zero. The reading GEMM decodes a code into the operand

    w = [c < 2**b - 1] << (S - c),     S = 2**b - 2,   at scale 2**-S

i.e. ``attn @ V = 2**-S sum_j [c_j < top] (V_j << (S - c_j))``: a shift and
an add per element, no multiply (costed so, `simulator.graph_trace`). With
``b <= 4`` (``S <= 14``) and ``|V| <= 2**7`` the sum stays below 2**31
(``sum_j 2**-c_j <= sqrt(2) sum_j p_j``). ``F = 30`` keeps ``P*P < 2**61``.
"""

from simulator.fixedpoint import rounding_rshift, saturate
from simulator.int_nonlinear import SOFTMAX_RECIP_BITS

__all__ = ["LOG2_PROB_BITS", "LOG2_MAX_BITS", "softmax_pow2_codes", "floor_log2", "log2_code",
           "log2_top", "log2_shift", "log2_operand"]

LOG2_PROB_BITS = 30      # F: the probability the log is taken of, at 2**-30
LOG2_MAX_BITS = 4        # b <= 4: shifts <= 14, attn @ V inside int32 for 8-bit V


def softmax_pow2_codes(e, recip, fine_exp, bits):
    """Unsigned ``bits``-wide codes of the probability ``e * recip`` (Q62) at scale
    ``2**-fine_exp``: ``saturate(rounding_rshift(e * recip, 62 - fine_exp), 0, 2**bits - 1)``."""
    return saturate(rounding_rshift(e * recip, SOFTMAX_RECIP_BITS - fine_exp), 0, (1 << bits) - 1)


def floor_log2(v):
    """``floor(log2 v)`` for ``1 <= v < 2**63`` (0 for ``v = 0``): six fixed halving steps
    (shift by 32, 16, 8, 4, 2, 1 while the rest is nonzero), no data-dependent loop."""
    m = v * 0
    for k in (32, 16, 8, 4, 2, 1):
        ge = (v >> k) > 0
        v = v >> (k * ge)
        m = m + k * ge
    return m


def log2_code(e, recip, bits):
    """log2 code ``saturate(F - round(log2 P), 0, 2**bits - 1)`` of the probability
    ``P = rounding_rshift(e * recip, 62 - F)`` at ``2**-F`` (module docstring)."""
    p = rounding_rshift(e * recip, SOFTMAX_RECIP_BITS - LOG2_PROB_BITS)
    m = floor_log2(p)
    r = m + (((p * p) >> (2 * m + 1)) > 0)
    return saturate(LOG2_PROB_BITS - r, 0, (1 << bits) - 1)


def log2_top(bits):
    """The top code ``2**bits - 1``, which means zero."""
    return (1 << bits) - 1


def log2_shift(bits):
    """``S = 2**bits - 2``: decoded operands are at scale ``2**-S``."""
    return (1 << bits) - 2


def log2_operand(c, bits):
    """GEMM operand at ``2**-S`` of a log2 code: ``2**(S - c)``, 0 for the top code."""
    live = c < (1 << bits) - 1
    return live * (1 << (((1 << bits) - 2 - c) * live))
