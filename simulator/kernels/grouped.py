"""Kernels of the IGQ-ViT grouped datapath (formulas in `simulator.igq`).

``wide`` kernels return the int64 intermediate that exists before a
boundary's final quantization (LayerNorm ``n*G + B``, softmax
``e * floor(2**62/sum e)``, GELU / quick-GELU Q12, attn@V requantized per row);
`group_quantize` assigns each channel of each instance to a group by integer
comparisons and writes its codes with that group's map.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator import igq
from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.jit import _compile, gelu_q12, ln_normalize, quick_gelu_q12, requantize, row_kernel, saturate
from simulator.kernels.nonlinear import layernorm_row_stats, softmax_row_exp

__all__ = ["group_quantize", "layernorm_wide", "softmax_wide", "gelu_wide", "quick_gelu_wide", "requant_rows"]

_compile(igq.fits_group)
assign_group = _compile(igq.assign_group)
group_code = _compile(igq.group_code)


@row_kernel
def _group_quantize(u, mult, base, exps, lo, hi, codes, gidx):
    """u [B, T, C] (any strides): per instance b and channel c, reduce over T."""
    nb, nt, nc = u.shape
    for b in prange(nb):
        for c in range(nc):
            umax = np.int64(u[b, 0, c])
            umin = umax
            for t in range(1, nt):
                v = np.int64(u[b, t, c])
                umax = max(umax, v)
                umin = min(umin, v)
            g = assign_group(umax, umin, mult, base, exps, lo, hi)
            gidx[b, c] = g
            sh = base - exps[g]
            for t in range(nt):
                codes[b, t, c] = group_code(np.int64(u[b, t, c]), mult, sh, lo, hi)


def group_quantize(u: np.ndarray, gq, out_dtype, rows: bool = False):
    """Grouped codes and group indices of the wide intermediate ``u``.

    ``rows=False``: ``u`` [..., T, C], channels grouped over tokens (indices
    [..., C]). ``rows=True``: ``u`` [..., R, N], rows grouped over their N
    entries (indices [..., R]).
    """
    lead = u.shape[:-2]
    u3 = u.reshape(-1, *u.shape[-2:])
    codes = np.empty(u3.shape, dtype=out_dtype)
    if rows:
        u3, cview = u3.transpose(0, 2, 1), codes.transpose(0, 2, 1)
    else:
        cview = codes
    gidx = np.empty((u3.shape[0], u3.shape[2]), dtype=np.int64)
    _group_quantize(u3, np.int64(gq.mult), np.int64(gq.shift), np.ascontiguousarray(gq.exps, dtype=np.int64),
                    np.int64(gq.lo), np.int64(gq.hi), cview, gidx)
    return codes.reshape(u.shape), gidx.reshape(*lead, gidx.shape[-1])


@row_kernel
def _layernorm_wide(x, eps_q, gmul, bq, out):
    t, d = x.shape
    for i in prange(t):
        s1, recip = layernorm_row_stats(x, i, eps_q)
        for c in range(d):
            out[i, c] = ln_normalize(d * np.int64(x[i, c]) - s1, recip) * gmul[c] + bq[c]


def layernorm_wide(x: np.ndarray, ln) -> np.ndarray:
    """``n_c * G_c + B_c`` (the LayerNorm output before its rounding shift), int64."""
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty(x2.shape, dtype=np.int64)
    _layernorm_wide(x2, np.int64(ln.eps_q), ln.gamma_mult, ln.beta_q, out)
    return out.reshape(x.shape)


@row_kernel
def _softmax_wide(acc, in_mult, in_shift, out):
    r, n = acc.shape
    for i in prange(r):
        recip = softmax_row_exp(acc, i, in_mult, in_shift, out[i])
        for j in range(n):
            out[i, j] = out[i, j] * recip


def softmax_wide(acc: np.ndarray, sm) -> np.ndarray:
    """``e * floor(2**62 / sum e)`` per row (softmax in Q62 before its rounding shift), int64."""
    a2 = acc.reshape(-1, acc.shape[-1])
    out = np.empty(a2.shape, dtype=np.int64)
    _softmax_wide(a2, np.int64(sm.in_mult), np.int64(sm.in_shift), out)
    return out.reshape(acc.shape)


@row_kernel
def _gelu_wide(h, out):
    for i in prange(h.shape[0]):
        for j in range(h.shape[1]):
            out[i, j] = gelu_q12(saturate(np.int64(h[i, j]), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT))


def gelu_wide(h: np.ndarray) -> np.ndarray:
    """GELU of Q12 values, Q12 result (before the output requantization), int64."""
    h2 = h.reshape(-1, h.shape[-1])
    out = np.empty(h2.shape, dtype=np.int64)
    _gelu_wide(h2, out)
    return out.reshape(h.shape)


@row_kernel
def _quick_gelu_wide(h, out):
    for i in prange(h.shape[0]):
        for j in range(h.shape[1]):
            out[i, j] = quick_gelu_q12(saturate(np.int64(h[i, j]), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT))


def quick_gelu_wide(h: np.ndarray) -> np.ndarray:
    """quick-GELU of Q12 values, Q12 result (before the output requantization), int64."""
    h2 = h.reshape(-1, h.shape[-1])
    out = np.empty(h2.shape, dtype=np.int64)
    _quick_gelu_wide(h2, out)
    return out.reshape(h.shape)



@row_kernel
def _requant_rows(acc, mult, shifts, out):
    for i in prange(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[i, j] = requantize(np.int64(acc[i, j]), mult, shifts[i])


def requant_rows(acc: np.ndarray, mult: int, shifts: np.ndarray) -> np.ndarray:
    """``requantize(acc[..., r, :], mult, shifts[..., r])`` without saturation, int64."""
    a2 = acc.reshape(-1, acc.shape[-1])
    out = np.empty(a2.shape, dtype=np.int64)
    _requant_rows(a2, np.int64(mult), np.ascontiguousarray(shifts, dtype=np.int64).reshape(-1), out)
    return out.reshape(acc.shape)
