"""simulator.fixedpoint: every primitive equals its Python-int oracle on
Python ints, numpy int64, torch int64 and inside numba -- tolerance 0.

Values at +-2**i and their neighbours (gemmlowp / TFLite style) are swept
exhaustively; hypothesis adds seeded random draws over the valid range.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numba
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import oracles
from simulator import fixedpoint as fp
from simulator import jit
from strategies import int_arrays, requantize_args

VALID = (1 << 62) - 1          # |x| bound of rounding_rshift / requantize inputs
POW2 = sorted({s * (1 << i) + d for i in range(62) for s in (-1, 1) for d in (-1, 0, 1)
               if abs(s * (1 << i) + d) <= VALID})


@numba.njit
def _map2(f, a, b):
    """Apply a jitted scalar primitive elementwise, the way the kernels call it."""
    out = np.empty(a.size, dtype=np.int64)
    for i in range(a.size):
        out[i] = f(a[i], b[i])
    return out


@numba.njit
def _map3(f, a, b, c):
    out = np.empty(a.size, dtype=np.int64)
    for i in range(a.size):
        out[i] = f(a[i], b[i], c[i])
    return out


@numba.njit
def _map1(f, a):
    out = np.empty(a.size, dtype=np.int64)
    for i in range(a.size):
        out[i] = f(a[i])
    return out


def _all_backends(name, *args):
    """``fp.<name>`` on numpy, torch, numba-elementwise and numba-array, as int lists."""
    f, jf = getattr(fp, name), getattr(jit, name)
    np_args = [np.asarray(a, dtype=np.int64) for a in args]
    t_args = [torch.as_tensor(a.copy()) for a in np_args]
    mapper = {1: _map1, 2: _map2, 3: _map3}[len(args)]
    return {
        "numpy": f(*np_args).tolist(),
        "torch": f(*t_args).tolist(),
        "numba-scalar": mapper(jf, *np_args).tolist(),
        "numba-array": jf(*np_args).tolist(),
    }


def _check(name, oracle, *args):
    args = [np.broadcast_to(np.asarray(a, dtype=np.int64), np.broadcast_shapes(*[np.shape(a) for a in args]))
            .ravel() for a in args]
    want = [oracle(*vals) for vals in zip(*[a.tolist() for a in args])]
    py = [getattr(fp, name)(*vals) for vals in zip(*[a.tolist() for a in args])]
    assert py == want, f"python ints: {name}"
    for backend, got in _all_backends(name, *args).items():
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, (f"{name} on {backend}: args {[int(a[bad[0]]) for a in args]} "
                         f"gave {got[bad[0]]}, expected {want[bad[0]]}")


# --- rounding_rshift -------------------------------------------------------------------
def test_rounding_rshift_pow2_grid():
    """Every x = +-2**i + {-1,0,1} against every shift 0..62."""
    x, k = np.meshgrid(np.array(POW2, dtype=np.int64), np.arange(63, dtype=np.int64))
    _check("rounding_rshift", oracles.round_div_pow2, x.ravel(), k.ravel())


def test_rounding_rshift_ties_go_up():
    # -3/2 = -1.5 -> -1, -1/2 -> 0, 1/2 -> 1, 3/2 -> 2, -5/4 -> -1, -7/4 -> -2
    x = np.array([-3, -1, 1, 3, -5, -7, 5, 7], dtype=np.int64)
    k = np.array([1, 1, 1, 1, 2, 2, 2, 2], dtype=np.int64)
    want = [-1, 0, 1, 2, -1, -2, 1, 2]
    for got in _all_backends("rounding_rshift", x, k).values():
        assert got == want


@given(st.integers(-VALID, VALID), st.integers(0, 62))
def test_rounding_rshift_random(x, k):
    _check("rounding_rshift", oracles.round_div_pow2, [x], [k])


@given(int_arrays(lo=-VALID, hi=VALID, shape=st.integers(1, 40).map(lambda n: (n,))), st.data())
def test_rounding_rshift_per_channel_shifts(x, data):
    """An array of shifts (per-channel requantization) works elementwise."""
    k = data.draw(int_arrays(lo=0, hi=62, shape=x.shape))
    _check("rounding_rshift", oracles.round_div_pow2, x, k)


# --- saturate ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8, 16, 24, 32])
def test_saturate_code_ranges(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = np.array(POW2 + [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1], dtype=np.int64)
    _check("saturate", oracles.saturate, x, lo, hi)
    got = fp.saturate(x, lo, hi)
    assert got.min() == lo and got.max() == hi


def test_saturate_int64_extremes_do_not_wrap():
    x = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0], dtype=np.int64)
    for got in _all_backends("saturate", x, np.full(3, -128), np.full(3, 127)).values():
        assert got == [-128, 127, 0]


@given(st.integers(-VALID, VALID), st.integers(-VALID, VALID), st.integers(-VALID, VALID))
def test_saturate_random(x, a, b):
    lo, hi = min(a, b), max(a, b)
    _check("saturate", oracles.saturate, [x], [lo], [hi])


# --- requantize ----------------------------------------------------------------------------
@given(requantize_args())
def test_requantize_random(args):
    x, mult, shift = args
    _check("requantize", oracles.requantize, [x], [mult], [shift])


def test_requantize_pow2_grid():
    """x at +-2**i (+-1) with multipliers at 2**j (+-1), every shift, |x*M| < 2**62."""
    mults = [m for j in range(31) for m in ((1 << j) - 1, 1 << j, (1 << j) + 1) if 0 <= m < 1 << 31]
    rows = [(x, m, k) for x in POW2[::3] for m in mults[::2] for k in (0, 1, 15, 31, 47, 62)
            if abs(x * m) < 1 << 62]
    x, m, k = (np.array(c, dtype=np.int64) for c in zip(*rows))
    assert len(rows) > 10_000
    _check("requantize", oracles.requantize, x, m, k)


def test_requantize_identity_and_zero():
    x = np.array(POW2, dtype=np.int64)
    assert fp.requantize(x, 1, 0).tolist() == x.tolist()
    small = x[np.abs(x) < 1 << 31]
    assert fp.requantize(small, 1 << 30, 30).tolist() == small.tolist()
    assert fp.requantize(x, 0, 17).tolist() == [0] * len(x)


# --- isqrt ---------------------------------------------------------------------------------
def _isqrt_edges():
    roots = sorted({r for i in range(32) for r in ((1 << i) - 1, 1 << i, (1 << i) + 1)
                    if 0 <= r and r * r < 1 << 62} | {(1 << 31) - 1, 3037000499 // 2})
    vals = {v for r in roots for v in (r * r - 1, r * r, r * r + 1, r * r + 2 * r) if 0 <= v < 1 << 62}
    vals |= {v for i in range(62) for v in ((1 << i) - 1, 1 << i, (1 << i) + 1)}
    vals |= {(1 << 62) - 1, (1 << 62) - 2, 0, 1, 2, 3}
    return sorted(v for v in vals if 0 <= v < 1 << 62)


def test_isqrt_edges_of_whole_range():
    vals = _isqrt_edges()
    assert max(vals) == (1 << 62) - 1
    _check("isqrt", oracles.isqrt, np.array(vals, dtype=np.int64))
    assert fp.isqrt((1 << 62) - 1) == (1 << 31) - 1


@given(int_arrays(lo=0, hi=(1 << 62) - 1, shape=st.integers(1, 64).map(lambda n: (n,))))
def test_isqrt_random(v):
    _check("isqrt", oracles.isqrt, v)


# --- round_half_up (float -> int) ---------------------------------------------------------------
TIES = [(-2.5, -2), (-1.5, -1), (-0.5, 0), (0.5, 1), (1.5, 2), (2.5, 3), (127.5, 128), (-128.5, -128)]


@pytest.mark.parametrize("lib", ["python", "numpy", "torch"])
def test_round_half_up_ties_toward_plus_inf(lib):
    v, want = zip(*TIES)
    if lib == "python":
        got = [fp.round_half_up(x) for x in v]
    elif lib == "numpy":
        got = fp.round_half_up(np.array(v)).tolist()
    else:
        got = fp.round_half_up(torch.tensor(v, dtype=torch.float64)).tolist()
    assert got == list(want)


def _rhu_all(v):
    """round_half_up on python floats, numpy float64 and torch float64, as Python numbers."""
    arr = np.asarray(v, dtype=np.float64)
    return {
        "python": [fp.round_half_up(float(x)) for x in arr],
        "numpy": fp.round_half_up(arr).tolist(),
        "torch": fp.round_half_up(torch.as_tensor(arr)).tolist(),
    }


def test_round_half_up_one_ulp_below_a_tie():
    """k + 0.5 - ulp is below the tie: it rounds down (floor(v + 0.5) in float gets this wrong)."""
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1023.5, 2.0 ** 20 + 0.5])
    v = np.nextafter(ties, -np.inf)
    want = [oracles.round_half_up(x) for x in v.tolist()]
    assert want == [0, 1, 2, -1, -2, 1023, 2 ** 20]
    for lib, got in _rhu_all(v).items():
        assert got == want, lib


def test_round_half_up_exact_integers_unchanged():
    """Every float64 integer (up to 2**53) is its own rounding."""
    v = np.array([float(s * ((1 << i) + d)) for i in range(54) for s in (-1, 1) for d in (-1, 0, 1)
                  if (1 << i) + d <= 1 << 53])
    for lib, got in _rhu_all(v).items():
        assert got == v.tolist(), lib


@given(st.floats(min_value=-(2.0 ** 53), max_value=2.0 ** 53, allow_nan=False))
def test_round_half_up_random(v):
    want = oracles.round_half_up(v)
    for lib, got in _rhu_all([v]).items():
        assert got == [want], lib


@given(st.integers(-(1 << 70), 1 << 70), st.integers(0, 70))
def test_oracle_round_div_pow2_matches_fraction(x, k):
    assert oracles.round_div_pow2(x, k) == oracles.round_half_up(Fraction(x, 2 ** k))


def test_oracle_round_half_up_is_exact():
    assert oracles.round_half_up(2.5) == 3 and oracles.round_half_up(-2.5) == -2
    assert oracles.round_div_pow2(-1, 1) == 0 and oracles.round_div_pow2(-3, 1) == -1
    assert math.isqrt((1 << 62) - 1) == (1 << 31) - 1
