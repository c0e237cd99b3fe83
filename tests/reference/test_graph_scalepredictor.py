"""ScalePredictor on the lowered graph: the ``predicted`` quantizer kind.

* On the bundled default model ``scalepredictor_w4a4`` and
  ``scalepredictor_w6a6`` predict the seven boundaries of every block and
  both graph executors agree (identity with the removed legacy executor:
  tests/reference/test_legacy_golden.py).
* Degree 0 equals the static recipe on the graph, at every tensor.
* On random timm configurations x bit-widths x degree both graph executors
  give identical codes and traces.
* Save/load round-trips a predicted graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hwmodels
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.lowering import lower
from reference.recipes.config import RecipeConfig, load_recipe
from reference.recipes.scalepredictor_graph import predicted_boundaries, quantize_scalepredictor_graph
from reference.recipes.static_graph import quantize_graph
from simulator.int_ops import GraphIntegerExecutor
from simulator.predicted_graph import gain_factor, predicted_tensors
from simulator.qgraph import QuantizedGraph
from simulator.results import first_mismatch
from strategies import BIT_WIDTHS, build_vit, lowering_configs, random_images
from strategies import random_model
from test_graph_static import SMALL

PREDICTED = ("norm1", "q", "k", "v", "attn_out", "norm2", "gelu")


@pytest.mark.parametrize("recipe", ["scalepredictor_w4a4", "scalepredictor_w6a6"])
def test_predicted_boundaries_on_the_default_model(digits, recipe):
    """Predicted scales on the seven boundaries of every block, two predictor records costed on the
    SFU, both executors identical (identity with the removed legacy executor, coefficients, codes,
    records: tests/reference/test_legacy_golden.py)."""
    model, calib, test = digits
    cfg = load_recipe(f"configs/recipes/{recipe}.yaml")
    qg = quantize_scalepredictor_graph(model, calib, cfg)
    depth = len(model.blocks)
    names = qg.meta["scale_predictor"]["boundaries"]
    assert names == [f"blocks.{i}.{b}" for i in range(depth) for b in PREDICTED]
    assert (qg.quantizers["x0"].kind, qg.quantizers["blocks.0.attn.qkv"].predictor.coeffs.shape) == (
        "static", (3 * model.embed_dim, 4))
    rn = GraphIntegerExecutor(qg).run(test)
    pred = [r for r in rn.trace.layers if r.kind == "scale_predictor"]
    assert len(pred) == 2
    npu = hwmodels.load("configs/npu_int8.yaml")
    cn = hwmodels.estimate(rn.trace, npu)
    assert sum(c.cycles for c in cn.layers if c.kind == "scale_predictor") > 0
    rf = GraphFakeQuantExecutor(qg).run(test[:16])
    assert first_mismatch({k: v[:16] for k, v in rn.codes.items()}, rf.codes) is None


def test_degree_0_equals_static_on_the_graph():
    model = build_vit(SMALL, seed=3)
    images = random_images(SMALL, 20, seed=3)
    base = dict(w_bits=4, a_bits=4, calib_images=12)
    qs = quantize_graph(model, images[:12], RecipeConfig(**base))
    qp = quantize_scalepredictor_graph(model, images[:12], RecipeConfig(recipe="scalepredictor", params={"degree": 0},
                                                                         **base))
    assert len(predicted_tensors(qp)) > 0 and all(not p.coeffs.any() for p in predicted_tensors(qp).values())
    rs, rp = GraphIntegerExecutor(qs).run(images[12:]), GraphIntegerExecutor(qp).run(images[12:])
    assert first_mismatch(rs.codes, rp.codes) is None
    assert [r for r in rp.trace.layers if r.kind != "scale_predictor"] == rs.trace.layers


@settings(max_examples=20, deadline=None)
@given(drawn=lowering_configs(), bits=st.sampled_from(BIT_WIDTHS), degree=st.integers(0, 3))
def test_both_graph_executors_give_identical_codes(drawn, bits, degree):
    model, image_size, images = random_model(drawn)
    graph = lower(model, image_size=image_size)
    cfg = RecipeConfig(recipe="scalepredictor", w_bits=bits[0], a_bits=bits[1], calib_images=6,
                       params={"degree": degree, "permille": 990})
    qg = quantize_scalepredictor_graph(graph, images[:6], cfg)
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert ri.codes.keys() == rf.codes.keys() == set(graph.tensor_names()[1:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows


def test_predicted_boundaries_and_save_load(tmp_path):
    model = build_vit(SMALL, seed=4, qk_norm=True)
    images = random_images(SMALL, 16, seed=4)
    qg = quantize_scalepredictor_graph(model, images[:10], RecipeConfig(recipe="scalepredictor", calib_images=10,
                                                                         a_bits=6, w_bits=6))
    names = qg.meta["scale_predictor"]["boundaries"]
    assert predicted_boundaries(qg) == []         # it picks static quantizers: all of them are predicted now
    # qk_norm: q_raw / k_raw feed a LayerNorm (eps frozen at their scale) and stay static; q, k are predicted
    assert sorted(n for n in names if n.startswith("blocks.0.")) == sorted(f"blocks.0.{b}" for b in PREDICTED)
    assert qg.quantizers["blocks.0.q_raw"].kind == "static"
    path = tmp_path / "sp.qgraph.npz"
    qg.save(path)
    back = QuantizedGraph.load(path)
    assert predicted_tensors(back).keys() == predicted_tensors(qg).keys()
    a, b = GraphIntegerExecutor(qg).run(images[10:]), GraphIntegerExecutor(back).run(images[10:])
    assert first_mismatch(a.codes, b.codes) is None and a.trace.layers == b.trace.layers


def test_gain_factor_is_the_real_factor_of_the_integer_gain():
    g = np.array([0, 1, -1, 1 << 15, -(1 << 15), 12345, -98765, 8 << 15, -(8 << 15)])
    f = gain_factor(g)
    assert f[0] == 1.0 and f[3] == 2.0 and f[4] == 0.5
    assert np.all(np.abs(f / np.exp2(g / 2.0 ** 15) - 1) < 3e-4)


def test_fitted_predictor_changes_codes_and_both_executors_agree():
    """Degree 2 on a small random model: non-zero coefficients and per-image gains that move the
    codes away from static, identically in both op sets (the rewrite is exercised, not only zero gains)."""
    model = build_vit(SMALL, seed=7)
    images = random_images(SMALL, 40, seed=7)
    images[:, :, :4] *= np.linspace(0.2, 3.0, 40)[:, None, None, None]          # images with different ranges
    base = dict(w_bits=4, a_bits=4, calib_images=30)
    qp = quantize_scalepredictor_graph(model, images[:30], RecipeConfig(recipe="scalepredictor", **base,
                                                                         params={"degree": 2, "permille": 990}))
    assert any(p.coeffs[..., 1:].any() for p in predicted_tensors(qp).values())
    ri, rf = GraphIntegerExecutor(qp).run(images[30:]), GraphFakeQuantExecutor(qp).run(images[30:])
    assert first_mismatch(ri.codes, rf.codes) is None and ri.trace.overflows == rf.trace.overflows
    rs = GraphIntegerExecutor(quantize_graph(model, images[:30], RecipeConfig(**base))).run(images[30:])
    assert np.array_equal(rs.codes["x0"], ri.codes["x0"])                # before the predictor: static
    changed = [t for t in qp.meta["scale_predictor"]["boundaries"] if not np.array_equal(rs.codes[t], ri.codes[t])]
    assert len(changed) >= len(qp.meta["scale_predictor"]["boundaries"]) // 2, changed
