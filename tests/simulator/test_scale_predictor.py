"""The fixed-point ScalePredictor: polynomial, statistic and gains against
Python-int oracles (numpy, torch and numba run the same source), and the
scalepredictor recipe bit-exact between both executors end to end."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oracles
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.fakequant_predicted import predict_log2 as torch_predict_log2
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from reference.recipes.scalepredictor import parse_params
from simulator.errors import InputError
from simulator.int_ops import GraphIntegerExecutor
from simulator.predicted_scales import predict_log2
from dataclasses import replace

from simulator.qgraph import PredictedScale, QuantizedGraph
from simulator.results import bit_exact_images, first_mismatch
from simulator.scale_predictor import (COEF_LIMIT, HORNER_LIMIT, LOG2_LIMIT, PRED_FRAC_BITS, gain_mantissa,
                                       gain_shift, horner_log2, normalise_statistic, scale_multiplier,
                                       scale_shift)
from strategies import _ints, build_vit, random_images, vit_configs

ONE = 1 << PRED_FRAC_BITS


# --- Python-int oracles (from the module docstring's formulas) ------------------------------------
def horner_oracle(x: int, coeffs) -> int:
    h = int(coeffs[3])
    for c in (coeffs[2], coeffs[1], coeffs[0]):
        h = oracles.saturate(oracles.round_div_pow2(h * x, PRED_FRAC_BITS) + int(c), -HORNER_LIMIT, HORNER_LIMIT)
    return oracles.saturate(h, -LOG2_LIMIT, LOG2_LIMIT)


def normalise_oracle(stat: int, center: int, shift: int) -> int:
    return oracles.saturate(oracles.round_div_pow2((stat - center) * ONE, shift), -ONE, ONE)


def statistic_oracle(codes, permille: int) -> int:
    a = sorted(abs(int(c)) for c in codes)
    return a[min(len(a) * permille // 1000, len(a) - 1)]


def gain_oracle(mult: int, shift: int, g: int) -> tuple[int, int]:
    q, r = divmod(-g, ONE)                     # floor division: 0 <= r < 2**15
    mant = oracles.round_div_pow2(oracles.exp2_neg(r), 15)
    return oracles.round_div_pow2(mult * mant, 15), oracles.saturate(shift + q, 0, 62)


coefficients = st.lists(_ints(-COEF_LIMIT, COEF_LIMIT), min_size=4, max_size=4)
degrees = st.integers(0, 3)
xs = _ints(-ONE, ONE)


@given(x=xs, c=coefficients, degree=degrees)
def test_horner_matches_oracle_on_ints_numpy_torch(x, c, degree):
    c = c[:degree + 1] + [0] * (3 - degree)
    want = horner_oracle(x, c)
    assert horner_log2(x, *c) == want
    assert int(horner_log2(np.int64(x), *[np.int64(v) for v in c])) == want
    assert int(horner_log2(torch.tensor(x), *[torch.tensor(v) for v in c])) == want
    assert -LOG2_LIMIT <= want <= LOG2_LIMIT


def test_horner_saturates_at_both_limits():
    assert horner_log2(ONE, COEF_LIMIT, COEF_LIMIT, COEF_LIMIT, COEF_LIMIT) == LOG2_LIMIT
    assert horner_log2(-ONE, -COEF_LIMIT, COEF_LIMIT, -COEF_LIMIT, COEF_LIMIT) == -LOG2_LIMIT
    # the inner accumulator saturates too: c3 x saturates before c2 pulls it back
    assert horner_log2(ONE, 0, 0, -COEF_LIMIT, COEF_LIMIT) == horner_oracle(ONE, [0, 0, -COEF_LIMIT, COEF_LIMIT])
    assert horner_log2(0, 123, 456, 789, 1011) == 123          # x = 0 leaves c0


@given(stat=_ints(0, (1 << 15)), center=_ints(0, 1 << 15), shift=st.integers(0, 16))
def test_normalise_statistic_matches_oracle(stat, center, shift):
    assert normalise_statistic(stat, center, shift) == normalise_oracle(stat, center, shift)


@given(mult=_ints(0, (1 << 31) - 1), shift=st.integers(0, 62), g=_ints(-2 * LOG2_LIMIT, 2 * LOG2_LIMIT))
def test_gain_matches_oracle_and_real_factor(mult, shift, g):
    m2, k2 = gain_oracle(mult, shift, g)
    assert (scale_multiplier(mult, shift, g), scale_shift(shift, g)) == (m2, k2)
    t = torch.tensor([g])
    assert int(scale_multiplier(torch.tensor([mult]), shift, t)[0]) == m2
    assert m2 < (1 << 31)
    mant, q = gain_mantissa(g), gain_shift(g)
    assert (1 << 14) - 8 <= mant <= (1 << 15)          # 2**-f polynomial dips just below 1/2 near f = 1
    assert abs(mant * 2.0 ** (-15 - q) / 2.0 ** (g / ONE) - 1) < 3e-4    # polynomial + Q15 rounding


@settings(max_examples=30)
@given(data=st.data(), nb=st.integers(1, 9), degree=degrees, permille=st.integers(500, 1000))
def test_predictor_kernel_and_torch_match_oracle(data, nb, degree, permille):
    """The numba kernel and the torch evaluation of statistic + normalisation + Horner."""
    b, t, d = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6))
    codes = np.array(data.draw(st.lists(_ints(-(1 << 15), (1 << 15) - 1), min_size=b * t * d,
                                        max_size=b * t * d)), dtype=np.int64).reshape(b, t, d)
    coeffs = np.zeros((nb, 4), dtype=np.int64)
    coeffs[:, :degree + 1] = np.array(data.draw(st.lists(_ints(-COEF_LIMIT, COEF_LIMIT), min_size=nb * (degree + 1),
                                                         max_size=nb * (degree + 1)))).reshape(nb, degree + 1)
    sp = PredictedScale(source="x0", permille=permille, center=data.draw(_ints(0, 1 << 15)),
                        norm_shift=data.draw(st.integers(0, 16)), degree=degree, coeffs=coeffs)
    stats, out = predict_log2(codes.astype(np.int16), sp)
    tstats, tout = torch_predict_log2(torch.as_tensor(codes), sp)
    for i in range(b):
        s = statistic_oracle(codes[i].ravel(), permille)
        x = normalise_oracle(s, sp.center, sp.norm_shift)
        assert stats[i] == s == int(tstats[i])
        assert out[i].tolist() == tout[i].tolist() == [horner_oracle(x, c) for c in coeffs]


# --- recipe + executors --------------------------------------------------------------------------
def _sp(cfg, seed, bits, degree, n_calib=8):
    rc = RecipeConfig(recipe="scalepredictor", w_bits=bits[0], a_bits=bits[1], weight_calibration="minmax",
                      act_calibration="mse", calib_images=n_calib, params={"degree": degree})
    return quantize(build_vit(cfg, seed=seed), random_images(cfg, n_calib, seed=seed), rc, model_name="rand")


def _predictors(q):
    return [qz.predictor for qz in q.quantizers.values() if qz.kind == "predicted"]


def _equal(q, images):
    rf, ri = GraphFakeQuantExecutor(q).run(images), GraphIntegerExecutor(q).run(images)
    ok = bit_exact_images(rf.codes, ri.codes)
    assert ok.all(), first_mismatch(rf.codes, ri.codes)
    assert np.array_equal(rf.logit_codes, ri.logit_codes)
    assert rf.trace.layers == ri.trace.layers and rf.trace.overflows == ri.trace.overflows
    return rf, ri


@settings(max_examples=12)
@given(cfg=vit_configs(layer_scale=st.booleans()), seed=st.integers(0, 500), degree=degrees,
       bits=st.sampled_from([(4, 4), (6, 6), (8, 8)]), boost=st.sampled_from([1.0, 30.0]))
def test_random_vits_bit_exact(cfg, seed, degree, bits, boost):
    q = _sp(cfg, seed, bits, degree)
    sps = _predictors(q)
    assert sps and all(sp.degree == degree and (sp.coeffs[..., degree + 1:] == 0).all() for sp in sps)
    images = np.concatenate([random_images(cfg, 3, seed=seed + 1), random_images(cfg, 2, seed=seed + 2,
                                                                                   scale=boost)])
    _equal(q, images)


@pytest.fixture(scope="module")
def small():
    cfg = dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=1,
               num_classes=5, init_values=None)
    return cfg


def test_degree_zero_is_static(small):
    """Degree 0: every gain is 2**0 exactly, so the codes equal the static recipe's."""
    q0 = _sp(small, 3, (4, 4), 0)
    assert all((sp.coeffs == 0).all() for sp in _predictors(q0))
    rc = RecipeConfig(w_bits=4, a_bits=4, weight_calibration="minmax", act_calibration="mse", calib_images=8)
    qs = quantize(build_vit(small, seed=3), random_images(small, 8, seed=3), rc, model_name="rand")
    images = random_images(small, 5, seed=9)
    a, b = GraphFakeQuantExecutor(q0).run(images).codes, GraphFakeQuantExecutor(qs).run(images).codes
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_prediction_changes_codes_and_is_traced(small, tmp_path):
    q = _sp(small, 4, (4, 4), 2, n_calib=16)
    assert max(np.abs(sp.coeffs).max() for sp in _predictors(q)) > 0
    images = random_images(small, 6, seed=5, scale=3.0)
    rf, ri = _equal(q, images)
    q0 = _sp(small, 4, (4, 4), 0, n_calib=16)       # the same model with every gain 2**0
    assert not np.array_equal(GraphFakeQuantExecutor(q0).run(images).codes["blocks.1.gelu"], rf.codes["blocks.1.gelu"])
    recs = [r for r in ri.trace.layers if r.kind == "scale_predictor"]
    assert [r.name for r in recs] == ["scale_predictor.statistic", "scale_predictor.multipliers"]
    assert recs[0].elements == small["embed_dim"] * (16 + 1)
    import hwmodels
    rep = hwmodels.estimate(ri.trace, hwmodels.load("configs/npu_int8.yaml"))
    unit = [c for c in rep.layers if c.kind == "scale_predictor"]
    assert len(unit) == 2 and all(c.unit == "scale_predictor" and c.cycles > 0 for c in unit)
    path = tmp_path / "sp.qvit.npz"
    q.save(path)
    q2 = QuantizedGraph.load(path)
    assert [sp.coeffs.tolist() for sp in _predictors(q2)] == [sp.coeffs.tolist() for sp in _predictors(q)]
    assert np.array_equal(GraphIntegerExecutor(q2).run(images).logit_codes, ri.logit_codes)


@pytest.mark.parametrize("params, field", [({"degree": 4}, "degree"), ({"degree": "2"}, "degree"),
                                           ({"permille": 100}, "permille"), ({"order": 2}, "order")])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(InputError, match=rf"^r\.yaml: params\.{field}: "):
        parse_params(params, where="r.yaml")


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_default_model_w4a4_bit_exact():
    import reference
    m = reference.load_model()
    calib, _ = reference.load_dataset("digits", m, split="calib", limit=48)
    test, _ = reference.load_dataset("digits", m, split="test", limit=24)
    q = quantize(m, calib, RecipeConfig(recipe="scalepredictor", w_bits=4, a_bits=4, calib_images=48,
                                        params={"degree": 2}))
    rf, _ = _equal(q, test)
    sp = next(p for p in _predictors(q) if p.coeffs.ndim == 2 and p.coeffs.shape[0] == 1 or p.coeffs.ndim == 1)
    coeffs = np.atleast_2d(sp.coeffs)
    assert len(np.unique(predict_log2(rf.codes[sp.source], replace(sp, coeffs=coeffs))[1], axis=0)) > 1


@pytest.mark.parametrize("name", ["scalepredictor_w4a4", "scalepredictor_w6a6"])
def test_bundled_yaml_params_valid(name):
    from reference.recipes.config import load_recipe
    cfg = load_recipe(f"configs/recipes/{name}.yaml")
    assert cfg.recipe == "scalepredictor"
    assert parse_params(cfg.params, where=name) == parse_params({"degree": 2, "permille": 999})
