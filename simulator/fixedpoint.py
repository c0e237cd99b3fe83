"""Scalar integer primitives of the numerics contract, defined once.

Every function here uses Python operators only (``+ - * // >> << & < >``), so
the same source runs on Python ints, numpy int64 arrays, torch int64 tensors
and, compiled with ``numba.njit``, inside the integer kernels. Both executors
(`reference.fakequant_ops` on torch tensors, `simulator.int_ops` through numba)
call these very functions: there is one rounding rule and one saturation rule
in the project.

Rounding rule: **round half up** (ties toward +inf), implemented as an
arithmetic right shift after adding half an LSB::

    rounding_rshift(x, k) = (x + 2**(k-1)) >> k      (k >= 1),  x for k = 0

This is the single-rounding rule of TFLite's reference kernels (ties toward
+inf), not gemmlowp's RoundingDivideByPOT (ties away from zero) and not
torch.round (ties to even). Float values are turned into codes with the same
rule, ``floor(v + 0.5)`` (see `round_half_up`).

Saturation rule: clamp to ``[lo, hi]`` (`saturate`). Nothing wraps silently:
where an accumulator could leave its declared width, the caller counts the
event in the trace.

Valid ranges: arguments are int64 values; `requantize` needs
``|x * multiplier| < 2**62`` and ``0 <= shift <= 62``.
"""

__all__ = [
    "rounding_rshift",
    "saturate",
    "requantize",
    "isqrt",
    "round_half_up",
]


def rounding_rshift(x, k):
    """``round_half_up(x / 2**k)`` for integer x and shift ``0 <= k <= 62``.

    ``(1 << k) >> 1`` is half an LSB for k >= 1 and 0 for k = 0, so one
    expression covers both without a branch (and works elementwise when k is
    an array of per-channel shifts).
    """
    return (x + ((1 << k) >> 1)) >> k


def saturate(x, lo, hi):
    """Clamp x to ``[lo, hi]`` (the one saturation rule)."""
    x = x + (lo - x) * (x < lo)
    return x + (hi - x) * (x > hi)


def requantize(x, multiplier, shift):
    """Dyadic rescale ``round_half_up(x * multiplier / 2**shift)``.

    ``multiplier * 2**-shift`` is the real rescaling factor frozen at
    quantization time (`reference.quantizers.dyadic`). No saturation here:
    callers saturate to the destination's code range with `saturate`.
    """
    return rounding_rshift(x * multiplier, shift)


def isqrt(v):
    """``floor(sqrt(v))`` for ``0 <= v < 2**62``, digit by digit.

    The classic bitwise square root (one result bit per step, 31 fixed
    steps, no data-dependent loop count), so it vectorises over arrays and
    tensors unchanged::

        bit = 4**30; r = 0
        repeat 31x: t = r + bit; if v >= t: v -= t; r = r/2 + bit else r = r/2
                    bit /= 4
    """
    r = v * 0
    bit = 1 << 60
    for _ in range(31):
        t = r + bit
        ge = v >= t
        v = v - t * ge
        r = (r >> 1) + bit * ge
        bit = bit >> 2
    return r


def round_half_up(v):
    """Float to nearest integer, ties toward +inf: ``floor(v + 0.5)``.

    Scalars (and numba, which compiles this very function); for numpy and torch arrays
    `reference.tensor_primitives.round_half_up` computes the same with ``floor`` in one pass;
    kept as the documented float twin of `rounding_rshift`.
    """
    return v // 1 + (v - v // 1 >= 0.5)   # exact; (v + 0.5) // 1 errs at k+0.5-ulp and odd v >= 2**52
