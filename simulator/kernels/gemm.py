"""Exact integer GEMM backends: all return the same accumulators, to the bit.

``int_matmul(a, b, a_max, b_max, backend)`` is ``a @ b`` of integer codes
(batched over leading dims, ``b`` broadcast when it has none). ``a_max`` and
``b_max`` bound the operands' magnitudes (from their bit-widths), so every
bound below is proved from the quantizers, never hoped from the data. With
``bound = K * a_max * b_max`` (K the reduction length), every partial sum of
any summation order has magnitude ``<= bound``. The result is **int32 when
``bound < 2**31``** (no value can leave int32, so nothing to saturate) and
int64 otherwise; every backend returns that same dtype.

Backends (`EXACT_BACKENDS`):

* ``numba``: jitted row kernels, ``prange`` over output rows. For 8-bit codes
  (int8/uint8 ``a``, int8 ``b``) the **pair kernel** `_gemm_pairs`: ``b``'s rows
  are interleaved in pairs so each step adds ``a[i,2h] b[2h,j] + a[i,2h+1]
  b[2h+1,j]`` over a contiguous run of j (the ``pmaddwd`` shape: LLVM emits
  ``vpmaddwd``/``vpdpwssd`` on AVX-512, ``pmaddwd`` on AVX2), in int32. It
  takes ``a`` unsigned: int8 ``a`` enters as ``a + 128`` and the sums start
  at ``-128 * colsum(b)``; a partial sum may wrap int32 (up to ``K * 255 *
  128``), but two's complement addition is exact modulo 2**32 and the final
  value lies in int32 (``bound < 2**31``), so the result is exact. Other
  operands: the **dot kernel** `_gemm_dot`, ``c[i, j] = sum_k a[i, k] bt[j,
  k]`` accumulated in int64 and stored in the result dtype (exact by the same
  modulo argument when that is int32).
* ``int_mm``: oneDNN's int8 x int8 -> int32 GEMM (``torch._int_mm``), one call
  per 2-D slice, ``b`` column-major; rows padded to >= 17 and K, N to
  multiples of 8 with zeros (which add nothing), a padded slice computed into
  a reused scratch and copied out, so the result is always C-contiguous. Exact: int32 cannot overflow while ``K * 2**14 < 2**31``.
  Unsigned 8-bit ``a`` (softmax codes) enters as ``a - 128`` (int8) and
  ``128 * colsum(b)`` is added back: exact in int32 while
  ``K * 255 * 128 < 2**31`` (K < 2**16). Needs int8 ``b``.
* ``blas_f32``: float32 BLAS (torch's) on the codes, exact because every
  partial sum is an integer of magnitude below 2**24 (float32's 24-bit
  significand): K is split into chunks of at most ``(2**24 - 1) // (a_max *
  b_max)``, each chunk's GEMM is exact whatever its summation order, and the
  chunk results are summed in the integer result dtype. Needs
  ``a_max * b_max < 2**24``.
* ``blas_f64``: the same in float64 with 2**53 (one chunk for any 8-bit ViT).
  Needs ``a_max * b_max < 2**53``.
* ``blas``: kept for scripts: ``blas_f32`` where one product fits 2**24, else
  ``blas_f64``.
* ``auto``: the fastest backend for the GEMM's shape class, measured once on
  this machine and cached (`simulator.kernels.gemm_choice`).

A backend that cannot take a product (``int_mm`` on codes wider than 8 bits,
``blas_f32`` when one product reaches 2**24) hands it to the next one that
can, in the order ``int_mm -> blas_f32 -> blas_f64 -> numba``; ``numba`` takes
everything. torch is imported lazily, only when a torch backend runs: the one
place the simulator touches torch, as an exact GEMM engine.

`saturate_acc` then applies the accumulator width (int32 unless the hardware
says otherwise): values outside it are saturated and counted, never wrapped.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator.jit import row_kernel
from simulator.kernels import gemm_choice

__all__ = ["int_matmul", "saturate_acc", "BACKENDS", "EXACT_BACKENDS", "result_dtype", "applicable",
           "torch_facts", "default_chooser"]

EXACT_BACKENDS = ("numba", "int_mm", "blas_f32", "blas_f64")
BACKENDS = ("auto", *EXACT_BACKENDS)
ALIASES = {"blas": "blas_f32"}
FALLBACK = ("int_mm", "blas_f32", "blas_f64", "numba")
INT32_EXACT = 1 << 31
INT_MM_MAX_K = 1 << 16
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53


@row_kernel
def _gemm_dot(a, bt, out):
    """``out[p, i, j] = sum_k a[p, i, k] * bt[q, j, k]``, q = p (or 0 when bt is shared): any integers."""
    nb, m, k = a.shape
    n = bt.shape[1]
    shared = bt.shape[0] == 1
    for t in prange(nb * m):
        p, i = t // m, t % m
        q = 0 if shared else p
        for j in range(n):
            s = 0
            for kk in range(k):
                s += np.int64(a[p, i, kk]) * np.int64(bt[q, j, kk])
            out[p, i, j] = s


@row_kernel
def _gemm_pairs(au, bp, init, out):
    """``out[p, i, j] = init[q, j] + sum_h au[p, i, 2h] bp[q, h, 2j] + au[p, i, 2h+1] bp[q, h, 2j+1]``, int32.

    ``au`` uint8 [P, M, 2H], ``bp`` int8 [P or 1, H, 2N]: ``b``'s rows taken in pairs and interleaved
    (`_pair_rows`), so each step adds two products per output from adjacent bytes -- the
    ``pmaddwd`` shape (AVX2 / AVX-512 ``vpmaddwd``, ``vpdpwssd`` with VNNI), vectorised over j.
    Sums wrap modulo 2**32; the caller guarantees the exact result fits int32 (module docstring).
    """
    nb, m, k2 = au.shape
    n = out.shape[2]
    shared = bp.shape[0] == 1
    for t in prange(nb * m):
        p, i = t // m, t % m
        q = 0 if shared else p
        acc = init[q].copy()
        for h in range(k2 // 2):
            a0 = np.int32(au[p, i, 2 * h])
            a1 = np.int32(au[p, i, 2 * h + 1])
            for j in range(n):
                acc[j] += a0 * np.int32(bp[q, h, 2 * j]) + a1 * np.int32(bp[q, h, 2 * j + 1])
        for j in range(n):
            out[p, i, j] = acc[j]


def result_dtype(k: int, a_max: int, b_max: int):
    """int32 when ``k * a_max * b_max < 2**31`` (no sum can leave int32), else int64."""
    return np.int32 if k * max(a_max, 1) * max(b_max, 1) < INT32_EXACT else np.int64


def _torch():
    """torch if importable (a GEMM engine only; the datapath never needs it)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the distribution
        return None
    return torch


def torch_facts() -> dict:
    """torch's version and intra-op thread count (part of the machine key of `gemm_choice`)."""
    torch = _torch()
    return {} if torch is None else {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def applicable(backend: str, a: np.ndarray, b: np.ndarray, a_max: int, b_max: int) -> bool:
    """Whether ``backend`` computes this product exactly (else it hands it on, see the docstring)."""
    prod = max(a_max, 1) * max(b_max, 1)
    if backend == "numba":
        return True
    if backend in ("blas_f32", "blas_f64"):
        return _torch() is not None and prod < (F32_EXACT if backend == "blas_f32" else F64_EXACT)
    if backend == "int_mm":
        torch = _torch()
        return (torch is not None and hasattr(torch, "_int_mm") and b.dtype == np.int8
                and a.dtype in (np.int8, np.uint8) and a.shape[-1] < INT_MM_MAX_K)
    raise ValueError(f"unknown GEMM backend {backend!r}; expected one of {BACKENDS}")


def _batched(a: np.ndarray, b: np.ndarray):
    """``a`` as [P, M, K] and ``b`` as [P or 1, K, N] (views where possible), and the output shape."""
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if b.ndim == 2:                                # a weight shared by the batch: one taller GEMM
        return a.reshape(1, -1, k), b.reshape(1, k, n), (*lead, m, n)
    a3 = (a if a.shape[:-2] == lead else np.broadcast_to(a, (*lead, m, k)).copy()).reshape(-1, m, k)
    b3 = (b if b.shape[:-2] == lead else np.broadcast_to(b, (*lead, k, n)).copy()).reshape(-1, k, n)
    return a3, b3, (*lead, m, n)


def _pair_rows(b3: np.ndarray) -> np.ndarray:
    """[P, K, N] -> [P, ceil(K/2), 2N] with ``out[p, h, 2j + e] = b[p, 2h + e, j]`` (a zero row pads odd K)."""
    nb, k, n = b3.shape
    if k % 2:
        b3 = np.concatenate([b3, np.zeros((nb, 1, n), dtype=b3.dtype)], axis=1)
    return np.ascontiguousarray(b3.reshape(nb, -1, 2, n).transpose(0, 1, 3, 2)).reshape(nb, -1, 2 * n)


def _run_numba(a3, b3, dtype):
    """8-bit operands (uint8/int8 a, int8 b): the pair kernel, with int8 ``a`` entering as ``a + 128``
    (uint8) and the sums starting from ``-128 * colsum(b)`` -- exact, as the result fits int32 (``result_dtype``),
    so int32 wrap-around of any partial sum cancels. Other operands: the dot kernel."""
    nb, m, k = a3.shape
    if b3.dtype == np.int8 and a3.dtype in (np.int8, np.uint8) and dtype == np.int32:
        au = a3.view(np.uint8) ^ np.uint8(0x80) if a3.dtype == np.int8 else a3
        if k % 2:
            au = np.concatenate([au, np.zeros((nb, m, 1), dtype=np.uint8)], axis=2)
        out = np.empty((nb, m, b3.shape[2]), dtype=np.int32)
        init = (-128 * b3.sum(axis=1, dtype=np.int32) if a3.dtype == np.int8
                else np.zeros((b3.shape[0], b3.shape[2]), dtype=np.int32))
        _gemm_pairs(np.ascontiguousarray(au), _pair_rows(b3), init, out)
        return out
    out = np.empty((nb, m, b3.shape[2]), dtype=dtype)
    _gemm_dot(np.ascontiguousarray(a3), np.ascontiguousarray(b3.swapaxes(-1, -2)), out)
    return out


def _aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size].view(dtype).reshape(shape)


def _for_torch(x: np.ndarray, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    """``x`` [P, r, c] as a 64-byte aligned C-contiguous array, zero-padded to [P, rows, cols].

    Buffers handed to torch are numpy's: numpy advises transparent huge pages for large arrays, so
    a fresh 64 MB accumulator costs a few page faults, not 16k (7 ms instead of 32 ms of first
    touch, measured). oneDNN's int8 GEMM runs ~20x slower on a ``b`` that is not 64-byte aligned
    (measured on AVX-512 VNNI), and numpy only aligns to 16.
    """
    rows, cols = rows or x.shape[1], cols or x.shape[2]
    if x.shape[1:] == (rows, cols) and x.flags.c_contiguous and x.ctypes.data % 64 == 0:
        return x
    out = _aligned_empty((x.shape[0], rows, cols), x.dtype)
    if x.shape[1:] != (rows, cols):
        out[...] = 0
    out[:, :x.shape[1], :x.shape[2]] = x
    return out


def _run_blas(a3, b3, dtype, a_max, b_max, float_bits):
    torch = _torch()
    limit = F32_EXACT if float_bits == 32 else F64_EXACT
    chunk = (limit - 1) // (max(a_max, 1) * max(b_max, 1))
    fdt = np.float32 if float_bits == 32 else np.float64
    nb, m, k = a3.shape
    pieces = -(-k // chunk)
    step = -(-k // pieces)                         # equal chunks, each <= chunk
    af = torch.from_numpy(_for_torch(a3.astype(fdt)))
    bt = b3.swapaxes(1, 2)
    bf = torch.from_numpy(_for_torch(bt.astype(fdt, order="C"))).transpose(1, 2)   # b column-major
    buf = _aligned_empty((nb, m, b3.shape[2]), fdt)
    out = None
    for s in range(0, k, step):
        torch.matmul(af[..., s:s + step], bf[..., s:s + step, :], out=torch.from_numpy(buf))
        out = buf.astype(dtype) if out is None else np.add(out, buf, out=out, casting="unsafe")
    return out


def _run_int_mm(a3, b3, dtype):
    """One ``torch._int_mm`` per slice, ``b`` passed column-major (oneDNN's faster layout, measured)."""
    torch = _torch()
    nb, m, k = a3.shape
    n = b3.shape[2]
    mp, kp, np_ = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    unsigned = a3.dtype == np.uint8
    if unsigned:                                   # a - 128 as int8; 128 * colsum(b) added back below
        a3 = (a3 ^ np.uint8(0x80)).view(np.int8)
    ta = torch.from_numpy(_for_torch(a3, mp, kp))
    bt = _for_torch(b3.swapaxes(1, 2), np_, kp)    # [P, N, K]: the columns of b
    tbt = torch.from_numpy(bt)
    out = _aligned_empty((nb, m, n), np.int32)
    padded = (mp, np_) != (m, n)
    scratch = _aligned_empty((mp, np_), np.int32) if padded else None   # cache-hot, reused per slice
    tout = torch.from_numpy(scratch if padded else out)
    for p in range(nb):
        torch._int_mm(ta[p], tbt[0 if bt.shape[0] == 1 else p].t(), out=tout if padded else tout[p])
        if padded:
            out[p] = scratch[:m, :n]
    if unsigned:
        out += 128 * bt[:, :n].sum(axis=2, dtype=np.int32)[:, None, :]
    return out if dtype == np.int32 else out.astype(dtype)


def _run(backend: str, a3, b3, a_max, b_max, dtype):
    if backend == "numba":
        return _run_numba(a3, b3, dtype)
    if backend == "int_mm":
        return _run_int_mm(a3, b3, dtype)
    return _run_blas(a3, b3, dtype, a_max, b_max, 32 if backend == "blas_f32" else 64)


def _resolve(backend: str, a, b, a_max, b_max) -> str:
    """The explicit backend, or the next applicable one in `FALLBACK` order."""
    backend = ALIASES.get(backend, backend)
    if backend not in EXACT_BACKENDS:
        raise ValueError(f"unknown GEMM backend {backend!r}; expected one of {BACKENDS}")
    for name in FALLBACK[FALLBACK.index(backend):]:
        if applicable(name, a, b, a_max, b_max):
            return name
    return "numba"  # pragma: no cover - numba is always applicable


_chooser: gemm_choice.BackendChooser | None = None


def default_chooser() -> gemm_choice.BackendChooser:
    """The process's `gemm_choice.BackendChooser` (cache file of this machine), made on first use."""
    global _chooser
    if _chooser is None:
        _chooser = gemm_choice.BackendChooser.for_this_machine(torch_facts)
    return _chooser


def int_matmul(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int, backend: str = "auto",
               record: dict | None = None, chooser: gemm_choice.BackendChooser | None = None) -> np.ndarray:
    """Exact ``a @ b`` of integer codes; int32 when ``K * a_max * b_max < 2**31``, else int64.

    ``record[shape class] = backend used`` when a dict is given; ``chooser``
    (default: `default_chooser`) decides ``auto``.
    """
    a3, b3, shape = _batched(a, b)
    dtype = result_dtype(a.shape[-1], a_max, b_max)
    cls = gemm_choice.shape_class(a3.shape, b3.shape, a.dtype, b.dtype, a_max * b_max)
    if backend == "auto":
        cands = [n for n in EXACT_BACKENDS if applicable(n, a3, b3, a_max, b_max)]
        small = (a3[:1, :min(a3.shape[1], 17)], b3[:1])

        def runner(name):
            return (lambda: _run(name, *small, a_max, b_max, dtype),
                    lambda: _run(name, a3, b3, a_max, b_max, dtype))
        macs = a3.shape[0] * a3.shape[1] * a3.shape[2] * b3.shape[2]
        name, out = (chooser or default_chooser()).pick(cls, {n: runner(n) for n in cands}, macs)
    else:
        name = _resolve(backend, a3, b3, a_max, b_max)
        out = _run(name, a3, b3, a_max, b_max, dtype)
    if record is not None:
        record[cls] = name
    return out.reshape(shape)


def saturate_acc(acc: np.ndarray, acc_bits: int = 32) -> tuple[np.ndarray, int]:
    """Clamp to the signed ``acc_bits`` range; returns (acc, number saturated)."""
    if acc.dtype == np.int32 and acc_bits >= 32:
        return acc, 0
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    over = int(np.count_nonzero((acc < lo) | (acc > hi)))
    return (np.clip(acc, lo, hi) if over else acc), over
