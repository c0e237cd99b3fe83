"""Integer softmax, GELU and LayerNorm kernels (row loops over the formulas of
`simulator.int_nonlinear`; see its docstring for the derivations)."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from simulator.int_nonlinear import GELU_INPUT_LIMIT, LN_RECIP_BITS, SOFTMAX_RECIP_BITS
from simulator.jit import (exp2_neg, gelu_q12, isqrt, ln_affine, ln_normalize, requantize, row_kernel,
                           saturate, softmax_scale_codes)

__all__ = ["int_softmax", "int_gelu", "int_layernorm", "softmax_row_exp", "layernorm_row_stats"]

row_helper = numba.njit(cache=True, nogil=True, inline="always")   # inlined into the row kernels


@row_helper
def softmax_row_exp(acc, i, in_mult, in_shift, e):
    """Row ``i``: ``e[j] = 2**-u_j`` (Q30) of the max-subtracted logits; returns
    ``floor(2**62 / sum(e))``. Shared by every softmax output encoding."""
    n = acc.shape[1]
    m = np.int64(acc[i, 0])
    for j in range(1, n):
        m = max(m, np.int64(acc[i, j]))
    s = np.int64(0)
    for j in range(n):
        e[j] = exp2_neg(-requantize(np.int64(acc[i, j]) - m, in_mult, in_shift))
        s += e[j]
    return (np.int64(1) << SOFTMAX_RECIP_BITS) // s


@row_helper
def layernorm_row_stats(x, i, eps_q):
    """Row ``i``: ``(S1, floor(2**48 / max(isqrt(D*sum x**2 - S1**2 + eps_q), 1)))``."""
    d = x.shape[1]
    s1 = np.int64(0)
    s2 = np.int64(0)
    for c in range(d):
        v = np.int64(x[i, c])
        s1 += v
        s2 += v * v
    std = max(isqrt(d * s2 - s1 * s1 + eps_q), np.int64(1))
    return s1, (np.int64(1) << LN_RECIP_BITS) // std


@row_kernel
def _softmax_rows(acc, in_mult, in_shift, out_bits, out):
    r, n = acc.shape
    for i in prange(r):
        e = np.empty(n, dtype=np.int64)
        recip = softmax_row_exp(acc, i, in_mult, in_shift, e)
        for j in range(n):
            out[i, j] = softmax_scale_codes(e[j], recip, out_bits)


def int_softmax(acc: np.ndarray, in_mult: int, in_shift: int, out_bits: int) -> np.ndarray:
    """Row softmax of an int accumulator -> unsigned codes at scale ``2**-out_bits``."""
    a2 = acc.reshape(-1, acc.shape[-1])
    out = np.empty(a2.shape, dtype=np.uint8 if out_bits <= 8 else np.uint16)
    _softmax_rows(a2, np.int64(in_mult), np.int64(in_shift), np.int64(out_bits), out)
    return out.reshape(acc.shape)


@row_kernel
def _gelu(h, out_mult, out_shift, lo, hi, out):
    for i in prange(h.shape[0]):
        for j in range(h.shape[1]):
            x = saturate(np.int64(h[i, j]), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
            out[i, j] = saturate(requantize(gelu_q12(x), out_mult, out_shift), lo, hi)


def int_gelu(h: np.ndarray, out_mult: int, out_shift: int, lo: int, hi: int, out_dtype) -> np.ndarray:
    """GELU of Q12 values ``h`` then requantization to signed codes."""
    h2 = h.reshape(-1, h.shape[-1])
    out = np.empty(h2.shape, dtype=out_dtype)
    _gelu(h2, np.int64(out_mult), np.int64(out_shift), np.int64(lo), np.int64(hi), out)
    return out.reshape(h.shape)


@row_kernel
def _layernorm(x, eps_q, gmul, bq, out_shift, lo, hi, out):
    t, d = x.shape
    for i in prange(t):
        s1, recip = layernorm_row_stats(x, i, eps_q)
        for c in range(d):
            n = ln_normalize(d * np.int64(x[i, c]) - s1, recip)
            out[i, c] = ln_affine(n, gmul[c], bq[c], out_shift, lo, hi)


def int_layernorm(x: np.ndarray, eps_q: int, gamma_mult, beta_q, out_shift: int, lo: int, hi: int,
                  out_dtype) -> np.ndarray:
    """LayerNorm over the last axis of residual codes -> signed output codes."""
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty(x2.shape, dtype=out_dtype)
    _layernorm(x2, np.int64(eps_q), gamma_mult, beta_q, np.int64(out_shift), np.int64(lo), np.int64(hi), out)
    return out.reshape(x.shape)
