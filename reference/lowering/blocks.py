"""Lowering rules of timm's transformer blocks: the pre-norm `Block`, the
post-norm `ResPostBlock` and the two parallel blocks of
``timm.models.vision_transformer``.

Residual adds are fused into the linear that produces the branch output
(``x_mid = x + proj(...)``, ``x_out = x_mid + fc2(...)``) unless the branch
ends in something else (``ResPostBlock`` ends in a LayerNorm: an Add op).
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from timm.layers import LayerScale
from timm.models.vision_transformer import Block, ParallelScalingBlock, ParallelThingsBlock, ResPostBlock

from reference.lowering.builder import Builder, Scope, lowering_rule
from reference.lowering.layers import attention_core, checked_scale
from simulator import ir

__all__: list[str] = []


@lowering_rule(Block)
def _block(ctx: Builder, s: Scope, x: str) -> str:
    """``x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))``."""
    p = s.path + "."
    a = ctx.lower(s, "attn", ctx.lower(s, "norm1", x))
    a = ctx.lower(s, "drop_path1", ctx.lower(s, "ls1", a))
    x = ctx.residual_add(x, a, p + "x_mid", p + "add1")
    y = ctx.lower(s, "mlp", ctx.lower(s, "norm2", x))
    y = ctx.lower(s, "drop_path2", ctx.lower(s, "ls2", y))
    return ctx.residual_add(x, y, p + "x_out", p + "add2")


@lowering_rule(ResPostBlock)
def _res_post_block(ctx: Builder, s: Scope, x: str) -> str:
    """``x = x + norm1(attn(x)); x = x + norm2(mlp(x))`` (norm after the branch)."""
    p = s.path + "."
    a = ctx.lower(s, "drop_path1", ctx.lower(s, "norm1", ctx.lower(s, "attn", x)))
    x = ctx.residual_add(x, a, p + "x_mid", p + "add1")
    y = ctx.lower(s, "drop_path2", ctx.lower(s, "norm2", ctx.lower(s, "mlp", x)))
    return ctx.residual_add(x, y, p + "x_out", p + "add2")


@lowering_rule(ParallelThingsBlock)
def _parallel_things_block(ctx: Builder, s: Scope, x: str) -> str:
    """``x = x + sum_j attns[j](x); x = x + sum_j ffns[j](x)``; each branch
    is a Sequential(norm, attn|mlp, ls, drop_path) and its last linear takes
    the running sum as fused residual."""
    p = s.path + "."
    for group, out in (("attns", "x_mid"), ("ffns", "x_out")):
        branches = s.children_of(group)
        acc = x
        for j, (branch, path) in enumerate(branches):
            y = ctx.lower_module(branch, path, x)
            name = p + out if j == len(branches) - 1 else f"{path}.sum"
            acc = ctx.residual_add(acc, y, name, f"{path}.add")
        x = acc
    return x


def _layer_scale_gamma(s: Scope, name: str, dim: int) -> np.ndarray:
    ls = s.child(name)
    if type(ls) is LayerScale:
        return ls.gamma.detach().double().cpu().numpy()
    if type(ls) is nn.Identity:
        return np.ones(dim)
    raise s.error(f"expected LayerScale or Identity, got {type(ls).__name__}", name)


def _out_projections(s: Scope, dim: int):
    """((W_attn, b_attn), (W_mlp, b_mlp)): the fused ``out_proj`` acting on
    ``cat(attn, mlp)`` splits by columns into the two separate projections."""
    if s.module.out_proj is not None:
        w, b = s.linear("out_proj")
        return (w[:, :dim], b), (w[:, dim:], np.zeros_like(b))
    return s.linear("attn_out_proj"), s.linear("mlp_out_proj")


@lowering_rule(ParallelScalingBlock)
def _parallel_scaling_block(ctx: Builder, s: Scope, x: str) -> str:
    """ViT-22B block: ``y = in_proj(in_norm(x))`` split into mlp | q | k | v;
    ``x = x + ls(out_attn(attention(q, k, v)) + out_mlp(act(mlp)))``.
    ``mlp_bias`` folds into in_proj's bias; ``ls`` into both out projections."""
    m, p = s.module, s.path + "."
    dim = m.num_heads * m.head_dim
    h = ctx.lower(s, "in_norm", x, out=p + "norm1")
    w, b = s.linear("in_proj")
    mlp_bias = s.tensor("mlp_bias")
    if mlp_bias is not None:
        b = b.copy()
        b[:mlp_bias.shape[0]] += mlp_bias
    y = ctx.emit(ir.Linear(s.sub("in_proj"), (h,), (s.sub("in_proj"),)), weight=w, bias=b)
    hidden = m.in_split[0]
    fc1, qkv = ctx.emit(ir.Split(s.sub("split"), (y,), (p + "fc1", s.sub("qkv")), sizes=(hidden, 3 * dim)))
    o = attention_core(ctx, s, qkv, p, m.num_heads, checked_scale(s, m.head_dim), op_prefix=s.sub("attn"))
    g = ctx.lower(s, "mlp_drop", ctx.lower(s, "mlp_act", fc1, out=p + "gelu"))
    gamma = _layer_scale_gamma(s, "ls", dim)
    (wa, ba), (wm, bm) = _out_projections(s, dim)
    x = ctx.emit(ir.Linear(s.sub("attn_out_proj"), (o, x), (p + "x_mid",)), weight=gamma[:, None] * wa,
                 bias=gamma * ba)
    x = ctx.emit(ir.Linear(s.sub("mlp_out_proj"), (g, x), (p + "x_out",)), weight=gamma[:, None] * wm,
                 bias=gamma * bm)
    return ctx.lower(s, "drop_path", x)
