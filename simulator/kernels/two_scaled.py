"""Kernels of the two-scaled (V-2SF) datapath: softmax and GELU that write
two-scaled words, and the decode of those words into GEMM operands.

Formulas: `simulator.two_scaled` (encode/decode) on top of
`simulator.int_nonlinear` (integer softmax and GELU). The executor calls
`softmax_stage` / `gelu_stage` / `softmax_operand` / `gelu_operand`, which
fall back to the plain single-scaled kernels when ``ratio_shift == 0``.
The graph op set (`simulator.int_ops`) calls `softmax_stage`,
`activation_words` (any activation function of the graph) and
`decode_operand` (a ``two_scaled`` quantizer's words -> GEMM operand).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.jit import (gelu_q12, gelu_v2sf_code, quick_gelu_q12, row_kernel, saturate, softmax_v2sf_code,
                          v2sf_decode)
from simulator.kernels.nonlinear import int_gelu, int_softmax, softmax_row_exp
from simulator.two_scaled import operand_max

__all__ = ["softmax_stage", "gelu_stage", "softmax_operand", "gelu_operand", "activation_words", "decode_operand"]


@row_kernel
def _softmax_v2sf_rows(acc, in_mult, in_shift, bits, fine_exp, ratio_shift, out):
    r, n = acc.shape
    for i in prange(r):
        e = np.empty(n, dtype=np.int64)
        recip = softmax_row_exp(acc, i, in_mult, in_shift, e)
        for j in range(n):
            out[i, j] = softmax_v2sf_code(e[j], recip, bits, fine_exp, ratio_shift)


@row_kernel
def _gelu_v2sf(h, mult, shift, bits, ratio_shift, out):
    for i in prange(h.shape[0]):
        for j in range(h.shape[1]):
            x = saturate(np.int64(h[i, j]), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
            out[i, j] = gelu_v2sf_code(gelu_q12(x), mult, shift, bits, ratio_shift)


@row_kernel
def _quick_gelu_v2sf(h, mult, shift, bits, ratio_shift, out):
    for i in prange(h.shape[0]):
        for j in range(h.shape[1]):
            x = saturate(np.int64(h[i, j]), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
            out[i, j] = gelu_v2sf_code(quick_gelu_q12(x), mult, shift, bits, ratio_shift)


@row_kernel
def _decode(codes, bits, ratio_shift, signed, out):
    for i in prange(codes.shape[0]):
        for j in range(codes.shape[1]):
            out[i, j] = v2sf_decode(np.int64(codes[i, j]), bits, ratio_shift, signed)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def softmax_stage(sm, acc: np.ndarray) -> np.ndarray:
    """Softmax codes of a ``q k^T`` accumulator: plain or two-scaled words (uint8/16)."""
    if not sm.ratio_shift:
        return int_softmax(acc, sm.in_mult, sm.in_shift, sm.out_bits)
    a2 = _rows(acc)
    out = np.empty(a2.shape, dtype=np.uint8 if sm.out_bits <= 8 else np.uint16)
    _softmax_v2sf_rows(a2, np.int64(sm.in_mult), np.int64(sm.in_shift), np.int64(sm.out_bits),
                       np.int64(sm.fine_exp), np.int64(sm.ratio_shift), out)
    return out.reshape(acc.shape)


def gelu_stage(g, h: np.ndarray, lo: int, hi: int, out_dtype) -> np.ndarray:
    """GELU codes of Q12 values: plain signed codes or two-scaled words."""
    if not g.ratio_shift:
        return int_gelu(h, g.out_mult, g.out_shift, lo, hi, out_dtype)
    h2 = _rows(h)
    out = np.empty(h2.shape, dtype=np.uint8 if g.out_bits <= 8 else np.uint16)
    _gelu_v2sf(h2, np.int64(g.out_mult), np.int64(g.out_shift), np.int64(g.out_bits),
               np.int64(g.ratio_shift), out)
    return out.reshape(h.shape)


def _operand(codes: np.ndarray, bits: int, ratio_shift: int, signed: int) -> np.ndarray:
    c2 = _rows(codes)
    out = np.empty(c2.shape, dtype=np.int32)
    _decode(c2, np.int64(bits), np.int64(ratio_shift), np.int64(signed), out)
    return out.reshape(codes.shape)


def softmax_operand(sm, codes: np.ndarray) -> tuple[np.ndarray, int]:
    """(GEMM operand at the fine scale, its magnitude bound) of softmax codes."""
    if not sm.ratio_shift:
        return codes, (1 << sm.out_bits) - 1
    return _operand(codes, sm.out_bits, sm.ratio_shift, 0), operand_max(sm.out_bits, sm.ratio_shift, 0)


def gelu_operand(g, codes: np.ndarray) -> tuple[np.ndarray, int]:
    """(GEMM operand at the fine scale, its magnitude bound) of GELU codes."""
    if not g.ratio_shift:
        return codes, 1 << (g.out_bits - 1)
    return _operand(codes, g.out_bits, g.ratio_shift, 1), operand_max(g.out_bits, g.ratio_shift, 1)


def activation_words(function: str, g, h: np.ndarray) -> np.ndarray:
    """Two-scaled words (``g.ratio_shift > 0``) of an activation of Q12 values ``h``:
    ``gelu_v2sf_code(f_q12(h), M, k, b, r)`` with ``f_q12`` the integer erf-GELU
    (``gelu_erf``, ``gelu_tanh``) or quick-GELU (`simulator.int_activations`)."""
    h2 = _rows(np.ascontiguousarray(h))
    out = np.empty(h2.shape, dtype=np.uint8 if g.out_bits <= 8 else np.uint16)
    kern = _quick_gelu_v2sf if function == "quick_gelu" else _gelu_v2sf
    kern(h2, np.int64(g.out_mult), np.int64(g.out_shift), np.int64(g.out_bits), np.int64(g.ratio_shift), out)
    return out.reshape(h.shape)


def decode_operand(qz, words: np.ndarray) -> np.ndarray:
    """GEMM operand at the fine scale of a ``two_scaled`` quantizer's words (int32)."""
    return _operand(np.ascontiguousarray(words), qz.bits, qz.ratio_shift, int(qz.signed))
