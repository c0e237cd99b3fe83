"""Composed mechanisms on the lowered graph (issue 13, item 4: recipes compose).

* Hypothesis over `lowering_configs()` x bits x a subset of the registered
  mechanisms (none, two_scaled, groups, both): the numba and torch op sets give
  identical codes and group maps at every tensor and equal traces; every tensor
  has one owner; ``[two_scaled]`` is the ``tsptq`` recipe and ``[groups]`` the
  ``igq`` recipe, code for code.
* Default model (slow): the bundled ``tsptq_groups_w4a4.yaml`` is bit-exact
  between executors; single mechanisms equal tsptq / igq there too.
* Recipe YAML: unknown mechanism (did-you-mean), unknown param, duplicate,
  mechanisms on a recipe other than static.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.lowering import lower
from reference.recipes.config import load_recipe, recipe_from_dict
from reference.recipes.composed import MECHANISMS, quantize_graph
from reference.recipes.mechanisms import owners_of
from reference.recipes.params import MECHANISM_PARSERS
from reference.recipes.static_graph import owners
from simulator.errors import InputError
from simulator.int_ops import GraphIntegerExecutor
from simulator.results import first_mismatch
from strategies import BIT_WIDTHS, lowering_configs
from test_graph_static import _random_model

SUBSETS = [(), ("two_scaled",), ("groups",), ("two_scaled", "groups")]
SHORTHAND = {("two_scaled",): "tsptq", ("groups",): "igq"}


def _cfg(names, bits, groups, **extra):
    params = {"two_scaled": {"objective": "tensor"}, "groups": {"groups": groups}}
    return recipe_from_dict({"recipe": "static", "w_bits": bits[0], "a_bits": bits[1],
                             "mechanisms": [{n: params[n]} for n in names], **extra})


def _same_codes(a, b, images):
    ra, rb = GraphIntegerExecutor(a).run(images), GraphIntegerExecutor(b).run(images)
    assert ra.codes.keys() == rb.codes.keys()
    assert first_mismatch(ra.codes, rb.codes) is None
    assert np.array_equal(ra.logits, rb.logits)


def test_registry_order_is_the_params_order():
    assert list(MECHANISMS) == ["two_scaled", "groups"]


@settings(max_examples=20, deadline=None)
@given(drawn=lowering_configs(), bits=st.sampled_from(BIT_WIDTHS), names=st.sampled_from(SUBSETS),
       groups=st.sampled_from([1, 2, 4]))
def test_both_graph_executors_agree_on_any_subset_of_mechanisms(drawn, bits, names, groups):
    model, image_size, images = _random_model(drawn)
    graph = lower(model, image_size=image_size)
    cfg = _cfg(names, bits, groups, calib_images=6)
    qg = quantize_graph(graph, images[:6], cfg)
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    kinds = {t: q.kind for t, q in qg.quantizers.items()}
    grouped = {t for t, k in kinds.items() if k == "grouped"}
    assert ri.codes.keys() == rf.codes.keys() >= set(graph.tensor_names()[1:]) | {t + ".groups" for t in grouped}
    assert first_mismatch(ri.codes, rf.codes) is None
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
    owned = qg.meta.get("mechanisms", {})
    assert sorted(owned) == sorted(names)
    assert not set(owned.get("two_scaled", ())) & set(owned.get("groups", ()))        # one owner per tensor
    own = owners(graph)
    assert {t for t in grouped if own[t] == t} <= set(owned.get("groups", ()))
    assert {t for t, k in kinds.items() if k == "two_scaled"} <= set(owned.get("two_scaled", ()))
    if names in SHORTHAND:      # [two_scaled] is tsptq, [groups] is igq
        params = cfg.mechanisms[0][1]
        short = recipe_from_dict({"recipe": SHORTHAND[names], "w_bits": bits[0], "a_bits": bits[1], "calib_images": 6,
                                  "params": {"two_scaled": {"objective": "tensor"},
                                             "groups": {"groups": groups}}[names[0]]})
        assert MECHANISM_PARSERS[names[0]](short.params) == params
        _same_codes(qg, quantize_graph(graph, images[:6], short), images[6:])


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


@pytest.fixture(scope="module")
def digits():
    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    test, labels = reference.load_dataset("digits", model, "test", limit=64)
    return model, calib, test, labels


@pytest.mark.slow
def test_composed_w4a4_on_the_default_model_is_bit_exact(digits):
    model, calib, test, labels = digits
    qg = quantize_graph(model, calib, load_recipe("configs/recipes/tsptq_groups_w4a4.yaml"))
    ri, rf = GraphIntegerExecutor(qg).run(test), GraphFakeQuantExecutor(qg).run(test)
    assert first_mismatch(ri.codes, rf.codes) is None and np.array_equal(ri.logits, rf.logits)
    assert ri.trace.layers == rf.trace.layers
    kinds = [q.kind for q in qg.quantizers.values()]
    assert kinds.count("two_scaled") == 12 and kinds.count("grouped") > 0
    top1 = float((ri.logits.argmax(-1) == labels).mean())
    print(f"composed two_scaled+groups W4A4 top-1 on {len(test)} digits test images: {top1:.3f}")
    assert top1 > 0.5


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


def test_bundled_composed_recipe():
    cfg = load_recipe("configs/recipes/tsptq_groups_w4a4.yaml")
    assert cfg.recipe == "static" and [n for n, _ in cfg.mechanisms] == ["two_scaled", "groups"]
    assert cfg.mechanisms[1][1].groups == 2 and cfg.label == "two_scaled+groups_w4a4"
