"""Reusable hypothesis strategies (xarray/numpy style: draw the shape first,
then the data) and small builders for random timm ViTs.

Integer strategies always mix the interesting values -- the code range's
extremes, 0, +-1 and +-2**i with their neighbours (gemmlowp / TFLite test
style) -- with uniform draws over the whole range.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "code_bounds", "extremes", "pow2_neighbours", "codes", "shapes", "int_arrays",
    "dyadic_multipliers", "requantize_args", "bit_widths", "BIT_WIDTHS", "vit_configs",
    "build_vit", "random_images", "lowering_configs",
]

BIT_WIDTHS = ((8, 8), (6, 6), (4, 8), (4, 4))     # W8A8, W6A6, W4A8, W4A4


# --- integers ----------------------------------------------------------------------
def code_bounds(bits: int, signed: bool = True) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def extremes(lo: int, hi: int) -> list[int]:
    """lo, hi, their inner neighbours, 0 and +-1 -- those inside ``[lo, hi]``."""
    cand = {lo, lo + 1, hi - 1, hi, -1, 0, 1}
    return sorted(v for v in cand if lo <= v <= hi)


def pow2_neighbours(lo: int, hi: int) -> st.SearchStrategy[int]:
    """``+-2**i + {-1, 0, 1}`` clipped to ``[lo, hi]`` (values at and around powers of two)."""
    top = max(abs(lo), abs(hi), 1).bit_length()
    vals = sorted({s * (1 << i) + d for i in range(top + 1) for s in (-1, 1) for d in (-1, 0, 1)
                   if lo <= s * (1 << i) + d <= hi})
    return st.sampled_from(vals)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(extremes(lo, hi)), pow2_neighbours(lo, hi), st.integers(lo, hi))


def codes(bits: int, signed: bool = True) -> st.SearchStrategy[int]:
    """One ``bits``-wide code, extremes and powers of two included."""
    return _ints(*code_bounds(bits, signed))


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 8):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


@st.composite
def int_arrays(draw, bits: int | None = None, signed: bool = True, shape=None, lo: int | None = None,
               hi: int | None = None, dtype=np.int64, **shape_kw):
    """An int array of ``bits``-wide codes (or of values in ``[lo, hi]``).

    ``shape`` may be a tuple, a strategy, or None (then `shapes(**shape_kw)`);
    the shape is drawn before the data so shrinking keeps them apart.
    """
    if bits is not None:
        lo, hi = code_bounds(bits, signed)
    if shape is None:
        shape = shapes(**shape_kw)
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    return draw(hnp.arrays(dtype, shape, elements=_ints(lo, hi)))


# --- dyadic multipliers ---------------------------------------------------------------
LIMIT = 1 << 62     # |x * mult| < 2**62: the documented valid range of requantize


def dyadic_multipliers() -> st.SearchStrategy[tuple[int, int]]:
    """``(mult, shift)`` with ``0 <= mult < 2**31`` and ``0 <= shift <= 62``."""
    return st.tuples(_ints(0, (1 << 31) - 1), _ints(0, 62))


@st.composite
def requantize_args(draw):
    """``(x, mult, shift)`` with ``|x * mult| < 2**62``."""
    mult, shift = draw(dyadic_multipliers())
    bound = (LIMIT - 1) // max(mult, 1)
    x = draw(_ints(-bound, bound))
    return x, mult, shift


# --- models --------------------------------------------------------------------------
bit_widths = st.sampled_from(BIT_WIDTHS)


@st.composite
def vit_configs(draw, layer_scale=st.just(False)):
    """Small timm ViT hyper-parameters (depth 1-3, heads 1-4, head_dim 4-16, ...)."""
    patch = draw(st.sampled_from([2, 4]))
    img = patch * draw(st.integers(math.ceil(4 / patch), 16 // patch))
    heads = draw(st.integers(1, 4))
    return {
        "depth": draw(st.integers(1, 3)),
        "num_heads": heads,
        "embed_dim": heads * draw(st.integers(4, 16)),
        "mlp_ratio": draw(st.integers(1, 4)),
        "img_size": img,
        "patch_size": patch,
        "in_chans": draw(st.integers(1, 3)),
        "num_classes": draw(st.integers(2, 12)),
        "init_values": 0.1 if draw(layer_scale) else None,
    }


def build_vit(cfg: dict, seed: int = 0, perturb: float = 0.5, **extra):
    """A seeded timm VisionTransformer in eval mode.

    timm's init (zero biases, unit LayerNorm gains, std 0.02 weights) makes
    every attention row nearly uniform; ``perturb`` adds seeded noise of
    ``perturb / sqrt(fan_in)`` to weights and ``perturb / 2`` to vectors so
    the integer datapath sees non-trivial softmax, GELU and LayerNorm inputs.
    """
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    m = VisionTransformer(**{**cfg, **extra}).eval()
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in m.parameters():
                fan = p[0].numel() if p.dim() > 1 else 4
                p.add_(torch.randn(p.shape, generator=g) * perturb / math.sqrt(fan))
    return m


def random_images(cfg: dict, n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@st.composite
def _image_size(draw, patch: int, img: int, dynamic: bool, pad: bool) -> tuple[int, int]:
    """The model's size, or (``dynamic_img_size``) another one: whole patches,
    or any size when timm pads (``dynamic_img_pad``)."""
    if not dynamic:
        return img, img
    side = st.integers(patch, 4 * patch) if pad else st.integers(1, 4).map(lambda k: k * patch)
    return draw(side), draw(side)


@st.composite
def lowering_configs(draw):
    """(model class, kwargs, image size, seed): a small timm VisionTransformer
    (or DeiT-distilled) with a random combination of the features the lowering
    covers -- pooling, class/register tokens, position embedding placement,
    norms, LayerScale, qk_norm, activations, block types, image sizes."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, ParallelScalingBlock, ParallelThingsBlock, ResPostBlock

    patch = draw(st.sampled_from([4, 8]))
    heads = draw(st.integers(1, 3))
    distilled = draw(st.booleans())
    block = draw(st.sampled_from([Block, Block, ResPostBlock, ParallelScalingBlock, ParallelThingsBlock]))
    cls_token = distilled or draw(st.booleans())
    pool = "token" if distilled else draw(st.sampled_from(["token", "avg"] if cls_token else ["avg"]))
    dynamic, pad = draw(st.booleans()), draw(st.booleans())
    img = patch * draw(st.integers(1, 3)) + (0 if dynamic else draw(st.sampled_from([0, 0, 3])))
    plain_norms = block is ParallelScalingBlock      # it asserts no scale norms
    kw = dict(
        img_size=img, patch_size=patch, in_chans=draw(st.integers(1, 3)), embed_dim=heads * draw(st.integers(2, 8)),
        depth=draw(st.integers(1, 2)), num_heads=heads, mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])),
        num_classes=draw(st.sampled_from([0, 3, 7])), global_pool=pool, class_token=cls_token,
        reg_tokens=0 if distilled else draw(st.integers(0, 2)),
        no_embed_class=False if distilled else draw(st.booleans()),
        pos_embed=draw(st.sampled_from(["learn", "learn", "none"])),
        fc_norm=draw(st.sampled_from([None, False, True])), final_norm=draw(st.booleans()),
        pre_norm=draw(st.booleans()), qk_norm=draw(st.booleans()), qkv_bias=draw(st.booleans()),
        init_values=draw(st.sampled_from([None, 1e-5, 0.5])),
        act_layer=draw(st.sampled_from([None, "gelu", "gelu_tanh", "quick_gelu"])),
        scale_attn_norm=not plain_norms and draw(st.booleans()),
        scale_mlp_norm=not plain_norms and draw(st.booleans()),
        dynamic_img_size=dynamic, dynamic_img_pad=dynamic and pad, block_fn=block,
        pool_include_prefix=draw(st.booleans()), embed_norm_layer=draw(st.sampled_from([None, "layernorm"])),
    )
    if distilled and kw["pos_embed"] == "none":
        kw["pos_embed"] = "learn"                   # timm's DeiT always builds a position embedding
    cls = VisionTransformerDistilled if distilled else _vit_class()
    return cls, kw, draw(_image_size(patch, img, dynamic, pad)), draw(st.integers(0, 2 ** 16))


def _vit_class():
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer


def random_model(drawn):
    """(model, image_size, 10 seeded standard-normal images) of a drawn ``lowering_configs()`` example:
    the timm model in eval mode with `reference.lowering.coverage.perturb_` noise."""
    import torch

    from reference.lowering.coverage import perturb_

    model_cls, kwargs, image_size, seed = drawn
    torch.manual_seed(seed)
    model = model_cls(**kwargs).eval()
    perturb_(model, seed + 1)
    images = np.random.default_rng(seed).standard_normal((10, kwargs["in_chans"], *image_size)).astype(np.float32)
    return model, image_size, images
