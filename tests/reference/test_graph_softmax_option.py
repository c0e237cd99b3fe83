"""The static recipe's post-softmax option (``params: {softmax: ...}``, issue 14 part 2).

* Hypothesis over random timm VisionTransformers (`lowering_configs()`) x W/A x {calibrated
  uniform, log2 (2-4 bits)}: the numba and torch op sets give identical codes at every tensor,
  equal logits, traces and overflows; the softmax outputs carry the option's quantizer.
* Defaults change nothing: no params / the default option give the same graph as before.
* The trace says attn @ V on log2 codes is a shift-accumulate; hwmodels costs it.
* Recipe YAML: unknown keys / values with did-you-mean, bits out of range, scale with log2.
* On a random-weight model with 257 tokens at W4A4, the fixed scale collapses and the options
  do not (the issue's collapse, small enough for a test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.lowering import lower
from reference.recipes.config import recipe_from_dict
from reference.recipes.static_graph import quantize_graph
from simulator.errors import InputError
from simulator.int_ops import GraphIntegerExecutor
from simulator.results import first_mismatch
from strategies import BIT_WIDTHS, build_vit, lowering_configs, random_images
from strategies import random_model

OPTIONS = [{"scale": "calibrated"}, {"quantizer": "log2"}, {"quantizer": "log2", "bits": 2},
           {"quantizer": "log2", "bits": 3}]


def _cfg(bits, opt, calib=6):
    return recipe_from_dict({"recipe": "static", "w_bits": bits[0], "a_bits": bits[1], "calib_images": calib,
                             **({"params": {"softmax": opt}} if opt is not None else {})})


def _softmax_outputs(qg):
    return [op.outputs[0] for op in qg.graph.ops if op.kind == "softmax"]


@settings(max_examples=20, deadline=None)
@given(drawn=lowering_configs(), bits=st.sampled_from(BIT_WIDTHS), opt=st.sampled_from(OPTIONS))
def test_both_graph_executors_give_identical_codes_with_the_option(drawn, bits, opt):
    model, image_size, images = random_model(drawn)
    graph = lower(model, image_size=image_size)
    qg = quantize_graph(graph, images[:6], _cfg(bits, opt))
    for t in _softmax_outputs(qg):
        qz = qg.quantizers[t]
        if opt.get("quantizer") == "log2":
            assert qz.kind == "log2" and qz.bits == opt.get("bits", min(bits[1], 4))
        else:
            f = -math.log2(float(qz.scale))
            assert qz.kind == "static" and f == int(f) and qg.params[
                next(o.name for o in qg.graph.ops if o.outputs[0] == t)].fine_exp in (0, int(f))
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert ri.codes.keys() == rf.codes.keys() == set(graph.tensor_names()[1:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert np.array_equal(ri.logit_codes, rf.logit_codes)
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
    for t in _softmax_outputs(qg):
        codes = ri.codes[t]
        assert codes.min() >= 0 and codes.max() <= qg.quantizers[t].hi


SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=2, num_heads=3, num_classes=10,
             mlp_ratio=4, init_values=None)


def test_default_option_is_todays_static_recipe():
    model = build_vit(SMALL, seed=3)
    images = random_images(SMALL, 12, seed=3)
    base = quantize_graph(model, images[:8], _cfg((4, 4), None, 8))
    same = quantize_graph(model, images[:8], _cfg((4, 4), {"quantizer": "uniform", "scale": "fixed"}, 8))
    for t in _softmax_outputs(base):
        assert base.quantizers[t] == same.quantizers[t]
        assert float(base.quantizers[t].scale) == 2.0 ** -4
    assert first_mismatch(GraphIntegerExecutor(base).run(images[8:]).codes,
                          GraphIntegerExecutor(same).run(images[8:]).codes) is None


def test_trace_says_attn_v_on_log2_codes_is_a_shift_accumulate():
    from hwmodels.cost import estimate
    from hwmodels.load import load

    model = build_vit(SMALL, seed=4)
    images = random_images(SMALL, 10, seed=4)
    qg = quantize_graph(model, images[:8], _cfg((8, 8), {"quantizer": "log2"}, 8))
    trace = GraphIntegerExecutor(qg).run(images[8:]).trace
    av = [r for r in trace.layers if r.name.endswith("attn.av")]
    assert av and all(r.kind == "shift_matmul" and r.a_bits == 4 and r.b_bits == 8 for r in av)
    assert all(r.bops == r.macs * 4 * 8 for r in av)
    assert sum(r.name.endswith("attn.log2") and r.kind == "requantize" for r in trace.layers) == SMALL["depth"]
    rep = estimate(trace, load("configs/npu_int8.yaml"))
    costs = {c.name: c for c in rep.layers}
    assert all(costs[r.name].macs == r.macs and costs[r.name].cycles > 0 for r in av)
    fixed = GraphIntegerExecutor(quantize_graph(model, images[:8], _cfg((8, 8), None, 8))).run(images[8:]).trace
    assert [r.kind for r in fixed.layers if r.name.endswith("attn.av")] == ["matmul"] * SMALL["depth"]


@pytest.mark.parametrize("params, message", [
    ({"softmx": {}}, "params.softmx: unknown static parameter (expected one of softmax) (did you mean 'softmax'?)"),
    ({"softmax": {"quantiser": "log2"}}, "params.softmax.quantiser: unknown softmax option"),
    ({"softmax": {"quantizer": "log"}}, "params.softmax.quantizer: expected one of uniform, log2, got 'log' "
                                        "(did you mean 'log2'?)"),
    ({"softmax": {"scale": "calibrate"}}, "(did you mean 'calibrated'?)"),
    ({"softmax": {"quantizer": "log2", "bits": 5}}, "params.softmax.bits: expected an integer in [2, 4]"),
    ({"softmax": {"quantizer": "log2", "scale": "calibrated"}}, "params.softmax.scale: applies to quantizer uniform"),
    ({"softmax": {"bits": 4}}, "params.softmax.bits: applies to quantizer log2 only"),
    ({"softmax": "log2"}, "params.softmax: expected a mapping"),
])
def test_bad_softmax_params_are_one_line_errors(params, message):
    with pytest.raises(InputError) as e:
        recipe_from_dict({"recipe": "static", "params": params}, "r.yaml")
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("r.yaml: ")


def test_fixed_scale_collapses_with_257_tokens_and_the_options_do_not():
    """vit_tiny-like at 64 px / patch 4 (257 tokens), depth 2, W4A4: at 2**-4 almost every
    probability is code 0 (attn @ V ~ 0); calibrated and log2 codes keep most of the mass and
    bring the integer logits closer to the float ones."""
    cfg = dict(img_size=64, patch_size=4, in_chans=3, embed_dim=96, depth=2, num_heads=3, num_classes=10,
               mlp_ratio=4, init_values=None)
    model = build_vit(cfg, seed=11)
    images = random_images(cfg, 24, seed=11)
    with torch.no_grad():
        ref = model(torch.from_numpy(images[16:])).numpy()
    err, zeros = {}, {}
    for name, opt in (("fixed", None), ("calibrated", {"scale": "calibrated"}), ("log2", {"quantizer": "log2"})):
        qg = quantize_graph(model, images[:16], _cfg((4, 4), opt, 16))
        res = GraphIntegerExecutor(qg).run(images[16:])
        err[name] = float(np.linalg.norm(res.logits - ref) / np.linalg.norm(ref))
        a = res.codes["blocks.0.attn"]
        zeros[name] = float((a == (qg.quantizers["blocks.0.attn"].hi if name == "log2" else 0)).mean())
    assert zeros["fixed"] > 0.9 and zeros["calibrated"] < zeros["fixed"] and zeros["log2"] < zeros["fixed"], zeros
    assert err["calibrated"] < err["fixed"] and err["log2"] < err["fixed"], err
