"""Exact integer GEMM backends: all return the same int64 accumulators.

* ``numba``: a plain jitted triple loop accumulating in int64 (the living
  specification of the product; slow but obviously right).
* ``blas``: float32 BLAS on the codes, exact because every partial sum is an
  integer below 2**24 in magnitude: K is split into chunks with
  ``chunk * max|a| * max|b| < 2**24`` (the bound comes from the operands'
  bit-widths, so it is proved, not hoped), and chunk results are summed in
  int64.

`saturate_acc` then applies the accumulator width (int32 unless the hardware
says otherwise): values outside it are saturated and counted, never wrapped.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator.jit import parallel_kernel

__all__ = ["int_matmul", "saturate_acc", "BACKENDS"]

BACKENDS = ("blas", "numba")
F32_EXACT = 1 << 24


@parallel_kernel
def _matmul_numba(a, b):
    """``c[i, j] = sum_k a[i, k] * b[k, j]`` in int64 for 2-D a, b."""
    m, k = a.shape
    n = b.shape[1]
    c = np.zeros((m, n), dtype=np.int64)
    for i in prange(m):
        for kk in range(k):
            av = np.int64(a[i, kk])
            if av != 0:
                for j in range(n):
                    c[i, j] += av * np.int64(b[kk, j])
    return c


def _matmul_blas(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int) -> np.ndarray:
    k = a.shape[-1]
    chunk = max(1, (F32_EXACT - 1) // max(1, a_max * b_max))
    af, bf = a.astype(np.float32), b.astype(np.float32)
    if chunk >= k:
        return np.matmul(af, bf).astype(np.int64)
    out = None
    for s in range(0, k, chunk):
        part = np.matmul(af[..., s:s + chunk], bf[..., s:s + chunk, :]).astype(np.int64)
        out = part if out is None else out + part
    return out


def int_matmul(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int, backend: str = "blas") -> np.ndarray:
    """Exact ``a @ b`` of integer codes (batched over leading dims) as int64.

    ``a_max``/``b_max`` bound the operands' magnitudes (from their bit-widths).
    """
    if backend == "blas":
        return _matmul_blas(a, b, a_max, b_max)
    if backend != "numba":
        raise ValueError(f"unknown GEMM backend {backend!r}; expected one of {BACKENDS}")
    lead = a.shape[:-2]
    a2 = a.reshape(-1, *a.shape[-2:])
    b2 = np.broadcast_to(b, (*lead, *b.shape[-2:])).reshape(-1, *b.shape[-2:])
    out = np.stack([_matmul_numba(np.ascontiguousarray(x), np.ascontiguousarray(y)) for x, y in zip(a2, b2)])
    return out.reshape(*lead, a.shape[-2], b.shape[-1])


def saturate_acc(acc: np.ndarray, acc_bits: int = 32) -> tuple[np.ndarray, int]:
    """Clamp to the signed ``acc_bits`` range; returns (acc, number saturated)."""
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    over = int(np.count_nonzero((acc < lo) | (acc > hi)))
    return (np.clip(acc, lo, hi) if over else acc), over
