"""The tsptq recipe: params validation, the V-2SF / O-2SF searches, freezing."""

from __future__ import annotations

import numpy as np
import pytest

from reference.recipes import quantize
from reference.recipes.config import load_recipe, recipe_from_dict
from reference.recipes.tsptq import (TsptqParams, _v2sf_fast, parse_params, search_gelu, search_outliers,
                                     search_softmax, v2sf_fake_quantize)
from reference.quantizers import calibrate, fake_quantize
from simulator.errors import InputError
from simulator.qgraph import QuantizedGraph
from strategies import build_vit, random_images


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_recipe_files_load(bits):
    cfg = load_recipe(f"configs/recipes/tsptq_w{bits}a{bits}.yaml")
    assert (cfg.recipe, cfg.w_bits, cfg.a_bits) == ("tsptq", bits, bits)
    assert parse_params(cfg.params) == TsptqParams()


@pytest.mark.parametrize("params, needle", [
    ({"sofmax": True}, "params.sofmax: unknown"),
    ({"gelu": 1}, "params.gelu: expected true or false"),
    ({"max_ratio_shift": 0}, "params.max_ratio_shift: expected an integer in [1, 12]"),
    ({"outlier_thresholds": [4, 0.5]}, "params.outlier_thresholds"),
    ({"outlier_thresholds": "4"}, "params.outlier_thresholds"),
    ({"objective": "loss"}, "params.objective: expected output or tensor"),
    ({"objective_images": 0}, "params.objective_images"),
])
def test_bad_params_name_file_and_field(tmp_path, params, needle):
    with pytest.raises(InputError) as e:
        recipe_from_dict({"recipe": "tsptq", "params": params}, where="r.yaml")
    assert str(e.value).startswith("r.yaml: ") and needle in str(e.value)
    assert "\n" not in str(e.value)


def _heavy_tail(n=40000, seed=0):
    """Softmax-like: most probabilities tiny, a few near 1 (rows of 32 with peaked logits)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n // 32, 32)) * 3.0
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).ravel()


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_v2sf_beats_uniform_on_softmax(bits):
    p = _heavy_tail()
    f, r, err = search_softmax(p, bits, 8)
    assert 1 <= r <= f
    uniform = np.clip(np.floor(p * 2 ** bits + 0.5), 0, 2 ** bits - 1) * 2.0 ** -bits   # the static quantizer
    assert err < np.mean((p - uniform) ** 2)
    assert err == pytest.approx(np.mean((p - v2sf_fake_quantize(p, 2.0 ** -f, r, bits, 0)) ** 2), rel=1e-4)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_v2sf_beats_uniform_on_gelu(bits):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(40000) * 1.2 - 0.8
    x[:40] *= 6                                                  # a long positive tail
    g = 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))
    s, r, err = search_gelu(g, bits, 8)
    static = calibrate(g, bits, "mse")
    assert err < np.mean((g - fake_quantize(g, static)) ** 2)
    assert g.min() > -0.2 and (v2sf_fake_quantize(g, s, r, bits, 1) < 0).any()   # negatives kept (fine, signed)


def test_o2sf_finds_outlier_channels():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 32))
    x[:, [3, 17]] *= 25.0
    s, shifts, err = search_outliers(x, 6, (16.0, 8.0, 4.0, 2.0), 6)
    assert set(np.flatnonzero(shifts)) == {3, 17}
    assert shifts[3] >= 3
    static = calibrate(x, 6, "mse")
    assert err < np.mean((x - fake_quantize(x, static)) ** 2)
    s0, shifts0, _ = search_outliers(rng.standard_normal((2000, 32)), 6, (16.0, 8.0), 6)
    assert not shifts0.any()                                     # no outliers -> plain per-tensor scale


def test_freeze_and_save_round_trip(tmp_path):
    cfg = dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=1,
               num_classes=5, init_values=None)
    model = build_vit(cfg, seed=3)
    with __import__("torch").no_grad():
        model.blocks[0].norm1.weight[:2] *= 10.0                # two outlier channels into qkv
    q = quantize(model, random_images(cfg, 8, seed=3), {"recipe": "tsptq", "w_bits": 6, "a_bits": 6,
                                                         "calib_images": 8})
    qa, qgelu, n1 = q.quantizers["blocks.0.attn"], q.quantizers["blocks.0.gelu"], q.params["blocks.0.norm1"]
    assert (qa.kind, qgelu.kind) == ("two_scaled", "two_scaled")
    assert qa.ratio_shift >= 1 and qgelu.ratio_shift >= 1
    assert n1.channel_shift[:2].min() >= 1 and not n1.channel_shift[2:].any()
    assert q.meta["tsptq"]["tensors"]["blocks.0.norm1"]["outliers"] == 2
    w_q = q.params["blocks.0.attn.qkv"].w_q
    assert -32 <= w_q.min() and w_q.max() <= 31                      # weight codes stay w_bits wide
    path = tmp_path / "q.npz"
    q.save(path)
    r = QuantizedGraph.load(path)
    assert r.quantizers["blocks.0.attn"] == qa and r.quantizers["blocks.0.gelu"] == qgelu
    assert np.array_equal(r.params["blocks.0.norm1"].channel_shift, n1.channel_shift)
    assert r.meta == q.meta


def test_output_objective_weighs_attention_output():
    """The attn·V objective ranks by the output error: it never loses to the tensor-MSE choice there."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((64, 16, 16)) * 3.0
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    v = rng.standard_normal((64, 16, 8))
    fo, ro, err_o = search_softmax(p, 4, 8, v=v)
    ft, rt, _ = search_softmax(p, 4, 8)
    # the search ranks candidates by a float32 objective; evaluate the tensor-MSE
    # choice with that same expression, so the comparison is exact (a float64
    # re-evaluation differs from it by float32 rounding, ~1e-7 relative)
    p32, v32 = p.astype(np.float32), v.astype(np.float32)
    err_t = float(np.mean(((_v2sf_fast(p32, 2.0 ** -ft, rt, 4, 0) - p32) @ v32) ** 2))
    assert err_o <= err_t
    assert err_o == pytest.approx(np.mean(((v2sf_fake_quantize(p, 2.0 ** -fo, ro, 4, 0) - p) @ v) ** 2), rel=1e-4)
