"""reference.vit_float mirrors timm's VisionTransformer.forward and refuses
the features the integer datapath does not implement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.vision_transformer import VisionTransformer

from reference.vit_float import check_supported, float_boundaries, patchify, vit_arch
from simulator.errors import InputError
from simulator.executor import patchify as np_patchify
from strategies import build_vit, random_images, vit_configs

BASE = dict(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2)


@settings(max_examples=15)
@given(cfg=vit_configs(layer_scale=st.booleans()), seed=st.integers(0, 2 ** 16), scale=st.sampled_from([1.0, 5.0]))
def test_float_boundaries_logits_match_timm(cfg, seed, scale):
    model = build_vit(cfg, seed=seed)
    x = torch.from_numpy(random_images(cfg, 3, seed=seed, scale=scale))
    with torch.no_grad():
        ref = model(x)
    out = float_boundaries(model, x)
    assert out["logits"].shape == ref.shape == (3, cfg["num_classes"])
    err = (out["logits"] - ref).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref.abs().max().item()), err


def test_boundary_names_and_shapes():
    cfg = dict(BASE, depth=2, mlp_ratio=3, init_values=None)
    model = build_vit(cfg)
    out = float_boundaries(model, torch.from_numpy(random_images(cfg, 2)))
    t, d, h = 17, 16, 2
    assert out["input"].shape == (2, 16, 4) and out["x0"].shape == (2, t, d)
    for i in range(2):
        p = f"blocks.{i}."
        assert out[p + "q"].shape == out[p + "k"].shape == out[p + "v"].shape == (2, h, t, d // h)
        assert out[p + "attn"].shape == out[p + "attn_logits"].shape == (2, h, t, t)
        torch.testing.assert_close(out[p + "attn"].sum(-1), torch.ones(2, h, t))
        assert out[p + "fc1"].shape == out[p + "gelu"].shape == (2, t, 3 * d)
        for name in ("norm1", "attn_out", "x_mid", "norm2", "x_out"):
            assert out[p + name].shape == (2, t, d), name
    assert out["norm"].shape == (2, d) and out["logits"].shape == (2, 3)


def test_layerscale_is_applied():
    cfg = dict(BASE, init_values=0.1)
    model = build_vit(cfg, seed=5)
    x = torch.from_numpy(random_images(cfg, 2, seed=5))
    with torch.no_grad():
        model.blocks[0].ls1.gamma.mul_(7.0)
        ref = model(x)
    torch.testing.assert_close(float_boundaries(model, x)["logits"], ref, atol=1e-5, rtol=1e-5)


def test_patchify_matches_conv_weight_order():
    """patchify @ W.flatten(1) equals timm's strided conv; torch and numpy patchify agree."""
    cfg = dict(BASE, in_chans=3, patch_size=4, init_values=None)
    model = build_vit(cfg)
    x = torch.from_numpy(random_images(cfg, 2))
    conv = model.patch_embed.proj
    want = conv(x).flatten(2).transpose(1, 2)
    got = patchify(x, (4, 4)) @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(np_patchify(x.numpy(), (4, 4)), patchify(x, (4, 4)).numpy())


def test_vit_arch():
    arch = vit_arch(build_vit(dict(BASE, mlp_ratio=2, init_values=None)))
    assert arch == {"embed_dim": 16, "num_heads": 2, "head_dim": 8, "depth": 1, "mlp_hidden": 32,
                    "patch_size": [2, 2], "img_size": [8, 8], "in_chans": 1, "num_patches": 16,
                    "num_tokens": 17, "num_classes": 3, "global_pool": "token"}


def test_supported_model_passes():
    check_supported(build_vit(dict(BASE, init_values=0.1)))


@pytest.mark.parametrize("kwargs, feature", [
    (dict(class_token=False, global_pool="avg"), "class_token=False"),
    (dict(reg_tokens=1), "register tokens"),
    (dict(qk_norm=True), "q_norm"),
    (dict(no_embed_class=True), "no_embed_class=True"),
    (dict(global_pool="avg"), "global_pool='avg'"),
    (dict(pre_norm=True), "norm_pre"),
    (dict(global_pool="avg", fc_norm=True), "global_pool='avg'"),
    (dict(act_layer="gelu_tanh"), "mlp.act"),
])
def test_unsupported_features_are_named(kwargs, feature):
    torch.manual_seed(0)
    model = VisionTransformer(**BASE, **kwargs).eval()
    with pytest.raises(InputError) as ei:
        check_supported(model)
    msg = str(ei.value)
    assert feature in msg and "unsupported ViT feature" in msg and "\n" not in msg, msg


def test_not_a_vit():
    with pytest.raises(InputError, match="only timm's VisionTransformer"):
        check_supported(torch.nn.Linear(2, 2))


def test_recipe_build_refuses_unsupported_model():
    from reference.recipes import quantize
    from reference.recipes.config import RecipeConfig

    torch.manual_seed(0)
    model = VisionTransformer(**BASE, qk_norm=True).eval()
    with pytest.raises(InputError, match="q_norm"):
        quantize(model, random_images(dict(BASE), 2), RecipeConfig(calib_images=2))
