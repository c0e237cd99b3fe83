"""Post-softmax encodings of the static recipe (`simulator.softmax_codes`): formulas against
Python-int oracles, the numba kernels against the torch (vectorised) source, and the log2
``attn @ V`` decode-then-GEMM against a literal shift-accumulate. Tolerance 0 everywhere."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.tensor_primitives import vectorised
from simulator import softmax_codes as sc
from simulator.fixedpoint import rounding_rshift
from simulator.int_nonlinear import SOFTMAX_RECIP_BITS
from simulator.kernels.gemm import int_matmul
from simulator.kernels.nonlinear import int_softmax
from simulator.kernels.softmax_codes import int_softmax_log2, int_softmax_pow2, log2_decode


def _oracle_log2(p_q30: int, bits: int) -> int:
    """clip(round(-log2(P 2**-30)), 0, 2**b - 1) by exact integer comparisons (P = 0: top)."""
    top = (1 << bits) - 1
    if p_q30 == 0:
        return top
    # round(log2 P) = the r with 2**(2r-1) <= P**2 < 2**(2r+1)
    r = 0
    while p_q30 * p_q30 >= 1 << (2 * r + 1):
        r += 1
    return min(max(30 - r, 0), top)


@given(st.integers(1, (1 << 62) - 1))
def test_floor_log2_is_the_bit_length_minus_one(v):
    assert sc.floor_log2(v) == v.bit_length() - 1


def test_floor_log2_at_powers_of_two_and_neighbours():
    for i in range(1, 62):
        for v in ((1 << i) - 1, 1 << i, (1 << i) + 1):
            assert sc.floor_log2(v) == v.bit_length() - 1


@given(e=st.integers(0, 1 << 30), extra=st.integers(0, 1 << 40), bits=st.integers(2, 4))
def test_log2_code_equals_the_oracle(e, extra, bits):
    s = max(e + extra, 1)
    recip = (1 << SOFTMAX_RECIP_BITS) // s
    p30 = rounding_rshift(e * recip, SOFTMAX_RECIP_BITS - sc.LOG2_PROB_BITS)
    assert sc.log2_code(e, recip, bits) == _oracle_log2(p30, bits)


def test_log2_code_rounds_at_the_geometric_midpoint():
    """P just below / at or above 2**m sqrt(2) rounds to m / m + 1 (P = 2**(30 - c) is code c)."""
    for m in range(0, 30):
        mid = math.isqrt(1 << (2 * m + 1))            # floor(2**m sqrt 2) < 2**m sqrt 2
        for p, r in ((mid, m), (mid + 1, m + 1), (1 << m, m)):
            recip = 1 << 32                            # e * recip = p << 32: P = p exactly
            assert sc.log2_code(p, recip, 4) == min(30 - r, 15), (m, p)


@given(c=st.integers(0, 15), bits=st.integers(2, 4))
def test_log2_operand_is_a_power_of_two_or_zero_for_the_top_code(c, bits):
    c = min(c, (1 << bits) - 1)
    top, s = sc.log2_top(bits), sc.log2_shift(bits)
    assert sc.log2_operand(c, bits) == (0 if c == top else 1 << (s - c))


@given(e=st.integers(0, 1 << 30), extra=st.integers(0, 1 << 40), f=st.integers(0, 62), bits=st.integers(2, 8))
def test_pow2_codes_at_the_fixed_scale_are_the_fixed_codes(e, extra, f, bits):
    recip = (1 << SOFTMAX_RECIP_BITS) // max(e + extra, 1)
    want = min(max(rounding_rshift(e * recip, 62 - f), 0), (1 << bits) - 1)
    assert sc.softmax_pow2_codes(e, recip, f, bits) == want
    from simulator.int_nonlinear import softmax_scale_codes
    assert sc.softmax_pow2_codes(e, recip, bits, bits) == softmax_scale_codes(e, recip, bits)


def _torch_rows(acc, in_mult, in_shift):
    from reference.tensor_primitives import exp2_neg, requantize
    t = torch.as_tensor(acc)
    e = exp2_neg(-requantize(t - t.amax(-1, keepdim=True), in_mult, in_shift))
    return e, (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 300), spread=st.integers(1, 1 << 20), seed=st.integers(0, 2**16),
       in_shift=st.integers(8, 30), bits=st.integers(2, 8), f=st.integers(0, 20))
def test_numba_kernels_equal_the_torch_source(rows, n, spread, seed, in_shift, bits, f):
    acc = np.random.default_rng(seed).integers(-spread, spread + 1, (rows, n)).astype(np.int64)
    in_mult = 1 << (in_shift - 2)
    e, recip = _torch_rows(acc, in_mult, in_shift)
    lb = min(bits, 4)
    want_log = vectorised(sc.log2_code)(e, recip, lb).numpy()
    want_pow = vectorised(sc.softmax_pow2_codes)(e, recip, f, bits).numpy()
    assert np.array_equal(int_softmax_log2(acc, in_mult, in_shift, lb).astype(np.int64), want_log)
    assert np.array_equal(int_softmax_pow2(acc, in_mult, in_shift, f, bits).astype(np.int64), want_pow)
    assert np.array_equal(int_softmax_pow2(acc, in_mult, in_shift, bits, bits), int_softmax(acc, in_mult, in_shift, bits))
    dec = log2_decode(int_softmax_log2(acc, in_mult, in_shift, lb), lb).astype(np.int64)
    assert np.array_equal(dec, vectorised(sc.log2_operand)(torch.as_tensor(want_log), lb).numpy())


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 64), d=st.integers(1, 16), bits=st.integers(2, 4), a_bits=st.integers(2, 8),
       seed=st.integers(0, 2**16))
def test_decoded_gemm_is_the_shift_accumulate(t, d, bits, a_bits, seed):
    """attn @ V through the exact GEMM of decoded operands = sum_j [c_j < top] (V_j << (S - c_j))."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, (t, t)).astype(np.uint8)
    v = rng.integers(-(1 << (a_bits - 1)), 1 << (a_bits - 1), (t, d)).astype(np.int64)
    top, s = sc.log2_top(bits), sc.log2_shift(bits)
    want = np.zeros((t, d), np.int64)
    for i in range(t):
        for j in range(t):
            c = int(codes[i, j])
            if c < top:
                want[i] += v[j] << (s - c)
    got = int_matmul(log2_decode(codes, bits), v, 1 << s, 1 << (a_bits - 1), "auto")
    assert np.array_equal(np.asarray(got, np.int64), want)


def test_log2_codes_of_a_realistic_row_match_the_float_definition():
    """Away from the rounding midpoints the integer code is clip(round(-log2 p), 0, 15) of the float p."""
    acc = np.arange(200, dtype=np.int64)[None, :] * 3000
    in_shift = 20
    codes = int_softmax_log2(acc, 1 << (in_shift - 3), in_shift, 4)[0].astype(int)
    x = acc[0] * 2.0 ** -3 / 2 ** 15          # (x - max) * log2 e in Q15 -> base-2 logits
    p = 2.0 ** (x - x.max())
    p /= p.sum()
    lp = -np.log2(p)
    ok = np.abs(lp - np.floor(lp) - 0.5) > 0.01
    want = np.clip(np.floor(lp + 0.5), 0, 15).astype(int)
    assert ok.sum() > 100
    assert np.array_equal(codes[ok], want[ok])
