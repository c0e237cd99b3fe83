"""Row kernels: the serial and parallel variants and any split of the rows give the same integers
(simulator/jit.py: `row_kernel`)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.jit import RowKernel, kernel_variant
from simulator.kernels.code_digest import row_digests
from simulator.kernels.gemm import int_matmul
from simulator.kernels.nonlinear import _layernorm, int_layernorm, int_softmax
from simulator.kernels.output_stage import linear_output


def _case(seed, rows, cols):
    rng = np.random.default_rng(seed)
    return dict(acc=rng.integers(-(1 << 31), 1 << 31, (rows, cols)),
                x=rng.integers(-(1 << 15), 1 << 15, (rows, cols)).astype(np.int16),
                bias=rng.integers(-(1 << 32), 1 << 32, cols),
                a=rng.integers(-128, 128, (2, rows, cols)).astype(np.int8),
                b=rng.integers(-128, 128, (cols, 7)).astype(np.int8))


def _run(c, cols):
    """Softmax, LayerNorm, the output stage with its overflow count, the numba GEMM and the digests."""
    return (int_softmax(c["acc"] >> 8, 1 << 30, 38, 8),
            int_layernorm(c["x"], 5, np.full(cols, 1 << 20), np.zeros(cols, np.int64), 16, -128, 127, np.int8),
            *linear_output(c["acc"], c["bias"], np.full(cols, 1 << 29), np.full(cols, 35), -128, 127, np.int8),
            int_matmul(c["a"], c["b"], 128, 128, "numba"), row_digests(c["x"]))


@pytest.fixture(scope="module")
def two_threads():
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield
    numba.set_num_threads(old)


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 60), cols=st.integers(1, 40))
def test_serial_and_parallel_variants_agree(seed, rows, cols, two_threads):
    """The parallel variant on 2 threads and the serial one."""
    c = _case(seed, rows, cols)
    with kernel_variant("serial"):
        serial = _run(c, cols)
    with kernel_variant("parallel"):
        parallel = _run(c, cols)
    for u, v in zip(serial, parallel):
        assert np.array_equal(u, v)


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(2, 40), cols=st.integers(1, 30), data=st.data())
def test_a_row_range_computes_exactly_its_rows(seed, rows, cols, data):
    """``kernel(r0, r1, ...)`` writes rows r0..r1-1 and nothing else, as the whole call would."""
    c = _case(seed, rows, cols)
    args = (np.int64(5), np.full(cols, 1 << 20), np.zeros(cols, np.int64), np.int64(16), np.int64(-128),
            np.int64(127))
    whole = np.zeros((rows, cols), np.int8)
    _layernorm(0, rows, c["x"], *args, whole)
    r0 = data.draw(st.integers(0, rows - 1))
    r1 = data.draw(st.integers(r0 + 1, rows))
    part = np.full((rows, cols), 99, np.int8)
    _layernorm(r0, r1, c["x"], *args, part)
    assert np.array_equal(part[r0:r1], whole[r0:r1])
    assert (part[:r0] == 99).all() and (part[r1:] == 99).all()


def test_the_variants_are_cached_apart():
    assert isinstance(_layernorm, RowKernel)
    assert _layernorm.serial.py_func.__qualname__ != _layernorm.parallel.py_func.__qualname__
    assert _layernorm.serial.targetoptions.get("parallel") is not True
    assert _layernorm.parallel.targetoptions.get("parallel") is True
