"""The IGQ-ViT block forward of `IntegerExecutor` (numba kernels, integers only).

`IntegerExecutor._forward` hands a `QuantizedViT` with ``extras["igq"]`` to
`igq_forward`; the patch embed, residual stream, head and every static
operator are the executor's own methods, the grouped boundaries are
`simulator.kernels.grouped`. Boundary names are the static ones plus
``<site>.groups`` (the group index of every channel / attention row per
image), so bit-exactness covers the assignment too.
"""

from __future__ import annotations

import numpy as np

from simulator.fixedpoint import saturate
from simulator.kernels.grouped import gelu_wide, group_quantize, layernorm_wide, requant_rows, softmax_wide
from simulator.kernels.output_stage import code_dtype, quantize_patches

__all__ = ["igq_forward", "grouped_linear"]


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def grouped_linear(ex, name, lin, codes, gidx, gq, res=None):
    """Linear layer on channel-grouped codes: operand ``code << (exps[0] - exps[g(c)])``
    (= per-group partial sums combined by shifts), then the static output stage."""
    exps = np.asarray(gq.exps, dtype=np.int64)
    sh = (exps[0] - exps)[gidx]                                  # [B, C]
    x = codes.astype(np.int64) << sh[:, None, :]
    a_max = (1 << (lin.in_bits - 1)) << int(exps[0])            # shifted operands are wider
    return ex._linear(name, lin, x, res=res, a_max=a_max)


def _block(ex, i, b, gb, x, keep):
    pre = f"blocks.{i}."
    bsz, t, d = x.shape
    h, hd = ex.q.meta["num_heads"], ex.q.meta["head_dim"]
    ab = b.a_bits
    n1, g1 = group_quantize(layernorm_wide(x, b.norm1), gb.norm1, code_dtype(ab))
    keep(pre + "norm1", n1), keep(pre + "norm1.groups", g1)
    qkv = grouped_linear(ex, pre + "attn.qkv", b.qkv, n1, g1, gb.norm1)
    qkv = qkv.reshape(bsz, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
    qh, kh, vh = qkv[0], qkv[1], qkv[2]
    keep(pre + "q", qh), keep(pre + "k", kh), keep(pre + "v", vh)
    s = ex._gemm(pre + "attn.qk", qh, kh.transpose(0, 1, 3, 2), ab, ab)
    attn, ga = group_quantize(softmax_wide(s, b.softmax), gb.attn,
                              np.uint8 if b.softmax.out_bits <= 8 else np.uint16, rows=True)
    keep(pre + "attn", attn), keep(pre + "attn.groups", ga)
    o = ex._gemm(pre + "attn.av", attn, vh, b.softmax.out_bits, ab, a_signed=False)
    ea = np.asarray(gb.attn.exps, dtype=np.int64)
    w = requant_rows(o, b.av.mult, b.av.shift + ea[ga] - int(gb.attn_out.exps[0]))
    w = np.ascontiguousarray(w.transpose(0, 2, 1, 3)).reshape(bsz, t, d)
    ao, go = group_quantize(w, gb.attn_out, code_dtype(b.av.out_bits))
    keep(pre + "attn_out", ao), keep(pre + "attn_out.groups", go)
    x = grouped_linear(ex, pre + "attn.proj", b.proj, ao, go, gb.attn_out, res=x)
    keep(pre + "x_mid", x)
    n2, g2 = group_quantize(layernorm_wide(x, b.norm2), gb.norm2, code_dtype(ab))
    keep(pre + "norm2", n2), keep(pre + "norm2.groups", g2)
    f1 = grouped_linear(ex, pre + "mlp.fc1", b.fc1, n2, g2, gb.norm2)
    keep(pre + "fc1", f1)
    g, gg = group_quantize(gelu_wide(f1), gb.gelu, code_dtype(b.gelu.out_bits))
    keep(pre + "gelu", g), keep(pre + "gelu.groups", gg)
    x = grouped_linear(ex, pre + "mlp.fc2", b.fc2, g, gg, gb.gelu, res=x)
    keep(pre + "x_out", x)
    return x


def igq_forward(ex, images: np.ndarray, keep):
    """The whole forward of an igq `QuantizedViT` on one batch (see `IntegerExecutor._forward`)."""

    q, m = ex.q, ex.q.meta
    x = quantize_patches(images, m["patch_size"], q.in_scale, q.in_bits)
    keep("input", x)
    pt = ex._linear("patch_embed", q.patch_embed, x).astype(np.int64)
    bsz = pt.shape[0]
    x = np.empty((bsz, pt.shape[1] + 1, pt.shape[2]), dtype=np.int64)
    x[:, 0] = q.cls_q + q.pos_q[0]
    x[:, 1:] = pt + q.pos_q[1:]
    x = saturate(x, *_srange(q.residual_bits)).astype(code_dtype(q.residual_bits))
    keep("x0", x)
    for i, (b, gb) in enumerate(zip(q.blocks, q.extras["igq"])):
        x = _block(ex, i, b, gb, x, keep)
    nf = ex._layernorm(q.norm, np.ascontiguousarray(x[:, 0]))
    keep("norm", nf)
    logits = ex._linear("head", q.head, nf)
    keep("logits", logits)
    return logits
