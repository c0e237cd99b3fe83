"""reference.quantizers: code ranges, (de)quantization, calibration, per-channel
weight scales and dyadic multipliers, checked against exact arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import oracles
from reference.quantizers import (CALIBRATIONS, DyadicRangeError, QParams, calibrate, code_range, dequantize, dyadic,
                                  fake_quantize, quantize, weight_scales)
from simulator.errors import InputError
from strategies import shapes

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)


def float_arrays(max_side=40):
    return hnp.arrays(np.float64, shapes(min_dims=1, max_dims=2, max_side=max_side), elements=finite)


def _mse(x, qp):
    return float(np.mean((x - fake_quantize(x, qp)) ** 2))


# --- code_range -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(2, 33))
def test_code_range(bits):
    assert code_range(bits) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert code_range(bits, signed=False) == (0, 2 ** bits - 1)


@pytest.mark.parametrize("bits", [-1, 0, 1, 33, 64])
def test_code_range_rejects_bad_widths(bits):
    with pytest.raises(InputError, match=f"bit-width must be in 2..32, got {bits}"):
        code_range(bits)


# --- quantize / dequantize -----------------------------------------------------------------------
@given(x=float_arrays(), bits=st.integers(2, 8), signed=st.booleans(),
       scale=st.floats(1e-3, 10.0), zp=st.integers(-3, 3))
def test_quantize_is_saturated_round_half_up(x, bits, signed, scale, zp):
    lo, hi = code_range(bits, signed)
    zp = min(max(zp, lo), hi) if not signed else 0
    qp = QParams(scale, bits, signed, zp)
    q = quantize(x, qp)
    want = [oracles.saturate(oracles.round_half_up(v / scale) + zp, lo, hi) for v in x.ravel().tolist()]
    assert q.dtype == np.int64 and q.ravel().tolist() == want
    dq = dequantize(q, qp)
    assert np.array_equal(dq, (q - zp) * scale)
    inside = (x / scale + zp >= lo - 0.5) & (x / scale + zp < hi + 0.5)
    assert np.all(np.abs(dq - x)[inside] <= scale / 2 * (1 + 1e-9))


def test_quantize_ties_and_saturation():
    qp = QParams(0.5, 4)                                 # codes -8..7, step 0.5
    x = np.array([-0.25, 0.25, -0.75, 0.75, 3.75, -4.25, 100.0, -100.0])
    assert quantize(x, qp).tolist() == [0, 1, -1, 2, 7, -8, 7, -8]


def test_quantize_per_channel_scale():
    w = np.array([[1.0, -2.0, 0.5], [10.0, -20.0, 5.0]])
    qp = QParams(np.array([[2.0 / 127], [20.0 / 127]]), 8)
    q = quantize(w, qp)
    assert q[0].tolist() == q[1].tolist() == [64, -127, 32]


# --- calibrate --------------------------------------------------------------------------------------
@given(x=float_arrays(), bits=st.integers(2, 8))
def test_calibrate_minmax_covers_the_range(x, bits):
    qp = calibrate(x, bits, "minmax")
    amax = np.abs(x).max()
    assert qp.zero_point == 0 and qp.signed
    assert qp.scale == pytest.approx(max(amax, 1e-12) / code_range(bits)[1], rel=1e-12)
    assert np.abs(quantize(x, qp)).max() <= code_range(bits)[1]


@given(x=float_arrays(), bits=st.integers(2, 8), symmetric=st.booleans())
def test_mse_never_worse_than_minmax(x, bits, symmetric):
    mm = calibrate(x, bits, "minmax", symmetric=symmetric)
    mse = calibrate(x, bits, "mse", symmetric=symmetric)
    assert _mse(x, mse) <= _mse(x, mm) * (1 + 1e-6) + 1e-300


@given(x=float_arrays(max_side=60), bits=st.integers(2, 8), pct=st.floats(50.0, 100.0), symmetric=st.booleans())
def test_percentile_range_within_minmax(x, bits, pct, symmetric):
    mm = calibrate(x, bits, "minmax", symmetric=symmetric)
    pc = calibrate(x, bits, "percentile", symmetric=symmetric, percentile=pct)
    assert pc.scale <= mm.scale * (1 + 1e-12)


def test_percentile_clips_outliers():
    x = np.concatenate([np.linspace(-1, 1, 9999), [1000.0]])
    pc = calibrate(x, 8, "percentile", percentile=99.9)
    mm = calibrate(x, 8, "minmax")
    assert mm.scale == pytest.approx(1000 / 127)
    assert pc.scale < 1.01 / 127
    assert _mse(x[:-1], pc) < _mse(x[:-1], mm)


def test_mse_beats_minmax_on_heavy_tails():
    x = np.random.default_rng(0).standard_t(2, 20000)
    assert _mse(x, calibrate(x, 4, "mse")) < 0.9 * _mse(x, calibrate(x, 4, "minmax"))


@given(x=float_arrays(), bits=st.integers(2, 8))
def test_asymmetric_zero_point(x, bits):
    qp = calibrate(x, bits, "minmax", symmetric=False)
    lo, hi = code_range(bits, signed=False)
    assert not qp.signed and isinstance(qp.zero_point, int) and lo <= qp.zero_point <= hi
    assert quantize(np.zeros(1), qp)[0] == qp.zero_point       # 0.0 is exactly representable
    assert dequantize(np.array([qp.zero_point]), qp)[0] == 0.0
    q = quantize(x, qp)
    assert q.min() >= lo and q.max() <= hi
    assert np.all(np.abs(dequantize(q, qp) - x) <= qp.scale * (0.5 + 1e-9) + 1e-9)


def test_asymmetric_one_sided_data():
    x = np.linspace(0.0, 2.55, 256)
    qp = calibrate(x, 8, "minmax", symmetric=False)
    assert qp.zero_point == 0 and qp.scale == pytest.approx(0.01)
    assert quantize(x, qp).tolist() == list(range(256))
    qn = calibrate(-x, 8, "minmax", symmetric=False)
    assert qn.zero_point == 255


@pytest.mark.parametrize("method", ["max", "MSE", "kl", ""])
def test_calibrate_bad_method(method):
    with pytest.raises(InputError, match="calibration method"):
        calibrate(np.ones(4), 8, method)


def test_calibrations_listed():
    assert CALIBRATIONS == ("minmax", "percentile", "mse")


# --- weight_scales -----------------------------------------------------------------------------------
@given(w=hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 30)), elements=finite),
       bits=st.integers(2, 8))
def test_weight_scales_per_channel(w, bits):
    hi = code_range(bits)[1]
    s = weight_scales(w, bits, "minmax")
    assert s.shape == (w.shape[0],)
    np.testing.assert_allclose(s, np.maximum(np.abs(w).max(axis=1), 1e-12) / hi, rtol=1e-12)
    q = quantize(w, QParams(s[:, None], bits))
    nz = np.abs(w).max(axis=1) > 1e-12
    assert np.all(np.abs(q).max(axis=1)[nz] == hi), "each channel's largest weight maps to the top code"
    sm = weight_scales(w, bits, "mse")
    assert sm.shape == s.shape and np.all(sm <= s * (1 + 1e-12)) and np.all(sm > 0)
    err = lambda sc: ((w - quantize(w, QParams(sc[:, None], bits)) * sc[:, None]) ** 2).mean(axis=1)
    assert np.all(err(sm) <= err(s) * (1 + 1e-4) + 1e-12)


def test_weight_scales_channels_independent():
    w = np.array([[1.0, -0.5], [100.0, 3.0], [0.0, 0.0]])
    s = weight_scales(w, 8)
    assert s.tolist() == pytest.approx([1 / 127, 100 / 127, 1e-12 / 127])


@pytest.mark.parametrize("method", ["percentile", "max", "none"])
def test_weight_scales_bad_method(method):
    with pytest.raises(InputError, match="weight calibration"):
        weight_scales(np.ones((2, 2)), 8, method)


# --- dyadic ---------------------------------------------------------------------------------------------
def _dyadic_value(m, k):
    return Fraction(int(m), 2 ** int(k))


def _check_dyadic(r):
    r = np.asarray(r, dtype=np.float64)
    m, k = dyadic(r)
    assert m.shape == r.shape and k.shape == r.shape
    assert np.all((m >= 0) & (m < 1 << 31)) and np.all((k >= 0) & (k <= 62))
    return m, k


@given(e=st.floats(-32.0, 20.0), f=st.floats(1.0, 2.0, exclude_max=True))
def test_dyadic_relative_error_normal_range(e, f):
    """r in [2**-32, 2**20]: mult keeps 31 significant bits, relative error <= 2**-31."""
    r = f * 2.0 ** np.floor(e)
    m, k = _check_dyadic(r)
    rel = abs(_dyadic_value(m, k) - Fraction(float(r))) / Fraction(float(r))
    assert rel <= Fraction(1, 2 ** 31)
    assert 1 << 30 <= int(m) < 1 << 31


@given(e=st.integers(-40, -33), f=st.floats(1.0, 2.0, exclude_max=True))
def test_dyadic_tiny_factors_keep_shift_62(e, f):
    """r in [2**-40, 2**-32): shift saturates at 62, so the error is half an LSB of 2**-62 (documented)."""
    r = f * 2.0 ** e
    m, k = _check_dyadic(r)
    assert int(k) == 62
    assert abs(_dyadic_value(m, k) - Fraction(float(r))) <= Fraction(1, 2 ** 63)


def test_dyadic_relative_error_below_2_pow_minus_30_across_40_to_20():
    """The brief's range [2**-40, 2**20]: relative error < 2**-30 holds down to 2**-32 only.

    Below 2**-32 the shift cap (62) leaves fewer than 31 bits in ``mult``;
    this test pins where the documented behaviour starts.
    """
    r = 2.0 ** np.linspace(-40, 20, 4001)
    m, k = _check_dyadic(r)
    rel = np.array([float(abs(_dyadic_value(a, b) - Fraction(x)) / Fraction(x))
                    for a, b, x in zip(m.tolist(), k.tolist(), r.tolist())])
    ok = r >= 2.0 ** -32
    assert rel[ok].max() < 2.0 ** -30
    assert rel[~ok].max() < 2.0 ** -22 and rel[~ok].max() > 2.0 ** -30


def test_dyadic_edges():
    m, k = dyadic(np.array([0.0, 1.0, 0.5, 2.0 ** -62, 2.0 ** 29, np.nextafter(2.0, 0)]))
    assert m[0] == 0
    assert (int(m[1]), int(k[1])) == (1 << 30, 30)
    assert Fraction(int(m[2]), 2 ** int(k[2])) == Fraction(1, 2)
    assert (int(m[3]), int(k[3])) == (1, 62)
    assert Fraction(int(m[4]), 2 ** int(k[4])) == 2 ** 29 and int(k[4]) >= 0
    assert int(m[5]) < 1 << 31                        # rounding carried to 2**31 is renormalised
    assert Fraction(int(m[5]), 2 ** int(k[5])) == 2


@pytest.mark.parametrize("bad", [-1.0, np.inf, np.nan, 2.0 ** 30, 1e12])
def test_dyadic_rejects_unrepresentable(bad):
    with pytest.raises(DyadicRangeError, match="rescale factor"):   # a ValueError; recipes name the model
        dyadic(bad)
