"""Integer formulas of the graph ops beyond today's ViT datapath: quick-GELU,
the rounded mean of avg pooling, and the rescaled sum of ``add`` / ``mean``.

Like `simulator.fixedpoint` and `simulator.int_nonlinear`, Python operators
only: the numba kernels (`simulator.jit`), numpy and the torch fake-quant op
set (`reference.tensor_primitives`) evaluate this very source.

quick-GELU (CLIP's ``x * sigmoid(1.702 x)``), on a Q12 input ``x``, with the
softmax's base-2 exponential (`int_nonlinear.exp2_neg`, |rel err| <= 1.2e-4)::

    u   = requantize(|x|, QG_MULT, QG_SHIFT)      # |1.702 x| * log2(e) in Q15
    e   = exp2_neg(u)                            # exp(-|1.702 x|) in Q30, (0, 2**30]
    s   = floor(2**46 / (2**30 + e))             # sigmoid(|1.702 x|) in Q16, [2**15, 2**16]
    sig = s if x >= 0 else 2**16 - s             # sigmoid(-z) = 1 - sigmoid(z)
    y   = rounding_rshift(x * sig, 16)           # Q12

(the reciprocal is a floor, like the softmax's ``floor(2**62 / sum e)``).

Rounded mean (avg pooling over n tokens): ``floor((2 s + n) / (2 n))`` is
``round_half_up(s / n)`` exactly, for any integer sum ``s`` and ``n >= 1``.
"""

from simulator.fixedpoint import rounding_rshift
from simulator.int_nonlinear import exp2_neg

__all__ = ["QG_MULT", "QG_SHIFT", "SIGMOID_BITS", "quick_gelu_q12", "rounding_mean"]

SIGMOID_BITS = 16
QG_SHIFT = 16
QG_MULT = 1287372                  # round(1.702 * log2(e) * 2**(15-12) * 2**16) = 19.64373 * 2**16


def quick_gelu_q12(x):
    """``x * sigmoid(1.702 x)`` of a Q12 value (``|x| < 2**24``), result in Q12."""
    ax = x * ((x > 0) * 2 - 1)
    u = rounding_rshift(ax * QG_MULT, QG_SHIFT)
    e = exp2_neg(u)
    s = (1 << (30 + SIGMOID_BITS)) // ((1 << 30) + e)
    sig = s * (x >= 0) + ((1 << SIGMOID_BITS) - s) * (x < 0)
    return rounding_rshift(x * sig, SIGMOID_BITS)


def rounding_mean(s, n):
    """``round_half_up(s / n)`` of an integer sum ``s`` over ``n >= 1`` values."""
    return (2 * s + n) // (2 * n)
