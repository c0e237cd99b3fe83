"""IGQ-ViT's grouped stages in torch (int64, vectorised): the fake-quant side of `simulator.igq`.

Group assignment (`group_quantize`: finest group whose codes do not clip,
the formulas of `simulator.igq` through `reference.tensor_primitives`) and
the grouped LayerNorm, softmax and GELU stages that `reference.igq_graph_ops`
runs for the graph's ``grouped`` quantizers. ``nonlinear="float"``:
LayerNorm, softmax and GELU are float, and their outputs are grouped by the
same rule on real values (`group_quantize_float`), between the same frozen
group scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.tensor_primitives import isqrt, requantize, round_half_up, saturate
from reference.tensor_primitives import assign_group, group_code
from reference.tensor_primitives import (GELU_FRAC_BITS, GELU_INPUT_LIMIT, LN_RECIP_BITS, SOFTMAX_RECIP_BITS,
                                     exp2_neg, gelu_q12, ln_normalize)

__all__ = ["group_quantize", "group_quantize_float"]


def _t(a) -> torch.Tensor:
    return torch.as_tensor(a).long()


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def group_quantize(u: torch.Tensor, gq, dim: int = -2):
    """Grouped codes of the wide int64 intermediate ``u``, reducing over ``dim``."""
    g = assign_group(u.amax(dim), u.amin(dim), gq.mult, gq.shift, gq.exps_tuple, gq.lo, gq.hi)
    sh = (gq.shift - _t(gq.exps))[g].unsqueeze(dim)
    return group_code(u, gq.mult, sh, gq.lo, gq.hi), g


def group_quantize_float(y: torch.Tensor, gq, dim: int = -2):
    """Float-nonlinear twin: codes ``saturate(round_half_up(y / (scale * 2**-e_g)))``."""
    def codes_at(v, e):
        return round_half_up(v / gq.scale * 2.0 ** e).long()
    ymax, ymin = y.amax(dim), y.amin(dim)
    n = gq.groups
    g = torch.full(ymax.shape, n - 1, dtype=torch.long)
    for j in range(n - 2, -1, -1):
        e = int(gq.exps[j])
        fit = (codes_at(ymax, e) <= gq.hi) & (codes_at(ymin, e) >= gq.lo)
        g = g + (j - g) * fit
    scale = (2.0 ** _t(gq.exps).double())[g].unsqueeze(dim)
    return saturate(round_half_up(y / gq.scale * scale).long(), gq.lo, gq.hi), g


def _layernorm(ex, ln, gq, x):
    if ex.nonlinear == "float":
        y = F.layer_norm(x.double() * ln.in_scale, (x.shape[-1],), torch.as_tensor(ln.gamma),
                         torch.as_tensor(ln.beta), ln.eps)
        return group_quantize_float(y, gq)
    d = x.shape[-1]
    s1 = x.sum(-1, keepdim=True)
    std = isqrt(d * (x * x).sum(-1, keepdim=True) - s1 * s1 + ln.eps_q)
    std = std + (std < 1)
    n = ln_normalize(d * x - s1, (1 << LN_RECIP_BITS) // std)
    return group_quantize(n * _t(ln.gamma_mult) + _t(ln.beta_q), gq)


def _softmax(ex, sm, gq, acc):
    if ex.nonlinear == "float":
        return group_quantize_float(torch.softmax(acc.double() * sm.in_scale, dim=-1), gq, dim=-1)
    e = exp2_neg(-requantize(acc - acc.amax(-1, keepdim=True), sm.in_mult, sm.in_shift))
    return group_quantize(e * ((1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)), gq, dim=-1)


def _gelu(ex, gq, h):
    if ex.nonlinear == "float":
        return group_quantize_float(F.gelu(h.double() * 2.0 ** -GELU_FRAC_BITS), gq)
    return group_quantize(gelu_q12(saturate(h, -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)), gq)
