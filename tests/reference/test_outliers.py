"""reference.outliers: planted post-LayerNorm outliers keep the float function (float64) while
the planted channels' ranges grow by exactly their alpha; the planted model still lowers to a
graph whose float walk is timm's forward; the draw is a function of the seed; norms whose
output is not read only by linears are skipped with a reason and left untouched."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.float_ops import float_forward
from reference.lowering import lower
from reference.lowering.coverage import CONFIGURATIONS, build, images_for
from reference.outliers import LAYERS, OutlierSpec, parse_outlier_spec, plant_outliers
from simulator.errors import InputError
from strategies import build_vit, random_images, vit_configs

SUPPORTED = [c for c in CONFIGURATIONS if c.refusal is None]
REL_TOL = 1e-12           # float64: reparameterisation is exact up to a few ulps


def _norm_ranges(model, x) -> dict[str, torch.Tensor]:
    """Per-channel max |y| of every LayerNorm output (over batch and tokens)."""
    out, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, y, name=name: out.__setitem__(name, y.abs().reshape(-1, y.shape[-1]).amax(0))))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    out["logits"] = logits
    return out


@st.composite
def specs(draw):
    lo = draw(st.floats(0.05, 200.0))
    hi = draw(st.sampled_from([lo, lo * draw(st.floats(1.0, 50.0))]))
    layers = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=3, unique=True))
    return OutlierSpec(fraction=draw(st.floats(0.0, 1.0)), alpha_range=(lo, hi), seed=draw(st.integers(0, 2**31)),
                       layers=tuple(layers))


@settings(max_examples=25)
@given(cfg=vit_configs(layer_scale=st.booleans()), spec=specs(), pool=st.sampled_from(["token", "avg"]))
def test_float_function_unchanged_and_ranges_scaled_by_alpha(cfg, spec, pool):
    model = build_vit(cfg, seed=3, global_pool=pool).double()
    x = torch.as_tensor(random_images(cfg, 3, seed=4), dtype=torch.float64)
    before = _norm_ranges(model, x)
    report = plant_outliers(model, spec)
    after = _norm_ranges(model, x)

    ref = before["logits"]
    assert (after["logits"] - ref).abs().max() <= REL_TOL * max(ref.abs().max().item(), 1.0)
    expected = {"blocks.{}.norm1".format(i): "norm1" for i in range(cfg["depth"])}
    expected.update({"blocks.{}.norm2".format(i): "norm2" for i in range(cfg["depth"])})
    expected["fc_norm" if pool == "avg" else "norm"] = "final"
    assert {p.norm for p in report.planted} == {n for n, layer in expected.items() if layer in spec.layers}
    assert report.skipped == ()
    planted = {p.norm: p for p in report.planted}
    for name, r0 in before.items():
        if name == "logits":
            continue
        factor = torch.ones_like(r0)
        if name in planted:
            p = planted[name]
            assert len(p.channels) == (0 if spec.fraction == 0 else max(1, round(spec.fraction * r0.numel())))
            assert all(spec.alpha_range[0] * (1 - 1e-12) <= a <= spec.alpha_range[1] * (1 + 1e-12) for a in p.alphas)
            factor[list(p.channels)] = torch.tensor(p.alphas, dtype=factor.dtype)
        torch.testing.assert_close(after[name], r0 * factor, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cfg", SUPPORTED, ids=[c.name for c in SUPPORTED])
def test_planted_model_lowers_to_timm_forward(cfg):
    model = build(cfg)
    x = images_for(cfg)
    with torch.no_grad():
        ref = model(x)
        params = {k: v.clone() for k, v in model.state_dict().items()}
        report = plant_outliers(model, OutlierSpec(fraction=0.25, alpha_range=(20.0, 100.0), seed=7))
        got = float_forward(lower(model, image_size=cfg.image_size), x, torch.float64)
    assert report.planted
    scale = max(ref.abs().max().item(), 1.0)
    assert (got - ref).abs().max() <= 1e-9 * scale        # the graph of the planted model is still timm's function
    assert (model(x) - ref).abs().max() <= REL_TOL * scale
    skipped = {name for name, _ in report.skipped}
    for key, value in model.state_dict().items():         # skipped norms and their readers are untouched
        if any(key.startswith(name + ".") for name in skipped):
            assert torch.equal(value, params[key]), key


def test_respost_norms_are_skipped_with_the_reason():
    cfg = next(c for c in SUPPORTED if c.name == "ResPostBlock")
    report = plant_outliers(build(cfg), OutlierSpec())
    assert [n for n, _ in report.skipped] == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2"]
    assert all("after the residual add" in why for _, why in report.skipped)
    assert [p.norm for p in report.planted] == ["norm"]


def test_features_model_skips_the_final_norm():
    cfg = next(c for c in SUPPORTED if c.name == "num_classes=0 (features)")
    report = plant_outliers(build(cfg), OutlierSpec())
    assert report.skipped == (("norm", "its output is the model's output (no linear head, e.g. num_classes=0)"),)


def test_parallel_scaling_in_norm_counts_as_norm1_and_norm2():
    cfg = next(c for c in SUPPORTED if c.name.startswith("ParallelScalingBlock (+"))
    for layers in (("norm1",), ("norm2",)):
        report = plant_outliers(build(cfg), OutlierSpec(layers=layers))
        assert [p.norm for p in report.planted] == ["blocks.0.in_norm", "blocks.1.in_norm"]
        assert report.planted[0].linears == ("blocks.0.in_proj",)


def test_same_seed_same_model_other_seed_other_channels():
    cfg = {"depth": 2, "num_heads": 2, "embed_dim": 64, "mlp_ratio": 2, "img_size": 8, "patch_size": 4,
           "in_chans": 1, "num_classes": 3, "init_values": None}
    a, b, c = (build_vit(cfg, seed=1) for _ in range(3))
    ra = plant_outliers(a, OutlierSpec(seed=5))
    rb = plant_outliers(b, OutlierSpec(seed=5))
    rc = plant_outliers(c, OutlierSpec(seed=6))
    assert ra == rb
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [p.channels for p in ra.planted] != [p.channels for p in rc.planted]
    assert all(len(p.channels) == 3 for p in ra.planted)          # round(0.05 * 64)


def test_parse_inline_file_and_default(tmp_path):
    assert parse_outlier_spec("default") == OutlierSpec()
    spec = parse_outlier_spec("{fraction: 0.02, alpha_range: [20, 100], seed: 3, layers: [norm1]}")
    assert spec == OutlierSpec(fraction=0.02, alpha_range=(20, 100), seed=3, layers=("norm1",))
    path = tmp_path / "spec.yaml"
    path.write_text("fraction: 0.1\nalpha_range: [5, 5]\n")
    assert parse_outlier_spec(str(path)) == OutlierSpec(fraction=0.1, alpha_range=(5, 5))


@pytest.mark.parametrize("text, message", [
    ("{fraktion: 0.1}", "--plant-outliers: unknown key 'fraktion' (did you mean 'fraction'?)"),
    ("{fraction: 2}", "--plant-outliers: fraction: expected a number in [0, 1], got 2"),
    ("{alpha_range: [10, 1]}", "--plant-outliers: alpha_range: expected [lo, hi] with 0 < lo <= hi"),
    ("{alpha_range: [0, 1]}", "--plant-outliers: alpha_range: expected [lo, hi] with 0 < lo <= hi"),
    ("{layers: [norm3]}", "--plant-outliers: layers: unknown layer 'norm3'"),
    ("{seed: -1}", "--plant-outliers: seed: expected a non-negative int"),
    ("[1, 2]", "--plant-outliers: expected a mapping"),
    ("{fraction: [", "--plant-outliers: invalid YAML"),
])
def test_bad_spec_is_one_line(text, message):
    with pytest.raises(InputError) as err:
        parse_outlier_spec(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_refuses_a_model_that_is_not_a_vision_transformer():
    with pytest.raises(InputError, match="needs a timm VisionTransformer"):
        plant_outliers(torch.nn.Linear(2, 2), OutlierSpec())


def test_report_is_json_ready():
    import json
    cfg = next(c for c in SUPPORTED if c.name == "ResPostBlock")
    d = plant_outliers(build(cfg), OutlierSpec(fraction=0.1)).to_dict()
    assert json.loads(json.dumps(d))["spec"]["fraction"] == 0.1
    assert np.all(np.asarray(d["planted"][0]["alphas"]) >= 10.0)
