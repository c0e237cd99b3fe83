"""The torch integer stages of the fake-quant op set (`reference.fakequant_ops`).

Work on int64 tensors of codes and float64 tensors that hold exact integers
(GEMMs run in float64 or int64, exact while |acc| < 2**53, which the code
widths guarantee), applying the very fixed-point primitives of
`simulator.fixedpoint` / `simulator.int_nonlinear` vectorised over tensors
(`reference.tensor_primitives`): the exact GEMM, the linear output stage,
integer LayerNorm, softmax and GELU. Each equals its numba kernel in
`simulator.kernels` code for code (tested).
"""

from __future__ import annotations

import numpy as np
import torch

from reference.tensor_primitives import isqrt, requantize, saturate
from reference.tensor_primitives import (SOFTMAX_RECIP_BITS, LN_RECIP_BITS, exp2_neg, gelu_q12, ln_affine, ln_normalize, softmax_scale_codes)

__all__ = ["exact_int_matmul", "linear_output_stage", "layernorm_stage", "softmax_stage", "gelu_stage",
           "ACC_LO", "ACC_HI"]

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


def exact_int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of integer-valued tensors, exactly (int64, or int32 from int_mm).

    The cheapest exact engine for the operands' actual magnitudes (measured,
    one pass each): oneDNN int8 ``torch._int_mm`` for 2-D products of int8-range
    codes (int32 cannot overflow for K < 2**17); float32 while every partial
    sum stays below 2**24 (K * max|a| * max|b|); float64 below 2**53; else an
    int64 matmul.
    """
    amax, bmax = int(a.abs().max()) if a.numel() else 0, int(b.abs().max()) if b.numel() else 0
    k = a.shape[-1]
    lead = a.shape[:-1]
    if (b.dim() == 2 and hasattr(torch, "_int_mm") and k < (1 << 17) and k % 8 == 0 and b.shape[1] % 8 == 0
            and a.numel() and int(a.min()) >= -128 and amax <= 127
            and int(b.min()) >= -128 and bmax <= 127):
        a2 = a.reshape(-1, k).to(torch.int8)
        m = a2.shape[0]
        if m <= 16:
            a2 = torch.nn.functional.pad(a2, (0, 0, 0, 17 - m))
        b8 = b if b.dtype == torch.int8 and b.is_contiguous() else b.to(torch.int8).contiguous()
        return torch._int_mm(a2, b8)[:m].reshape(*lead, b.shape[1])   # int32: exact, promotes on use
    bound = k * max(amax, 1) * max(bmax, 1)
    if bound < (1 << 24):
        return (a.float() @ b.float()).int()          # |sums| < 2**24: exact, and inside int32
    if bound < (1 << 53):
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


def layernorm_stage(x, eps_q, gamma_mult, beta_q, out_shift, lo, hi):
    """Integer LayerNorm over the last axis (`simulator.int_nonlinear`)."""
    d = x.shape[-1]
    s1 = x.sum(-1, keepdim=True)
    v = d * (x * x).sum(-1, keepdim=True) - s1 * s1
    std = isqrt(v + eps_q)
    std = std + (std < 1)
    recip = (1 << LN_RECIP_BITS) // std
    return ln_affine(ln_normalize(d * x - s1, recip), gamma_mult, beta_q, out_shift, lo, hi)


def softmax_stage(acc, in_mult, in_shift, out_bits):
    """Integer softmax of each row (`simulator.int_nonlinear`)."""
    t = requantize(acc - acc.amax(-1, keepdim=True), in_mult, in_shift)
    e = exp2_neg(-t)
    recip = (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)
    return softmax_scale_codes(e, recip, out_bits)


def gelu_stage(h, out_mult, out_shift, lo, hi):
    """Integer GELU of Q12 values, requantized to codes."""
    return saturate(requantize(gelu_q12(h), out_mult, out_shift), lo, hi)
