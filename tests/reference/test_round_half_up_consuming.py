"""The in-place rounding of the float-nonlinear stages equals the rounding rule (reference/tensor_primitives.py)."""

import numpy as np
import torch
from hypothesis import given, strategies as st

from reference.tensor_primitives import round_half_up, round_half_up_consuming
from simulator import fixedpoint


@given(st.lists(st.floats(-2.0**52, 2.0**52, allow_nan=False), min_size=1, max_size=64),
       st.sampled_from([0.0, 0.5, -0.5, 0.49999999999999994, 2.0**52 - 0.5]))
def test_consuming_form_equals_round_half_up(values, edge):
    v = torch.tensor(values + [edge], dtype=torch.float64)
    want = round_half_up(v)
    got = round_half_up_consuming(v.clone())
    assert torch.equal(got, want)
    assert got.tolist() == [float(fixedpoint.round_half_up(x)) for x in np.asarray(values + [edge])]
