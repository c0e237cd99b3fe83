"""Composed mechanisms on the lowered graph (issue 13, item 4: recipes compose).

* Hypothesis over random timm VisionTransformers (`lowering_configs()`: token /
  avg pooling, fc_norm, class_token=False, register tokens, no_embed_class,
  LayerScale, qk_norm, norm_pre, GELU erf / tanh / quick-GELU, no position
  embedding, distilled DeiT, parallel / ResPost blocks, image sizes) x W4/6/8
  x A4/6/8 x any subset of the four registered mechanisms (two_scaled,
  groups, predicted, exits): the numba and torch op sets give identical codes
  and group maps at every tensor the walk keeps, equal traces and exit
  depths, in one batch or several; every tensor has one owner; the float walk
  is timm's forward; ``[two_scaled]`` is the ``tsptq`` recipe, ``[groups]``
  ``igq`` and ``[predicted]`` ``scalepredictor``, code for code.
* A small timm model: ``[exits]`` is the ``apq`` recipe with uniform widths
  and a fixed threshold, code for code.
* Default model (slow): the bundled ``tsptq_groups_w4a4.yaml`` and
  ``tsptq_groups_exits_w4a8.yaml`` are bit-exact between executors; single
  mechanisms equal tsptq / igq there too.
* Recipe YAML: unknown mechanism (did-you-mean), unknown param, duplicate,
  mechanisms on a recipe other than static.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import reference
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.float_ops import float_forward
from reference.lowering import lower
from reference.recipes.config import load_recipe, recipe_from_dict
from reference.recipes.composed import MECHANISMS, quantize_graph
from reference.recipes.mechanisms import owners_of
from reference.recipes.params import MECHANISM_PARSERS
from reference.recipes.scalepredictor_graph import quantize_scalepredictor_graph
from reference.recipes.static_graph import owners
from simulator.errors import InputError
from simulator.graph_exits import graph_depth
from simulator.int_ops import GraphIntegerExecutor
from simulator.qgraph import QuantizedGraph
from simulator.results import first_mismatch
from strategies import build_vit, lowering_configs, random_images
from strategies import random_model

NAMES = ("two_scaled", "groups", "predicted", "exits")
SUBSETS = [c for r in range(len(NAMES) + 1) for c in itertools.combinations(NAMES, r)]    # all 16
SHORTHAND = {("two_scaled",): "tsptq", ("groups",): "igq", ("predicted",): "scalepredictor"}


def _params(groups=2, degree=2, tau=0.5):
    return {"two_scaled": {"objective": "tensor"}, "groups": {"groups": groups}, "predicted": {"degree": degree},
            "exits": {"threshold": tau, "exits_every": 1, "exit_heads": "distill"}}


def _cfg(names, bits, groups=2, degree=2, tau=0.5, **extra):
    params = _params(groups, degree, tau)
    return recipe_from_dict({"recipe": "static", "w_bits": bits[0], "a_bits": bits[1],
                             "mechanisms": [{n: params[n]} for n in names], **extra})


def _same_codes(a, b, images):
    ra, rb = GraphIntegerExecutor(a).run(images), GraphIntegerExecutor(b).run(images)
    assert ra.codes.keys() == rb.codes.keys()
    assert first_mismatch(ra.codes, rb.codes) is None
    assert np.array_equal(ra.logits, rb.logits)


def test_registry_order_is_the_params_order():
    assert list(MECHANISMS) == list(NAMES) == list(MECHANISM_PARSERS)


def _with_exits(drawn):
    """Exits need a classifier and a block after the first: depth 2-3, num_classes > 0."""
    model_cls, kwargs, image_size, seed = drawn
    return model_cls, {**kwargs, "depth": max(kwargs["depth"], 2), "num_classes": kwargs["num_classes"] or 5}, \
        image_size, seed


def _shorthand(names, model, images, cfg, image_size, groups, degree):
    """The named recipe that ``names`` (one mechanism) stands for, on the same model."""
    params, raw = dict(cfg.mechanisms)[names[0]], _params(groups, degree)[names[0]]
    short = recipe_from_dict({"recipe": SHORTHAND[names], "w_bits": cfg.w_bits, "a_bits": cfg.a_bits,
                              "calib_images": cfg.calib_images, "params": raw})
    assert MECHANISM_PARSERS[names[0]](short.params) == params
    if names == ("predicted",):
        return quantize_scalepredictor_graph(model, images, short, image_size=image_size)
    return quantize_graph(model, images, short, image_size=image_size)


@settings(max_examples=30, deadline=None)
@given(drawn=lowering_configs(), w=st.sampled_from([4, 6, 8]), a=st.sampled_from([4, 6, 8]),
       names=st.sampled_from(SUBSETS), groups=st.sampled_from([1, 2, 4]), degree=st.integers(0, 2),
       tau=st.sampled_from([0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 1.0]))
def test_both_graph_executors_agree_on_any_subset_of_mechanisms(drawn, w, a, names, groups, degree, tau):
    model, image_size, images = random_model(_with_exits(drawn) if "exits" in names else drawn)
    cfg = _cfg(names, (w, a), groups, degree, tau, calib_images=6)
    qg = quantize_graph(model, images[:6], cfg, image_size=image_size)
    graph = qg.graph
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    kinds = {t: q.kind for t, q in qg.quantizers.items()}
    grouped = {t for t, k in kinds.items() if k == "grouped"}
    assert ri.codes.keys() == rf.codes.keys() >= set(graph.tensor_names()[1:]) | {t + ".groups" for t in grouped}
    assert first_mismatch(ri.codes, rf.codes) is None
    assert np.array_equal(ri.logits, rf.logits)
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
    if "exits" in names:
        d = ri.trace.extras["exit_depth"]
        assert np.array_equal(d, rf.trace.extras["exit_depth"]) and np.array_equal(ri.trace.layer_ran,
                                                                                    rf.trace.layer_ran)
        depth = graph_depth(graph)
        event("all images leave" if (d < depth).all() else "no image leaves" if (d == depth).all() else "some leave")
    small = GraphIntegerExecutor(qg).run(images[6:], batch_size=3)     # per-image state across batches
    assert first_mismatch(ri.codes, small.codes) is None and np.array_equal(ri.logits, small.logits)
    owned = qg.meta.get("mechanisms", {})
    assert sorted(owned) == sorted(names)
    for x, y in itertools.combinations(owned.values(), 2):
        assert not set(x) & set(y)                                       # one owner per tensor
    own, split = owners(graph), {op.inputs[0] for op in graph.ops if op.kind == "split_heads"}
    for kind, name in (("grouped", "groups"), ("two_scaled", "two_scaled"), ("predicted", "predicted")):
        mine = {t for t, k in kinds.items() if k == kind and own[t] == t and t not in split}   # qkv: its parts'
        assert mine <= set(owned.get(name, ()))
    assert any(o.kind == "exit" for o in graph.ops) == ("exits" in names)
    if names in SHORTHAND:      # [two_scaled] is tsptq, [groups] igq, [predicted] scalepredictor
        _same_codes(qg, _shorthand(names, model, images[:6], cfg, image_size, groups, degree), images[6:])
    x = torch.as_tensor(images[6:8], dtype=torch.float64)
    with torch.no_grad():       # the float walk of the graph that was quantized (exits aside) is timm's forward
        ref = model.double()(x)
        lowered = lower(model, image_size=image_size)
        out = float_forward(lowered, x)
    assert [o for o in graph.ops if not o.name.startswith("exits.")] == list(lowered.ops)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_all_four_mechanisms_with_images_leaving_mid_batch(tmp_path):
    """Images leave at both exits of a small model: per-image predicted scales and IGQ group maps
    follow the batch (one batch, batches of 3, both executors, after save / load)."""
    cfg = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=3, num_heads=2, num_classes=5,
               mlp_ratio=2, init_values=None)
    model, images = build_vit(cfg, seed=3, global_pool="avg", class_token=False), random_images(cfg, 24, seed=3)
    qg = quantize_graph(model, images[:16], _cfg(NAMES, (4, 8), tau=0.3, calib_images=16))
    runs = [GraphIntegerExecutor(qg).run(images[16:]), GraphFakeQuantExecutor(qg).run(images[16:]),
            GraphIntegerExecutor(qg).run(images[16:], batch_size=3),
            GraphFakeQuantExecutor(qg).run(images[16:], batch_size=3)]
    qg.save(tmp_path / "m.qgraph.npz")
    runs.append(GraphIntegerExecutor(QuantizedGraph.load(tmp_path / "m.qgraph.npz")).run(images[16:], batch_size=5))
    d = runs[0].trace.extras["exit_depth"]
    assert set(np.unique(d)) == {1, 2} or set(np.unique(d)) == {1, 2, 3}, d      # both exits taken
    maps = [k for k in runs[0].codes if k.endswith(".groups")]
    assert maps and {"predicted", "grouped", "two_scaled"} <= {q.kind for q in qg.quantizers.values()}
    for r in runs[1:]:
        assert first_mismatch(runs[0].codes, r.codes) is None and np.array_equal(runs[0].logits, r.logits)
        assert np.array_equal(d, r.trace.extras["exit_depth"])
    late = maps[-1]                                                 # a block-2 map: zero for images gone
    assert not runs[0].codes[late][d < 3].any()


def test_exits_alone_is_the_apq_recipe_with_uniform_widths():
    """``static + [exits]`` = ``apq`` with ``allocation: uniform`` and the same fixed threshold, code for code
    (the mechanism reuses the recipe's heads, features and freezing)."""
    from reference.recipes.apq_graph import quantize_apq_graph
    cfg = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=3, num_heads=2, num_classes=5,
               mlp_ratio=2, init_values=None)
    model, images = build_vit(cfg, seed=3), random_images(cfg, 24, seed=3)
    common = {"recipe": "static", "w_bits": 4, "a_bits": 8, "calib_images": 16}
    composed = quantize_graph(model, images, recipe_from_dict(
        {**common, "mechanisms": [{"exits": {"threshold": 0.3, "exits_every": 1}}]}))
    apq = quantize_apq_graph(model, images, recipe_from_dict(
        {**common, "recipe": "apq", "params": {"threshold": 0.3, "exits_every": 1, "allocation": "uniform"}}))
    assert composed.graph.ops == apq.graph.ops
    for key in ("exit_after_blocks", "exit_thresholds", "exit_threshold_codes"):
        assert composed.meta[key] == apq.meta[key]
    ra, rb = GraphIntegerExecutor(composed).run(images[16:]), GraphIntegerExecutor(apq).run(images[16:])
    assert first_mismatch(ra.codes, rb.codes) is None and np.array_equal(ra.logits, rb.logits)
    d = ra.trace.extras["exit_depth"]
    assert (d < 3).any() and np.array_equal(d, rb.trace.extras["exit_depth"])     # images do leave


def test_precedence_two_scaled_keeps_softmax_and_activations_groups_take_the_norms():
    import torch
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2, num_classes=5).eval()
    images = np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32)
    graph = lower(model)
    static = quantize_graph(graph, images, _cfg((), (4, 4), 2))
    cfg = _cfg(("groups", "two_scaled"), (4, 4), 2)       # YAML order does not matter
    owned = owners_of(static, cfg.mechanisms)
    assert owned["two_scaled"] == {"blocks.0.attn", "blocks.0.gelu"}
    assert owned["groups"] == {"blocks.0.norm1", "blocks.0.attn_out", "blocks.0.norm2"}
    only_ts = owners_of(static, _cfg(("two_scaled",), (4, 4), 2).mechanisms)["two_scaled"]
    assert only_ts == {"blocks.0.attn", "blocks.0.gelu", "blocks.0.norm1", "blocks.0.norm2"}     # with O-2SF
    qg = quantize_graph(graph, images, cfg)
    kinds = {t: qg.quantizers[t].kind for t in owned["two_scaled"] | owned["groups"]}
    assert kinds == {**dict.fromkeys(owned["two_scaled"], "two_scaled"), **dict.fromkeys(owned["groups"], "grouped")}
    assert qg.meta["recipe"] == "static" and qg.meta["label"] == "two_scaled+groups_w4a4"
    qkv = {"blocks.0.q", "blocks.0.k", "blocks.0.v"}
    alone = owners_of(static, _cfg(("predicted",), (4, 4)).mechanisms)["predicted"]
    assert alone == qkv | {"blocks.0.norm1", "blocks.0.attn_out", "blocks.0.norm2", "blocks.0.gelu"}
    all4 = owners_of(static, _cfg(NAMES, (4, 4)).mechanisms)
    assert all4["predicted"] == qkv and all4["groups"] == owned["groups"] and all4["exits"] == frozenset()
    assert owners_of(static, _cfg(("two_scaled", "predicted"), (4, 4)).mechanisms)["predicted"] == \
        qkv | {"blocks.0.attn_out"}


@pytest.fixture(scope="module")
def digits():
    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    test, labels = reference.load_dataset("digits", model, "test", limit=64)
    return model, calib, test, labels


@pytest.mark.slow
@pytest.mark.parametrize("recipe, two_scaled, exits", [("tsptq_groups_w4a4", 12, False),
                                                       ("tsptq_groups_exits_w4a8", 12, True)])
def test_composed_recipes_on_the_default_model_are_bit_exact(digits, recipe, two_scaled, exits):
    model, calib, test, labels = digits
    qg = quantize_graph(model, calib, load_recipe(f"configs/recipes/{recipe}.yaml"), model_name="vit_digits")
    ri, rf = GraphIntegerExecutor(qg).run(test), GraphFakeQuantExecutor(qg).run(test)
    assert first_mismatch(ri.codes, rf.codes) is None and np.array_equal(ri.logits, rf.logits)
    assert ri.trace.layers == rf.trace.layers
    kinds = [q.kind for q in qg.quantizers.values()]
    assert kinds.count("two_scaled") == two_scaled and kinds.count("grouped") > 0
    top1 = float((ri.logits.argmax(-1) == labels).mean())
    print(f"composed {qg.meta['label']} top-1 on {len(test)} digits test images: {top1:.3f}")
    assert top1 > 0.5
    if exits:       # the bundled exit heads (after blocks 1 and 3); images leave at both
        assert qg.meta["exit_after_blocks"] == [1, 3]
        d = ri.trace.extras["exit_depth"]
        assert np.array_equal(d, rf.trace.extras["exit_depth"]) and set(np.unique(d)) == {2, 4, 6}
        print("exit depths", np.bincount(d)[[2, 4, 6]])


@pytest.mark.slow
@pytest.mark.parametrize("names", [("two_scaled",), ("groups",)])
def test_single_mechanisms_equal_their_recipes_on_the_default_model(digits, names):
    model, calib, test, _ = digits
    params = {"two_scaled": {}, "groups": {"groups": 2}}[names[0]]
    composed = recipe_from_dict({"recipe": "static", "w_bits": 4, "a_bits": 4, "mechanisms": [{names[0]: params}]})
    short = recipe_from_dict({"recipe": SHORTHAND[names], "w_bits": 4, "a_bits": 4, "params": params})
    _same_codes(quantize_graph(model, calib, composed), quantize_graph(model, calib, short), test[:32])


# --- recipe YAML ------------------------------------------------------------------------------
def _load_error(tmp_path, body: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text("recipe: static\n" + body)
    with pytest.raises(InputError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_unknown_mechanism_with_did_you_mean(tmp_path):
    msg = _load_error(tmp_path, "mechanisms: [two_scaled, grups]\n")
    assert "mechanisms[1]: unknown mechanism 'grups'" in msg and "did you mean 'groups'" in msg


def test_unknown_mechanism_param_with_did_you_mean(tmp_path):
    msg = _load_error(tmp_path, "mechanisms:\n  - two_scaled: {sofmax: true}\n")
    assert "mechanisms.two_scaled: params.sofmax: unknown" in msg and "did you mean 'softmax'" in msg
    msg = _load_error(tmp_path, "mechanisms:\n  - groups: {group: 2}\n")
    assert "mechanisms.groups: params.group: unknown" in msg and "did you mean 'groups'" in msg


def test_unknown_predicted_or_exits_param_with_did_you_mean(tmp_path):
    msg = _load_error(tmp_path, "mechanisms:\n  - predicted: {degre: 2}\n")
    assert "mechanisms.predicted: params.degre: unknown" in msg and "did you mean 'degree'" in msg
    msg = _load_error(tmp_path, "mechanisms:\n  - groups: {groups: 2}\n  - exits: {treshold: 0.9}\n")
    assert "mechanisms.exits: params.treshold: unknown" in msg and "did you mean 'threshold'" in msg
    msg = _load_error(tmp_path, "mechanisms: [two_scaled, predictd]\n")
    assert "unknown mechanism 'predictd'" in msg and "did you mean 'predicted'" in msg


def test_exits_params(tmp_path):
    assert "params.threshold: search is the apq recipe's" in _load_error(
        tmp_path, "mechanisms:\n  - exits: {threshold: search}\n")
    assert "params.threshold: expected a number in (0, 1]" in _load_error(
        tmp_path, "mechanisms:\n  - exits: {threshold: 1.5}\n")
    assert "params.exits_every: expected a positive integer" in _load_error(
        tmp_path, "mechanisms:\n  - exits: {exits_every: 0}\n")
    cfg = recipe_from_dict({"recipe": "static", "mechanisms": [{"exits": {"threshold": [0.8, 0.9]}}, "predicted"]})
    assert [n for n, _ in cfg.mechanisms] == ["predicted", "exits"] and cfg.mechanisms[1][1].threshold == (0.8, 0.9)
    assert cfg.label == "predicted+exits_w8a8"


def test_exits_threshold_list_must_match_the_exits():
    cfg = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=3, num_heads=2, num_classes=5,
               mlp_ratio=2, init_values=None)
    model, images = build_vit(cfg, seed=1), random_images(cfg, 8, seed=1)
    rc = recipe_from_dict({"recipe": "static", "calib_images": 8,
                           "mechanisms": [{"exits": {"threshold": [0.5, 0.6, 0.7], "exits_every": 1}}]})
    with pytest.raises(InputError, match=r"exits: threshold lists 3 values for 2 exits \(after blocks \[0, 1\]\)"):
        quantize_graph(model, images, rc)
    no_head = build_vit({**cfg, "num_classes": 0}, seed=1)
    with pytest.raises(InputError, match="no classifier head"):
        quantize_graph(no_head, images, recipe_from_dict({"recipe": "static", "calib_images": 8,
                                                          "mechanisms": [{"exits": {"exit_heads": "distill"}}]}))


def test_bad_mechanism_param_value(tmp_path):
    msg = _load_error(tmp_path, "mechanisms:\n  - groups: {groups: 3}\n")
    assert "mechanisms.groups: params.groups: expected one of" in msg


def test_duplicate_mechanism(tmp_path):
    msg = _load_error(tmp_path, "mechanisms:\n  - two_scaled\n  - two_scaled: {gelu: false}\n")
    assert "mechanisms[1]: two_scaled is listed twice" in msg


def test_mechanisms_only_on_static(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("recipe: igq\nparams: {groups: 2}\nmechanisms: [two_scaled]\n")
    with pytest.raises(InputError, match=r"mechanisms: compose on recipe static, got recipe 'igq'"):
        load_recipe(path)
    assert "params: a recipe with mechanisms" in _load_error(
        tmp_path, "params: {groups: 2}\nmechanisms: [two_scaled]\n")
    assert "mechanisms: expected a list" in _load_error(tmp_path, "mechanisms: two_scaled\n")


def test_public_quantize_composes_mechanisms():
    """`reference.quantize` (the public API, one entry for every recipe) freezes a composed recipe
    exactly as `composed.quantize_graph` does; `reference.quantize_graph` is the same function."""
    from dataclasses import replace

    from strategies import build_vit, random_images
    from test_graph_static import SMALL

    model, images = build_vit(SMALL, seed=5), random_images(SMALL, 14, seed=5)
    cfg = replace(load_recipe("configs/recipes/tsptq_groups_w4a4.yaml"), calib_images=8)
    qg = reference.quantize(model, images[:8], cfg)
    assert qg.meta["label"] == "two_scaled+groups_w4a4" and reference.quantize_graph is reference.quantize
    _same_codes(qg, quantize_graph(model, images[:8], cfg), images[8:])


def test_bundled_composed_recipes():
    cfg = load_recipe("configs/recipes/tsptq_groups_w4a4.yaml")
    assert cfg.recipe == "static" and [n for n, _ in cfg.mechanisms] == ["two_scaled", "groups"]
    assert cfg.mechanisms[1][1].groups == 2 and cfg.label == "two_scaled+groups_w4a4"
    cfg = load_recipe("configs/recipes/tsptq_groups_exits_w4a8.yaml")
    assert [n for n, _ in cfg.mechanisms] == ["two_scaled", "groups", "exits"]
    assert cfg.mechanisms[2][1].threshold == 0.9 and cfg.label == "two_scaled+groups+exits_w4a8"
