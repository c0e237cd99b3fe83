"""The operator list of a `QuantizedViT`'s integer graph, as trace records.

One definition shared by both executors, so their traces agree by
construction; shapes are per image (see `simulator.trace` for conventions).
"""

from __future__ import annotations

from simulator.exit_graph import exit_records
from simulator.qvit import QuantizedViT
from simulator.trace import LayerRecord

__all__ = ["static_layers"]


def _linear(name, lin, m, fused_add=None):
    n, k = lin.w_q.shape
    out_bits = lin.out_bits or 32
    recs = [LayerRecord(name=name, kind="linear", m=m, k=k, n=n, a_bits=lin.in_bits, b_bits=lin.w_bits,
                        b_is_weight=True, in_bits=lin.in_bits, out_bits=out_bits,
                        weight_bytes=(n * k * lin.w_bits + 7) // 8 + 4 * n)]
    if fused_add:
        recs.append(LayerRecord(name=fused_add, kind="add", elements=m * n, rows=m,
                                in_bits=lin.res_bits, out_bits=lin.out_bits, fused_into=name))
    return recs


def _ln(name, ln, rows, d):
    return LayerRecord(name=name, kind="layernorm", elements=rows * d, rows=rows,
                       in_bits=ln.in_bits, out_bits=ln.out_bits)


def _decode(name, elements, rows, bits):
    """V-2SF decode (flag -> shift by r) of two-scaled words on the requant unit,
    one element per stored word; see `simulator.two_scaled`."""
    return LayerRecord(name=name, kind="requantize", elements=elements, rows=rows, in_bits=bits,
                       out_bits=bits)


def static_layers(q: QuantizedViT) -> list[LayerRecord]:
    """Every operator of the full-depth graph in execution order."""
    meta = q.meta
    t, d, h = meta["num_tokens"], meta["embed_dim"], meta["num_heads"]
    hd, npatch = meta["head_dim"], meta["num_patches"]
    rb = q.residual_bits
    pdim = q.patch_embed.w_q.shape[1]
    recs = [LayerRecord(name="quantize_input", kind="quantize_input", elements=npatch * pdim,
                        rows=npatch, in_bits=32, out_bits=q.in_bits)]
    recs += _linear("patch_embed", q.patch_embed, npatch)
    recs.append(LayerRecord(name="pos_embed", kind="add", elements=t * d, rows=t, in_bits=rb, out_bits=rb,
                            fused_into="patch_embed"))
    if "scale_predictor" in q.extras:       # ScalePredictor: statistic + per-image multipliers
        from simulator.predicted_scales import predictor_records
        recs += predictor_records(q)
    for i, b in enumerate(q.blocks):
        p = f"blocks.{i}."
        ab = b.a_bits
        recs.append(_ln(p + "norm1", b.norm1, t, d))
        recs += _linear(p + "attn.qkv", b.qkv, t)
        recs.append(LayerRecord(name=p + "attn.qk", kind="matmul", m=t, k=hd, n=t, batch=h, a_bits=ab,
                                b_bits=ab, in_bits=ab, out_bits=32))
        recs.append(LayerRecord(name=p + "attn.softmax", kind="softmax", elements=h * t * t, rows=h * t,
                                in_bits=32, out_bits=b.softmax.out_bits))
        if b.softmax.ratio_shift:
            recs.append(_decode(p + "attn.decode", h * t * t, h * t, b.softmax.out_bits))
        recs.append(LayerRecord(name=p + "attn.av", kind="matmul", m=t, k=t, n=hd, batch=h,
                                a_bits=b.softmax.out_bits, b_bits=ab, in_bits=ab, out_bits=b.av.out_bits))
        recs += _linear(p + "attn.proj", b.proj, t, fused_add=p + "add1")
        recs.append(_ln(p + "norm2", b.norm2, t, d))
        recs += _linear(p + "mlp.fc1", b.fc1, t)
        f = b.fc1.w_q.shape[0]
        recs.append(LayerRecord(name=p + "mlp.gelu", kind="gelu", elements=t * f, rows=t, in_bits=32,
                                out_bits=b.gelu.out_bits))
        if b.gelu.ratio_shift:
            recs.append(_decode(p + "mlp.decode", t * f, t, b.gelu.out_bits))
        recs += _linear(p + "mlp.fc2", b.fc2, t, fused_add=p + "add2")
        recs += exit_records(q, i)
    recs.append(_ln("norm", q.norm, 1, d))
    recs += _linear("head", q.head, 1)
    if "igq" in q.extras:   # IGQ-ViT group assignment and partial-sum combine records
        from simulator.igq import igq_layers
        recs = igq_layers(q, recs)
    return recs
