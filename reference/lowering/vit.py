"""Lowering rules of the model level: `VisionTransformer`,
`VisionTransformerDistilled` (DeiT) and `PatchEmbed`.

Follows ``VisionTransformer.forward``: patch embed, prefix tokens and
position embedding (``_pos_embed``), ``norm_pre``, blocks, final ``norm``,
pooling (``global_pool_nlc``), ``fc_norm``, head. With token pooling the
final LayerNorm is applied to the pooled token only: LayerNorm works row by
row, so ``norm(x)[:, 0] == norm(x[:, 0])`` exactly.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from timm.layers import AttentionPoolLatent, HybridEmbed, PatchEmbed, resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from reference.lowering.builder import Builder, LoweringError, Scope, lowering_rule, refuse, to_numpy
from simulator import ir

__all__ = ["resolve_image_size"]

refuse(HybridEmbed, "hybrid CNN stem (HybridEmbed)")
refuse(AttentionPoolLatent, "attention pooling (AttentionPoolLatent, global_pool='map')")
try:
    from timm.layers import AttentionPoolPrr
    refuse(AttentionPoolPrr, "attention pooling (AttentionPoolPrr, global_pool='prr')")
except ImportError:     # older timm
    pass


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def resolve_image_size(model: nn.Module, image_size=None) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W), (grid_h, grid_w)) the graph is lowered for, with timm's rules:
    ``strict_img_size`` takes only the model's size; otherwise (``dynamic_img_size``)
    the size must be a multiple of the patch unless ``dynamic_img_pad``. A
    remainder of a strict size is dropped by the stride-p convolution."""
    pe = model.patch_embed
    if type(pe) is not PatchEmbed:        # refused with its path by the rule lookup
        return _pair(image_size or 224), (0, 0)
    ph, pw = pe.patch_size
    want = _pair(image_size) if image_size is not None else pe.img_size
    if want is None:
        raise LoweringError("patch_embed: the model has no img_size; pass image_size to lower()")
    h, w = want
    if pe.strict_img_size and pe.img_size is not None and tuple(want) != tuple(pe.img_size):
        raise LoweringError(f"patch_embed: the model takes {pe.img_size[0]}x{pe.img_size[1]} images "
                            f"(strict_img_size), not {h}x{w}")
    if pe.dynamic_img_pad:
        grid = (-(-h // ph), -(-w // pw))
    elif not pe.strict_img_size and (h % ph or w % pw):
        raise LoweringError(f"patch_embed: image {h}x{w} is not a multiple of the {ph}x{pw} patch "
                            f"(dynamic_img_size without dynamic_img_pad)")
    else:
        grid = (h // ph, w // pw)
    return (h, w), grid


@lowering_rule(PatchEmbed)
def _patch_embed(ctx: Builder, s: Scope, images: str) -> str:
    """The stride-p, kernel-p convolution is a linear map of each patch:
    ``y[n, o] = sum_{c,i,j} W[o, c, i, j] * patch_n[c, i, j] + b[o]``."""
    pe = s.module
    conv = s.child("proj")
    k = tuple(conv.kernel_size)
    if (type(conv) is not nn.Conv2d or k != tuple(pe.patch_size) or tuple(conv.stride) != k
            or tuple(conv.padding) != (0, 0) or tuple(conv.dilation) != (1, 1) or conv.groups != 1):
        raise s.error("patch projection is not a kernel = stride = patch convolution", "proj")
    w = to_numpy(conv.weight)
    b = to_numpy(conv.bias) if conv.bias is not None else np.zeros(w.shape[0])
    x = ctx.emit(ir.Patchify("patchify", (images,), ("input",), patch_size=k, pad=bool(pe.dynamic_img_pad)))
    x = ctx.emit(ir.Linear("patch_embed", (x,), ("patch_embed",)), weight=w.reshape(w.shape[0], -1), bias=b)
    return ctx.lower(s, "norm", x)


def _prefix_tokens(s: Scope, distilled: bool) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The prefix tokens in timm's order: cls, then dist (DeiT) or reg."""
    kinds, rows = [], []
    names = ("cls_token", "dist_token") if distilled else ("cls_token", "reg_token")
    for name in names:
        t = s.tensor(name) if hasattr(s.module, name) else None
        if t is not None:
            kinds += [name.split("_")[0]] * t.shape[1]
            rows.append(t[0])
    return tuple(kinds), (np.concatenate(rows) if rows else None)


def _position_embedding(s: Scope, grid: tuple[int, int], num_tokens: int) -> np.ndarray | None:
    """The [T, D] position embedding for ``grid``, resampled by timm's own
    ``resample_abs_pos_embed`` when ``dynamic_img_size`` (as ``_pos_embed`` does)."""
    m = s.module
    s.tensor("pos_embed")
    if m.pos_embed is None:
        return None
    pos = m.pos_embed
    if m.dynamic_img_size:
        pos = resample_abs_pos_embed(pos, new_size=grid, old_size=m.patch_embed.grid_size,
                                     num_prefix_tokens=0 if m.no_embed_class else m.num_prefix_tokens)
    pos = to_numpy(pos)[0]
    if pos.shape[0] != num_tokens:
        raise s.error(f"position embedding has {pos.shape[0]} tokens, the {grid[0]}x{grid[1]} patch grid "
                      f"needs {num_tokens}", "pos_embed")
    return pos


def _embed(ctx: Builder, s: Scope, x: str, grid: tuple[int, int], distilled: bool) -> str:
    """Prefix tokens and position embedding (``_pos_embed``): with
    ``no_embed_class`` add to the patches then concat, else concat then add."""
    m = s.module
    kinds, tokens = _prefix_tokens(s, distilled)
    patches = grid[0] * grid[1]
    pos = _position_embedding(s, grid, patches if m.no_embed_class else patches + len(kinds))
    if pos is not None and m.no_embed_class:
        x = ctx.emit(ir.AddConst("pos_embed", (x,), ("pos_embed",)), value=pos)
    if kinds:
        x = ctx.emit(ir.TokenConcat("prefix_tokens", (x,), ("tokens",), tokens=kinds), tokens=tokens)
    if pos is not None and not m.no_embed_class:
        x = ctx.emit(ir.AddConst("pos_embed", (x,), ("pos_embed",)), value=pos)
    return ctx.rename(x, "x0")


def _head(ctx: Builder, s: Scope, name: str, x: str, out: str) -> str:
    head = s.child(name)
    if type(head) is nn.Identity:
        return x
    w, b = s.linear(name)
    return ctx.emit(ir.Head(s.sub(name), (x,), (out,)), weight=w, bias=b)


def _pool_and_head(ctx: Builder, s: Scope, x: str) -> str:
    """``forward_head(norm(x))`` for token or avg pooling."""
    m = s.module
    if m.attn_pool is not None:
        ctx.lower(s, "attn_pool", x)          # refused with its construct
    if m.global_pool not in ("token", "avg"):
        raise s.error(f"global_pool={m.global_pool!r} is not supported (only 'token' and 'avg')")
    if m.global_pool == "token":    # the norm rules (LayerNorm, Identity) are row-wise: pool first
        x = ctx.emit(ir.Pool("pool", (x,), ("pool",), mode="token", index=0))
        x = ctx.lower(s, "norm", x)
    else:
        skip = 0 if m.pool_include_prefix else m.num_prefix_tokens
        x = ctx.lower(s, "norm", x)
        x = ctx.emit(ir.Pool("pool", (x,), ("pool",), mode="avg", num_prefix_tokens=skip))
    x = ctx.lower(s, "head_drop", ctx.lower(s, "fc_norm", x))
    return _head(ctx, s, "head", x, "logits")


def _distilled_head(ctx: Builder, s: Scope, x: str) -> str:
    """DeiT eval mode: ``(head(norm(x)[:, 0]) + head_dist(norm(x)[:, 1])) / 2``."""
    outs = []
    for i, (suffix, head) in enumerate((("", "head"), ("_dist", "head_dist"))):
        t = ctx.emit(ir.Pool("pool" + suffix, (x,), ("pool" + suffix,), mode="token", index=i))
        t = ctx.lower(s, "norm", t, out="norm" + suffix) if i == 0 else _norm_again(ctx, s, t)
        t = ctx.lower(s, "head_drop", t)
        outs.append(_head(ctx, s, head, t, f"{head}.logits"))
    s.child("fc_norm")                        # timm's distilled forward_head never applies fc_norm
    return ctx.emit(ir.Mean("head_mean", tuple(outs), ("logits" if s.module.num_classes else "features",)))


def _norm_again(ctx: Builder, s: Scope, x: str) -> str:
    """The final norm applied to the distillation token (same parameters)."""
    norm = s.module.norm
    if type(norm) is nn.Identity:
        return x
    p = ctx.params["norm"]
    return ctx.emit(ir.LayerNorm("norm_dist", (x,), ("norm_dist",), eps=float(norm.eps)),
                    weight=p["weight"], bias=p["bias"])


def _lower_vit(ctx: Builder, s: Scope, images: str, image_size=None, distilled: bool = False) -> str:
    m = s.module
    if distilled and getattr(m, "reg_token", None) is not None:
        raise s.error("register tokens with a distillation token (timm's DeiT ignores them)", "reg_token")
    _, grid = resolve_image_size(m, image_size)
    x = ctx.lower(s, "patch_embed", images)
    x = _embed(ctx, s, x, grid, distilled)
    x = ctx.lower(s, "pos_drop", x)
    x = ctx.lower(s, "patch_drop", x)
    x = ctx.lower(s, "norm_pre", x)
    x = ctx.lower(s, "blocks", x)
    if distilled:
        return _distilled_head(ctx, s, x)
    return _pool_and_head(ctx, s, x)


@lowering_rule(VisionTransformer)
def _vision_transformer(ctx: Builder, s: Scope, images: str, image_size=None) -> str:
    return _lower_vit(ctx, s, images, image_size)


@lowering_rule(VisionTransformerDistilled)
def _vision_transformer_distilled(ctx: Builder, s: Scope, images: str, image_size=None) -> str:
    return _lower_vit(ctx, s, images, image_size, distilled=True)
