"""Swin Transformer on the integer graph (issue 16).

* The lowered float graph equals timm's forward (float64) on fixed configs and
  under hypothesis (window 2-7, 1-2 stages of depth 1-2, 1-2 heads, shifted and
  unshifted blocks, rectangular grids the window divides).
* static / tsptq / igq (fixed G) / scalepredictor on random small Swin configs:
  both graph executors give identical codes at every tensor and equal traces.
* The minimum-code mask equals timm's -100 mask requantized onto the score scale
  in every code on a fixed model, and in float top-1.
* Index ops: window partition / reverse are inverse permutations and match
  timm's ``roll`` + ``window_partition``; patch merging matches timm's concat.
* Refusals are one line with the module path; save/load keeps the new ops.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.swin_transformer import window_partition

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.float_ops import float_forward
from reference.lowering import LoweringError, lower
from reference.lowering.coverage import perturb_
from reference.recipes.composed import quantize_graph
from reference.recipes.config import RecipeConfig, recipe_from_dict
from reference.recipes.scalepredictor_graph import quantize_scalepredictor_graph
from reference.recipes.static_graph import freeze_window_bias
from simulator import ir
from simulator.errors import InputError
from simulator.int_ops import GraphIntegerExecutor
from simulator.qgraph import QuantizedGraph
from simulator.results import first_mismatch
from simulator.windows import token_index


def swin(img, patch=1, embed_dim=8, depths=(2,), heads=(2,), window=2, seed=0, fused=False, **kw):
    torch.manual_seed(seed)
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img, patch_size=patch,
                          embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window, mlp_ratio=2.0,
                          num_classes=5, **kw).eval()
    perturb_(m, seed)
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = fused
    return m


def images(img, n, seed=0):
    h, w = (img, img) if np.isscalar(img) else img
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


FIXED = [
    dict(img=32, patch=2, embed_dim=16, depths=(2, 2), heads=(2, 4), window=4),            # shifted, 2 stages
    dict(img=28, patch=1, embed_dim=8, depths=(2, 2), heads=(1, 2), window=7),             # window 7, grid = window
    dict(img=(24, 16), patch=2, embed_dim=8, depths=(3,), heads=(2,), window=2),           # rectangular grid
    dict(img=32, patch=4, embed_dim=8, depths=(1, 2), heads=(1, 2), window=2, head_dim=3),  # head_dim * heads != dim
    dict(img=16, patch=2, embed_dim=8, depths=(2,), heads=(2,), window=4, fused=True),     # timm's SDPA path
]


@pytest.mark.parametrize("kw", FIXED)
def test_float_graph_equals_timm(kw):
    m = swin(**kw).double()
    x = torch.as_tensor(images(kw["img"], 2), dtype=torch.float64)
    with torch.no_grad():
        ref = m(x)
    out = float_forward(lower(m), x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)


@st.composite
def swin_configs(draw):
    """Random small Swin: window 2-7, the last stage's grid = window x (1|2) per axis."""
    window = draw(st.integers(2, 7))
    stages = draw(st.integers(1, 2))
    mh, mw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    gh, gw = window * mh * 2 ** (stages - 1), window * mw * 2 ** (stages - 1)
    patch = 1 if max(gh, gw) > 14 else draw(st.sampled_from([1, 2]))
    heads = tuple(draw(st.integers(1, 2)) for _ in range(stages))
    depths = tuple(draw(st.integers(1, 2)) for _ in range(stages))
    return dict(img=(gh * patch, gw * patch), patch=patch, embed_dim=4 * max(heads), depths=depths, heads=heads,
                window=window, seed=draw(st.integers(0, 99)))


def _recipe(recipe="static", bits=8, **params):
    return recipe_from_dict({"recipe": recipe, "w_bits": bits, "a_bits": bits, "calib_images": 6,
                             **({"params": params} if params else {})})


RECIPES = [_recipe(), _recipe(bits=4), _recipe("tsptq", 4), _recipe("igq", 4, groups=4),
           _recipe("scalepredictor", 6, degree=2)]


def _quantize(model, calib, cfg):
    if cfg.recipe == "scalepredictor":
        return quantize_scalepredictor_graph(model, calib, cfg)
    return quantize_graph(model, calib, cfg)


@settings(max_examples=12, deadline=None)
@given(kw=swin_configs(), cfg=st.sampled_from(RECIPES))
def test_random_swin_bit_exact_in_both_executors(kw, cfg):
    m = swin(**kw)
    x = images(kw["img"], 9, kw["seed"])
    with torch.no_grad():
        ref = m.double()(torch.as_tensor(x, dtype=torch.float64))
    graph = lower(m)
    assert torch.allclose(float_forward(graph, x), ref, rtol=0, atol=1e-9)
    m.float()
    qg = _quantize(graph, x[:6], cfg)
    ri, rf = GraphIntegerExecutor(qg).run(x[6:]), GraphFakeQuantExecutor(qg).run(x[6:])
    assert ri.codes.keys() == rf.codes.keys() >= set(graph.tensor_names()[1:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert np.array_equal(ri.logit_codes, rf.logit_codes)
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows


def test_every_recipe_runs_on_a_shifted_two_stage_swin():
    kw = FIXED[0]
    m = swin(**kw)
    x = images(kw["img"], 10)
    composed = recipe_from_dict({"recipe": "static", "w_bits": 4, "a_bits": 4, "calib_images": 6, "mechanisms": [
        {"two_scaled": {"softmax": True, "gelu": True, "layernorm": True}}, {"groups": {"groups": 2}}]})
    expect = {"static": {"static"}, "tsptq": {"two_scaled"}, "igq": {"grouped"}, "scalepredictor": {"predicted"}}
    for cfg in RECIPES + [composed]:
        qg = _quantize(m, x[:6], cfg)
        kinds = {q.kind for q in qg.quantizers.values()}
        assert (expect[cfg.recipe] if not cfg.mechanisms else {"two_scaled", "grouped"}) <= kinds
        ri, rf = GraphIntegerExecutor(qg).run(x[6:]), GraphFakeQuantExecutor(qg).run(x[6:])
        assert first_mismatch(ri.codes, rf.codes) is None


def _with_additive_mask(qg: QuantizedGraph, value: float = -100.0) -> QuantizedGraph:
    """The same graph with timm's -100 added to masked scores (on the score scale) instead of the minimum code."""
    params = dict(qg.params)
    for op in qg.graph.ops:
        if op.kind == "window_bias":
            s = float(qg.quantizers[op.inputs[0]].scale)
            gp = qg.graph.params[op.name]
            params[op.name] = freeze_window_bias(gp["bias"], gp["mask"], s, mask_add=int(round(value / s)))
    return dataclasses.replace(qg, params=params)


def test_minimum_code_mask_matches_timm_minus_100():
    kw = FIXED[0]
    m = swin(**kw)
    x = images(kw["img"], 40, seed=3)
    qg = quantize_graph(m, x[:16], RecipeConfig(w_bits=8, a_bits=8, calib_images=16))
    assert any(qg.params[o.name].masked.any() for o in qg.graph.ops if o.kind == "window_bias")
    a = GraphIntegerExecutor(qg).run(x[16:])
    b = GraphIntegerExecutor(_with_additive_mask(qg)).run(x[16:])
    # the mask decides a softmax code only where -100 leaves a masked probability >= 2**-9;
    # here it never does, so every code of every tensor (scores aside) is the same
    scores = {t for o in qg.graph.ops if o.kind == "window_bias" for t in o.outputs}
    assert first_mismatch({k: v for k, v in a.codes.items() if k not in scores},
                          {k: v for k, v in b.codes.items() if k not in scores}) is None
    masked = np.concatenate([np.broadcast_to(qg.params[o.name].masked[None, :, None], a.codes[o.outputs[0]].shape[:1]
                             + (qg.params[o.name].masked.shape[0], o.num_heads) + a.codes[o.outputs[0]].shape[2:])
                             .reshape(-1) for o in qg.graph.ops if o.kind == "window_bias"]).astype(bool)
    sa = np.concatenate([a.codes[o.outputs[0]].reshape(-1) for o in qg.graph.ops if o.kind == "window_bias"])
    sb = np.concatenate([b.codes[o.outputs[0]].reshape(-1) for o in qg.graph.ops if o.kind == "window_bias"])
    assert np.array_equal(sa[~masked], sb[~masked]) and (sa[masked] == -(1 << 31)).all()
    assert (sb[masked] < sa[~masked].min()).any()
    # float: timm's -100 and a -inf mask pick the same class
    g = lower(m)
    inf = {o.name: {**g.params[o.name], "mask": np.where(g.params[o.name]["mask"] != 0, -np.inf, 0.0)}
           for o in g.ops if o.kind == "window_bias"}
    g_inf = dataclasses.replace(g, params={**g.params, **inf})
    assert torch.equal(float_forward(g, x).argmax(-1), float_forward(g_inf, x).argmax(-1))


def test_index_ops_match_timm():
    grid, window, shift = (6, 8), (3, 4), (1, 2)
    x = torch.arange(2 * 48 * 3).reshape(2, 6, 8, 3)
    part = ir.GatherTokens("p", ("x",), ("y",), pattern="window_partition", grid=grid, window=window, shift=shift)
    rev = ir.GatherTokens("r", ("y",), ("z",), pattern="window_reverse", grid=grid, window=window, shift=shift)
    want = window_partition(torch.roll(x, shifts=(-1, -2), dims=(1, 2)), window).reshape(2, -1, 3)
    flat = x.reshape(2, 48, 3)
    got = flat[:, torch.from_numpy(token_index(part)[:, 0])]
    assert torch.equal(got, want)
    assert torch.equal(got[:, torch.from_numpy(token_index(rev)[:, 0])], flat)
    merge = ir.GatherTokens("m", ("x",), ("y",), pattern="patch_merge", grid=grid)
    want = x.reshape(2, 3, 2, 4, 2, 3).permute(0, 1, 3, 4, 2, 5).flatten(3).reshape(2, 12, 12)
    idx = torch.from_numpy(token_index(merge))
    assert torch.equal(flat[:, idx.reshape(-1)].reshape(2, 12, 12), want)


def test_save_load_keeps_swin_ops(tmp_path):
    kw = FIXED[0]
    m = swin(**kw)
    x = images(kw["img"], 8)
    qg = quantize_graph(m, x[:6], RecipeConfig(w_bits=8, a_bits=8, calib_images=6))
    qg.save(tmp_path / "s.npz")
    back = QuantizedGraph.load(tmp_path / "s.npz")
    assert back.graph.ops == qg.graph.ops
    assert first_mismatch(GraphIntegerExecutor(back).run(x[6:]).codes, GraphIntegerExecutor(qg).run(x[6:]).codes) is None


@pytest.mark.parametrize("kw, match", [
    (dict(img=12, patch=2, embed_dim=8, depths=(1, 1, 1), heads=(1, 1, 1), window=3),
     r"^layers\.2\.downsample: patch merging of an odd 3x3 grid"),
    (dict(img=20, patch=2, embed_dim=8, depths=(1,), heads=(1,), window=4),
     r"^layers\.0\.blocks\.0: window 4x4 does not divide the 10x10 token grid"),
    (dict(img=16, patch=2, embed_dim=8, depths=(1,), heads=(1,), window=4, global_pool="max"),
     r"^head: global_pool='max' is not supported"),
    (dict(img=16, patch=2, embed_dim=8, depths=(1,), heads=(1,), window=4, dynamic_img_size=True),
     r"^patch_embed: dynamic_img_size"),
])
def test_refusals_name_the_module(kw, match):
    with pytest.raises(LoweringError, match=match):
        lower(swin(**kw))


def test_swinv2_and_apq_are_refused_in_one_line():
    v2 = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=32, embed_dim=8, depths=(1,),
                           num_heads=(1,), window_size=4).eval()
    with pytest.raises(LoweringError, match=r"^model: Swin V2 .* is not supported"):
        lower(v2)
    from reference.recipes.apq_graph import quantize_apq_graph
    m = swin(**FIXED[0])
    with pytest.raises(InputError, match=r"apq early exits are not supported for Swin"):
        quantize_apq_graph(m, images(32, 4), recipe_from_dict({"recipe": "apq", "w_bits": 8, "a_bits": 8}))


def test_golden_vector_tensors_hold_bias_codes_and_masks():
    """The graph's vector sets take every param leaf (`simulator.vectors.tensors.param_leaves`) and every
    code the integer executor keeps: the bias codes, the masks and the masked scores are among them."""
    from simulator.vectors.tensors import param_leaves
    kw = FIXED[0]
    m = swin(**kw)
    x = images(kw["img"], 8)
    qg = quantize_graph(m, x[:6], RecipeConfig(w_bits=8, a_bits=8, calib_images=6))
    leaves = dict(param_leaves(dict(qg.params), "params"))
    shifted, plain = "params.layers.0.blocks.1.attn.bias", "params.layers.0.blocks.0.attn.bias"
    s = float(qg.quantizers["layers.0.blocks.1.attn_logits"].scale)
    bias = qg.graph.params["layers.0.blocks.1.attn.bias"]["bias"]
    assert np.array_equal(leaves[shifted + ".bias_q"], np.floor(bias / s + 0.5).astype(np.int64))
    assert leaves[shifted + ".masked"].any() and not leaves[plain + ".masked"].any()
    assert int(leaves[shifted + ".mask_add"]) == 0
    codes = GraphIntegerExecutor(qg).run(x[6:]).codes["layers.0.blocks.1.attn_scores"]
    assert (codes == -(1 << 31)).any() and codes.dtype == np.int64


@settings(max_examples=50, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 2), st.integers(1, 4)),
       mask_add=st.sampled_from([0, -7, -(1 << 20)]))
def test_window_scores_numpy_torch_and_oracle_agree(data, shape, mask_add):
    """``window_scores``: numpy and torch give the Python-int oracle, values at and around the int32 limits."""
    from simulator.windows import window_scores
    edge = st.sampled_from([-(1 << 31), -(1 << 31) + 1, -1, 0, 1, (1 << 31) - 2, (1 << 31) - 1])
    ints = st.one_of(edge, st.integers(-(1 << 31), (1 << 31) - 1))
    n = int(np.prod(shape))
    acc = np.array(data.draw(st.lists(ints, min_size=n, max_size=n)), np.int64).reshape(shape)
    bias = np.array(data.draw(st.lists(ints, min_size=n, max_size=n)), np.int64).reshape(shape)
    masked = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.int64).reshape(shape)
    clamp = lambda v: min(max(v, -(1 << 31)), (1 << 31) - 1)     # noqa: E731
    want = [clamp(a + b + m * mask_add) if mask_add else (-(1 << 31) if m else clamp(a + b))
            for a, b, m in zip(acc.reshape(-1).tolist(), bias.reshape(-1).tolist(), masked.reshape(-1).tolist())]
    got_np = window_scores(acc, bias, masked, mask_add)
    got_t = window_scores(torch.from_numpy(acc), torch.from_numpy(bias), torch.from_numpy(masked), mask_add)
    assert got_np.reshape(-1).tolist() == want == got_t.reshape(-1).tolist()


def test_bad_window_geometry_is_a_graph_error():
    with pytest.raises(ir.GraphError, match="window 2x3 does not divide the 5x6 grid"):
        ir.GatherTokens("g", ("x",), ("y",), pattern="window_partition", grid=(5, 6), window=(2, 3))
    with pytest.raises(ir.GraphError, match="patch merging needs an even grid"):
        ir.GatherTokens("g", ("x",), ("y",), pattern="patch_merge", grid=(3, 4))
