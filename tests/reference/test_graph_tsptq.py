"""TSPTQ-ViT on the lowered graph: the ``two_scaled`` quantizer kind (V-2SF)
and O-2SF channel shifts (`reference.recipes.tsptq_graph`).

* On the bundled default model: V-2SF placement and decode records, both
  executors identical (identity with the removed legacy executor:
  tests/reference/test_legacy_golden.py).
* The numba and torch op sets give identical codes at every tensor on random
  timm VisionTransformer configurations x bit-widths with two_scaled on.
* two_scaled composes with the lowering's features (tanh / quick-GELU, avg
  pooling, fc_norm, forced O-2SF outliers) and round-trips through save/load.
* The new kernels (any-activation words, decode) equal their torch twins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import two_scaled_fq
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.lowering import lower
from reference.recipes.config import RecipeConfig, load_recipe
from reference.recipes.tsptq_graph import quantize_graph_tsptq
from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.int_ops import GraphIntegerExecutor
from simulator.kernels.two_scaled import activation_words, decode_operand
from simulator.qgraph import QuantizedGraph, Quantizer
from simulator.qvit import GeluQ
from simulator.results import first_mismatch
from strategies import BIT_WIDTHS, build_vit, lowering_configs, random_images, random_model

@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tsptq_w8a8", "tsptq_w6a6", "tsptq_w4a4"])
def test_two_scaled_placement_and_decodes_on_the_default_model(digits, recipe):
    """V-2SF on every softmax and GELU output, one decode record per two-scaled tensor, both
    executors identical (identity with the removed legacy tsptq executor:
    tests/reference/test_legacy_golden.py)."""
    model, calib, test = digits
    cfg = load_recipe(f"configs/recipes/{recipe}.yaml")
    qg = quantize_graph_tsptq(model, calib, cfg)
    kinds = {t: qz.kind for t, qz in qg.quantizers.items()}
    assert [t for t, k in kinds.items() if k == "two_scaled"] == [
        f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in ("attn", "gelu")]
    rn = GraphIntegerExecutor(qg).run(test)
    decodes = [(r.name, r.elements, r.rows, r.in_bits) for r in rn.trace.layers if r.name.endswith(".decode")]
    assert [d[0] for d in decodes] == [f"blocks.{i}.{n}.decode" for i in range(len(model.blocks))
                                       for n in ("attn", "mlp")]
    rf = GraphFakeQuantExecutor(qg).run(test[:16])
    assert first_mismatch({k: v[:16] for k, v in rn.codes.items()}, rf.codes) is None




def _tsptq(bits, objective="output", calib_images=6, **params):
    return RecipeConfig(recipe="tsptq", w_bits=bits[0], a_bits=bits[1], calib_images=calib_images,
                        params={"objective": objective, "objective_images": 4, "max_ratio_shift": 4, **params})


@settings(max_examples=20, deadline=None)
@given(drawn=lowering_configs(), bits=st.sampled_from(BIT_WIDTHS), objective=st.sampled_from(["output", "tensor"]))
def test_both_graph_executors_give_identical_codes_with_two_scaled(drawn, bits, objective):
    model, image_size, images = random_model(drawn)
    graph = lower(model, image_size=image_size)
    qg = quantize_graph_tsptq(graph, images[:6], _tsptq(bits, objective))
    two = [t for t, qz in qg.quantizers.items() if qz.kind == "two_scaled"]
    assert set(two) >= {op.outputs[0] for op in graph.ops if op.kind == "softmax"}
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert ri.codes.keys() == rf.codes.keys() == set(graph.tensor_names()[1:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
    assert sum(r.name.endswith(".decode") for r in ri.trace.layers) == len(two)
    for t in two:      # words in range
        assert 0 <= ri.codes[t].min() and ri.codes[t].max() < 1 << qg.quantizers[t].bits


SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=2, num_heads=3, num_classes=10,
             mlp_ratio=4, init_values=None)


@pytest.mark.parametrize("extra", [dict(act_layer="gelu_tanh", global_pool="avg", class_token=False, fc_norm=True),
                                   dict(act_layer="quick_gelu", global_pool="avg", fc_norm=False, reg_tokens=2),
                                   dict(init_values=0.5)],
                         ids=["gelu_tanh-avg-fc_norm", "quick_gelu-avg-registers", "layerscale"])
def test_two_scaled_composes_with_lowering_features(tmp_path, extra):
    model = build_vit(SMALL, seed=3, **extra)
    with torch.no_grad():          # outlier channels in every LayerNorm so O-2SF shifts them
        for blk in model.blocks:
            for ln in (blk.norm1, blk.norm2):
                ln.weight[:2] *= 8.0
                ln.bias[:2] += 2.0
    images = random_images(SMALL, 40, seed=3)
    qg = quantize_graph_tsptq(model, images[:24], _tsptq((8, 8), calib_images=24))
    q = qg.quantizers
    assert all(q[f"blocks.{i}.{n}"].kind == "two_scaled" for i in range(2) for n in ("attn", "gelu"))
    shifted = [t for t, info in qg.meta["tsptq"]["tensors"].items() if info.get("outliers")]
    assert len(shifted) == 4 and all(np.ndim(q[t].scale) == 1 for t in shifted)
    assert not any(q[t].kind == "two_scaled" for t in ("fc_norm", "norm") if t in q)
    ri, rf = GraphIntegerExecutor(qg).run(images[24:]), GraphFakeQuantExecutor(qg).run(images[24:])
    assert first_mismatch(ri.codes, rf.codes) is None
    with torch.no_grad():
        ref = model(torch.from_numpy(images[24:])).numpy()
    assert np.abs(ri.logits - ref).max() / np.abs(ref).max() < 0.1
    assert float((ri.predictions == ref.argmax(-1)).mean()) >= 0.8
    path = tmp_path / "t.qgraph.npz"
    qg.save(path)
    back = QuantizedGraph.load(path)
    assert all((b := back.quantizers[t]).kind == qz.kind and b.ratio_shift == qz.ratio_shift and b.signed == qz.signed
               and np.array_equal(b.scale, qz.scale) for t, qz in qg.quantizers.items())
    assert first_mismatch(GraphIntegerExecutor(back).run(images[24:]).codes, ri.codes) is None
    fl = GraphFakeQuantExecutor(qg, nonlinear="float").run(images[24:])     # float-nonlinear mode runs the words too
    assert float((fl.predictions == ref.argmax(-1)).mean()) >= 0.8


@settings(max_examples=60, deadline=None)
@given(function=st.sampled_from(["gelu_erf", "gelu_tanh", "quick_gelu"]), bits=st.sampled_from([4, 6, 8]),
       r=st.integers(1, 6), shift=st.integers(10, 30), seed=st.integers(0, 2**16))
def test_activation_words_and_decode_equal_their_torch_twins(function, bits, r, shift, seed):
    rng = np.random.default_rng(seed)
    h = rng.integers(-GELU_INPUT_LIMIT - 5, GELU_INPUT_LIMIT + 5, size=(7, 9)).astype(np.int32)
    h[0, :5] = [0, 1, -1, GELU_INPUT_LIMIT, -GELU_INPUT_LIMIT]
    h[1] = rng.integers(-3 << 12, 3 << 12, size=9)       # the interesting range of GELU
    g = GeluQ(out_mult=int(rng.integers(1 << 30, 1 << 31)), out_shift=shift, out_bits=bits, out_scale=1.0,
              ratio_shift=r)
    words = activation_words(function, g, h)
    ref = two_scaled_fq.activation_words(function, g, torch.from_numpy(h.astype(np.int64)), "integer").numpy()
    assert np.array_equal(words.astype(np.int64), ref)
    assert words.min() >= 0 and words.max() < 1 << bits
    for signed in (True, False):
        qz = Quantizer("two_scaled", 1.0, bits, signed=signed, ratio_shift=r)
        dec = decode_operand(qz, words)
        assert np.array_equal(dec, two_scaled_fq.decode_operand(qz, torch.from_numpy(words.astype(np.int64))).numpy())
        assert np.abs(dec).max() <= qz.max_abs


def test_recipe_guard():
    from simulator.errors import InputError
    with pytest.raises(InputError, match="'static'"):
        quantize_graph_tsptq(build_vit(SMALL), random_images(SMALL, 2), RecipeConfig())


from reference.lowering.coverage import CONFIGURATIONS, build, images_for   # noqa: E402

LOWERED = [c for c in CONFIGURATIONS if c.refusal is None]


@pytest.mark.slow
@pytest.mark.parametrize("cfg", LOWERED, ids=[c.name for c in LOWERED])
def test_every_lowered_configuration_runs_tsptq_bit_exactly(cfg):
    """Each row of the lowering's coverage table with two_scaled + O-2SF: both
    executors agree on every tensor (W8A8), every softmax output is two-scaled,
    and the output stays close to timm's float forward."""
    model = build(cfg).float()
    graph = lower(model, image_size=cfg.image_size)
    images = images_for(cfg, batch=10).float().numpy()
    qg = quantize_graph_tsptq(graph, images[:6], _tsptq((8, 8)))
    assert all(qg.quantizers[op.outputs[0]].kind == "two_scaled" for op in graph.ops if op.kind == "softmax")
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert first_mismatch(ri.codes, rf.codes) is None
    with torch.no_grad():
        ref = model(torch.from_numpy(images[6:])).numpy()
    rel = np.abs(ri.logits - ref).max() / np.abs(ref).max()
    assert rel < 0.25, rel
