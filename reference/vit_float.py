"""An explicit float forward of a timm VisionTransformer that exposes every
tensor boundary of the integer graph (see `simulator.qvit`), for calibration.

It follows ``timm.models.vision_transformer.VisionTransformer.forward``
(patch embed, class token, position embedding, pre-norm blocks, final norm,
class-token pooling, head) and is checked against it by a test. Features
the integer datapath does not implement are refused with an `InputError`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from simulator.errors import InputError

__all__ = ["check_supported", "vit_arch", "patchify", "float_boundaries"]


def _is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def check_supported(model: nn.Module) -> None:
    """Raise `InputError` naming the first timm ViT feature we cannot quantize."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise InputError(f"model {type(model).__name__}: only timm's VisionTransformer family is supported")
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("class_token=False")
    if getattr(model, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(model, "no_embed_class", False):
        problems.append("no_embed_class=True")
    if model.global_pool != "token":
        problems.append(f"global_pool={model.global_pool!r}")
    if not _is_identity(getattr(model, "norm_pre", None)):
        problems.append("norm_pre")
    if not _is_identity(getattr(model, "fc_norm", None)):
        problems.append("fc_norm")
    if not isinstance(model.norm, nn.LayerNorm):
        problems.append(f"final norm {type(model.norm).__name__}")
    pe = model.patch_embed
    if not _is_identity(getattr(pe, "norm", None)):
        problems.append("patch_embed.norm")
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        for name, m in (("q_norm", getattr(a, "q_norm", None)), ("k_norm", getattr(a, "k_norm", None)),
                        ("norm", getattr(a, "norm", None)), ("mlp.norm", getattr(blk.mlp, "norm", None))):
            if not _is_identity(m):
                problems.append(f"blocks.{i}.{name}")
        if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            problems.append(f"blocks.{i} norm type")
        if not isinstance(blk.mlp.act, nn.GELU) or getattr(blk.mlp.act, "approximate", "none") != "none":
            problems.append(f"blocks.{i}.mlp.act {blk.mlp.act}")
        if not hasattr(blk.mlp, "fc2") or not hasattr(blk.mlp, "fc1"):
            problems.append(f"blocks.{i}.mlp type {type(blk.mlp).__name__}")
    if problems:
        raise InputError(f"model {type(model).__name__}: unsupported ViT feature: {problems[0]}")


def vit_arch(model: nn.Module) -> dict:
    """Architecture facts the integer graph needs (JSON-ready)."""
    pe = model.patch_embed
    embed_dim = model.embed_dim if hasattr(model, "embed_dim") else model.cls_token.shape[-1]
    num_heads = model.blocks[0].attn.num_heads
    return {
        "embed_dim": int(embed_dim),
        "num_heads": int(num_heads),
        "head_dim": int(embed_dim // num_heads),
        "depth": len(model.blocks),
        "mlp_hidden": int(model.blocks[0].mlp.fc1.out_features),
        "patch_size": [int(v) for v in pe.patch_size],
        "img_size": [int(v) for v in pe.img_size],
        "in_chans": int(pe.proj.in_channels),
        "num_patches": int(pe.num_patches),
        "num_tokens": int(pe.num_patches + 1),
        "num_classes": int(model.num_classes),
        "global_pool": model.global_pool,
    }


def patchify(images: torch.Tensor, patch_size) -> torch.Tensor:
    """[B, C, H, W] -> [B, Np, C*ph*pw] in the order of the conv weight's flattening."""
    ph, pw = patch_size
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // ph) * (w // pw), c * ph * pw)


def _layerscale(blk_ls) -> torch.Tensor | None:
    return None if _is_identity(blk_ls) else blk_ls.gamma


@torch.no_grad()
def float_boundaries(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the float model, returning every boundary tensor of the integer graph.

    Names: ``input`` [B,Np,P], ``x0`` [B,T,D], per block ``norm1``, ``q``/``k``/``v``
    [B,H,T,d], ``attn_logits`` (scaled q k^T), ``attn`` [B,H,T,T], ``attn_out``
    [B,T,D], ``x_mid``, ``norm2``, ``fc1`` (pre-GELU), ``gelu``, ``x_out``; then
    ``norm`` (pooled token(s) after the final norm, [B,D]) and ``logits``.
    """
    arch = vit_arch(model)
    out: dict[str, torch.Tensor] = {}
    p = patchify(images.float(), arch["patch_size"])
    out["input"] = p
    w = model.patch_embed.proj.weight.flatten(1)
    x = F.linear(p, w, model.patch_embed.proj.bias)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
    out["x0"] = x
    h, d = arch["num_heads"], arch["head_dim"]
    for i, blk in enumerate(model.blocks):
        pre = f"blocks.{i}."
        n1 = blk.norm1(x)
        out[pre + "norm1"] = n1
        b, t, _ = n1.shape
        qkv = blk.attn.qkv(n1).reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out[pre + "q"], out[pre + "k"], out[pre + "v"] = q, k, v
        logits = (q @ k.transpose(-2, -1)) * blk.attn.scale
        out[pre + "attn_logits"] = logits
        attn = logits.softmax(dim=-1)
        out[pre + "attn"] = attn
        o = (attn @ v).transpose(1, 2).reshape(b, t, h * d)
        out[pre + "attn_out"] = o
        y = blk.attn.proj(o)
        g1 = _layerscale(blk.ls1)
        x = x + (y if g1 is None else y * g1)
        out[pre + "x_mid"] = x
        n2 = blk.norm2(x)
        out[pre + "norm2"] = n2
        f1 = blk.mlp.fc1(n2)
        out[pre + "fc1"] = f1
        g = F.gelu(f1)
        out[pre + "gelu"] = g
        y = blk.mlp.fc2(g)
        g2 = _layerscale(blk.ls2)
        x = x + (y if g2 is None else y * g2)
        out[pre + "x_out"] = x
    pooled = model.norm(x[:, 0])
    out["norm"] = pooled
    out["logits"] = model.head(pooled)
    return out
