"""Row blocks: the split covers every row once, and no kernel's result depends on it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.kernels import row_blocks
from simulator.kernels.code_digest import row_digests
from simulator.kernels.gemm import int_matmul
from simulator.kernels.nonlinear import int_layernorm, int_softmax
from simulator.kernels.output_stage import linear_output


@given(rows=st.integers(1, 5000), row_elements=st.integers(0, 4096), n_threads=st.integers(1, 8))
def test_blocks_cover_each_row_once(rows, row_elements, n_threads):
    blocks = row_blocks.row_blocks(rows, row_elements, n_threads)
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(r0 < r1 for r0, r1 in blocks)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert len(blocks) <= max(1, n_threads * row_blocks.BLOCKS_PER_THREAD)
    if n_threads == 1 or rows * max(row_elements, 1) < 2 * row_blocks.MIN_BLOCK_ELEMENTS:
        assert blocks == [(0, rows)]


def test_results_in_block_order_and_on_several_threads(parallel_kernels):
    seen = []

    def kernel(r0, r1, tag):
        import threading
        seen.append(threading.current_thread().name)
        return (tag, r0, r1)

    out = row_blocks.run_row_blocks(kernel, 40, 1, "x")
    assert [r[1:] for r in out] == row_blocks.row_blocks(40, 1, 2)
    assert len(out) == 2 * row_blocks.BLOCKS_PER_THREAD and all(r[0] == "x" for r in out)


def test_an_error_in_one_block_is_raised(parallel_kernels):
    def kernel(r0, r1):
        if r0 > 0:
            raise ValueError(f"block at {r0}")
        return r1

    with pytest.raises(ValueError, match="block at"):
        row_blocks.run_row_blocks(kernel, 16, 1)


def test_set_threads_rejects_zero():
    with pytest.raises(ValueError, match="positive"):
        row_blocks.set_threads(0)


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 60), cols=st.integers(1, 40),
       n_threads=st.sampled_from([2, 3, 5]))
def test_kernels_same_codes_on_any_thread_count(seed, rows, cols, n_threads, monkeypatch_module):
    """Softmax, LayerNorm, the output stage (with its overflow count), the numba GEMM and the digests
    give the same integers on 1 thread and on ``n_threads`` with one row per block."""
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(1 << 31), 1 << 31, (rows, cols))
    x = rng.integers(-(1 << 15), 1 << 15, (rows, cols)).astype(np.int16)
    bias = rng.integers(-(1 << 32), 1 << 32, cols)
    a = rng.integers(-128, 128, (2, rows, cols)).astype(np.int8)
    b = rng.integers(-128, 128, (cols, 7)).astype(np.int8)

    def run():
        return (int_softmax(acc >> 8, 1 << 30, 38, 8), int_layernorm(x, 5, np.full(cols, 1 << 20), np.zeros(cols,
                np.int64), 16, -128, 127, np.int8),
                *linear_output(acc, bias, np.full(cols, 1 << 29), np.full(cols, 35), -128, 127, np.int8),
                int_matmul(a, b, 128, 128, "numba"), row_digests(x))

    row_blocks.set_threads(1)
    one = run()
    row_blocks.set_threads(n_threads)
    try:
        many = run()
    finally:
        row_blocks.set_threads(1)
    assert len(row_blocks.row_blocks(rows, cols, n_threads)) == min(rows, n_threads * row_blocks.BLOCKS_PER_THREAD)
    for u, v in zip(one, many):
        assert np.array_equal(u, v)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Every row its own block (as far as the block count allows), for the whole module's hypothesis test."""
    mp = pytest.MonkeyPatch()
    mp.setattr(row_blocks, "MIN_BLOCK_ELEMENTS", 1)
    yield mp
    mp.undo()
