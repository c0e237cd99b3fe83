"""GEMM output stage: bias, dyadic requantization, fused residual, saturation.

    out[i, j] = saturate(requantize(sat32(acc[i, j] + bias[j]), M[j], k[j])
                         [+ requantize(res[i, j], Mr, kr)], lo, hi)

(TFLite's reference FullyConnected output stage, with per-channel dyadic
multipliers and our round-half-up rule.)
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator.jit import requantize, round_half_up, row_kernel, saturate

__all__ = ["linear_output", "requant_output", "code_dtype", "quantize_patches"]

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


def code_dtype(bits: int):
    """Smallest numpy integer type that stores signed ``bits``-wide codes."""
    return np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32


@row_kernel
def _linear_output(acc, bias, mult, shift, res, res_mult, res_shift, lo, hi, out):
    m, n = acc.shape
    over = 0
    for i in prange(m):
        for j in range(n):
            a = np.int64(acc[i, j]) + bias[j]
            if a < ACC_LO or a > ACC_HI:
                over += 1
            a = saturate(a, ACC_LO, ACC_HI)
            y = requantize(a, mult[j], shift[j])
            if res_mult != 0:
                y += requantize(np.int64(res[i, j]), res_mult, res_shift)
            out[i, j] = saturate(y, lo, hi)
    return over


_NO_RESIDUAL = np.zeros((1, 1), dtype=np.int16)   # the residual stream's dtype (16-bit codes): one specialisation


def _acc32(acc: np.ndarray) -> np.ndarray:
    """``acc`` as C-contiguous int32 when its values fit (every GEMM backend's saturated accumulator:
    int32 from ``int_mm``, int64 from BLAS), else unchanged: one kernel specialisation whichever backend
    ran. A value outside int32 is kept in int64, never wrapped."""
    if acc.dtype != np.int32 and acc.size and (acc.min() < ACC_LO or acc.max() > ACC_HI):
        return np.ascontiguousarray(acc)
    return np.ascontiguousarray(acc, dtype=np.int32)


def linear_output(acc, bias, mult, shift, lo, hi, out_dtype, res=None, res_mult=0, res_shift=0):
    """Apply the output stage to a 2-D accumulator; returns (codes, bias overflows).

    Arguments are passed in one dtype and layout (int32 accumulators when they fit, C-contiguous) and,
    without a residual, with a placeholder of the residual stream's dtype, so the kernel compiles once
    per output dtype, not once per backend or call shape (each parallel specialisation costs 1-2 s of
    numba compilation on a cold start, its serial twin about half: `simulator.jit`)."""
    out = np.empty(acc.shape, dtype=out_dtype)
    r = np.ascontiguousarray(res) if res is not None else _NO_RESIDUAL
    over = _linear_output(_acc32(acc), bias, mult, shift, r, np.int64(res_mult), np.int64(res_shift),
                          np.int64(lo), np.int64(hi), out)
    return out, over


@row_kernel
def _requant_output(acc, mult, shift, lo, hi, out):
    for i in prange(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[i, j] = saturate(requantize(np.int64(acc[i, j]), mult, shift), lo, hi)


def requant_output(acc, mult: int, shift: int, lo: int, hi: int, out_dtype):
    """Per-tensor ``saturate(requantize(acc, M, k))`` of any-shaped acc."""
    a2 = np.ascontiguousarray(acc.reshape(-1, acc.shape[-1]), dtype=np.int64)   # one specialisation
    out = np.empty(a2.shape, dtype=out_dtype)
    _requant_output(a2, np.int64(mult), np.int64(shift), np.int64(lo), np.int64(hi), out)
    return out.reshape(acc.shape)


@row_kernel
def _quantize_patches(images, ph, pw, in_scale, lo, hi, out):
    b, c, h, w = images.shape
    gw = w // pw
    npatch = (h // ph) * gw
    for i in prange(b * npatch):
        n, p = i // npatch, i % npatch
        r0, c0 = (p // gw) * ph, (p % gw) * pw
        j = 0
        for ch in range(c):
            for y in range(ph):
                for x in range(pw):
                    v = np.float64(images[n, ch, r0 + y, c0 + x]) / in_scale
                    out[n, p, j] = saturate(np.int64(round_half_up(v)), lo, hi)
                    j += 1


def quantize_patches(images: np.ndarray, patch_size, in_scale: float, bits: int) -> np.ndarray:
    """Host-side input quantization fused with patchify:
    ``codes[n, p, (c, y, x)] = saturate(round_half_up(float64(pixel) / in_scale))``,
    the conv weight's flattening order; the same IEEE float64 operations the
    fake-quant executor performs, so the codes agree bit for bit."""
    b, c, h, w = images.shape
    ph, pw = patch_size
    out = np.empty((b, (h // ph) * (w // pw), c * ph * pw), dtype=code_dtype(bits))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    _quantize_patches(np.ascontiguousarray(images), ph, pw, np.float64(in_scale), np.int64(lo), np.int64(hi), out)
    return out
