"""The timm configurations the lowering is checked on, one row each.

Each row builds a small random-weight model (``pretrained=False``, seeded,
float64, eval mode), lowers it and compares the float walk with timm's own
forward, or expects its exact one-line refusal. The test suite runs every
row (``tests/reference/test_lowering.py``); ``python -m
reference.lowering.coverage`` prints the table of ``docs/graph.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

__all__ = ["Configuration", "CONFIGURATIONS", "SMALL", "build", "max_error", "markdown"]

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


@dataclass(frozen=True)
class Configuration:
    """``timm.create_model(arch, pretrained=False, **SMALL, **kwargs)``, run on
    ``image_size`` images; ``refusal`` is the expected message if refused."""
    name: str
    arch: str
    kwargs: dict = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    refusal: str | None = None


def _block_fn(name: str, **kw):
    import timm.models.vision_transformer as tv
    return functools.partial(getattr(tv, name), **kw) if kw else getattr(tv, name)


def _configurations() -> tuple[Configuration, ...]:
    vit, C = "vit_tiny_patch16_224", Configuration
    return (
        C("ViT, token pooling", vit),
        C("DeiT, token pooling", "deit_tiny_patch16_224"),
        C("avg pooling + fc_norm", vit, dict(global_pool="avg")),
        C("avg pooling, no fc_norm", vit, dict(global_pool="avg", fc_norm=False)),
        C("avg pooling over prefix tokens too", vit, dict(global_pool="avg", reg_tokens=2, pool_include_prefix=True)),
        C("class_token=False (avg)", vit, dict(class_token=False, global_pool="avg")),
        C("register tokens (reg_tokens=4)", vit, dict(reg_tokens=4)),
        C("registers, no class token", vit, dict(reg_tokens=4, class_token=False, global_pool="avg")),
        C("no_embed_class (DeiT-III)", "deit3_small_patch16_224"),
        C("LayerScale (init_values=1e-5)", vit, dict(init_values=1e-5)),
        C("qk_norm", vit, dict(qk_norm=True)),
        C("norm_pre (CLIP)", "vit_base_patch16_clip_224"),
        C("CLIP quick-GELU", "vit_base_patch16_clip_quickgelu_224"),
        C("act_layer='gelu' (erf)", vit, dict(act_layer="gelu")),
        C("act_layer='gelu_tanh'", vit, dict(act_layer="gelu_tanh")),
        C("act_layer='quick_gelu'", vit, dict(act_layer="quick_gelu")),
        C("pos_embed='none', class token", vit, dict(pos_embed="none")),
        C("pos_embed='none', no class token", vit, dict(pos_embed="none", class_token=False, global_pool="avg")),
        C("num_classes=0 (features)", vit, dict(num_classes=0)),
        C("distilled DeiT", "deit_tiny_distilled_patch16_224"),
        C("distilled DeiT, num_classes=0", "deit_tiny_distilled_patch16_224", dict(num_classes=0)),
        C("dynamic_img_size, 48x40 images", vit, dict(dynamic_img_size=True), (48, 40)),
        C("dynamic_img_size + dynamic_img_pad, 36x44", vit, dict(dynamic_img_size=True, dynamic_img_pad=True),
          (36, 44)),
        C("image 36x36, patch 8 (remainder dropped)", vit, dict(img_size=36), (36, 36)),
        C("final_norm=False", vit, dict(final_norm=False)),
        C("ResPostBlock", vit, dict(block_fn=_block_fn("ResPostBlock"))),
        C("ParallelScalingBlock (+LayerScale)", vit,
          dict(block_fn=_block_fn("ParallelScalingBlock"), qkv_bias=False, init_values=1e-5)),
        C("ParallelScalingBlock, fused out_proj, qk_norm", vit,
          dict(block_fn=_block_fn("ParallelScalingBlock", fuse_out_proj=True), qk_norm=True)),
        C("ParallelThingsBlock (vit_small_patch16_18x2)", "vit_small_patch16_18x2_224"),
        C("scale_attn_norm + scale_mlp_norm", vit, dict(scale_attn_norm=True, scale_mlp_norm=True)),
        C("patch-embed LayerNorm", vit, dict(embed_norm_layer="layernorm")),
        C("attn_layer='diff'", vit, dict(attn_layer="diff"), refusal="blocks.0.attn: differential attention "
          "(DiffAttention, attn_layer='diff') is not supported"),
        C("global_pool='map'", vit, dict(global_pool="map"), refusal="attn_pool: attention pooling "
          "(AttentionPoolLatent, global_pool='map') is not supported"),
        C("hybrid ResNet stem (vit_tiny_r_s16_p8)", "vit_tiny_r_s16_p8_224",
          refusal="patch_embed: hybrid CNN stem (HybridEmbed) is not supported"),
        C("global_pool='max'", vit, dict(global_pool="max", class_token=False),
          refusal="model: global_pool='max' is not supported (only 'token' and 'avg')"),
        C("SwiGLU MLP", vit, dict(mlp_layer=_swiglu()),
          refusal="blocks.0.mlp: no lowering rule for timm.layers.mlp.SwiGLU"),
        C("RmsNorm", vit, dict(norm_layer="rmsnorm"),
          refusal="blocks.0.norm1: no lowering rule for timm.layers.norm.RmsNorm"),
    )


def _swiglu():
    from timm.layers import SwiGLU
    return SwiGLU


CONFIGURATIONS = _configurations()


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Seeded noise of ``scale / sqrt(fan_in)`` on weights and ``scale / 2`` on
    vectors: timm's init (zero biases, unit gains, LayerScale 1e-5, cls token
    ~1e-6) would leave most of the function untested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan = p[0].numel() if p.dim() > 1 else 4
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale / math.sqrt(fan))


def build(cfg: Configuration, seed: int = 0) -> torch.nn.Module:
    import timm
    torch.manual_seed(seed)
    model = timm.create_model(cfg.arch, pretrained=False, **{**SMALL, **cfg.kwargs}).eval().double()
    perturb_(model, seed + 1)
    return model


def images_for(cfg: Configuration, batch: int = 2, seed: int = 0) -> torch.Tensor:
    h, w = cfg.image_size or (SMALL["img_size"],) * 2
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g, dtype=torch.float64)


@torch.no_grad()
def max_error(cfg: Configuration, seed: int = 0, batch: int = 2) -> float:
    """max |float walk - timm forward| in float64 (raises `LoweringError` if refused)."""
    from reference.float_ops import float_forward
    from reference.lowering import lower
    model = build(cfg, seed)
    x = images_for(cfg, batch, seed)
    graph = lower(model, image_size=cfg.image_size)
    return (float_forward(graph, x, torch.float64) - model(x)).abs().max().item()


def markdown() -> str:
    from reference.lowering import LoweringError
    lines = ["| configuration | timm model / kwargs | result |", "|---|---|---|"]
    for cfg in CONFIGURATIONS:
        kw = ", ".join(f"{k}={_show(v)}" for k, v in cfg.kwargs.items())
        size = f" on {cfg.image_size[0]}x{cfg.image_size[1]}" if cfg.image_size else ""
        try:
            result = f"supported, max abs error {max_error(cfg):.1e}"
        except LoweringError as e:
            result = f"refused: `{e}`"
        lines.append(f"| {cfg.name} | `{cfg.arch}` {kw}{size} | {result} |")
    return "\n".join(lines)


def _show(v) -> str:
    if isinstance(v, functools.partial):
        return f"partial({v.func.__name__}, {', '.join(f'{k}={x}' for k, x in v.keywords.items())})"
    return v.__name__ if isinstance(v, type) else repr(v)


if __name__ == "__main__":
    print(markdown())
