"""GEMM backends, accumulator saturation and the fused output stage.

Every backend of `simulator.kernels.gemm.BACKENDS` must return the exact
integer product (tolerance 0) for any shape, batch and operand width up to
8 bits, including K large enough that float32 BLAS needs its K-chunking.
The output stage is checked against the Python-int oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import oracles
from simulator.kernels import gemm
from simulator.kernels.gemm import int_matmul, saturate_acc
from simulator.kernels.output_stage import code_dtype, linear_output, requant_output
from strategies import code_bounds, dyadic_multipliers, int_arrays, shapes

BACKENDS = gemm.BACKENDS


def _mag(bits: int, signed: bool) -> int:
    lo, hi = code_bounds(bits, signed)
    return max(-lo, hi)


def _dtype(bits: int, signed: bool):
    if bits <= 8:
        return np.int8 if signed else np.uint8
    return np.int16 if signed and bits <= 16 else np.int32


def _check_backends(a, b, a_max, b_max):
    want = np.matmul(a.astype(np.int64), b.astype(np.int64))
    dtype = gemm.result_dtype(a.shape[-1], a_max, b_max)      # int32 iff K * a_max * b_max < 2**31
    for backend in (*BACKENDS, "blas"):
        got = int_matmul(a, b, a_max, b_max, backend)
        assert got.dtype == dtype, (backend, got.dtype)
        assert got.shape == want.shape, backend
        bad = np.argwhere(got != want)
        assert bad.size == 0, f"{backend}: {tuple(bad[0])}: {got[tuple(bad[0])]} != {want[tuple(bad[0])]}"
    return want


@st.composite
def gemm_cases(draw, max_k=64):
    """(a, b, a_max, b_max): a [*lead, m, k] (signed or unsigned), b [*lead or none, k, n] signed."""
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    m, k, n = draw(st.integers(1, 9)), draw(st.integers(1, max_k)), draw(st.integers(1, 9))
    a_bits, b_bits = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    a_signed = draw(st.booleans())
    a = draw(int_arrays(bits=a_bits, signed=a_signed, shape=(*lead, m, k), dtype=_dtype(a_bits, a_signed)))
    b_lead = lead if lead and draw(st.booleans()) else ()
    b = draw(int_arrays(bits=b_bits, shape=(*b_lead, k, n), dtype=_dtype(b_bits, True)))
    return a, b, _mag(a_bits, a_signed), _mag(b_bits, True)


@given(gemm_cases())
def test_backends_equal_exact_product(case):
    a, b, a_max, b_max = case
    want = _check_backends(a, b, a_max, b_max)
    if a.ndim == 2 and a.size <= 64 and b.size <= 64:
        assert want.tolist() == oracles.matmul(a.tolist(), b.tolist())


@pytest.mark.parametrize("a_signed", [True, False])
@pytest.mark.parametrize("k", [1023, 1024, 2000, 4099])
def test_k_chunking_at_extremes(k, a_signed):
    """K beyond what float32 holds exactly for 8-bit operands: chunking must make BLAS exact."""
    rng = np.random.default_rng(k)
    lo_a, hi_a = code_bounds(8, a_signed)
    a = rng.choice(np.array([lo_a, hi_a, hi_a - 1, 1], dtype=np.int64), size=(5, k)).astype(_dtype(8, a_signed))
    b = rng.choice(np.array([-128, 127, -127], dtype=np.int64), size=(k, 7)).astype(np.int8)
    a[0] = hi_a                                   # a row and column at the extreme sum
    b[:, 0] = -128 if a_signed else 127
    want = _check_backends(a, b, _mag(8, a_signed), 128)
    assert abs(int(want[0, 0])) == k * hi_a * (128 if a_signed else 127)


def test_k_chunking_needed_for_exactness():
    """A product whose single-GEMM float32 result is provably wrong (not a multiple of its ulp)."""
    k = 3000
    a = np.full((1, k), 127, dtype=np.int8)
    b = np.full((k, 1), 127, dtype=np.int8)
    b[0, 0] = 126                                  # sum = 127*127*3000 - 127 = 48386873, odd, > 2**24
    want = _check_backends(a, b, 128, 128)
    assert want[0, 0] == 127 * 127 * k - 127 and want[0, 0] > 1 << 24 and want[0, 0] % 2 == 1
    assert int(np.float32(want[0, 0])) != want[0, 0]


@given(gemm_cases(max_k=600))
def test_large_k_random(case):
    a, b, a_max, b_max = case
    _check_backends(a, b, a_max, b_max)


def test_batched_attention_shapes():
    """[B, H, T, d] x [B, H, d, T] and unsigned [B, H, T, T] x [B, H, T, d], as in attention."""
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, (2, 3, 5, 4)).astype(np.int8)
    kt = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    s = _check_backends(q, kt, 128, 128)
    assert s.shape == (2, 3, 5, 5)
    p = rng.integers(0, 256, (2, 3, 5, 5)).astype(np.uint8)
    v = rng.integers(-8, 8, (2, 3, 5, 4)).astype(np.int8)
    assert _check_backends(p, v, 255, 8).shape == (2, 3, 5, 4)


def test_numba_backend_on_two_threads(parallel_numba):
    """The prange over rows of the numba GEMM, with more rows than threads."""
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (3, 257, 40)).astype(np.int8)
    b = rng.integers(-128, 128, (40, 33)).astype(np.int8)
    got = int_matmul(a, b, 128, 128, "numba")
    assert np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


@st.composite
def eight_bit_cases(draw):
    """Attention- and linear-like 8-bit products: extremes, odd K, N and M off int_mm's padding grid."""
    lead = draw(st.sampled_from([(), (2,), (2, 3)]))
    m, k, n = draw(st.integers(1, 40)), draw(st.integers(1, 80)), draw(st.integers(1, 20))
    unsigned = draw(st.booleans())
    a = draw(int_arrays(bits=8, signed=not unsigned, shape=(*lead, m, k), dtype=np.uint8 if unsigned else np.int8))
    b_lead = lead if lead and draw(st.booleans()) else ()
    b = draw(int_arrays(bits=8, shape=(*b_lead, k, n), dtype=np.int8))
    if draw(st.booleans()):                          # a row/column pair at the extreme sum
        a[..., 0, :] = 255 if unsigned else -128
        b[..., :, 0] = -128
    return a, b, 255 if unsigned else 128, 128


@given(eight_bit_cases())
def test_eight_bit_backends_identical(case):
    """Every backend (pair kernel, per-slice int_mm with padding and the unsigned offset, BLAS chunks)
    returns the same int32 array."""
    a, b, a_max, b_max = case
    want = _check_backends(a, b, a_max, b_max)
    if a[..., 0, :].min() in (-128, 255) and (b[..., :, 0] == -128).all():
        assert (want[..., 0, 0] == a[..., 0, :].astype(np.int64).sum(-1) * -128).all()


def test_int32_wraparound_of_the_offset_form_cancels():
    """The pair kernel sums ``(a + 128) * b``, which leaves int32 here (70000 * 255 * 127 > 2**31);
    starting from ``-128 * colsum(b)`` the wrapped sums still give the exact product, which fits int32."""
    k = 70_000
    a = np.full((2, k), 127, dtype=np.int8)
    b = np.full((k, 3), 127, dtype=np.int8)
    b[1, 1], a[1, 5] = -128, -128
    assert k * 255 * 127 > (1 << 31) - 1
    want = _check_backends(a, b, 128, 128)             # every backend: int32 and equal to int64 numpy
    assert gemm.result_dtype(k, 128, 128) == np.int32 and want[0, 0] == 127 * 127 * k


def test_unknown_backend_raises():
    a = np.ones((2, 2), np.int8)
    with pytest.raises(ValueError, match="unknown GEMM backend"):
        int_matmul(a, a, 1, 1, "cublas")


@pytest.mark.parametrize("bits", [12, 16])
def test_wide_operands_exact_or_refused(bits):
    """Operands wider than 8 bits: each backend is exact or refuses (ValueError) -- never silently wrong.

    float32 holds a single 16 x 16-bit product only approximately, so the
    ``blas`` K-chunking (chunk = 1 at best) cannot make it exact.
    """
    rng = np.random.default_rng(bits)
    lo, hi = code_bounds(bits)
    a = rng.integers(lo, hi + 1, (4, 33)).astype(_dtype(bits, True))
    b = rng.integers(lo, hi + 1, (33, 5)).astype(_dtype(bits, True))
    a[0, 0], b[0, 0] = hi, hi - 2                  # an odd product of two near-max codes
    want = a.astype(np.int64) @ b.astype(np.int64)
    for backend in BACKENDS:
        try:
            got = int_matmul(a, b, _mag(bits, True), _mag(bits, True), backend)
        except ValueError:
            continue
        assert np.array_equal(got, want), f"{backend}: {bits}-bit operands give an inexact product"


# --- saturate_acc ---------------------------------------------------------------------------
@pytest.mark.parametrize("acc_bits", [16, 24, 32])
@given(acc=int_arrays(lo=-(1 << 40), hi=1 << 40, shape=shapes(max_dims=3, max_side=10)))
def test_saturate_acc_counts_and_clamps(acc_bits, acc):
    lo, hi = code_bounds(acc_bits)
    got, over = saturate_acc(acc.copy(), acc_bits)
    assert over == int(np.count_nonzero((acc < lo) | (acc > hi)))
    assert got.ravel().tolist() == [oracles.saturate(v, lo, hi) for v in acc.ravel().tolist()]
    assert got.shape == acc.shape


def test_saturate_acc_edges():
    acc = np.array([-(1 << 31) - 1, -(1 << 31), (1 << 31) - 1, 1 << 31, 0], dtype=np.int64)
    got, over = saturate_acc(acc)
    assert over == 2 and got.tolist() == [-(1 << 31), -(1 << 31), (1 << 31) - 1, (1 << 31) - 1, 0]
    got, over = saturate_acc(acc[1:3].copy())
    assert over == 0


# --- output stage ---------------------------------------------------------------------------------
OUT_BITS = [2, 4, 6, 8, 16, 0]      # 0: the Q12 GELU input range in int32


def _out_range(out_bits):
    if out_bits == 0:
        from simulator.int_nonlinear import GELU_INPUT_LIMIT
        return -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT, np.int32
    lo, hi = code_bounds(out_bits)
    return lo, hi, code_dtype(out_bits)


@st.composite
def output_stage_cases(draw):
    m, n = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    acc = draw(int_arrays(bits=32, shape=(m, n), dtype=draw(st.sampled_from([np.int64, np.int32]))))
    bias = draw(int_arrays(lo=-(1 << 33), hi=1 << 33, shape=(n,)))
    ms = [draw(dyadic_multipliers()) for _ in range(n)]
    mult = np.array([v[0] for v in ms], dtype=np.int64)
    shift = np.array([v[1] for v in ms], dtype=np.int64)
    out_bits = draw(st.sampled_from(OUT_BITS))
    res = None
    res_mult = res_shift = 0
    if draw(st.booleans()):
        res = draw(int_arrays(bits=16, shape=(m, n), dtype=np.int16))
        res_mult, res_shift = draw(dyadic_multipliers())
    return acc, bias, mult, shift, out_bits, res, res_mult, res_shift


@given(output_stage_cases())
def test_linear_output_matches_oracle(case):
    acc, bias, mult, shift, out_bits, res, res_mult, res_shift = case
    lo, hi, dt = _out_range(out_bits)
    want, want_over = oracles.linear_output(acc.tolist(), bias.tolist(), mult.tolist(), shift.tolist(), lo, hi,
                                            None if res is None else res.tolist(), res_mult, res_shift)
    got, over = linear_output(acc, bias, mult, shift, lo, hi, dt, res=res, res_mult=res_mult, res_shift=res_shift)
    assert got.dtype == dt
    assert got.tolist() == want
    assert over == want_over


def test_linear_output_bias_overflow_count_many_rows(parallel_numba):
    """The overflow count is a reduction over a prange: exact with many rows on 2 threads."""
    m, n = 1000, 3
    acc = np.full((m, n), (1 << 31) - 5, dtype=np.int64)
    acc[::2] = 0
    bias = np.array([10, 4, -(1 << 33)], dtype=np.int64)    # col 0 overflows up, col 2 down, col 1 never
    codes, over = linear_output(acc, bias, np.ones(n, np.int64), np.zeros(n, np.int64), -(1 << 31),
                                (1 << 31) - 1, np.int32)
    assert over == m // 2 + m
    assert codes[1].tolist() == [(1 << 31) - 1, (1 << 31) - 1, -(1 << 31)]


@st.composite
def requant_cases(draw):
    shape = draw(shapes(min_dims=1, max_dims=4, max_side=6))
    acc = draw(int_arrays(bits=32, shape=shape))
    mult, shift = draw(dyadic_multipliers())
    out_bits = draw(st.sampled_from([2, 4, 8, 16]))
    return acc, mult, shift, out_bits


@given(requant_cases())
def test_requant_output_matches_oracle(case):
    acc, mult, shift, out_bits = case
    lo, hi = code_bounds(out_bits)
    got = requant_output(acc, mult, shift, lo, hi, code_dtype(out_bits))
    want = oracles.requant_output(acc.reshape(-1, acc.shape[-1]).tolist(), mult, shift, lo, hi)
    assert got.shape == acc.shape and got.dtype == code_dtype(out_bits)
    assert got.reshape(-1, acc.shape[-1]).tolist() == want
