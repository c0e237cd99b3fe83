"""Exact integer GEMM backends: all return the same int64 accumulators.

* ``numba``: a plain jitted triple loop accumulating in int64 (the living
  specification of the product; slow but obviously right).
* ``int_mm``: oneDNN's int8 x int8 -> int32 GEMM through ``torch._int_mm``
  (2-D, int8 operands; rows padded to > 16 and K, N to multiples of 8 with
  zeros, which adds nothing). Exact: int32 cannot overflow while
  ``K * 2**14 < 2**31``. torch is imported lazily, only when this backend
  runs: the one place the simulator touches torch, as an exact GEMM engine.
* ``auto``: ``int_mm`` for 2-D int8 products when torch is importable, else
  ``blas``.
* ``blas``: float32 BLAS (torch's when importable, else numpy's) on the codes, exact because every partial sum is an
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

BACKENDS = ("auto", "int_mm", "blas", "numba")
INT_MM_MAX_K = 1 << 17
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53


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
    """Float GEMM in exact K-chunks, through torch's BLAS when importable
    (numpy's batched matmul is 30x slower on strided attention operands).

    float32 while one product fits its 24-bit mantissa, else float64 (53
    bits); operands too wide even for that go to the numba kernel.
    """
    prod = max(1, a_max * b_max)
    if prod < F32_EXACT:
        chunk, dtype = (F32_EXACT - 1) // prod, "float32"
    elif prod < F64_EXACT:
        chunk, dtype = (F64_EXACT - 1) // prod, "float64"
    else:
        return int_matmul(a, b, a_max, b_max, "numba")
    k = a.shape[-1]
    torch = _torch()
    if torch is not None:
        tdt = getattr(torch, dtype)
        af, bf = torch.from_numpy(np.asarray(a)).to(tdt), torch.from_numpy(np.asarray(b)).to(tdt)
        mm = lambda x, y: torch.matmul(x, y).numpy()
    else:
        af, bf = a.astype(dtype), b.astype(dtype)
        mm = np.matmul
    if chunk >= k:
        return mm(af, bf).astype(np.int64)
    out = None
    for s in range(0, k, chunk):
        part = mm(af[..., s:s + chunk], bf[..., s:s + chunk, :]).astype(np.int64)
        out = part if out is None else out + part
    return out


def _torch():
    """torch if importable (a GEMM engine only; the datapath never needs it)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the distribution
        return None
    return torch


def _matmul_int_mm(torch, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m, k = a.shape
    n = b.shape[1]
    mp, kp, np_ = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    ta = torch.from_numpy(a)
    tb = torch.from_numpy(b)
    if (mp, kp) != (m, k):
        ta = torch.nn.functional.pad(ta, (0, kp - k, 0, mp - m))
    if (kp, np_) != (k, n):
        tb = torch.nn.functional.pad(tb, (0, np_ - n, 0, kp - k))
    out = torch._int_mm(ta, tb.contiguous())
    return out[:m, :n].numpy()


def _int_mm_ok(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.ndim == 2 and b.ndim == 2 and a.dtype == np.int8 and b.dtype == np.int8
            and a.shape[1] < INT_MM_MAX_K)


def int_matmul(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int, backend: str = "blas") -> np.ndarray:
    """Exact ``a @ b`` of integer codes (batched over leading dims).

    ``a_max``/``b_max`` bound the operands' magnitudes (from their bit-widths).
    Returns int64, or int32 from ``int_mm`` (which cannot overflow there).
    """
    if backend in ("auto", "int_mm") and _int_mm_ok(a, b):
        torch = _torch()
        if torch is not None and hasattr(torch, "_int_mm"):
            return _matmul_int_mm(torch, np.ascontiguousarray(a), b)
        if backend == "int_mm":
            raise ValueError("GEMM backend 'int_mm' needs torch with torch._int_mm")
    if backend in ("auto", "int_mm", "blas"):
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
    if acc.dtype == np.int32 and acc_bits >= 32:
        return acc, 0
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    over = int(np.count_nonzero((acc < lo) | (acc > hi)))
    return (np.clip(acc, lo, hi) if over else acc), over
