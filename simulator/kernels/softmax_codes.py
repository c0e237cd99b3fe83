"""Kernels of the static recipe's post-softmax encodings (`simulator.softmax_codes`):
calibrated power-of-two uniform codes, log2 codes (FQ-ViT's Log-Int-Softmax),
and the decode of log2 codes into the ``attn @ V`` operand ``2**(S - c)``.

Row loops over the integer softmax's ``e`` / ``recip``
(`simulator.kernels.nonlinear.softmax_row_exp`, shared by every encoding).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator.jit import log2_code, log2_operand, row_kernel, softmax_pow2_codes
from simulator.kernels.nonlinear import softmax_row_exp

__all__ = ["int_softmax_pow2", "int_softmax_log2", "log2_decode"]


@row_kernel
def _pow2_rows(acc, in_mult, in_shift, fine_exp, bits, out):
    r, n = acc.shape
    for i in prange(r):
        e = np.empty(n, dtype=np.int64)
        recip = softmax_row_exp(acc, i, in_mult, in_shift, e)
        for j in range(n):
            out[i, j] = softmax_pow2_codes(e[j], recip, fine_exp, bits)


@row_kernel
def _log2_rows(acc, in_mult, in_shift, bits, out):
    r, n = acc.shape
    for i in prange(r):
        e = np.empty(n, dtype=np.int64)
        recip = softmax_row_exp(acc, i, in_mult, in_shift, e)
        for j in range(n):
            out[i, j] = log2_code(e[j], recip, bits)


@row_kernel
def _decode(codes, bits, out):
    for i in prange(codes.shape[0]):
        for j in range(codes.shape[1]):
            out[i, j] = log2_operand(np.int64(codes[i, j]), bits)


def _dtype(bits: int):
    return np.uint8 if bits <= 8 else np.uint16


def int_softmax_pow2(acc: np.ndarray, in_mult: int, in_shift: int, fine_exp: int, bits: int) -> np.ndarray:
    """Row softmax of an int accumulator -> unsigned ``bits`` codes at scale ``2**-fine_exp``."""
    a2 = np.ascontiguousarray(acc).reshape(-1, acc.shape[-1])
    out = np.empty(a2.shape, dtype=_dtype(bits))
    _pow2_rows(a2, np.int64(in_mult), np.int64(in_shift), np.int64(fine_exp), np.int64(bits), out)
    return out.reshape(acc.shape)


def int_softmax_log2(acc: np.ndarray, in_mult: int, in_shift: int, bits: int) -> np.ndarray:
    """Row softmax of an int accumulator -> ``bits``-wide log2 codes (top code = zero)."""
    a2 = np.ascontiguousarray(acc).reshape(-1, acc.shape[-1])
    out = np.empty(a2.shape, dtype=_dtype(bits))
    _log2_rows(a2, np.int64(in_mult), np.int64(in_shift), np.int64(bits), out)
    return out.reshape(acc.shape)


def log2_decode(codes: np.ndarray, bits: int) -> np.ndarray:
    """``attn @ V`` operand ``[c < top] 2**(S - c)`` (int32, at scale ``2**-S``) of log2 codes."""
    c2 = np.ascontiguousarray(codes).reshape(-1, codes.shape[-1])
    out = np.empty(c2.shape, dtype=np.int32)
    _decode(c2, np.int64(bits), out)
    return out.reshape(codes.shape)
