"""Lowering rules of timm's small layers: linear, LayerNorm, activations,
inert modules, LayerScale, Attention and Mlp.

Tensor names: a module's output is named by its module path unless it is
one of the integer graph's boundaries, which are named by the block they
live in (``blocks.3.q``, ``blocks.3.attn``, ``blocks.3.fc1``, ...; see
``docs/graph.md``). ``boundary(path, name)`` derives the block prefix from
the module path: ``blocks.3.attn`` -> ``blocks.3.<name>``.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from timm.layers import Attention, DiffAttention, LayerScale, Mlp, DropPath, PatchDropout
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers.activations import GELU, GELUTanh, QuickGELU

from reference.lowering.builder import Builder, Scope, lowering_rule, refuse
from simulator import ir

__all__ = ["attention_core", "boundary"]

refuse(DiffAttention, "differential attention (DiffAttention, attn_layer='diff')")


def boundary(path: str, name: str) -> str:
    """Boundary tensor ``name`` of the block holding the module at ``path``."""
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return f"{parent}.{name}" if parent else name


@lowering_rule(nn.Identity, nn.Dropout, DropPath, PatchDropout)
def _inert(ctx: Builder, s: Scope, x: str, out: str | None = None) -> str:
    """The identity, and dropout-like modules in eval mode (`lower` refuses
    models in training mode), compute ``y = x`` (no op; ``out`` unused)."""
    return x


@lowering_rule(nn.Sequential)
def _sequential(ctx: Builder, s: Scope, x: str) -> str:
    for name, _ in s.module.named_children():
        x = ctx.lower(s, name, x)
    return x


@lowering_rule(nn.Linear)
def _linear(ctx: Builder, s: Scope, x: str, out: str | None = None) -> str:
    w = s.tensor("weight")
    b = s.tensor("bias")
    return ctx.emit(ir.Linear(s.path, (x,), (out or s.path,)), weight=w,
                    bias=np.zeros(w.shape[0]) if b is None else b)


@lowering_rule(nn.LayerNorm, TimmLayerNorm)
def _layer_norm(ctx: Builder, s: Scope, x: str, out: str | None = None) -> str:
    m = s.module
    if len(m.normalized_shape) != 1:
        raise s.error(f"LayerNorm over {tuple(m.normalized_shape)} (only the last axis is supported)")
    d = m.normalized_shape[0]
    w, b = s.tensor("weight"), s.tensor("bias")
    return ctx.emit(ir.LayerNorm(s.path, (x,), (out or s.path,), eps=float(m.eps)),
                    weight=np.ones(d) if w is None else w, bias=np.zeros(d) if b is None else b)


def _activation(function: str):
    def rule(ctx: Builder, s: Scope, x: str, out: str | None = None) -> str:
        return ctx.emit(ir.Activation(s.path, (x,), (out or s.path,), function=function))
    return rule


lowering_rule(GELU)(_activation("gelu_erf"))
lowering_rule(GELUTanh)(_activation("gelu_tanh"))
lowering_rule(QuickGELU)(_activation("quick_gelu"))


@lowering_rule(nn.GELU)
def _torch_gelu(ctx: Builder, s: Scope, x: str, out: str | None = None) -> str:
    function = {"none": "gelu_erf", "tanh": "gelu_tanh"}[s.module.approximate]
    return ctx.emit(ir.Activation(s.path, (x,), (out or s.path,), function=function))


@lowering_rule(LayerScale)
def _layer_scale(ctx: Builder, s: Scope, x: str) -> str:
    """``x * gamma`` folded into the linear that produced ``x``."""
    return ctx.scale_channels(s, x, s.tensor("gamma"))


def attention_core(ctx: Builder, s: Scope, qkv: str, prefix: str, num_heads: int, scale: float,
                   op_prefix: str | None = None) -> str:
    """From the fused ``qkv`` projection to the merged heads ``attn_out``:
    split heads, optional q/k LayerNorm per head, ``softmax(scale * q k^T) v``.
    ``s`` owns the ``q_norm``, ``k_norm`` and ``attn_drop`` children; ops are
    named ``<op_prefix>.qk`` etc. (default: the module path)."""
    p = op_prefix or s.path
    q, k, v = ctx.emit(ir.SplitHeads(f"{p}.split_heads", (qkv,), (prefix + "q_raw", prefix + "k_raw", prefix + "v"),
                                     num_heads=num_heads))
    q = ctx.rename(ctx.lower(s, "q_norm", q), prefix + "q")
    k = ctx.rename(ctx.lower(s, "k_norm", k), prefix + "k")
    logits = ctx.emit(ir.MatMul(f"{p}.qk", (q, k), (prefix + "attn_logits",), transpose_b=True, scale=scale))
    attn = ctx.emit(ir.Softmax(f"{p}.softmax", (logits,), (prefix + "attn",)))
    attn = ctx.lower(s, "attn_drop", attn)
    heads = ctx.emit(ir.MatMul(f"{p}.av", (attn, v), (f"{p}.av",)))
    return ctx.emit(ir.MergeHeads(f"{p}.merge_heads", (heads,), (prefix + "attn_out",)))


def checked_scale(s: Scope, head_dim: int) -> float:
    """timm's fused path (SDPA) scales by ``head_dim ** -0.5`` and ignores
    ``.scale``; the explicit path uses ``.scale``. Refuse if they differ."""
    scale = float(s.module.scale)
    if getattr(s.module, "fused_attn", False) and not np.isclose(scale, head_dim ** -0.5, rtol=1e-12):
        raise s.error(f"attention scale {scale} differs from head_dim**-0.5 while fused_attn ignores it")
    return scale


@lowering_rule(Attention)
def _attention(ctx: Builder, s: Scope, x: str) -> str:
    m = s.module
    if getattr(m, "gate", None) is not None:
        raise s.error("gated attention (Attention(gated=True)) is not supported")
    prefix = boundary(s.path, "")
    qkv = ctx.lower(s, "qkv", x)
    o = attention_core(ctx, s, qkv, prefix, m.num_heads, checked_scale(s, m.head_dim))
    o = ctx.lower(s, "norm", o)
    y = ctx.lower(s, "proj", o)
    return ctx.lower(s, "proj_drop", y)


@lowering_rule(Mlp)
def _mlp(ctx: Builder, s: Scope, x: str) -> str:
    """fc1 -> act -> drop1 -> norm -> fc2 -> drop2, as ``Mlp.forward``."""
    if not isinstance(s.module.fc1, nn.Linear):
        raise s.error(f"Mlp with {type(s.module.fc1).__name__} layers (use_conv) is not supported")
    h = ctx.lower(s, "fc1", x, out=boundary(s.path, "fc1"))
    h = ctx.lower(s, "act", h, out=boundary(s.path, "gelu"))
    h = ctx.lower(s, "drop1", h)
    h = ctx.lower(s, "norm", h)
    y = ctx.lower(s, "fc2", h)
    return ctx.lower(s, "drop2", y)
