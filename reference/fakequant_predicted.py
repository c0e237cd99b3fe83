"""The fake-quant executor's blocks for a ScalePredictor model (per-image scales).

Torch twin of `simulator.predicted_forward`: the predictor (sorted |x0| codes
-> `normalise_statistic` -> `horner_log2`, `simulator.scale_predictor`) and the
per-image multipliers (`simulator.predicted_scales.block_params`) are the same
operator-only source, vectorised over the batch by broadcasting ([B, 1, n]
multipliers). ``executor.log2_override`` replaces the prediction (the oracle).
In ``nonlinear="float"`` mode LayerNorm/softmax/GELU use the effective
per-image float scales ``s_static * 2**g`` that the integer gains stand for.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reference.tensor_primitives import isqrt, requantize, round_half_up, saturate
from reference.tensor_primitives import (GELU_FRAC_BITS, GELU_INPUT_LIMIT, LN_RECIP_BITS, SOFTMAX_RECIP_BITS,
                                     exp2_neg, gelu_q12, ln_affine, ln_normalize, softmax_scale_codes)
from simulator.predicted_scales import N_PER_BLOCK, block_params
from reference.tensor_primitives import (gain_mantissa, gain_shift, horner_log2, normalise_statistic,
                                       statistic_rank)

__all__ = ["predict_log2", "predicted_blocks"]

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def predict_log2(x0: torch.Tensor, sp) -> tuple[torch.Tensor, torch.Tensor]:
    """(statistic [B], predicted log2 ratios [B, depth*7], Q15) from x0 codes [B, T, D]."""
    a = x0.reshape(len(x0), -1).abs()
    rank = statistic_rank(a.shape[1], sp.permille)
    stat = torch.sort(a, dim=1).values[:, rank]
    x = normalise_statistic(stat, sp.center, sp.norm_shift)[:, None]
    c = _t(sp.coeffs)
    return stat, horner_log2(x, c[:, 0], c[:, 1], c[:, 2], c[:, 3])


def _factor(g: torch.Tensor) -> torch.Tensor:
    """The real factor an integer gain stands for: ``mantissa * 2**(-15 - q)``."""
    return gain_mantissa(g).double() * torch.exp2((-15 - gain_shift(g)).double())


def _linear(ex, name, lin, x, mult, shift, res=None):
    acc = ex._gemm(name, x, _t(lin.w_q).T) + _t(lin.bias_q)
    ex._count(name, int(((acc < ACC_LO) | (acc > ACC_HI)).sum()))
    acc = saturate(acc, ACC_LO, ACC_HI)
    y = requantize(acc, mult[:, None, :], shift[:, None, :])
    if res is not None:
        y = y + requantize(res, lin.res_mult, lin.res_shift)
    if lin.out_bits == 0:
        return saturate(y, -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)
    return saturate(y, *_srange(lin.out_bits))


def _layernorm(ex, ln, x, gamma, beta, shift, g):
    lo, hi = _srange(ln.out_bits)
    if ex.nonlinear == "float":
        y = F.layer_norm(x.double() * ln.in_scale, (x.shape[-1],), torch.as_tensor(ln.gamma),
                         torch.as_tensor(ln.beta), ln.eps)
        s_out = ln.out_scale / _factor(g)[:, :, None]
        return saturate(round_half_up(y / s_out).long(), lo, hi)
    d = x.shape[-1]
    s1 = x.sum(-1, keepdim=True)
    v = d * (x * x).sum(-1, keepdim=True) - s1 * s1
    std = isqrt(v + ln.eps_q)
    std = std + (std < 1)
    n = ln_normalize(d * x - s1, (1 << LN_RECIP_BITS) // std)
    return ln_affine(n, gamma[:, None, :], beta[:, None, :], shift[:, :, None], lo, hi)


def _softmax(ex, sm, acc, mult, shift, g):
    if ex.nonlinear == "float":
        p = torch.softmax(acc.double() * sm.in_scale * _factor(g)[:, :, None, None], dim=-1)
        return saturate(round_half_up(p * (1 << sm.out_bits)).long(), 0, (1 << sm.out_bits) - 1)
    t = requantize(acc - acc.amax(-1, keepdim=True), mult[:, :, None, None], shift[:, :, None, None])
    e = exp2_neg(-t)
    return softmax_scale_codes(e, (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True), sm.out_bits)


def _gelu(ex, gq, h, mult, shift, g):
    lo, hi = _srange(gq.out_bits)
    if ex.nonlinear == "float":
        y = F.gelu(h.double() * 2.0 ** -GELU_FRAC_BITS)
        return saturate(round_half_up(y / (gq.out_scale / _factor(g)[:, :, None])).long(), lo, hi)
    return saturate(requantize(gelu_q12(h), mult[:, :, None], shift[:, :, None]), lo, hi)


def predicted_blocks(ex, x: torch.Tensor, keep) -> torch.Tensor:
    """Blocks, final norm and head on residual codes ``x`` [B, T, D]; returns logit codes."""
    q, m = ex.q, ex.q.meta
    override = getattr(ex, "log2_override", None)
    d = _t(override) if override is not None else predict_log2(x, q.extras["scale_predictor"])[1]
    h, hd = m["num_heads"], m["head_dim"]
    for i, b in enumerate(q.blocks):
        pre = f"blocks.{i}."
        db = d[:, i * N_PER_BLOCK:(i + 1) * N_PER_BLOCK]
        p = block_params(b, db, _t, lambda xs: torch.cat(xs, dim=-1))
        n1 = _layernorm(ex, b.norm1, x, p.n1_gamma, p.n1_beta, p.n1_shift, -db[:, 0:1])
        keep(pre + "norm1", n1)
        bsz, t, dim = n1.shape
        qkv = _linear(ex, pre + "attn.qkv", b.qkv, n1, p.qkv_mult, p.qkv_shift)
        qkv = qkv.reshape(bsz, t, 3, h, hd).permute(2, 0, 3, 1, 4)
        qh, kh, vh = qkv[0], qkv[1], qkv[2]
        keep(pre + "q", qh), keep(pre + "k", kh), keep(pre + "v", vh)
        s = ex._gemm(pre + "attn.qk", qh, kh.transpose(-2, -1))
        attn = _softmax(ex, b.softmax, s, p.sm_mult, p.sm_shift, db[:, 1:2] + db[:, 2:3])
        keep(pre + "attn", attn)
        o = requantize(ex._gemm(pre + "attn.av", attn, vh), p.av_mult[:, :, None, None],
                       p.av_shift[:, :, None, None])
        o = saturate(o, *_srange(b.av.out_bits)).transpose(1, 2).reshape(bsz, t, dim)
        keep(pre + "attn_out", o)
        x = _linear(ex, pre + "attn.proj", b.proj, o, p.proj_mult, p.proj_shift, res=x)
        keep(pre + "x_mid", x)
        n2 = _layernorm(ex, b.norm2, x, p.n2_gamma, p.n2_beta, p.n2_shift, -db[:, 5:6])
        keep(pre + "norm2", n2)
        f1 = _linear(ex, pre + "mlp.fc1", b.fc1, n2, p.fc1_mult, p.fc1_shift)
        keep(pre + "fc1", f1)
        g = _gelu(ex, b.gelu, f1, p.gelu_mult, p.gelu_shift, -db[:, 6:7])
        keep(pre + "gelu", g)
        x = _linear(ex, pre + "mlp.fc2", b.fc2, g, p.fc2_mult, p.fc2_shift, res=x)
        keep(pre + "x_out", x)
    nf = ex._layernorm(q.norm, x[:, 0])
    keep("norm", nf)
    logits = ex._linear("head", q.head, nf)
    keep("logits", logits)
    return logits
