"""Row kernels: the serial and parallel variants give the same integers (simulator/jit.py: `row_kernel`)."""

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


def test_the_variants_are_cached_apart():
    assert isinstance(_layernorm, RowKernel)
    assert _layernorm.serial.py_func.__qualname__ != _layernorm.parallel.py_func.__qualname__
    assert _layernorm.serial.targetoptions.get("parallel") is not True
    assert _layernorm.parallel.targetoptions.get("parallel") is True
