"""Slow, obviously correct oracles on Python ints and `fractions.Fraction`.

The living specification of the integer datapath (tinygrad / stumpy
``naive.py`` style): every function works on exact rationals, one scalar at a
time, and is written from the formulas in the docstrings of
`simulator.fixedpoint` and `simulator.int_nonlinear` -- never by calling the
code under test. Only the fixed-point *constants* are imported (a separate
test pins them to the real numbers they stand for).

Conventions: "round half up" is ``floor(v + 1/2)`` evaluated exactly on a
`Fraction`; shifts and reciprocals are exact floor divisions of Python ints.
"""

from __future__ import annotations

import math
from fractions import Fraction

from simulator import int_nonlinear as nl

__all__ = [
    "round_half_up", "round_div_pow2", "saturate", "requantize", "isqrt",
    "exp2_neg", "softmax_row", "gelu_q12", "gelu_code", "layernorm_parts", "layernorm_row",
    "matmul", "linear_output", "requant_output", "gelu_exact",
]


# --- scalar primitives ---------------------------------------------------------
def round_half_up(v) -> int:
    """Nearest integer to the exact value of ``v`` (an int, float or Fraction), ties toward +inf."""
    return math.floor(Fraction(v) + Fraction(1, 2))


def round_div_pow2(x: int, k: int) -> int:
    """``x / 2**k`` rounded half up: ``floor(x/2**k + 1/2) = floor((2x + 2**k) / 2**(k+1))``.

    Python's ``//`` on ints is the exact floor of the rational (checked
    against `Fraction` in the tests), and much faster than building one.
    """
    x, k = int(x), int(k)
    return (2 * x + 2 ** k) // 2 ** (k + 1)


def saturate(x: int, lo: int, hi: int) -> int:
    return min(max(int(x), int(lo)), int(hi))


def requantize(x: int, mult: int, shift: int) -> int:
    """``x * mult * 2**-shift`` rounded half up."""
    return round_div_pow2(int(x) * int(mult), shift)


def isqrt(v: int) -> int:
    return math.isqrt(int(v))


# --- softmax -----------------------------------------------------------------------
EXP2_COEFFS_REAL = (-0.69183707, 0.23211577, -0.04039805)   # p(f) = 1 + c1 f + c2 f^2 + c3 f^3


def exp2_neg(u: int) -> int:
    """``2**(-u / 2**15)`` in Q30 for ``u >= 0``, as the docstring builds it.

    ``u = q * 2**15 + r``; ``p(r)`` in Q15 by Horner, every product of two Q15
    numbers brought back to Q15 by a rounded division; ``e = (p << 15) / 2**q``
    rounded, with the shift capped at 62 (so the value is 0 far out).
    """
    u = int(u)
    assert u >= 0
    q, r = divmod(u, 2 ** nl.EXP_FRAC_BITS)
    one = 2 ** nl.EXP_FRAC_BITS
    p = round_div_pow2(nl.EXP2_C3 * r, 15) + nl.EXP2_C2
    p = round_div_pow2(p * r, 15) + nl.EXP2_C1
    p = round_div_pow2(p * r, 15) + one
    return round_div_pow2(p * 2 ** (30 - 15), min(q, 62))


def softmax_row(acc, in_mult: int, in_shift: int, out_bits: int) -> list[int]:
    """Integer softmax of one row of accumulators -> codes at scale ``2**-out_bits``."""
    acc = [int(a) for a in acc]
    m = max(acc)
    e = [exp2_neg(-requantize(a - m, in_mult, in_shift)) for a in acc]
    recip = 2 ** 62 // sum(e)
    return [saturate(round_div_pow2(ej * recip, 62 - out_bits), 0, 2 ** out_bits - 1) for ej in e]


# --- GELU ----------------------------------------------------------------------------
def gelu_q12(x: int) -> int:
    """``x * (1 + erf(x / sqrt 2)) / 2`` on Q12 with the clipped cubic erf in Q16.

    ``v = min(|x|, c) - c`` (Q12); ``h = 1 + v*(a1 + v*(a2 + v*a3))`` in Q16,
    each ``Q16 * Q12`` product divided back by ``2**12`` with rounding;
    ``erf = sign(x) * h``; result ``x * (2**16 + erf) / 2**17`` rounded.
    """
    x = int(x)
    v = min(abs(x), nl.GELU_CLIP) - nl.GELU_CLIP
    h = round_div_pow2(nl.GELU_A3 * v, 12) + nl.GELU_A2
    h = round_div_pow2(h * v, 12) + nl.GELU_A1
    h = round_div_pow2(h * v, 12) + 2 ** 16
    sign = (x > 0) - (x < 0)
    return round_div_pow2(x * (2 ** 16 + sign * h), 17)


def gelu_code(h: int, out_mult: int, out_shift: int, lo: int, hi: int) -> int:
    """The GELU unit end to end: clamp the Q12 input, GELU, requantize, saturate."""
    x = saturate(h, -nl.GELU_INPUT_LIMIT, nl.GELU_INPUT_LIMIT)
    return saturate(requantize(gelu_q12(x), out_mult, out_shift), lo, hi)


# --- LayerNorm -----------------------------------------------------------------------
def layernorm_parts(x, eps_q: int):
    """(normalised Q12 values, std) of one token following the docstring."""
    x = [int(v) for v in x]
    d = len(x)
    s1 = sum(x)
    var = d * sum(v * v for v in x) - s1 * s1          # = D**2 * var, exact
    std = max(isqrt(var + int(eps_q)), 1)
    recip = 2 ** 48 // std
    n = [round_div_pow2((d * v - s1) * recip, 48 - 12) for v in x]
    return n, std


def layernorm_row(x, eps_q: int, gamma_mult, beta_q, out_shift: int, lo: int, hi: int) -> list[int]:
    n, _ = layernorm_parts(x, eps_q)
    return [saturate(round_div_pow2(nc * int(g) + int(b), out_shift), lo, hi)
            for nc, g, b in zip(n, gamma_mult, beta_q)]


# --- GEMM and output stage -------------------------------------------------------
def matmul(a, b) -> list[list[int]]:
    """Exact ``a @ b`` of 2-D nested sequences of ints."""
    a = [[int(v) for v in row] for row in a]
    b = [[int(v) for v in row] for row in b]
    return [[sum(a[i][t] * b[t][j] for t in range(len(b))) for j in range(len(b[0]))]
            for i in range(len(a))]


ACC_LO, ACC_HI = -(2 ** 31), 2 ** 31 - 1


def linear_output(acc, bias, mult, shift, lo, hi, res=None, res_mult=0, res_shift=0):
    """(codes, number of ``acc + bias`` values outside int32) of the fused output stage."""
    out, over = [], 0
    for i, row in enumerate(acc):
        o = []
        for j, a in enumerate(row):
            s = int(a) + int(bias[j])
            over += not ACC_LO <= s <= ACC_HI
            y = requantize(saturate(s, ACC_LO, ACC_HI), mult[j], shift[j])
            if res is not None and res_mult:
                y += requantize(res[i][j], res_mult, res_shift)
            o.append(saturate(y, lo, hi))
        out.append(o)
    return out, over


def requant_output(acc, mult, shift, lo, hi):
    return [[saturate(requantize(a, mult, shift), lo, hi) for a in row] for row in acc]


# --- real-valued references for the measured-error tests ---------------------------
def gelu_exact(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def choose_exps_exhaustive(amax, scale: float, hi: int, groups: int, max_exp: int) -> list[int]:
    """IGQ group exponents by enumerating every subset of 1..max_exp in order (the removed search of
    `reference.recipes.igq.choose_exps`): the first subset with the least float cost wins."""
    import itertools
    import numpy as np
    a = np.asarray(amax, dtype=np.float64).ravel()
    with np.errstate(divide="ignore"):
        n = np.floor(np.log2(scale * (hi + 0.5) / np.where(a > 0, a, np.inf)))
    n = np.clip(np.nan_to_num(n, posinf=max_exp), 0, max_exp).astype(np.int64)
    hist = np.bincount(n, minlength=max_exp + 1).astype(np.float64)
    k = min(groups, max_exp + 1) - 1
    if k == 0:
        return [0]
    levels = np.arange(max_exp + 1)
    own = 4.0 * hi * hi * 4.0 ** -levels.astype(np.float64)
    best, best_cost = None, np.inf
    for extra in itertools.combinations(range(1, max_exp + 1), k):
        e_sorted = np.array((0,) + extra)
        e_of = e_sorted[np.searchsorted(e_sorted, levels, side="right") - 1]
        cost = float(hist @ np.minimum(4.0 ** -e_of.astype(np.float64), own))
        if cost < best_cost:
            best, best_cost = e_sorted, cost
    return sorted((int(e) for e in best), reverse=True)
