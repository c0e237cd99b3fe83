"""The static recipe on the lowered graph (issue 13, phase 2).

* Identity with the removed legacy static executor on the bundled model:
  tests/reference/test_legacy_golden.py (recorded codes of every shipped recipe).
* On random timm VisionTransformer configurations x bit-widths the numba
  and torch op sets give identical codes at every tensor.
* W8A8 agrees with fp32 on a small random model; save/load round-trips;
  files of another format are refused naming the version.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.lowering import lower
from reference.recipes.config import RecipeConfig
from reference.recipes.static_graph import quantize_graph
from simulator.errors import InputError
from simulator.int_ops import GraphIntegerExecutor
from simulator.qgraph import FORMAT_VERSION, QuantizedGraph
from simulator.results import first_mismatch
from strategies import BIT_WIDTHS, build_vit, lowering_configs, random_images, random_model



@settings(max_examples=30)
@given(drawn=lowering_configs(), bits=st.sampled_from(BIT_WIDTHS))
def test_both_graph_executors_give_identical_codes(drawn, bits):
    model, image_size, images = random_model(drawn)
    graph = lower(model, image_size=image_size)
    cfg = RecipeConfig(w_bits=bits[0], a_bits=bits[1], calib_images=6)
    qg = quantize_graph(graph, images[:6], cfg)
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert ri.codes.keys() == rf.codes.keys() == set(graph.tensor_names()[1:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert np.array_equal(ri.logit_codes, rf.logit_codes)
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows


SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=2, num_heads=3, num_classes=10,
             mlp_ratio=4, init_values=None)


def test_w8a8_agrees_with_fp32_on_a_small_random_model():
    model = build_vit(SMALL, seed=5)
    images = random_images(SMALL, 96, seed=5)
    qg = quantize_graph(model, images[:32], RecipeConfig(calib_images=32))
    with torch.no_grad():
        ref = model(torch.from_numpy(images[32:])).numpy()
    res = GraphIntegerExecutor(qg).run(images[32:])
    agree = float((res.predictions == ref.argmax(-1)).mean())
    assert agree >= 0.9, agree
    rel = np.abs(res.logits - ref).max() / np.abs(ref).max()
    assert rel < 0.05, rel


def test_save_load_round_trip_and_version_errors(tmp_path):
    model = build_vit(SMALL, seed=2, global_pool="avg", class_token=False, fc_norm=True)
    images = random_images(SMALL, 12, seed=2)
    qg = quantize_graph(model, images[:8], RecipeConfig(calib_images=8, act_calibration="minmax"))
    path = tmp_path / "m.qgraph.npz"
    qg.save(path)
    back = QuantizedGraph.load(path)
    assert back.graph.ops == qg.graph.ops and back.meta == qg.meta
    assert back.quantizers.keys() == qg.quantizers.keys()
    a, b = GraphIntegerExecutor(qg).run(images[8:]), GraphIntegerExecutor(back).run(images[8:])
    assert first_mismatch(a.codes, b.codes) is None and np.array_equal(a.logits, b.logits)
    assert not list(tmp_path.glob("*.tmp"))

    old = tmp_path / "old.npz"             # the removed per-model QuantizedViT's header
    np.savez(old, __header__=np.frombuffer(json.dumps({"format_version": 1, "tree": {}}).encode(), dtype=np.uint8))
    with pytest.raises(InputError, match=rf"old\.npz: format_version 1 is the old per-model QuantizedViT format, "
                                         rf"written before the legacy walks were removed; expected format_version "
                                         rf"{FORMAT_VERSION} \(a QuantizedGraph\)"):
        QuantizedGraph.load(old)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad\.npz: not a quantized graph file"):
        QuantizedGraph.load(bad)
    with pytest.raises(InputError, match="no such file"):
        QuantizedGraph.load(tmp_path / "missing.npz")


def test_future_version_is_refused(tmp_path):
    import json
    path = tmp_path / "v9.npz"
    header = np.frombuffer(json.dumps({"format_version": 9, "tree": {}}).encode(), dtype=np.uint8)
    np.savez(path, __header__=header)
    with pytest.raises(InputError, match=rf"v9\.npz: format_version 9, expected {FORMAT_VERSION}"):
        QuantizedGraph.load(path)


from reference.lowering.coverage import CONFIGURATIONS, build, images_for   # noqa: E402

LOWERED = [c for c in CONFIGURATIONS if c.refusal is None]


@pytest.mark.parametrize("cfg", LOWERED, ids=[c.name for c in LOWERED])
def test_every_lowered_configuration_quantizes_bit_exactly(cfg):
    """Each row of the lowering's coverage table: both executors agree on every
    tensor (W8A8) and the output is close to timm's float forward."""
    model = build(cfg).float()
    graph = lower(model, image_size=cfg.image_size)
    images = images_for(cfg, batch=10).float().numpy()
    rc = RecipeConfig(calib_images=6, act_calibration="minmax", weight_calibration="minmax")
    qg = quantize_graph(graph, images[:6], rc)
    ri, rf = GraphIntegerExecutor(qg).run(images[6:]), GraphFakeQuantExecutor(qg).run(images[6:])
    assert first_mismatch(ri.codes, rf.codes) is None
    with torch.no_grad():
        ref = model(torch.from_numpy(images[6:])).numpy()
    assert ri.logits.shape == ref.shape
    rel = np.abs(ri.logits - ref).max() / np.abs(ref).max()
    assert rel < 0.25, rel        # not garbage (random weights, 6 calibration images, minmax)


