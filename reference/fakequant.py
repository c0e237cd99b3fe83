"""The torch integer stages of the fake-quant op set (`reference.fakequant_ops`).

Work on int64 tensors of codes (stages) and on GEMMs whose engine is chosen
from the operands' value ranges so that every partial sum is exact
(`exact_int_matmul`: int8 ``torch._int_mm`` into int32, float32 K-chunks of
bound <= 2**24, float64 below 2**53, int64), applying the very fixed-point primitives of
`simulator.fixedpoint` / `simulator.int_nonlinear` vectorised over tensors
(`reference.tensor_primitives`): the exact GEMM, the linear output stage,
integer LayerNorm, softmax and GELU. Each equals its numba kernel in
`simulator.kernels` code for code (tested).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from reference.tensor_primitives import isqrt, requantize, saturate
from reference.tensor_primitives import (SOFTMAX_RECIP_BITS, LN_RECIP_BITS, exp2_neg, gelu_q12, ln_affine, ln_normalize, softmax_scale_codes)

__all__ = ["exact_int_matmul", "value_range", "int8_gemm_is_faster", "linear_output_stage", "layernorm_stage", "layernorm_moments",
           "layernorm_recip", "layernorm_apply", "softmax_stage", "gelu_stage",
           "ACC_LO", "ACC_HI"]

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


_NARROW = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767)}
F32_EXACT = 1 << 24          # every integer of magnitude <= 2**24 is a float32
F64_EXACT = 1 << 53          # ... <= 2**53 a float64
INT_MM_MAX_K = 1 << 15       # int8 (offset) GEMM into int32: K * (128*128 + 383*128) < 2**31


def value_range(t: torch.Tensor) -> tuple[int, int]:
    """``(lo, hi)`` bounding every value of ``t``: its dtype's range when that is 8 or 16 bits
    (no pass over the data), else the measured min and max (``(0, 0)`` when empty)."""
    if t.dtype in _NARROW:
        return _NARROW[t.dtype]
    if not t.numel():
        return 0, 0
    return int(t.min()), int(t.max())


def _float32_is_ieee() -> bool:
    """float32 GEMMs are plain IEEE (no reduced-precision bf16 / tf32 inner products allowed)."""
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return (torch.get_float32_matmul_precision() == "highest"
            and getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee"))


@functools.lru_cache(maxsize=None)
def int8_gemm_is_faster() -> bool:
    """Is oneDNN's int8 ``torch._int_mm`` faster than a float32 GEMM on this CPU? Measured once per
    process on a 512x384x384 product, best of 3 (it is with VNNI / AMX; without them oneDNN
    has no fast int8 path and ``_int_mm`` can be 40x slower than float32)."""
    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    a8 = torch.randint(-128, 128, (512, 384), dtype=torch.int8, generator=g)
    b8 = torch.randint(-128, 128, (384, 384), dtype=torch.int8, generator=g)
    af, bf = a8.float(), b8.float()

    def best(f):
        f()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)
    try:
        return best(lambda: torch._int_mm(a8, b8)) < best(lambda: af @ bf)
    except RuntimeError:         # no int8 GEMM kernel for this CPU / build
        return False


def _int8_matmul(a: torch.Tensor, b8: torch.Tensor, lo: int) -> torch.Tensor:
    """``a @ b8`` in int32 through ``torch._int_mm`` for codes ``a`` in ``[lo, lo + 255]``,
    ``-128 <= lo`` and ``lo + 255 <= 383`` (the caller checks ``[lo, hi]`` inside ``[-128, 255]``).

    ``a`` is shifted into int8 by ``c = lo + 128`` (``0 <= c <= 383``; 0 for int8 codes) and the
    product corrected by ``c * colsum(b8)``; every partial sum is bounded by ``K * (128*128 +
    383*128) < 2**31`` for ``K < 2**15``, so int32 is exact."""
    k, n = b8.shape
    lead = a.shape[:-1]
    a8, c = _shift_to_int8(a, lo)
    a2 = a8.reshape(-1, k)
    m = a2.shape[0]
    if m <= 16:                                 # _int_mm wants more than 16 rows
        a2 = torch.nn.functional.pad(a2, (0, 0, 0, 17 - m))
    acc = torch._int_mm(a2.contiguous(), b8)[:m]
    if c:
        acc += c * b8.sum(0, dtype=torch.int32)
    return acc.reshape(*lead, n)


def _shift_to_int8(a: torch.Tensor, lo: int) -> tuple[torch.Tensor, int]:
    """``(a - c)`` as int8 and ``c = lo + 128``, for codes ``a`` in ``[lo, lo + 255]`` (one pass; none for int8)."""
    c = lo + 128
    if a.dtype == torch.int8 and c == 0:
        return a, 0
    if a.dtype == torch.uint8 and c == 128:
        return (a ^ 0x80).view(torch.int8), c                # a - 128
    return (a - c).to(torch.int8), c


def _padded(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[P, r, c] zero-padded to [P, rows, cols], contiguous (a view when nothing pads)."""
    r, c = t.shape[-2:]
    return torch.nn.functional.pad(t, (0, cols - c, 0, rows - r)) if (r, c) != (rows, cols) else t.contiguous()


def _int8_batched_matmul(a: torch.Tensor, b8: torch.Tensor, lo: int) -> torch.Tensor:
    """``a @ b8`` in int32 for batched operands (the same leading dims, e.g. attention's ``q k^T`` and
    ``attn @ v``): one ``torch._int_mm`` per slice, with `_int8_matmul`'s shift ``c = lo + 128`` of
    ``a`` and its bound (exact in int32 for ``K < 2**15``). ``_int_mm`` wants more than 16 rows and K, N
    multiples of 8: zero rows / columns pad the operands (zeros add nothing) and are cut off; ``b``
    goes in column-major (its transpose contiguous), oneDNN's faster layout (measured)."""
    lead, (m, k), n = a.shape[:-2], a.shape[-2:], b8.shape[-1]
    a8, c = _shift_to_int8(a, lo)
    mp, kp, np_ = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    a3 = _padded(a8.reshape(-1, m, k), mp, kp)
    b3 = b8.reshape(-1, k, n)
    bt = _padded(b3.transpose(1, 2), np_, kp)                  # [P, N, K]: the columns of b
    out = torch.empty((a3.shape[0], mp, np_), dtype=torch.int32)
    for p in range(a3.shape[0]):
        torch._int_mm(a3[p], bt[p].t(), out=out[p])
    acc = out[:, :m, :n]
    if c:
        acc = acc + c * b3.sum(1, dtype=torch.int32)[:, None, :]
    return acc.reshape(*lead, m, n)


def _float32_matmul(a: torch.Tensor, b: torch.Tensor, chunk: int, total: int) -> torch.Tensor:
    """``a @ b`` exactly by float32 GEMMs over K-chunks of at most ``chunk`` terms, each chunk's
    bound ``chunk * max|a| * max|b| <= 2**24`` (all partial sums are float32 integers, whatever
    the BLAS summation order). One chunk: the float32 result; several: their sum in int32 if the
    whole bound ``total < 2**31``, else in int64."""
    k = a.shape[-1]
    if chunk >= k:
        return a.float() @ b.float()
    out = None
    for s in range(0, k, chunk):
        part = a[..., s:s + chunk].float() @ b[..., s:s + chunk, :].float()
        part = part.int() if total < (1 << 31) else part.long()
        out = part if out is None else out.add_(part)
    return out


def exact_int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of integer-valued tensors, exactly: int32 (``|acc| < 2**31`` proved), float32
    holding integers (``|acc| <= 2**24`` proved) or int64; ``.long()`` gives the integers.

    Engines, from the operands' value ranges (`value_range`: free for 8/16-bit dtypes):
    oneDNN int8 ``torch._int_mm`` for ``b`` of int8 codes and ``a`` codes spanning at most 256 values
    inside ``[-128, 255]`` -- a 2-D ``b`` (`_int8_matmul`) or batched operands of the same leading dims
    (`_int8_batched_matmul`, one call per slice) -- where it is faster than float32 (`int8_gemm_is_faster`);
    float32 BLAS in K-chunks of bound ``<= 2**24`` (`_float32_matmul`); float64 below 2**53;
    else an int64 matmul.
    """
    k = a.shape[-1]
    alo, ahi = value_range(a)
    blo, bhi = value_range(b)
    if (b.dim() == 2 and b.dtype == torch.int8 and ahi - alo <= 255 and -128 <= alo and ahi <= 255 and 0 < k < INT_MM_MAX_K
            and k % 8 == 0 and b.shape[1] % 8 == 0 and a.numel() and int8_gemm_is_faster()):
        return _int8_matmul(a, b, alo)
    if (a.dim() >= 3 and b.dim() == a.dim() and a.shape[:-2] == b.shape[:-2] and b.dtype == torch.int8
            and ahi - alo <= 255 and -128 <= alo and ahi <= 255 and 0 < k < INT_MM_MAX_K and a.numel() and b.numel()
            and int8_gemm_is_faster()):
        return _int8_batched_matmul(a, b, alo)
    term = max(-alo, ahi, 1) * max(-blo, bhi, 1)        # bound of one product
    total = k * term
    if term <= F32_EXACT and (F32_EXACT // term >= min(k, 64) or total <= F32_EXACT) and _float32_is_ieee():
        return _float32_matmul(a, b, F32_EXACT // term, total)
    if total < F64_EXACT:
        return (a.double() @ b.double()).long()
    return a.long() @ b.long()


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def linear_output_stage(acc, bias, mult, shift, res, res_mult, res_shift, lo, hi):
    """Bias (int32-saturated, overflows counted), dyadic requantization, fused
    residual, saturation; returns (codes, number of saturated accumulators)."""
    acc = acc + bias
    over = ((acc < ACC_LO) | (acc > ACC_HI)).sum()
    y = requantize(saturate(acc, ACC_LO, ACC_HI), mult, shift)
    if res is not None:
        y = y + requantize(res, res_mult, res_shift)
    return saturate(y, lo, hi), over


def layernorm_moments(x):
    """Row sums of a LayerNorm input: ``(S1, V)``, ``S1 = sum x``, ``V = D * sum x**2 - S1**2`` (= D**2 var)."""
    d = x.shape[-1]
    s1 = x.sum(-1, keepdim=True)
    return s1, d * (x * x).sum(-1, keepdim=True) - s1 * s1


def layernorm_recip(v, eps_q):
    """``floor(2**48 / max(isqrt(V + eps_q), 1))`` per row."""
    std = isqrt(v + eps_q)
    std = std + (std < 1)
    return (1 << LN_RECIP_BITS) // std


def layernorm_apply(x, s1, recip, gamma_mult, beta_q, out_shift, lo, hi):
    """Output codes from the row sums and reciprocals (`simulator.int_nonlinear`)."""
    return ln_affine(ln_normalize(x.shape[-1] * x - s1, recip), gamma_mult, beta_q, out_shift, lo, hi)


def layernorm_stage(x, eps_q, gamma_mult, beta_q, out_shift, lo, hi):
    """Integer LayerNorm over the last axis (`simulator.int_nonlinear`)."""
    s1, v = layernorm_moments(x)
    return layernorm_apply(x, s1, layernorm_recip(v, eps_q), gamma_mult, beta_q, out_shift, lo, hi)


def softmax_stage(acc, in_mult, in_shift, out_bits):
    """Integer softmax of each row (`simulator.int_nonlinear`)."""
    t = requantize(acc - acc.amax(-1, keepdim=True), in_mult, in_shift)
    e = exp2_neg(-t)
    recip = (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)
    return softmax_scale_codes(e, recip, out_bits)


def gelu_stage(h, out_mult, out_shift, lo, hi):
    """Integer GELU of Q12 values, requantized to codes."""
    return saturate(requantize(gelu_q12(h), out_mult, out_shift), lo, hi)
