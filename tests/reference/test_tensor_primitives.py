"""The vectorised (one-pass clamp) primitives equal the operator-only originals."""

import numpy as np
import torch
from hypothesis import given, strategies as st

from reference import tensor_primitives as tp
from simulator import fixedpoint, int_nonlinear

ints = st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=64)


@given(ints, st.integers(-(1 << 20), 0), st.integers(0, 1 << 20))
def test_saturate_same_rule(xs, lo, hi):
    t = torch.tensor(xs, dtype=torch.int64)
    assert torch.equal(tp.saturate(t, lo, hi), fixedpoint.saturate(t, lo, hi))
    a = np.array(xs, dtype=np.int64)
    assert np.array_equal(tp.saturate(a, lo, hi), fixedpoint.saturate(a, lo, hi))
    assert tp.saturate(xs[0], lo, hi) == fixedpoint.saturate(xs[0], lo, hi)


@given(st.lists(st.integers(-(1 << 24), 1 << 24), min_size=1, max_size=64))
def test_formulas_identical(xs):
    t = torch.tensor(xs, dtype=torch.int64)
    u = t.abs()
    assert torch.equal(tp.gelu_q12(t), int_nonlinear.gelu_q12(t))
    assert torch.equal(tp.exp2_neg(u), int_nonlinear.exp2_neg(u))
    assert tp.vectorised(int_nonlinear.gelu_q12) is tp.gelu_q12


def test_rebinding_replaces_saturate_only_in_copies():
    f = tp.vectorised(int_nonlinear.exp2_neg)
    assert f.__globals__["saturate"] is tp.saturate
    assert int_nonlinear.exp2_neg.__globals__["saturate"] is fixedpoint.saturate


@given(st.lists(st.one_of(st.floats(-1e18, 1e18, allow_nan=False),
                          st.integers(-(1 << 60), 1 << 60).map(lambda k: k + 0.5),
                          st.sampled_from([0.5, -0.5, 1.5, -1.5, 0.49999999999999994, -0.49999999999999994,
                                           2.0 ** 52 + 1, -(2.0 ** 52) - 1, 4503599627370495.5, -0.0])),
                min_size=1, max_size=64))
def test_round_half_up_floor_equals_floor_divide(vs):
    """`tp.round_half_up` (torch.floor) = `fixedpoint.round_half_up` (``v // 1``) on float64 and float32."""
    for dt in (torch.float64, torch.float32):
        t = torch.tensor(vs, dtype=dt)
        assert torch.equal(tp.round_half_up(t), fixedpoint.round_half_up(t))
    assert tp.vectorised(fixedpoint.round_half_up) is tp.round_half_up
