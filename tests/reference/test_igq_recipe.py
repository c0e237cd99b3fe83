"""igq recipe: params validation, group-exponent choice, BOP-budget allocation, hwmodels costing."""

from __future__ import annotations

import re

import numpy as np
import pytest

import hwmodels
from hwmodels.cost import layer_cost
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig, recipe_from_dict
from reference.recipes.igq import choose_exps, parse_params
from reference.recipes.igq_graph_allocation import graph_total_bops as total_bops
from simulator.errors import InputError
from simulator.int_ops import GraphIntegerExecutor
from simulator.igq import overhead_bops
from simulator.trace import LayerRecord
from strategies import build_vit, random_images

CFG = dict(depth=1, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=3,
           num_classes=5, init_values=None)


def _rc(**params):
    return RecipeConfig(recipe="igq", w_bits=4, a_bits=4, weight_calibration="minmax", act_calibration="minmax",
                        calib_images=6, params=params)


@pytest.mark.parametrize("params, msg", [
    ({}, "exactly one of groups"),
    ({"groups": 2, "bop_budget": 1.1}, "exactly one of groups"),
    ({"groups": 3}, "params.groups: expected one of"),
    ({"bop_budget": -1}, "params.bop_budget: expected a positive number"),
    ({"groups": 2, "max_exps": 3}, "params.max_exps: unknown field (did you mean 'max_exp'?)"),
    ({"bop_budget": 1.1, "candidates": [3]}, "params.candidates"),
    ({"groups": 2, "max_exp": 0}, "params.max_exp: expected an integer"),
])
def test_params_errors(params, msg):
    with pytest.raises(InputError, match=re.escape(msg)):
        parse_params(_rc(**params))


def test_recipe_yaml_accepts_igq():
    cfg = recipe_from_dict({"recipe": "igq", "w_bits": 4, "a_bits": 4, "params": {"groups": 4}})
    assert parse_params(cfg).groups == 4 and cfg.label == "igq_w4a4"


def test_choose_exps():
    # channels needing exponents 0 and 6 only: two groups pick exactly {6, 0}
    scale, hi = 1.0, 7
    amax = np.array([7.0] * 10 + [7.0 / 64] * 10)
    assert choose_exps(amax, scale, hi, 2, 10).tolist() == [6, 0]
    assert choose_exps(amax, scale, hi, 1, 10).tolist() == [0]
    assert choose_exps(amax, scale, hi, 16, 3).tolist() == [3, 2, 1, 0]   # capped by max_exp
    e = choose_exps(np.abs(np.random.default_rng(0).normal(size=500)) + 1e-3, 1.0, 7, 4, 12)
    assert len(e) == 4 and e[-1] == 0 and (np.diff(e) < 0).all()


@pytest.fixture(scope="module")
def model_and_data():
    return build_vit(CFG, seed=4), random_images(CFG, 6, seed=4)


def test_budget_too_small_names_minimum(model_and_data):
    model, cal = model_and_data
    with pytest.raises(InputError, match=r"params\.bop_budget: .* below the minimum achievable 1 "):
        quantize(model, cal, _rc(bop_budget=0.5, allocation_images=4))
    with pytest.raises(InputError, match=r"minimum achievable (1\.\d+) \(\d+ BOPs per image, every layer at G=2\)") as e:
        quantize(model, cal, _rc(bop_budget=1.0, candidates=[2, 4], allocation_images=4))
    minimum = float(re.search(r"achievable (\S+)", str(e.value)).group(1))
    assert minimum > 1.0
    q = quantize(model, cal, _rc(bop_budget=minimum * 1.000001, candidates=[2, 4], allocation_images=4))
    assert all(g >= 2 for g in q.meta["igq_groups"].values())


def test_allocation_respects_budget(model_and_data):
    model, cal = model_and_data
    tight = quantize(model, cal, _rc(bop_budget=1.0, allocation_images=4))
    assert all(g == 1 for g in tight.meta["igq_groups"].values())
    loose = quantize(model, cal, _rc(bop_budget=1.5, allocation_images=4))
    a = loose.meta["igq_allocation"]
    assert a["bops"] == total_bops(loose) <= 1.5 * a["static_bops"]
    assert a["bops"] > a["static_bops"]                      # it did spend some budget on groups
    mid_budget = (a["bops"] + a["static_bops"]) / 2 / a["static_bops"]
    mid = quantize(model, cal, _rc(bop_budget=mid_budget, allocation_images=4))
    assert total_bops(mid) <= mid_budget * a["static_bops"]


def test_hwmodels_counts_grouping(model_and_data):
    model, cal = model_and_data
    npu = hwmodels.load("configs/npu_int8.yaml")
    q1 = quantize(model, cal, _rc(groups=1))
    q8 = quantize(model, cal, _rc(groups=8))
    x = random_images(CFG, 2, seed=1)
    t1, t8 = GraphIntegerExecutor(q1).run(x).trace, GraphIntegerExecutor(q8).run(x).trace
    assert overhead_bops(t1.layers) == 0 and overhead_bops(t8.layers) > 0
    ga = [r for r in t8.layers if r.kind == "group_assign"]
    assert len(ga) == 5 and all(r.out_bits == 3 for r in ga)
    r1, r8 = hwmodels.estimate(t1, npu), hwmodels.estimate(t8, npu)
    assert r8.sfu_elements()["group_assign"] == sum(r.elements for r in ga) > 0
    assert r1.sfu_elements().get("group_assign", 0) == 0
    assert r8.sfu_elements()["requant"] > r1.sfu_elements()["requant"]    # partial-sum combines
    assert r8.cycles > r1.cycles
    # group indices: one out_bits index per grouped row written, not per element
    rec = LayerRecord(name="g", kind="group_assign", elements=1000, rows=40, in_bits=32, out_bits=4)
    c = layer_cost(rec, npu)
    assert c.write_bytes[1] == 40 * 4 / 8 + c.read_bytes[0]
    assert c.sfu_cycles[list(hwmodels.spec.SFU_UNITS).index("group_assign")] == -(-1000 // 16) * 2
