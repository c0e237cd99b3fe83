"""Value-aware two-scaled codes (V-2SF of TSPTQ-ViT): encode and decode.

TSPTQ-ViT (Tai & Wu, 2023) gives post-softmax and post-GELU tensors two
scaling factors, a fine one for the many small values and a coarse one for
the few large ones, the coarse a power-of-two multiple of the fine so that
merging them in front of an integer GEMM is a shift. It is PTQ4ViT's
twin-uniform quantizer (Yuan et al., ECCV 2022) with the ratio fixed to 2**r.

Code layout (our choice; the paper gives no bit layout). A ``b``-bit word is a
flag bit (the MSB) and a ``(b-1)``-bit field ``m``::

    flag 0 (fine):   value = m * s_fine          m in the fine range
    flag 1 (coarse): value = m * s_fine * 2**r   m in [0, 2**(b-1) - 1]

* unsigned fine range (post-softmax): ``m in [0, 2**(b-1) - 1]``;
* signed fine range (post-GELU): ``m`` is a ``(b-1)``-bit two's complement
  number in ``[-2**(b-2), 2**(b-2) - 1]``. GELU's negative part is small
  (min GELU(x) ~ -0.17), so it lives in the fine region only; the coarse
  region is unsigned and spends all its codes on the long positive tail.
  (PTQ4ViT instead uses the MSB as the sign of post-GELU values, which gives
  the small positive values the coarse step; ours keeps them fine.)

Encoding picks fine when the value's fine code fits the fine range, else the
coarse code (saturated to its range); values below the signed fine range
saturate to its minimum. Both candidates come from the producer's own
integer arithmetic (`rounding_rshift` / `requantize`, the project's round
half up), so encoding is a compare and a select.

Decoding into the GEMM operand at scale ``s_fine``: ``m`` (sign-extended in
the signed fine region) when flag = 0, ``m << r`` when flag = 1. The operand
spans ``b - 1 + r`` bits; `operand_max` bounds its magnitude for the exact
GEMM backends.

Everything is written with Python operators only, like
`simulator.fixedpoint`, so the numba kernels and the torch fake-quant
executor run this same source.
"""

from simulator.fixedpoint import requantize, rounding_rshift, saturate
from simulator.int_nonlinear import SOFTMAX_RECIP_BITS

__all__ = ["v2sf_encode", "v2sf_decode", "softmax_v2sf_code", "gelu_v2sf_code", "fine_range",
           "operand_max"]


def fine_range(bits, signed):
    """``(lo, hi)`` of the fine field: ``[0, 2**(b-1)-1]`` or ``[-2**(b-2), 2**(b-2)-1]``."""
    hi = ((1 << (bits - 1)) - 1) >> signed
    return -(hi + 1) * signed, hi


def operand_max(bits, ratio_shift, signed):
    """Largest decoded operand magnitude: the coarse top ``(2**(b-1)-1) << r``
    (or the signed fine minimum's ``2**(b-2)`` if larger, only when r = 0)."""
    coarse = ((1 << (bits - 1)) - 1) << ratio_shift
    return max(coarse, (1 << (bits - 2)) * signed)


def v2sf_encode(fine, coarse, bits, signed):
    """The ``bits``-wide two-scaled word from a value's fine and coarse codes.

    ``fine`` = round(v / s_fine), ``coarse`` = round(v / (s_fine * 2**r)),
    unsaturated. flag = fine above the fine range; the field is the fine code
    (saturated below) or the coarse code saturated to ``[0, 2**(b-1)-1]``.
    Result in ``[0, 2**bits - 1]``.
    """
    mag = (1 << (bits - 1)) - 1
    fhi = mag >> signed
    flo = -(fhi + 1) * signed
    flag = fine > fhi
    f = saturate(fine, flo, fhi)
    c = saturate(coarse, 0, mag)
    m = f + (c - f) * flag
    return (m & mag) + flag * (mag + 1)


def v2sf_decode(code, bits, ratio_shift, signed):
    """GEMM operand at scale ``s_fine`` of a two-scaled word (see module doc)."""
    mag = (1 << (bits - 1)) - 1
    flag = code >> (bits - 1)
    m = code & mag
    fine = m - (m > (mag >> 1)) * (mag + 1) * signed     # sign-extend the (b-1)-bit field
    return fine + ((m << ratio_shift) - fine) * flag


def softmax_v2sf_code(e, recip, bits, fine_exp, ratio_shift):
    """Two-scaled softmax word from the integer softmax's ``e`` and ``recip``.

    ``p = e * recip`` is the probability in Q62 (`simulator.int_nonlinear`);
    fine scale ``2**-fine_exp``, coarse ``2**-(fine_exp - ratio_shift)``:
    the fine and coarse codes are ``p`` rounding-shifted by ``62 - fine_exp``
    and ``62 - fine_exp + ratio_shift``. Needs ``ratio_shift <= fine_exp <= 62``.
    """
    p = e * recip
    fine = rounding_rshift(p, SOFTMAX_RECIP_BITS - fine_exp)
    coarse = rounding_rshift(p, SOFTMAX_RECIP_BITS - fine_exp + ratio_shift)
    return v2sf_encode(fine, coarse, bits, 0)


def gelu_v2sf_code(y, mult, shift, bits, ratio_shift):
    """Two-scaled GELU word from the Q12 GELU value ``y``: fine code
    ``requantize(y, M, k)`` (M * 2**-k = 2**-12 / s_fine), coarse code the same
    with shift ``k + r``. Needs ``shift + ratio_shift <= 62``."""
    fine = requantize(y, mult, shift)
    coarse = requantize(y, mult, shift + ratio_shift)
    return v2sf_encode(fine, coarse, bits, 1)
