"""Lowering rules of timm's Swin Transformer (``timm.models.swin_transformer``).

Follows ``SwinTransformer.forward``: patch embedding and its LayerNorm
(``x0``), the stages (patch merging, then blocks), the final ``norm``,
average pooling over the token grid and the head. Tokens stay ``[B, T, C]``
in timm's row-major (h, w) order; the grid of each tensor is known at
lowering time, so window partition with cyclic shift, its inverse and 2x2
patch merging are `simulator.ir.GatherTokens` index ops
(`simulator.windows`).

A block ``x = x + reverse(attn(partition(norm1(x)))); x = x + mlp(norm2(x))``
is lowered as ``norm1(partition(x))``: LayerNorm acts token by token, so it
commutes with any token permutation, and this way ``norm1`` is read by the
qkv linear exactly as in a ViT block (the mechanisms find the same sites).
Likewise the inverse permutation is applied to the merged heads before
``attn.proj`` (a linear acts token by token), so the residual add still
fuses into ``proj`` (``x_mid``) and ``fc2`` (``x_out``).

Window attention runs as ``W x H`` attention batches (window-major): q, k, v
``[B, W*H, N, d]`` (`ir.SplitHeads` with ``windows``), ``q k^T`` times
``attn.scale``, then `ir.WindowBias` adds the relative position bias
(``relative_position_bias_table[relative_position_index]``, one ``[N, N]``
per head) and the shifted-window mask (timm's ``attn_mask``: 0 or -100 per
window), then softmax, ``attn @ v`` and the merge back to ``[B, W*N, C]``.

Refused, with the module path: ``dynamic_img_size`` / ``strict_img_size=False``
(masks built per input), a grid the window does not divide (timm pads),
an odd grid before patch merging (timm pads), global pooling other than
``avg``, and Swin V2 (`SwinTransformerV2`: cosine attention with a
log-spaced continuous position bias MLP, post-norm blocks).
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from timm.layers.classifier import ClassifierHead
from timm.models.swin_transformer import (PatchMerging, SwinTransformer, SwinTransformerBlock, SwinTransformerStage,
                                          WindowAttention)

from reference.lowering.builder import Builder, LoweringError, Scope, lowering_rule, to_numpy
from reference.lowering.layers import boundary, checked_scale
from simulator import ir

__all__ = ["check_swin_size"]


def check_swin_size(model: SwinTransformer, image_size=None) -> tuple[int, int]:
    """The (H, W) a Swin graph is lowered for: the model's own ``img_size``
    (its masks and windows are built for it; ``model.set_input_size`` changes it)."""
    pe = model.patch_embed
    if model.dynamic_img_size or not pe.strict_img_size:
        raise LoweringError("patch_embed: dynamic_img_size / strict_img_size=False is not supported for Swin "
                            "(timm builds the shifted-window masks per input); call model.set_input_size(...)")
    want = tuple(int(v) for v in pe.img_size)
    if image_size is not None:
        got = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(v) for v in image_size)
        if got != want:
            raise LoweringError(f"patch_embed: the model takes {want[0]}x{want[1]} images, not {got[0]}x{got[1]}; "
                                f"call model.set_input_size(img_size={got}) before lowering")
    return want


@lowering_rule(SwinTransformer)
def _swin_transformer(ctx: Builder, s: Scope, images: str, image_size=None) -> str:
    m = s.module
    check_swin_size(m, image_size)
    x = ctx.rename(ctx.lower(s, "patch_embed", images), "x0")
    x = ctx.lower(s, "layers", x)
    x = ctx.lower(s, "norm", x, out="norm")
    return _classifier(ctx, s, x)


def _classifier(ctx: Builder, s: Scope, x: str) -> str:
    """timm's ``ClassifierHead``: global average pool over the grid, dropout (eval: identity), fc."""
    head = s.child("head")
    if type(head) is not ClassifierHead:
        raise s.error(f"head {type(head).__name__} is not a timm ClassifierHead", "head")
    pool = head.global_pool
    if getattr(pool, "pool_type", None) != "avg" or head.use_conv:
        raise s.error(f"global_pool={getattr(pool, 'pool_type', '?')!r} is not supported (only 'avg')", "head")
    x = ctx.emit(ir.Pool("pool", (x,), ("pool",), mode="avg"))
    if type(head.fc) is nn.Identity:
        return x
    if type(head.fc) is not nn.Linear:
        raise s.error(f"expected nn.Linear, got {type(head.fc).__name__}", "head.fc")
    w = to_numpy(head.fc.weight)
    b = to_numpy(head.fc.bias) if head.fc.bias is not None else np.zeros(w.shape[0])
    return ctx.emit(ir.Head("head.fc", (x,), ("logits",)), weight=w, bias=b)


@lowering_rule(SwinTransformerStage)
def _stage(ctx: Builder, s: Scope, x: str) -> str:
    m = s.module
    if type(m.downsample) is nn.Identity:
        s.child("downsample")
    else:
        x = ctx.lower(s, "downsample", x, grid=tuple(m.input_resolution))
    return ctx.lower(s, "blocks", x)


@lowering_rule(PatchMerging)
def _patch_merging(ctx: Builder, s: Scope, x: str, grid: tuple[int, int]) -> str:
    """2x2 neighbours concatenated (timm's channel order), LayerNorm over 4C, linear to out_dim."""
    gh, gw = grid
    if gh % 2 or gw % 2:
        raise s.error(f"patch merging of an odd {gh}x{gw} grid (timm pads) is not supported")
    x = ctx.emit(ir.GatherTokens(s.sub("gather"), (x,), (s.sub("tokens"),), pattern="patch_merge", grid=(gh, gw)))
    x = ctx.lower(s, "norm", x)
    return ctx.lower(s, "reduction", x)


@lowering_rule(SwinTransformerBlock)
def _swin_block(ctx: Builder, s: Scope, x: str) -> str:
    """``x = x + attn(x); x = x + mlp(norm2(x))`` with ``attn`` = partition, norm1, W-MSA / SW-MSA, reverse."""
    m = s.module
    p = s.path + "."
    grid, window, shift = tuple(m.input_resolution), tuple(m.window_size), tuple(m.shift_size)
    if getattr(m, "dynamic_mask", False):
        raise s.error("dynamic_mask (masks built per input) is not supported")
    if grid[0] % window[0] or grid[1] % window[1]:
        raise s.error(f"window {window[0]}x{window[1]} does not divide the {grid[0]}x{grid[1]} token grid "
                      f"(timm pads) -- not supported")
    mask = s.tensor("attn_mask")
    xw = ctx.emit(ir.GatherTokens(p + "window_partition", (x,), (p + "x_windows",), pattern="window_partition",
                                  grid=grid, window=window, shift=shift))
    a = ctx.lower(s, "norm1", xw)
    a = ctx.lower(s, "attn", a, grid=grid, window=window, shift=shift, mask=mask)
    x = ctx.residual_add(x, ctx.lower(s, "drop_path1", a), p + "x_mid", p + "add1")
    y = ctx.lower(s, "mlp", ctx.lower(s, "norm2", x))
    return ctx.residual_add(x, ctx.lower(s, "drop_path2", y), p + "x_out", p + "add2")


def relative_position_bias(table: np.ndarray, index: np.ndarray, num_heads: int) -> np.ndarray:
    """``[H, N, N]``: timm's ``_get_rel_pos_bias`` (``table[index].view(N, N, H).permute(2, 0, 1)``)."""
    n = index.shape[0]
    return table[index.reshape(-1).astype(np.int64)].reshape(n, n, num_heads).transpose(2, 0, 1).copy()


@lowering_rule(WindowAttention)
def _window_attention(ctx: Builder, s: Scope, x: str, grid, window, shift, mask) -> str:
    """Windows of tokens ``x`` [B, W*N, C] -> merged heads back in grid order -> ``proj``."""
    m = s.module
    p, prefix = s.path, boundary(s.path, "")
    n = window[0] * window[1]
    nw = (grid[0] // window[0]) * (grid[1] // window[1])
    h = m.num_heads
    if tuple(m.window_size) != tuple(window):
        raise s.error(f"window {tuple(m.window_size)} differs from the block's {window}")
    head_dim = m.qkv.out_features // (3 * h)
    scale = checked_scale(s, head_dim)
    bias = relative_position_bias(s.tensor("relative_position_bias_table"), s.tensor("relative_position_index"), h)
    if mask is None:
        mask = np.zeros((nw, n, n))
    if mask.shape != (nw, n, n):
        raise s.error(f"attention mask of shape {mask.shape}, expected {(nw, n, n)}")
    qkv = ctx.lower(s, "qkv", x)
    q, k, v = ctx.emit(ir.SplitHeads(f"{p}.split_heads", (qkv,), (prefix + "q", prefix + "k", prefix + "v"),
                                     num_heads=h, windows=nw))
    logits = ctx.emit(ir.MatMul(f"{p}.qk", (q, k), (prefix + "attn_logits",), transpose_b=True, scale=scale))
    scores = ctx.emit(ir.WindowBias(f"{p}.bias", (logits,), (prefix + "attn_scores",), num_heads=h),
                      bias=bias, mask=mask)
    s.child("softmax")
    attn = ctx.lower(s, "attn_drop", ctx.emit(ir.Softmax(f"{p}.softmax", (scores,), (prefix + "attn",))))
    heads = ctx.emit(ir.MatMul(f"{p}.av", (attn, v), (f"{p}.av",)))
    o = ctx.emit(ir.MergeHeads(f"{p}.merge_heads", (heads,), (prefix + "attn_out_windows",), windows=nw))
    o = ctx.emit(ir.GatherTokens(f"{p}.window_reverse", (o,), (prefix + "attn_out",), pattern="window_reverse",
                                 grid=grid, window=window, shift=shift))
    return ctx.lower(s, "proj_drop", ctx.lower(s, "proj", o))
