"""A shape-only `QuantizedViT`: the integer graph of an architecture with
uniform bit-widths and zero codes, for costing a model before any checkpoint
or image exists (``simulate cost``).

Weight arrays are zero-strided broadcasts (no memory), so even ViT-L at 384
costs nothing to build; `simulator.graph.static_layers` reads only shapes and
bit-widths from it, so its trace is the one a real run would record.
"""

from __future__ import annotations

import numpy as np

from simulator.qvit import Block, GeluQ, LayerNormQ, Linear, QuantizedViT, Requant, SoftmaxQ

__all__ = ["shape_only_qvit"]


def _linear(n: int, k: int, w_bits: int, in_bits: int, out_bits: int, res_bits: int = 0) -> Linear:
    z = np.zeros(n, dtype=np.int64)
    return Linear(w_q=np.broadcast_to(np.int8(0), (n, k)), bias_q=z, w_scale=np.ones(n), w_bits=w_bits,
                  in_bits=in_bits, in_scale=1.0, out_mult=z, out_shift=z, out_bits=out_bits,
                  out_scale=np.ones(n), res_bits=res_bits)


def _ln(d: int, in_bits: int, out_bits: int) -> LayerNormQ:
    z = np.zeros(d, dtype=np.int64)
    return LayerNormQ(eps_q=0, gamma_mult=z, beta_q=z, out_shift=0, in_bits=in_bits, in_scale=1.0,
                      out_bits=out_bits, out_scale=1.0, gamma=np.ones(d), beta=np.zeros(d), eps=1e-6)


def shape_only_qvit(arch: dict, w_bits: int, a_bits: int, residual_bits: int = 16, edge_bits: int = 8,
                    model_name: str = "model") -> QuantizedViT:
    """The graph of ``arch`` (`reference.vit_float.vit_arch` keys) with uniform widths."""
    d, f = arch["embed_dim"], arch["mlp_hidden"]
    ew, ea = edge_bits or w_bits, edge_bits or a_bits
    rb = residual_bits
    pdim = arch["in_chans"] * arch["patch_size"][0] * arch["patch_size"][1]
    block = Block(norm1=_ln(d, rb, a_bits), qkv=_linear(3 * d, d, w_bits, a_bits, a_bits),
                  softmax=SoftmaxQ(in_mult=0, in_shift=0, in_scale=1.0, out_bits=a_bits),
                  av=Requant(mult=0, shift=0, out_bits=a_bits, out_scale=1.0),
                  proj=_linear(d, d, w_bits, a_bits, rb, rb), norm2=_ln(d, rb, a_bits),
                  fc1=_linear(f, d, w_bits, a_bits, 0), gelu=GeluQ(out_mult=0, out_shift=0, out_bits=a_bits, out_scale=1.0),
                  fc2=_linear(d, f, w_bits, a_bits, rb, rb), q_scale=1.0, k_scale=1.0, v_scale=1.0, a_bits=a_bits)
    t = arch["num_tokens"]
    meta = {"model": model_name, **arch, "recipe": "shapes", "label": f"shapes_w{w_bits}a{a_bits}",
            "w_bits": w_bits, "a_bits": a_bits, "residual_bits": rb, "edge_bits": edge_bits}
    return QuantizedViT(meta=meta, in_scale=1.0, in_bits=ea, patch_embed=_linear(d, pdim, ew, ea, rb),
                        x0_scale=1.0, cls_q=np.zeros(d, np.int64), pos_q=np.zeros((t, d), np.int64),
                        blocks=(block,) * arch["depth"], norm=_ln(d, rb, ea),
                        head=_linear(arch["num_classes"], d, ew, ea, rb), logit_scale=1.0, residual_bits=rb)
