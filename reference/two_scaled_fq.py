"""Fake-quant (torch) side of the V-2SF two-scaled codes of TSPTQ-ViT.

The integer mode evaluates the very encode/decode functions of
`simulator.two_scaled` on int64 tensors, so its words equal the numba
kernels' (`simulator.kernels.two_scaled`). The float-nonlinear mode takes
the float softmax / GELU value ``v`` and encodes
``round_half_up(v / s_fine)`` and ``round_half_up(v / (s_fine * 2**r))`` with
the same `v2sf_encode`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.tensor_primitives import requantize, round_half_up, saturate
from reference.tensor_primitives import (GELU_FRAC_BITS, GELU_INPUT_LIMIT, SOFTMAX_RECIP_BITS, exp2_neg, gelu_q12,
                                         quick_gelu_q12)
from reference.tensor_primitives import gelu_v2sf_code, softmax_v2sf_code, v2sf_decode, v2sf_encode

__all__ = ["softmax_words", "gelu_words", "softmax_operand", "gelu_operand", "activation_words", "decode_operand"]


def softmax_words(sm, acc: torch.Tensor, nonlinear: str) -> torch.Tensor:
    """Two-scaled softmax words of a ``q k^T`` accumulator (``sm.ratio_shift > 0``)."""
    if nonlinear == "float":
        p = torch.softmax(acc.double() * sm.in_scale, dim=-1)
        fine = round_half_up(p * 2.0 ** sm.fine_exp).long()
        coarse = round_half_up(p * 2.0 ** (sm.fine_exp - sm.ratio_shift)).long()
        return v2sf_encode(fine, coarse, sm.out_bits, 0)
    t = requantize(acc - acc.amax(-1, keepdim=True), sm.in_mult, sm.in_shift)
    e = exp2_neg(-t)
    recip = (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)
    return softmax_v2sf_code(e, recip, sm.out_bits, sm.fine_exp, sm.ratio_shift)


def gelu_words(g, h: torch.Tensor, nonlinear: str) -> torch.Tensor:
    """Two-scaled GELU words of fc1's Q12 output (``g.ratio_shift > 0``)."""
    if nonlinear == "float":
        y = F.gelu(h.double() * 2.0 ** -GELU_FRAC_BITS)
        fine = round_half_up(y / g.out_scale).long()
        coarse = round_half_up(y / (g.out_scale * 2.0 ** g.ratio_shift)).long()
        return v2sf_encode(fine, coarse, g.out_bits, 1)
    h = saturate(h, -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
    return gelu_v2sf_code(gelu_q12(h), g.out_mult, g.out_shift, g.out_bits, g.ratio_shift)


def softmax_operand(sm, words: torch.Tensor) -> torch.Tensor:
    """attn·V operand at the fine scale (the words themselves when single-scaled)."""
    return v2sf_decode(words, sm.out_bits, sm.ratio_shift, 0) if sm.ratio_shift else words


def gelu_operand(g, words: torch.Tensor) -> torch.Tensor:
    """fc2 operand at the fine scale (the codes themselves when single-scaled)."""
    return v2sf_decode(words, g.out_bits, g.ratio_shift, 1) if g.ratio_shift else words


_FLOAT = {"gelu_erf": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
          "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


def activation_words(function: str, g, h: torch.Tensor, nonlinear: str) -> torch.Tensor:
    """Two-scaled words of any graph activation of fc1's Q12 output (``g.ratio_shift > 0``);
    integer: the formula of `simulator.kernels.two_scaled.activation_words`."""
    if nonlinear == "float":
        y = _FLOAT[function](h.double() * 2.0 ** -GELU_FRAC_BITS)
        fine = round_half_up(y / g.out_scale).long()
        coarse = round_half_up(y / (g.out_scale * 2.0 ** g.ratio_shift)).long()
        return v2sf_encode(fine, coarse, g.out_bits, 1)
    h = saturate(h, -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
    y = quick_gelu_q12(h) if function == "quick_gelu" else gelu_q12(h)
    return gelu_v2sf_code(y, g.out_mult, g.out_shift, g.out_bits, g.ratio_shift)


def decode_operand(qz, words: torch.Tensor) -> torch.Tensor:
    """GEMM operand at the fine scale of a ``two_scaled`` quantizer's words."""
    return v2sf_decode(words.long(), qz.bits, qz.ratio_shift, int(qz.signed))
