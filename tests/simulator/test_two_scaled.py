"""V-2SF two-scaled words (`simulator.two_scaled`): encode/decode against a
Python-int oracle on every backend (Python ints, numpy, torch, numba), all
bit-widths 4-8, values at and around the fine/coarse switch; the softmax,
GELU and decode kernels against the oracle and the torch executor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import oracles
from reference.two_scaled_fq import gelu_operand as fq_gelu_operand
from reference.two_scaled_fq import softmax_operand as fq_softmax_operand
from simulator import jit, two_scaled
from simulator.kernels.two_scaled import gelu_operand, gelu_stage, softmax_operand, softmax_stage
from simulator.qvit import GeluQ, SoftmaxQ
from strategies import dyadic_multipliers, int_arrays, shapes

V2SF_BITS = st.integers(4, 8)


# --- the oracle: the code layout written out case by case ---------------------------------
def fine_bounds(bits: int, signed: int) -> tuple[int, int]:
    return (-2 ** (bits - 2), 2 ** (bits - 2) - 1) if signed else (0, 2 ** (bits - 1) - 1)


def oracle_word(fine: int, coarse: int, bits: int, signed: int) -> int:
    """Flag 1 iff the fine code overflows its range; field = fine (two's complement) or coarse."""
    lo, hi = fine_bounds(bits, signed)
    if fine > hi:
        return 2 ** (bits - 1) + min(max(coarse, 0), 2 ** (bits - 1) - 1)
    return max(fine, lo) % 2 ** (bits - 1)


def oracle_operand(word: int, bits: int, r: int, signed: int) -> int:
    flag, m = divmod(word, 2 ** (bits - 1))
    if flag:
        return m * 2 ** r
    return m - 2 ** (bits - 1) if signed and m >= 2 ** (bits - 2) else m


@st.composite
def encode_cases(draw):
    """(fine, coarse, bits, r, signed) with fine near the switch, the range ends, or anywhere."""
    bits, signed, r = draw(V2SF_BITS), draw(st.sampled_from([0, 1])), draw(st.integers(1, 8))
    lo, hi = fine_bounds(bits, signed)
    near = sorted({v + d for v in (lo, hi, 0, 2 ** (bits - 1)) for d in (-2, -1, 0, 1, 2)})
    fine = draw(st.one_of(st.sampled_from(near), st.integers(-(1 << 20), 1 << 20)))
    coarse = draw(st.one_of(st.just(oracles.round_div_pow2(fine, r)), st.integers(-(1 << 12), 1 << 12)))
    return fine, coarse, bits, r, signed


@given(encode_cases())
def test_encode_decode_match_oracle_on_every_backend(case):
    fine, coarse, bits, r, signed = case
    want = oracle_word(fine, coarse, bits, signed)
    assert 0 <= want < 2 ** bits
    got = {
        "int": two_scaled.v2sf_encode(fine, coarse, bits, signed),
        "numpy": int(two_scaled.v2sf_encode(np.int64(fine), np.int64(coarse), bits, signed)),
        "torch": int(two_scaled.v2sf_encode(torch.tensor(fine), torch.tensor(coarse), bits, signed)),
        "numba": int(jit.v2sf_encode(fine, coarse, bits, signed)),
    }
    assert got == dict.fromkeys(got, want)
    op = oracle_operand(want, bits, r, signed)
    dec = {
        "int": two_scaled.v2sf_decode(want, bits, r, signed),
        "torch": int(two_scaled.v2sf_decode(torch.tensor(want), bits, r, signed)),
        "numba": int(jit.v2sf_decode(want, bits, r, signed)),
    }
    assert dec == dict.fromkeys(dec, op)
    lo, hi = fine_bounds(bits, signed)
    if lo <= fine <= hi:                          # the fine region round-trips exactly
        assert op == fine and want >> (bits - 1) == 0
    assert abs(op) <= two_scaled.operand_max(bits, r, signed)


@pytest.mark.parametrize("bits", range(4, 9))
@pytest.mark.parametrize("signed", [0, 1])
def test_every_word_decodes_like_the_oracle(bits, signed):
    words = np.arange(2 ** bits, dtype=np.int64)
    for r in (1, 3, 8):
        want = [oracle_operand(int(w), bits, r, signed) for w in words]
        assert two_scaled.v2sf_decode(words, bits, r, signed).tolist() == want
        ops, _ = (gelu_operand if signed else softmax_operand)(_params(bits, r, signed), words.astype(np.uint8)
                                                               .reshape(2, -1))
        assert ops.reshape(-1).tolist() == want
        assert max(abs(v) for v in want) == two_scaled.operand_max(bits, r, signed)


def _params(bits, r, signed):
    if signed:
        return GeluQ(out_mult=1, out_shift=0, out_bits=bits, out_scale=1.0, ratio_shift=r)
    return SoftmaxQ(in_mult=1, in_shift=0, in_scale=1.0, out_bits=bits, fine_exp=bits - 1 + r, ratio_shift=r)


@pytest.mark.parametrize("bits", range(4, 9))
def test_switch_point_and_accuracy(bits):
    """Real values through fine/coarse rounding: the switch sits just above the fine top,
    and each value is within half a step of its scale (fine below the switch, coarse above)."""
    r, s = 3, 0.01
    for signed in (0, 1):
        lo, hi = fine_bounds(bits, signed)
        v = np.linspace(lo * s, (2 ** (bits - 1) - 1) * s * 2 ** r, 4001)
        fine = np.floor(v / s + 0.5).astype(np.int64)
        coarse = np.floor(v / (s * 2 ** r) + 0.5).astype(np.int64)
        words = two_scaled.v2sf_encode(fine, coarse, bits, signed)
        flag = words >> (bits - 1)
        assert np.array_equal(flag, (fine > hi).astype(np.int64))
        err = np.abs(two_scaled.v2sf_decode(words, bits, r, signed) * s - v)
        assert err[flag == 0].max() <= s / 2 + 1e-12
        assert err[flag == 1].max() <= s * 2 ** r / 2 + 1e-12


# --- kernels vs oracle vs torch ---------------------------------------------------------------


def _rows(fn, arr):
    a2 = np.asarray(arr).reshape(-1, np.shape(arr)[-1])
    return np.array([fn(row.tolist()) for row in a2], dtype=np.int64).reshape(np.shape(arr))


def oracle_softmax_words(row, mult, shift, bits, f, r):
    m = max(row)
    e = [oracles.exp2_neg(-oracles.requantize(a - m, mult, shift)) for a in row]
    recip = 2 ** 62 // sum(e)
    return [oracle_word(oracles.round_div_pow2(x * recip, 62 - f), oracles.round_div_pow2(x * recip, 62 - f + r),
                        bits, 0) for x in e]


@st.composite
def softmax_cases(draw):
    mult, shift = draw(dyadic_multipliers())
    bound = min((1 << 31) - 1, (((1 << 62) - 1) // max(mult, 1) - 1) // 2)
    acc = draw(int_arrays(lo=-bound - 1, hi=bound, shape=shapes(min_dims=1, max_dims=3, max_side=9)))
    bits, r = draw(V2SF_BITS), draw(st.integers(1, 8))
    f = draw(st.integers(max(r, bits - 1), bits + 14))
    return acc, SoftmaxQ(in_mult=mult, in_shift=shift, in_scale=1.0, out_bits=bits, fine_exp=f, ratio_shift=r)


@given(softmax_cases())
def test_softmax_words_match_oracle(fq, case):
    acc, sm = case
    want = _rows(lambda row: oracle_softmax_words(row, sm.in_mult, sm.in_shift, sm.out_bits, sm.fine_exp,
                                                  sm.ratio_shift), acc)
    got_nb = softmax_stage(sm, acc)
    got_t = fq._softmax(sm, torch.from_numpy(acc)).numpy()
    np.testing.assert_array_equal(got_nb.astype(np.int64), want, err_msg="numba vs oracle")
    np.testing.assert_array_equal(got_t, want, err_msg="torch vs oracle")
    ops, a_max = softmax_operand(sm, got_nb)
    np.testing.assert_array_equal(ops, fq_softmax_operand(sm, torch.from_numpy(want)).numpy())
    assert np.abs(ops).max(initial=0) <= a_max


@st.composite
def gelu_cases(draw):
    from simulator.int_nonlinear import GELU_INPUT_LIMIT
    h = draw(int_arrays(lo=-GELU_INPUT_LIMIT, hi=GELU_INPUT_LIMIT, shape=shapes(min_dims=1, max_dims=3,
                                                                                 max_side=12)))
    bits, r = draw(V2SF_BITS), draw(st.integers(1, 8))
    mult, shift = draw(st.tuples(st.integers(0, (1 << 31) - 1), st.integers(0, 62 - r)))
    return h, GeluQ(out_mult=mult, out_shift=shift, out_bits=bits, out_scale=1.0, ratio_shift=r)


@given(gelu_cases())
def test_gelu_words_match_oracle(fq, case):
    h, g = case
    def word(x):
        y = oracles.gelu_q12(x)
        return oracle_word(oracles.requantize(y, g.out_mult, g.out_shift),
                           oracles.requantize(y, g.out_mult, g.out_shift + g.ratio_shift), g.out_bits, 1)
    want = _rows(lambda row: [word(v) for v in row], h)
    got_nb = gelu_stage(g, h, 0, 0, np.int8)
    got_t = fq._gelu(g, None, torch.from_numpy(h)).numpy()
    np.testing.assert_array_equal(got_nb.astype(np.int64), want, err_msg="numba vs oracle")
    np.testing.assert_array_equal(got_t, want, err_msg="torch vs oracle")
    ops, a_max = gelu_operand(g, got_nb)
    np.testing.assert_array_equal(ops, fq_gelu_operand(g, torch.from_numpy(want)).numpy())
    assert np.abs(ops).max(initial=0) <= a_max


def test_softmax_words_degenerate_rows():
    """p = 1 lands in the coarse top code; p = 1/4 at fine 2**-9 (128 > 127) switches to coarse."""
    sm = SoftmaxQ(in_mult=1 << 30, in_shift=30, in_scale=1.0, out_bits=8, fine_exp=9, ratio_shift=2)
    assert softmax_stage(sm, np.array([[5]], dtype=np.int64)).tolist() == [[128 + 127]]
    assert softmax_stage(sm, np.full((1, 4), 3, dtype=np.int64)).tolist() == [[128 + 32] * 4]
    assert softmax_stage(sm, np.full((1, 8), 3, dtype=np.int64)).tolist() == [[64] * 8]   # 1/8 * 2**9 fits
