"""IGQ-ViT on the lowered graph: the ``grouped`` quantizer kind (issue 13, port of igq).

* Default model, W4A4, ``groups: 2`` and ``groups: 4``: every site grouped,
  group maps, grouping records (identity with the removed legacy IGQ executor:
  tests/reference/test_legacy_golden.py).
* G = 1 is the static graph bit for bit (grouped kind with ``exps = (0,)``).
* Hypothesis over `lowering_configs()` x bits x G: the numba and torch op sets
  give identical codes and group maps at every tensor, and equal traces.
* BOP-budget allocation meets its budget; save/load keeps the grouped quantizers.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.lowering import lower
from reference.recipes.config import RecipeConfig, recipe_from_dict
from reference.recipes.igq_graph import quantize_igq_graph
from reference.recipes.igq_graph_allocation import graph_total_bops
from reference.recipes.static_graph import quantize_graph
from simulator.errors import InputError
from simulator.igq import SITES, overhead_bops
from simulator.int_ops import GraphIntegerExecutor
from simulator.qgraph import QuantizedGraph
from simulator.results import first_mismatch
from strategies import BIT_WIDTHS, build_vit, int_arrays, lowering_configs, random_images
from strategies import random_model

def _igq(groups=None, w=4, a=4, **params):
    p = {"groups": groups} if groups is not None else {}
    return recipe_from_dict({"recipe": "igq", "w_bits": w, "a_bits": a, "params": {**p, **params}})


def _group_records(layers):
    return [(r.name, r.kind, r.elements, r.rows, r.in_bits, r.out_bits) for r in layers if ".group_" in r.name]


@pytest.mark.parametrize("groups", [2, 4])
def test_groups_on_the_default_model(digits, groups):
    """Every site of every block grouped, group maps that differ between channels, grouping records and
    overhead, both executors identical (identity with the removed legacy IGQ executor, exponents, maps
    and records included: tests/reference/test_legacy_golden.py)."""
    model, calib, test = digits
    qg = quantize_igq_graph(model, calib, _igq(groups))
    assert sorted(qg.meta["igq_groups"]) == sorted(f"blocks.{i}.{s}" for i in range(len(model.blocks)) for s in SITES)
    rn = GraphIntegerExecutor(qg).run(test)
    assert {f"blocks.{i}.{s}.groups" for i in range(len(model.blocks)) for s in SITES} <= rn.codes.keys()
    assert len({int(v) for v in np.unique(rn.codes["blocks.0.gelu.groups"])}) > 1     # groups really differ
    nl = rn.trace.layers
    assert sum(r.macs for r in nl) == 11_620_416
    assert overhead_bops(nl) > 0 and len(_group_records(nl)) == 54
    assert graph_total_bops(qg) == sum(r.bops for r in nl) + overhead_bops(nl)
    rf = GraphFakeQuantExecutor(qg).run(test[:16])
    assert first_mismatch({k: v[:16] for k, v in rn.codes.items()}, rf.codes) is None


def test_one_group_is_the_static_graph(digits):
    model, calib, test = digits
    qg1 = quantize_igq_graph(model, calib, _igq(1))
    qs = quantize_graph(model, calib, RecipeConfig(w_bits=4, a_bits=4))
    assert {q.kind for q in qg1.quantizers.values()} >= {"grouped"}
    r1, rs = GraphIntegerExecutor(qg1).run(test[:32]), GraphIntegerExecutor(qs).run(test[:32])
    assert first_mismatch(rs.codes, {k: r1.codes[k] for k in rs.codes}) is None
    assert all(not r1.codes[k].any() for k in r1.codes.keys() - rs.codes.keys())   # group maps: all group 0
    assert r1.trace.layers == rs.trace.layers


@settings(max_examples=25, deadline=None)
@given(drawn=lowering_configs(), bits=st.sampled_from(BIT_WIDTHS), groups=st.sampled_from([1, 2, 4, 8]))
def test_both_graph_executors_give_identical_codes(drawn, bits, groups):
    model, image_size, images = random_model(drawn)
    graph = lower(model, image_size=image_size)
    cfg = RecipeConfig(recipe="igq", w_bits=bits[0], a_bits=bits[1], calib_images=6, params={"groups": groups})
    qg = quantize_igq_graph(graph, images[:6], cfg)
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    grouped = {t for t, q in qg.quantizers.items() if q.kind == "grouped"}
    assert grouped                                     # every lowered configuration has a groupable boundary
    assert ri.codes.keys() == rf.codes.keys() >= set(graph.tensor_names()[1:]) | {t + ".groups" for t in grouped}
    assert first_mismatch(ri.codes, rf.codes) is None
    assert np.array_equal(ri.logit_codes, rf.logit_codes)
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
    assert (overhead_bops(ri.trace.layers) > 0) == (groups > 1 and any(len(q.exps) > 1 for q in
                                                                         qg.quantizers.values() if q.exps))


# --- kernels ---------------------------------------------------------------------------------
@given(h=int_arrays(lo=-(1 << 20), hi=1 << 20, shape=st.tuples(st.integers(1, 4), st.integers(1, 9))),
       mk=st.tuples(st.integers(1, (1 << 31) - 1), st.integers(20, 40)), bits=st.sampled_from([4, 8]))
def test_quick_gelu_wide_is_the_activation_before_its_output_map(h, mk, bits):
    """``quick_gelu_wide`` = the Q12 formula elementwise (saturated input), and the static activation is
    ``saturate(requantize(wide, M, k))`` of it: a single group reproduces it."""
    from simulator.fixedpoint import requantize, saturate
    from simulator.int_activations import quick_gelu_q12
    from simulator.int_nonlinear import GELU_INPUT_LIMIT
    from simulator.int_ops import int_quick_gelu
    from simulator.kernels.grouped import quick_gelu_wide
    wide = quick_gelu_wide(h)
    assert wide.tolist() == [[quick_gelu_q12(saturate(int(v), -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT)) for v in row]
                             for row in h.tolist()]
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    assert np.array_equal(int_quick_gelu(h, *mk, lo, hi, np.int64), saturate(requantize(wide, *mk), lo, hi))


@given(acc=int_arrays(lo=-(1 << 24), hi=1 << 24, shape=st.tuples(st.integers(1, 2), st.integers(1, 3),
                                                                   st.integers(1, 5), st.integers(1, 4))),
       data=st.data())
def test_grouped_matmul_output_stage_numpy_equals_torch(acc, data):
    """Row-grouped ``a`` x channel-grouped output: the numba op set's and the torch op set's stage agree."""
    import torch
    from reference.igq_graph_ops import grouped_matmul as torch_stage
    from simulator import ir
    from simulator.igq_graph import grouped_matmul, grouped_output
    from simulator.qgraph import Quantizer
    from simulator.qvit import Requant
    ea = tuple(sorted(data.draw(st.sets(st.integers(1, 6), max_size=3)), reverse=True)) + (0,)
    eo = tuple(sorted(data.draw(st.sets(st.integers(1, 5), max_size=3)), reverse=True)) + (0,)
    qa = Quantizer("grouped", 2.0 ** -4, 4, signed=False, exps=ea, rows=True)
    qz = Quantizer("grouped", 0.1, 4, exps=eo)
    rq = Requant(mult=data.draw(st.integers(1 << 14, (1 << 15) - 1)), shift=data.draw(st.integers(12, 24)),
                 out_bits=4, out_scale=0.1)
    ga = data.draw(int_arrays(lo=0, hi=len(ea) - 1, shape=acc.shape[:-1]))
    op = ir.MatMul("m", ("a", "b"), ("o",))
    u, none = grouped_matmul(op, rq, qa, Quantizer("static", 0.1, 4), qz, ga, acc)
    codes, g = grouped_output(op, rq, qz, u, np.int64)
    tc, tg = torch_stage(op, rq, qa, Quantizer("static", 0.1, 4), qz, torch.as_tensor(ga), torch.as_tensor(acc))
    assert none is None and np.array_equal(codes, tc.numpy()) and np.array_equal(g, tg.numpy())


CFG = dict(depth=1, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=3,
           num_classes=5, init_values=None)


def _rc(**params):
    return RecipeConfig(recipe="igq", w_bits=4, a_bits=4, weight_calibration="minmax", act_calibration="minmax",
                        calib_images=6, params=params)


def test_budget_allocation_meets_the_budget():
    """The allocation's BOPs are the graph's, within budget; a loose budget buys groups; an impossible
    one is refused naming the minimum (identity with the removed legacy allocation:
    tests/reference/test_legacy_golden.py, cases igq_budget*)."""
    model, cal = build_vit(CFG, seed=4), random_images(CFG, 6, seed=4)
    for budget in (1.02, 1.5):
        new = quantize_igq_graph(model, cal, _rc(bop_budget=budget, allocation_images=4))
        b = new.meta["igq_allocation"]
        assert b["bops"] == graph_total_bops(new) <= budget * b["static_bops"]
        assert b["min_bops"] <= b["bops"]
        assert (b["bops"] > b["static_bops"]) == (budget > 1.1)      # the loose budget buys groups
    with pytest.raises(InputError, match=r"params\.bop_budget: .* below the minimum achievable 1 "):
        quantize_igq_graph(model, cal, _rc(bop_budget=0.5, allocation_images=4))


def test_save_load_keeps_grouped_quantizers(tmp_path):
    model, images = build_vit(CFG, seed=3), random_images(CFG, 10, seed=3)
    qg = quantize_igq_graph(model, images[:6], _rc(groups=4))
    path = tmp_path / "igq.qgraph.npz"
    qg.save(path)
    back = QuantizedGraph.load(path)
    assert {t: (q.kind, q.exps, q.rows) for t, q in back.quantizers.items()} == \
        {t: (q.kind, q.exps, q.rows) for t, q in qg.quantizers.items()}
    a, b = GraphIntegerExecutor(qg).run(images[6:]), GraphIntegerExecutor(back).run(images[6:])
    assert first_mismatch(a.codes, b.codes) is None
    c = GraphFakeQuantExecutor(back).run(images[6:], batch_size=3)        # group maps batch by batch
    assert c.codes.keys() == a.codes.keys() and first_mismatch(a.codes, c.codes) is None
    assert a.codes["blocks.0.norm1.groups"].shape == (4, 16)


def test_recipe_must_be_igq():
    with pytest.raises(InputError, match="quantize_igq_graph implements 'igq'"):
        quantize_igq_graph(build_vit(CFG, seed=1), random_images(CFG, 2, seed=1), RecipeConfig())


from reference.lowering.coverage import CONFIGURATIONS, build, images_for   # noqa: E402

LOWERED = [c for c in CONFIGURATIONS if c.refusal is None]
#: grouped boundaries per block, by kind, that the calibrator finds (2 blocks; ParallelThings: 2 branches)
EXPECTED_SITES = {"ResPostBlock": {"attn": 2, "attn_out": 2, "gelu": 2},
                  "ParallelScalingBlock (+LayerScale)": {"attn": 2, "attn_out": 2, "gelu": 2},
                  "ParallelScalingBlock, fused out_proj, qk_norm": {"attn": 2, "attn_out": 2, "gelu": 2},
                  "ParallelThingsBlock (vit_small_patch16_18x2)": {"norm": 8, "attn": 4, "attn_out": 4, "gelu": 4},
                  "scale_attn_norm + scale_mlp_norm": {"norm1": 2, "attn": 2, "norm": 4, "norm2": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("cfg", LOWERED, ids=[c.name for c in LOWERED])
def test_every_lowered_configuration_groups_bit_exactly(cfg):
    """Each coverage row at W4A4, G = 4: grouped sites found on the graph (composing with static,
    Q12 and accumulator quantizers around them), both executors identical incl. group maps."""
    from collections import Counter
    model = build(cfg).float()
    graph = lower(model, image_size=cfg.image_size)
    images = images_for(cfg, batch=10).float().numpy()
    rc = _rc(groups=4)
    qg = quantize_igq_graph(graph, images[:6], rc)
    sites = dict(Counter(t.split(".")[-1] for t in qg.meta["igq_groups"]))
    assert sites == EXPECTED_SITES.get(cfg.name, {s: 2 for s in SITES})
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
