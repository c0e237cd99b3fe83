"""reference.lower turns timm Vision Transformers into the typed graph, and
the float walk of that graph computes timm's own forward (float64, 1e-9);
what cannot be lowered is refused with one line naming the module path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

import reference
from reference.float_ops import float_forward
from reference.lowering import LoweringError, lower
from reference.lowering.coverage import CONFIGURATIONS, build, max_error, perturb_
from simulator import ir
from simulator.errors import InputError
from strategies import build_vit, lowering_configs, random_images

SUPPORTED = [c for c in CONFIGURATIONS if c.refusal is None]
REFUSED = [c for c in CONFIGURATIONS if c.refusal is not None]
TOL = 1e-9


@pytest.mark.parametrize("cfg", SUPPORTED, ids=[c.name for c in SUPPORTED])
def test_float_walk_matches_timm(cfg):
    assert max_error(cfg) <= TOL


@pytest.mark.parametrize("cfg", REFUSED, ids=[c.name for c in REFUSED])
def test_refusal_is_one_line_naming_the_module(cfg):
    model = build(cfg)
    with pytest.raises(LoweringError) as err:
        lower(model, image_size=cfg.image_size)
    assert str(err.value) == cfg.refusal
    assert isinstance(err.value, InputError) and "\n" not in str(err.value)


def _small(**kw):
    cfg = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=1, num_heads=2, num_classes=5)
    return build_vit({**cfg, **kw}, seed=3).double()


def test_public_api_and_boundary_names():
    model = _small(depth=2)
    graph = reference.lower(model)
    shapes = ir.tensor_shapes(graph, batch=2)
    t, d = 17, 24
    assert shapes["images"] == (2, 3, 16, 16) and shapes["input"] == (2, 16, 48)
    for i in range(2):
        p = f"blocks.{i}."
        assert shapes[p + "q"] == shapes[p + "k"] == shapes[p + "v"] == (2, 2, t, 12)
        assert shapes[p + "attn_logits"] == shapes[p + "attn"] == (2, 2, t, t)
        assert shapes[p + "fc1"] == shapes[p + "gelu"] == (2, t, 4 * d)
        for name in ("norm1", "attn_out", "x_mid", "norm2", "x_out"):
            assert shapes[p + name] == (2, t, d), name
    assert shapes["x0"] == (2, t, d) and shapes["norm"] == (2, d) and shapes["logits"] == (2, 5)
    x = torch.from_numpy(random_images(dict(in_chans=3, img_size=16), 2, seed=1)).double()
    torch.testing.assert_close(reference.float_forward(graph, x), model(x), rtol=TOL, atol=TOL)


def test_walk_boundaries_equal_timm_module_outputs():
    """The calibration boundaries that a timm module produces have the module's value (forward hooks)."""
    model = build_vit(dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=2, num_heads=2,
                           num_classes=5, init_values=0.1), seed=4)
    x = torch.from_numpy(random_images(dict(in_chans=3, img_size=16), 2, seed=4))
    modules = {"logits": model.head}
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        modules.update({p + "norm1": blk.norm1, p + "attn.qkv": blk.attn.qkv, p + "norm2": blk.norm2,
                        p + "fc1": blk.mlp.fc1, p + "gelu": blk.mlp.act, p + "x_out": blk})
    timm_out = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: timm_out.__setitem__(n, out.detach()))
             for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    seen = {}
    float_forward(lower(model), x, torch.float32, keep=seen.__setitem__)
    assert timm_out.keys() == modules.keys()
    for name, value in timm_out.items():
        torch.testing.assert_close(seen[name], value, rtol=1e-5, atol=1e-5, msg=name)


def test_layer_scale_folds_into_the_preceding_linear():
    model = _small(init_values=0.5)
    graph = lower(model)
    assert {type(op).__name__ for op in graph.ops} == {"Patchify", "Linear", "TokenConcat", "AddConst", "LayerNorm",
                                                       "SplitHeads", "MatMul", "Softmax", "MergeHeads",
                                                       "Activation", "Pool", "Head"}
    blk = model.blocks[0]
    before = blk.mlp.fc2.weight.detach().clone()
    w = graph.params["blocks.0.mlp.fc2"]["weight"]
    want = (blk.ls2.gamma[:, None] * blk.mlp.fc2.weight).detach().numpy()
    np.testing.assert_allclose(w, want, rtol=1e-15)
    assert torch.equal(blk.mlp.fc2.weight, before) and not w.flags.writeable    # the model is not touched
    assert graph.op("blocks.0.mlp.fc2").inputs == ("blocks.0.gelu", "blocks.0.x_mid")


def test_float32_walk_is_close_to_timm_float32():
    model = build_vit(dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=2, num_heads=2,
                           num_classes=5), seed=5)
    x = torch.from_numpy(random_images(dict(in_chans=3, img_size=16), 2, seed=5))
    out = float_forward(lower(model), x, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_only_vision_transformers_are_lowered():
    with pytest.raises(LoweringError, match=r"^model: torch.nn.modules.linear.Linear is not a timm VisionTransformer or SwinTransformer$"):
        lower(nn.Linear(2, 2).eval())


def test_training_mode_is_refused():
    model = _small().train()
    with pytest.raises(LoweringError, match=r"^model: in training mode .*call model.eval\(\) first$"):
        lower(model)


def test_image_size_rules_follow_timm():
    with pytest.raises(LoweringError, match=r"^patch_embed: the model takes 16x16 images \(strict_img_size\), "
                                            r"not 20x20$"):
        lower(_small(), image_size=(20, 20))
    dyn = _small(dynamic_img_size=True)
    with pytest.raises(LoweringError, match=r"^patch_embed: image 18x16 is not a multiple of the 4x4 patch"):
        lower(dyn, image_size=(18, 16))
    graph = lower(dyn, image_size=(24, 20))
    assert graph.image_size == (24, 20) and ir.tensor_shapes(graph)["x0"] == (1, 31, 24)
    with pytest.raises(InputError, match=r"^pos_embed: the graph holds a 31-token position embedding"):
        ir.tensor_shapes(graph, image_size=(16, 16))


def test_no_pos_embed_graph_takes_any_image_size():
    graph = lower(_small(pos_embed="none", class_token=False, global_pool="avg"))
    assert ir.tensor_shapes(graph, image_size=(40, 23))["pool"] == (1, 24)


def test_an_unaccounted_child_is_refused():
    model = _small()
    model.blocks[0].extra = nn.Linear(2, 2)
    with pytest.raises(LoweringError) as err:
        lower(model.double().eval())
    assert str(err.value) == "blocks.0.extra: Linear is not accounted for by the Block lowering rule"


def test_a_subclass_needs_its_own_rule():
    class MyAttention(Attention):
        pass

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2, num_classes=5,
                              attn_layer=MyAttention).eval()
    with pytest.raises(LoweringError, match=r"^blocks.0.attn: no lowering rule for .*MyAttention$"):
        lower(model)


def test_layer_scale_that_cannot_fold_is_refused():
    model = _small(init_values=0.5)
    model.blocks[0].attn.proj = nn.Identity()         # ls1 now follows MergeHeads, not a linear
    with pytest.raises(LoweringError, match=r"^blocks.0.ls1: LayerScale does not follow a linear layer"):
        lower(model.eval())


@settings(max_examples=40)
@given(drawn=lowering_configs())
def test_random_configurations_match_timm(drawn):
    model_cls, kwargs, image_size, seed = drawn
    torch.manual_seed(seed)
    model = model_cls(**kwargs).eval().double()
    perturb_(model, seed + 1)
    h, w = image_size
    x = torch.randn(2, kwargs["in_chans"], h, w, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    graph = lower(model, image_size=image_size)
    with torch.no_grad():
        ref = model(x)
    out = float_forward(graph, x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=TOL, atol=TOL)
    assert ir.tensor_shapes(graph, batch=2)[graph.outputs[0]] == tuple(ref.shape)
