"""Integer softmax, GELU and LayerNorm.

(a) Bit-exactness: the numba kernels (`simulator.kernels.nonlinear`), the
    torch vectorised stage functions of the fake-quant op set and the element
    functions on numpy/torch all equal the Python-int oracle (tolerance 0),
    on hypothesis-drawn shapes including extreme inputs, all-equal rows
    (LayerNorm sigma = 0), rows of length 1 and huge negative logits.
(b) Accuracy: the measured max error of each approximation against its float
    definition, asserted below a stated bound and printed (``pytest -s``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import oracles
from reference.quantizers import dyadic
from simulator import int_nonlinear as nl
from simulator import jit
from simulator.kernels.nonlinear import int_gelu, int_layernorm, int_softmax
from simulator.kernels.output_stage import code_dtype
from simulator.qvit import GeluQ, LayerNormQ, SoftmaxQ
from strategies import code_bounds, dyadic_multipliers, int_arrays, shapes




def _apply_rows(fn, arr):
    """Oracle over the last axis of an int array, back to an int64 array."""
    a2 = np.asarray(arr).reshape(-1, np.shape(arr)[-1])
    return np.array([fn(row.tolist()) for row in a2], dtype=np.int64).reshape(np.shape(arr))


# =====================================================================================
# (a) bit-exactness
# =====================================================================================
def test_constants_are_the_documented_reals():
    c1, c2, c3 = oracles.EXP2_COEFFS_REAL
    assert (nl.EXP2_C1, nl.EXP2_C2, nl.EXP2_C3) == tuple(round(c * 2 ** 15) for c in (c1, c2, c3))
    assert nl.GELU_CLIP == round(3.3 * 2 ** 12)
    assert (nl.GELU_A1, nl.GELU_A2, nl.GELU_A3) == tuple(
        round(a * 2 ** 16) for a in (0.02405921, 0.04541591, 0.04114263))
    assert nl.GELU_INPUT_LIMIT == 2 ** 24 - 1 and nl.LN_RECIP_BITS == 48 and nl.SOFTMAX_RECIP_BITS == 62


# --- element functions on every backend ----------------------------------------------------
U_GRID = np.unique(np.concatenate([
    np.arange(0, 3 << 15),                                         # every u in [0, 3.0) (Q15)
    np.array([(1 << i) + d for i in range(63) for d in (-1, 0, 1) if 0 <= (1 << i) + d < 1 << 62]),
    np.array([q << 15 for q in range(60, 66)] + [(62 << 15) - 1]),
])).astype(np.int64)
X_GRID = np.unique(np.concatenate([
    np.arange(-(1 << 16), 1 << 16),                               # every Q12 x in [-16, 16)
    np.array([s * ((1 << i) + d) for i in range(25) for s in (-1, 1) for d in (-1, 0, 1)]),
])).astype(np.int64)
X_GRID = X_GRID[np.abs(X_GRID) <= nl.GELU_INPUT_LIMIT]


@pytest.mark.parametrize("name, grid, oracle", [("exp2_neg", U_GRID, oracles.exp2_neg),
                                                 ("gelu_q12", X_GRID, oracles.gelu_q12)])
def test_element_functions_on_every_backend(name, grid, oracle):
    want = np.array([oracle(v) for v in grid.tolist()], dtype=np.int64)
    f = getattr(nl, name)
    got = {"numpy": f(grid), "torch": f(torch.from_numpy(grid)).numpy(), "numba": getattr(jit, name)(grid),
           "python": np.array([f(v) for v in grid[:: 97].tolist()])}
    for backend, g in got.items():
        w = want[:: 97] if backend == "python" else want
        bad = np.flatnonzero(g != w)
        assert bad.size == 0, f"{name} {backend}: input {grid[bad[0]]} gave {g[bad[0]]}, expected {w[bad[0]]}"


def test_exp2_neg_endpoints():
    assert nl.exp2_neg(0) == 1 << 30                         # 2**0 = 1.0 in Q30, exactly
    assert nl.exp2_neg(1 << 15) == 1 << 29                   # 2**-1
    assert nl.exp2_neg(62 << 15) == 0 and nl.exp2_neg((1 << 62) - 1) == 0
    e = nl.exp2_neg(np.arange(0, 40 << 15, 997, dtype=np.int64))
    assert np.all(np.diff(e) <= 0), "2**-u must not increase with u"


def test_gelu_q12_shape():
    x = X_GRID
    g = nl.gelu_q12(x)
    assert nl.gelu_q12(0) == 0
    big = x >= nl.GELU_CLIP
    assert np.array_equal(g[big], x[big]), "GELU(x) = x once erf saturates"
    assert np.all(g[x <= -nl.GELU_CLIP] == 0)
    assert np.all(np.diff(g[x >= 0]) >= 0), "GELU is increasing for x >= 0"


# --- softmax ---------------------------------------------------------------------------------
@st.composite
def softmax_cases(draw):
    """(acc, in_mult, in_shift, out_bits) with |(acc - max) * in_mult| < 2**62."""
    mult, shift = draw(dyadic_multipliers())
    kind = draw(st.sampled_from(["any", "huge-negative", "equal", "length-1"]))
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=9))
    if kind == "length-1":
        shape = (*shape[:-1], 1)
    bound = min((1 << 31) - 1, (((1 << 62) - 1) // max(mult, 1) - 1) // 2)
    acc = draw(int_arrays(lo=-bound - 1, hi=bound, shape=shape))
    if kind == "huge-negative":          # one large logit per row, all others far below it
        acc[..., 0] = bound
        acc[..., 1:] = np.minimum(acc[..., 1:], -bound // 2)
    if kind == "equal":
        acc[...] = acc.reshape(-1)[0]
    out_bits = draw(st.sampled_from([2, 3, 4, 6, 8, 12, 16]))
    return acc, mult, shift, out_bits


@given(softmax_cases())
def test_softmax_matches_oracle(fq, case):
    acc, mult, shift, out_bits = case
    want = _apply_rows(lambda r: oracles.softmax_row(r, mult, shift, out_bits), acc)
    got_nb = int_softmax(acc, mult, shift, out_bits)
    sm = SoftmaxQ(in_mult=mult, in_shift=shift, in_scale=1.0, out_bits=out_bits)
    got_t = fq._softmax(sm, torch.from_numpy(acc)).numpy()
    assert got_nb.dtype == (np.uint8 if out_bits <= 8 else np.uint16)
    np.testing.assert_array_equal(got_nb.astype(np.int64), want, err_msg="numba kernel vs oracle")
    np.testing.assert_array_equal(got_t, want, err_msg="torch FakeQuantExecutor._softmax vs oracle")
    assert want.min() >= 0 and want.max() <= (1 << out_bits) - 1
    top = np.take_along_axis(want, acc.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    assert np.array_equal(top, want.max(axis=-1)), "the largest logit gets the largest code"


def test_softmax_degenerate_rows():
    top = (1 << 8) - 1
    # length-1 rows: probability 1.0 -> the top code
    assert int_softmax(np.array([[5], [-7]], dtype=np.int64), 1 << 30, 30, 8).tolist() == [[top], [top]]
    # equal rows of n: p = 1/n exactly, and 1/4 at scale 2**-8 is 64
    assert int_softmax(np.full((2, 4), -123, dtype=np.int64), 1 << 30, 30, 8).tolist() == [[64] * 4] * 2
    # one logit 2**31 - 1 above the rest: all mass on it (e underflows to 0 elsewhere)
    acc = np.array([[(1 << 31) - 1, -(1 << 31), 0, -(1 << 31)]], dtype=np.int64)
    assert int_softmax(acc, (1 << 30) - 1, 20, 8).tolist() == [[top, 0, 0, 0]]


# --- GELU --------------------------------------------------------------------------------------
@st.composite
def gelu_cases(draw, limit=nl.GELU_INPUT_LIMIT):
    h = draw(int_arrays(lo=-limit, hi=limit, shape=shapes(min_dims=1, max_dims=3, max_side=12)))
    mult, shift = draw(dyadic_multipliers())
    out_bits = draw(st.sampled_from([2, 4, 6, 8, 16]))
    return h, mult, shift, out_bits


@given(gelu_cases())
def test_gelu_matches_oracle(fq, case):
    h, mult, shift, out_bits = case
    lo, hi = code_bounds(out_bits)
    want = _apply_rows(lambda r: [oracles.gelu_code(v, mult, shift, lo, hi) for v in r], h)
    got_nb = int_gelu(h, mult, shift, lo, hi, code_dtype(out_bits))
    g = GeluQ(out_mult=mult, out_shift=shift, out_bits=out_bits, out_scale=1.0)
    got_t = fq._gelu(g, None, torch.from_numpy(h)).numpy()
    assert got_nb.dtype == code_dtype(out_bits)
    np.testing.assert_array_equal(got_nb.astype(np.int64), want, err_msg="numba kernel vs oracle")
    np.testing.assert_array_equal(got_t, want, err_msg="torch FakeQuantExecutor._gelu vs oracle")


@given(gelu_cases(limit=1 << 40))
def test_gelu_kernel_clamps_its_input(case):
    """Q12 inputs beyond the documented limit are clamped to it first (numba kernel)."""
    h, mult, shift, out_bits = case
    lo, hi = code_bounds(out_bits)
    want = _apply_rows(lambda r: [oracles.gelu_code(v, mult, shift, lo, hi) for v in r], h)
    got = int_gelu(h, mult, shift, lo, hi, code_dtype(out_bits)).astype(np.int64)
    np.testing.assert_array_equal(got, want)


# --- LayerNorm -------------------------------------------------------------------------------
@st.composite
def layernorm_cases(draw):
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=24))
    in_bits = draw(st.sampled_from([8, 12, 16]))
    x = draw(int_arrays(bits=in_bits, shape=shape))
    if draw(st.booleans()):                             # sigma = 0 in some rows
        x[..., :] = x[..., :1]
    d = shape[-1]
    eps_q = draw(st.sampled_from([0, 1, 7, 1 << 20, (1 << 40) + 3]) | st.integers(0, 1 << 44))
    gamma = draw(int_arrays(lo=-(1 << 30) + 1, hi=(1 << 30) - 1, shape=(d,)))
    beta = draw(int_arrays(lo=-(1 << 44), hi=1 << 44, shape=(d,)))
    out_shift = draw(st.integers(12, 52))
    out_bits = draw(st.sampled_from([2, 4, 6, 8, 16]))
    return x, eps_q, gamma, beta, out_shift, out_bits


@given(layernorm_cases())
def test_layernorm_matches_oracle(fq, case):
    x, eps_q, gamma, beta, out_shift, out_bits = case
    lo, hi = code_bounds(out_bits)
    want = _apply_rows(lambda r: oracles.layernorm_row(r, eps_q, gamma, beta, out_shift, lo, hi), x)
    got_nb = int_layernorm(x, eps_q, gamma, beta, out_shift, lo, hi, code_dtype(out_bits))
    ln = LayerNormQ(eps_q=eps_q, gamma_mult=gamma, beta_q=beta, out_shift=out_shift, in_bits=16, in_scale=1.0,
                    out_bits=out_bits, out_scale=1.0, gamma=np.ones(x.shape[-1]), beta=np.zeros(x.shape[-1]),
                    eps=1e-6)
    got_t = fq._layernorm(ln, torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got_nb.astype(np.int64), want, err_msg="numba kernel vs oracle")
    np.testing.assert_array_equal(got_t, want, err_msg="torch FakeQuantExecutor._layernorm vs oracle")


def test_layernorm_zero_variance_is_finite_and_beta():
    """sigma = 0 and eps_q = 0: std is clamped to 1, the normalised value is 0, the output is beta."""
    x = np.full((3, 16), 1234, dtype=np.int16)
    x[1] = -(1 << 15)
    x[2, :] = 0
    d = x.shape[1]
    beta = np.arange(-8, 8, dtype=np.int64) << 20
    out = int_layernorm(x, 0, np.full(d, 1 << 29, np.int64), beta, 20, -128, 127, np.int8)
    assert out.tolist() == [list(range(-8, 8))] * 3
    n, std = oracles.layernorm_parts(x[0].tolist(), 0)
    assert std == 1 and n == [0] * d


def test_layernorm_one_channel():
    out = int_layernorm(np.array([[5], [-3]], dtype=np.int64), 0, np.array([1 << 20]), np.array([3 << 12]), 12,
                        -128, 127, np.int8)
    assert out.tolist() == [[3], [3]]


def test_kernels_on_two_threads_match_torch(fq, parallel_numba):
    """Many rows through the prange kernels on 2 threads equal the torch operators."""
    rng = np.random.default_rng(7)
    acc = rng.integers(-(1 << 20), 1 << 20, (4, 3, 50, 50))
    sm = SoftmaxQ(in_mult=1 << 30, in_shift=40, in_scale=1.0, out_bits=8)
    np.testing.assert_array_equal(int_softmax(acc, 1 << 30, 40, 8).astype(np.int64),
                                  fq._softmax(sm, torch.from_numpy(acc)).numpy())
    h = rng.integers(-(1 << 15), 1 << 15, (300, 64))
    g = GeluQ(out_mult=1 << 30, out_shift=40, out_bits=8, out_scale=1.0)
    np.testing.assert_array_equal(int_gelu(h, 1 << 30, 40, -128, 127, np.int8).astype(np.int64),
                                  fq._gelu(g, None, torch.from_numpy(h)).numpy())
    x = rng.integers(-(1 << 15), 1 << 15, (300, 48)).astype(np.int16)
    gm, bq = rng.integers(-(1 << 29), 1 << 29, 48), rng.integers(-(1 << 40), 1 << 40, 48)
    ln = LayerNormQ(eps_q=5, gamma_mult=gm, beta_q=bq, out_shift=36, in_bits=16, in_scale=1.0, out_bits=8,
                    out_scale=1.0, gamma=np.ones(48), beta=np.zeros(48), eps=1e-6)
    np.testing.assert_array_equal(int_layernorm(x, 5, gm, bq, 36, -128, 127, np.int8).astype(np.int64),
                                  fq._layernorm(ln, torch.from_numpy(x.astype(np.int64))).numpy())


# =====================================================================================
# (b) measured accuracy against the float definitions
# =====================================================================================
EXP2_BOUND = 1.6e-4          # Q30 value of 2**-u vs exact
GELU_BOUND = 0.0026          # Q12 GELU vs erf GELU, |x| <= 4096
SOFTMAX_P_BOUND = 6e-5       # probabilities at 16-bit codes vs float softmax
SOFTMAX_LSB_BOUND = 1        # 8-bit codes vs round(p * 2**8), and under 1% of them off at all
LN_BOUND = 3.5e-4            # (x - mu)/sigma in Q12 vs float, typical residual rows


def test_exp2_error_measured():
    u = np.arange(0, 24 << 15, dtype=np.int64)
    got = nl.exp2_neg(u) / 2.0 ** 30
    err = np.abs(got - np.exp2(-u / 2.0 ** 15)).max()
    print(f"\nmax |exp2_neg err| = {err:.3e}  (u in [0, 24) Q15, bound {EXP2_BOUND:.1e})")
    assert err < EXP2_BOUND


def test_gelu_error_measured():
    x = np.arange(-(1 << 16), 1 << 16, dtype=np.int64)                  # every Q12 code in [-16, 16)
    x = np.concatenate([x, np.arange(-nl.GELU_INPUT_LIMIT, nl.GELU_INPUT_LIMIT, 4099, dtype=np.int64)])
    xf = x / 2.0 ** 12
    exact = np.array([oracles.gelu_exact(v) for v in xf.tolist()])
    err = np.abs(nl.gelu_q12(x) / 2.0 ** 12 - exact)
    i = int(np.argmax(err))
    print(f"\nmax |GELU err| = {err[i]:.5f} at x = {xf[i]:.4f}  (bound {GELU_BOUND})")
    assert err[i] < GELU_BOUND


def test_softmax_error_measured():
    rng = np.random.default_rng(0)
    worst_p, worst_lsb, off_by_one, total = 0.0, 0, 0, 0
    for n, spread in [(2, 1.0), (17, 4.0), (50, 8.0), (197, 3.0), (64, 20.0)]:
        logits = rng.standard_normal((64, n)) * spread
        in_scale = spread / 4096                                  # logits carried as ~12-bit accumulators
        acc = np.floor(logits / in_scale + 0.5).astype(np.int64)
        z = acc * in_scale
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        m, k = dyadic(in_scale * math.log2(math.e) * 2.0 ** nl.EXP_FRAC_BITS)
        p16 = int_softmax(acc, int(m), int(k), 16) / 2.0 ** 16
        worst_p = max(worst_p, float(np.abs(p16 - p).max()))
        c8 = int_softmax(acc, int(m), int(k), 8).astype(np.int64)
        ref8 = np.minimum(np.floor(p * 256 + 0.5), 255)
        d = np.abs(c8 - ref8)
        worst_lsb = max(worst_lsb, int(d.max()))
        off_by_one += int(np.count_nonzero(d))
        total += d.size
    print(f"\nmax |softmax p err| (16-bit codes) = {worst_p:.2e}  (bound {SOFTMAX_P_BOUND:.1e}); "
          f"8-bit codes: max {worst_lsb} LSB from round(p*256), {off_by_one}/{total} differ")
    assert worst_p < SOFTMAX_P_BOUND
    assert worst_lsb <= SOFTMAX_LSB_BOUND
    assert off_by_one / total < 0.01


def test_layernorm_error_measured():
    rng = np.random.default_rng(1)
    worst = 0.0
    for d, amp in [(8, 2000.0), (64, 300.0), (192, 4000.0), (384, 100.0), (768, 8000.0)]:
        x = np.clip(np.round(rng.standard_normal((32, d)) * amp + rng.standard_normal((32, 1)) * amp),
                    -(1 << 15), (1 << 15) - 1).astype(np.int64)
        eps_real = 1e-6 * amp ** 2                                # eps in code units**2
        eps_q = int(round(eps_real * d * d))
        n, std = zip(*[oracles.layernorm_parts(r.tolist(), eps_q) for r in x])
        n_int = np.array(n) / 2.0 ** 12
        xf = x.astype(np.float64)
        ref = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + eps_real)
        worst = max(worst, float(np.abs(n_int - ref).max()))
        out = int_layernorm(x, eps_q, np.full(d, 1 << 20, np.int64), np.zeros(d, np.int64), 20,
                            -(1 << 15), (1 << 15) - 1, np.int16)
        assert np.array_equal(out, np.clip(np.array(n), -(1 << 15), (1 << 15) - 1)), "kernel == oracle"
    print(f"\nmax |LayerNorm normalised err| = {worst:.2e}  (bound {LN_BOUND:.1e})")
    assert worst < LN_BOUND
