"""quick-GELU and the rounded mean (`simulator.int_activations`): one source,
three evaluators (Python ints, numba, torch) giving identical integers, and
the real function within a stated error."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import tensor_primitives as tp
from simulator import jit
from simulator.int_activations import quick_gelu_q12, rounding_mean
from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.int_ops import int_quick_gelu
from strategies import int_arrays

Q12 = 4096


@given(s=st.integers(-(1 << 40), 1 << 40), n=st.integers(1, 4096))
def test_rounding_mean_is_round_half_up_of_the_exact_quotient(s, n):
    want = math.floor(Fraction(s, n) + Fraction(1, 2))
    assert rounding_mean(s, n) == want
    assert jit.rounding_mean(np.int64(s), np.int64(n)) == want
    assert int(tp.rounding_mean(torch.tensor([s]), n)[0]) == want


def test_rounding_mean_ties_go_up():
    assert [rounding_mean(s, 2) for s in (-3, -1, 1, 3)] == [-1, 0, 1, 2]
    assert [rounding_mean(s, 4) for s in (-6, -2, 2, 6)] == [-1, 0, 1, 2]


@given(x=int_arrays(lo=-GELU_INPUT_LIMIT, hi=GELU_INPUT_LIMIT, shape=st.tuples(st.integers(1, 4),
                                                                              st.integers(1, 16))))
def test_quick_gelu_same_integers_everywhere(x):
    py = np.array([[quick_gelu_q12(int(v)) for v in row] for row in x], dtype=np.int64)
    assert np.array_equal(quick_gelu_q12(x), py)                                   # numpy
    assert np.array_equal(tp.quick_gelu_q12(torch.from_numpy(x)).numpy(), py)       # torch
    assert all(jit.quick_gelu_q12(np.int64(v)) == p for v, p in zip(x.ravel(), py.ravel()))   # numba scalar
    # the kernel: identity output multiplier (2**30 / 2**30) and a wide code range
    out = int_quick_gelu(x, 1 << 30, 30, -(1 << 30), (1 << 30) - 1, np.int64)
    assert np.array_equal(out, py)


def test_quick_gelu_error_within_one_q12_step():
    x = np.concatenate([np.arange(-(1 << 16), 1 << 16, 3), np.arange(-GELU_INPUT_LIMIT, GELU_INPUT_LIMIT, 9973),
                        [-GELU_INPUT_LIMIT, -1, 0, 1, GELU_INPUT_LIMIT]]).astype(np.int64)
    xf = x / Q12
    ref = xf * 0.5 * (1 + np.tanh(0.851 * xf))          # x * sigmoid(1.702 x), overflow-free form
    err = np.abs(quick_gelu_q12(x) / Q12 - ref).max()
    assert err <= 1.0 / Q12, err
    assert quick_gelu_q12(0) == 0 and quick_gelu_q12(GELU_INPUT_LIMIT) == GELU_INPUT_LIMIT
