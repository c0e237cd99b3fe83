"""The IGQ-ViT forward of `FakeQuantExecutor` (torch int64, vectorised).

The same formulas as `simulator.igq_executor` (from `simulator.igq`,
`simulator.int_nonlinear`, `simulator.fixedpoint`), evaluated on tensors.
``nonlinear="float"``: LayerNorm, softmax and GELU are float, and their
outputs are grouped by the same rule on real values (finest group whose
rounded codes do not clip), between the same frozen group scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.vit_float import patchify
from reference.tensor_primitives import isqrt, requantize, round_half_up, saturate
from reference.tensor_primitives import assign_group, group_code
from reference.tensor_primitives import (GELU_FRAC_BITS, GELU_INPUT_LIMIT, LN_RECIP_BITS, SOFTMAX_RECIP_BITS,
                                     exp2_neg, gelu_q12, ln_normalize)

__all__ = ["igq_forward"]


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


def _grouped_linear(ex, name, lin, codes, g, gq, res=None):
    sh = (int(gq.exps[0]) - _t(gq.exps))[g]
    return ex._linear(name, lin, codes << sh.unsqueeze(-2), res=res)


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


def _block(ex, i, b, gb, x, keep):
    pre = f"blocks.{i}."
    h, hd = ex.q.meta["num_heads"], ex.q.meta["head_dim"]
    n1, g1 = _layernorm(ex, b.norm1, gb.norm1, x)
    keep(pre + "norm1", n1), keep(pre + "norm1.groups", g1)
    bsz, t, d = n1.shape
    qkv = _grouped_linear(ex, pre + "attn.qkv", b.qkv, n1, g1, gb.norm1)
    qkv = qkv.reshape(bsz, t, 3, h, hd).permute(2, 0, 3, 1, 4)
    qh, kh, vh = qkv[0], qkv[1], qkv[2]
    keep(pre + "q", qh), keep(pre + "k", kh), keep(pre + "v", vh)
    attn, ga = _softmax(ex, b.softmax, gb.attn, ex._gemm(pre + "attn.qk", qh, kh.transpose(-2, -1)))
    keep(pre + "attn", attn), keep(pre + "attn.groups", ga)
    shifts = b.av.shift + _t(gb.attn.exps)[ga] - int(gb.attn_out.exps[0])
    w = requantize(ex._gemm(pre + "attn.av", attn, vh), b.av.mult, shifts.unsqueeze(-1))
    ao, go = group_quantize(w.transpose(1, 2).reshape(bsz, t, d), gb.attn_out)
    keep(pre + "attn_out", ao), keep(pre + "attn_out.groups", go)
    x = _grouped_linear(ex, pre + "attn.proj", b.proj, ao, go, gb.attn_out, res=x)
    keep(pre + "x_mid", x)
    n2, g2 = _layernorm(ex, b.norm2, gb.norm2, x)
    keep(pre + "norm2", n2), keep(pre + "norm2.groups", g2)
    f1 = _grouped_linear(ex, pre + "mlp.fc1", b.fc1, n2, g2, gb.norm2)
    keep(pre + "fc1", f1)
    g, gg = _gelu(ex, gb.gelu, f1)
    keep(pre + "gelu", g), keep(pre + "gelu.groups", gg)
    x = _grouped_linear(ex, pre + "mlp.fc2", b.fc2, g, gg, gb.gelu, res=x)
    keep(pre + "x_out", x)
    return x


def igq_forward(ex, images: torch.Tensor, codes: dict):
    """The whole forward of an igq `QuantizedViT` on one batch (see `FakeQuantExecutor._forward`)."""
    q, m = ex.q, ex.q.meta

    def keep(name, t):
        codes.setdefault(name, []).append(t)
    p = patchify(images.double(), m["patch_size"])
    x = saturate(round_half_up(p / q.in_scale).long(), *_srange(q.in_bits))
    keep("input", x)
    pt = ex._linear("patch_embed", q.patch_embed, x)
    pos = _t(q.pos_q)
    cls = (_t(q.cls_q) + pos[0]).expand(pt.shape[0], 1, -1)
    x = saturate(torch.cat([cls, pt + pos[1:]], dim=1), *_srange(q.residual_bits))
    keep("x0", x)
    for i, (b, gb) in enumerate(zip(q.blocks, q.extras["igq"])):
        x = _block(ex, i, b, gb, x, keep)
    nf = ex._layernorm(q.norm, x[:, 0])
    keep("norm", nf)
    logits = ex._linear("head", q.head, nf)
    keep("logits", logits)
    return logits
