"""Early exits: both executors take identical exit decisions on every image and stay
bit-exact (codes, logits, exit depth, ran mask, overflows) over random small ViTs with
random exit placements, random threshold codes and random per-block bit-widths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exits_support import assert_exits_equivalent, exit_model
from reference.exits import apply_thresholds
from reference.fakequant import FakeQuantExecutor
from reference.recipes.apq import CONF_BITS
from simulator.exit_graph import layer_ran_from_depth
from simulator.executor import IntegerExecutor
from simulator.graph import static_layers
from simulator.kernels.gemm import BACKENDS
from strategies import BIT_WIDTHS, random_images, vit_configs


@st.composite
def exit_cases(draw):
    cfg = {**draw(vit_configs()), "depth": draw(st.integers(2, 4))}
    depth = cfg["depth"]
    after = sorted(draw(st.sets(st.integers(0, depth - 2), min_size=1, max_size=depth - 1)))
    top = 1 << CONF_BITS
    codes = draw(st.lists(st.one_of(st.sampled_from([0, 1, top - 1, top]), st.integers(0, top)),
                          min_size=len(after), max_size=len(after)))
    pairs = draw(st.lists(st.sampled_from(BIT_WIDTHS), min_size=2, max_size=2))
    choice = draw(st.lists(st.integers(0, 1), min_size=depth, max_size=depth))
    return cfg, draw(st.integers(0, 500)), pairs, after, choice, codes


@settings(max_examples=12)
@given(case=exit_cases(), backend=st.sampled_from(BACKENDS), boost=st.sampled_from([1.0, 30.0]),
       batch_size=st.sampled_from([2, 64]))
def test_random_exit_vits_bit_exact(case, backend, boost, batch_size):
    cfg, seed, pairs, after, choice, codes = case
    q = exit_model(cfg, seed, pairs, after, choice, codes)
    images = np.concatenate([random_images(cfg, 4, seed=seed + 1), random_images(cfg, 2, seed=seed + 2,
                                                                                   scale=boost)])
    rf, ri = assert_exits_equivalent(q, images, backend, batch_size)
    # the decisions are the documented rule: first exit whose confidence code reaches its threshold
    never = dataclasses.replace(q, exits=tuple(dataclasses.replace(e, threshold_q=1 << CONF_BITS) for e in q.exits))
    full = IntegerExecutor(never).run(images)
    conf = np.stack([full.codes[f"exits.{j}.confidence"][:, 0] for j in range(len(after))], 1)
    pred = np.stack([full.codes[f"exits.{j}.logits"].argmax(1) for j in range(len(after))], 1)
    want_pred, first = apply_thresholds(conf, pred, full.predictions, codes)
    table = np.array([a + 1 for a in after] + [cfg["depth"]])
    assert np.array_equal(ri.trace.extras["exit_depth"], table[first])
    assert np.array_equal(ri.predictions, want_pred)
    # per-block widths really differ where chosen, and the trace carries them
    recs = {r.name: r for r in ri.trace.layers}
    for i, c in enumerate(choice):
        wb, ab = pairs[c % 2] if pairs[0] != pairs[1] else pairs[0]
        assert (recs[f"blocks.{i}.mlp.fc1"].b_bits, recs[f"blocks.{i}.attn.qk"].a_bits) == (wb, ab)


@pytest.fixture(scope="module")
def small():
    cfg = dict(depth=4, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=1,
               num_classes=5, init_values=None)
    return cfg


def test_everyone_leaves_at_the_first_exit(small):
    """Threshold code 0 -> all images exit after block 0: later blocks never run, codes 0 there."""
    q = exit_model(small, 3, [(8, 8), (4, 4)], [0, 2], [0, 1, 0, 1], [0, 1 << CONF_BITS])
    images = random_images(small, 5, seed=4)
    rf, ri = assert_exits_equivalent(q, images)
    assert (ri.trace.extras["exit_depth"] == 1).all()
    assert not ri.codes["blocks.1.x_out"].any() and not ri.codes["norm"].any()
    assert np.array_equal(ri.logit_codes, ri.codes["exits.0.logits"])
    ran = ri.trace.layer_ran
    names = [r.name for r in ri.trace.layers]
    assert ran[:, names.index("blocks.0.mlp.fc2")].all() and not ran[:, names.index("blocks.1.norm1")].any()
    assert not ran[:, names.index("head")].any() and ran[:, names.index("exits.0.head")].all()
    assert ri.trace.overflows == FakeQuantExecutor(q).run(images).trace.overflows


def test_layer_ran_and_costs_follow_depth(small):
    import hwmodels

    q = exit_model(small, 5, [(8, 8)], [0, 2], [0] * 4, [1 << CONF_BITS] * 2)
    layers = static_layers(q)
    depths = np.array([1, 3, 4, 4])
    ran = layer_ran_from_depth(layers, depths, q)
    bops = np.array([r.bops for r in layers])
    full = sum(r.bops for r in layers if not r.name.startswith("exits."))
    assert ran[2:].astype(np.int64) @ bops == pytest.approx([full + sum(r.bops for r in layers
                                                                        if r.name.startswith("exits."))] * 2)
    assert (ran[0].astype(np.int64) @ bops) < (ran[1].astype(np.int64) @ bops) < full
    r = IntegerExecutor(q).run(random_images(small, 3, seed=6))
    r.trace.layer_ran = ran[:3]
    rep = hwmodels.estimate(r.trace, hwmodels.load("configs/npu_int8.yaml"))
    d = rep.distribution("bops")
    assert d.mean == pytest.approx(float(np.mean(ran[:3].astype(np.int64) @ bops)))
    cyc = rep.per_image("cycles")
    assert cyc[0] < cyc[1] < cyc[2] and rep.distribution("cycles").p50 == pytest.approx(cyc[1])
