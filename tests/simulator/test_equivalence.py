"""End to end on the integer graph: GraphFakeQuantExecutor(nonlinear="integer") and
GraphIntegerExecutor are bit-exact -- every boundary's codes, the logits, the trace layers and the
overflow counts -- over random small ViTs x bit-widths x GEMM backends, on
ordinary images and on scaled-up ones that drive codes into saturation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.quantizers import CALIBRATIONS
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from simulator.int_ops import GraphIntegerExecutor
from simulator.kernels.gemm import BACKENDS
from equivalence_support import assert_equivalent
from strategies import BIT_WIDTHS, bit_widths, build_vit, random_images, vit_configs

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


def _quantized(cfg, seed, w_bits, a_bits, act_calibration="minmax", n_calib=6):
    rc = RecipeConfig(w_bits=w_bits, a_bits=a_bits, weight_calibration="minmax", act_calibration=act_calibration,
                      calib_images=n_calib)
    return quantize(build_vit(cfg, seed=seed), random_images(cfg, n_calib, seed=seed), rc, model_name="rand")




@settings(max_examples=100)
@given(cfg=vit_configs(layer_scale=st.booleans()), seed=st.integers(0, 1000), bits=bit_widths,
       act_cal=st.sampled_from(CALIBRATIONS), backend=st.sampled_from(BACKENDS),
       boost=st.sampled_from([1.0, 8.0, 1000.0]))
@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_random_vits_bit_exact(cfg, seed, bits, act_cal, backend, boost):
    q = _quantized(cfg, seed, *bits, act_calibration=act_cal)
    images = np.concatenate([random_images(cfg, 3, seed=seed + 7), random_images(cfg, 2, seed=seed + 8,
                                                                                   scale=boost)])
    rf, _ = assert_equivalent(q, images, backend)
    lo, hi = q.quantizers["input"].lo, q.quantizers["input"].hi
    if boost == 1000.0:     # the scaled-up images really reach the input code range's ends
        assert rf.codes["input"][3:].min() == lo and rf.codes["input"][3:].max() == hi


@pytest.fixture(scope="module")
def layerscale_cfg():
    return dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=3,
                num_classes=7, init_values=0.1)


@pytest.mark.parametrize("bits", BIT_WIDTHS, ids=lambda b: f"W{b[0]}A{b[1]}")
def test_layerscale_model_all_backends(layerscale_cfg, bits):
    cfg = layerscale_cfg
    model = build_vit(cfg, seed=11)
    assert float(model.blocks[0].ls1.gamma.detach().abs().max()) > 0       # LayerScale present and folded
    q = _quantized(cfg, 11, *bits, act_calibration="mse")
    images = np.concatenate([random_images(cfg, 4, seed=12), random_images(cfg, 2, seed=13, scale=20.0)])
    results = [assert_equivalent(q, images, backend)[1] for backend in BACKENDS]
    for r in results[1:]:
        assert np.array_equal(r.logit_codes, results[0].logit_codes)


@pytest.mark.parametrize("backend", ["blas", "numba"])
def test_parallel_kernels_bit_exact(layerscale_cfg, backend, parallel_numba):
    """The same check with numba's prange kernels on 2 threads."""
    q = _quantized(layerscale_cfg, 3, 8, 8)
    assert_equivalent(q, random_images(layerscale_cfg, 4, seed=3, scale=3.0), backend)


def test_batching_does_not_change_codes(layerscale_cfg):
    q = _quantized(layerscale_cfg, 4, 8, 8)
    x = random_images(layerscale_cfg, 5, seed=5)
    for ex in (GraphFakeQuantExecutor(q), GraphIntegerExecutor(q)):
        a, b = ex.run(x, batch_size=64), ex.run(x, batch_size=2)
        assert all(np.array_equal(a.codes[k], b.codes[k]) for k in a.codes)
        assert a.trace.overflows == b.trace.overflows


# --- defined overflow behaviour ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_q():
    cfg = dict(depth=1, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=4, in_chans=1,
               num_classes=6, init_values=None)
    return cfg, _quantized(cfg, 21, 8, 8)


def test_bias_overflow_counted_identically(base_q):
    """A head bias at the int32 edges: ``acc + bias`` leaves int32 and both executors count it."""
    cfg, q = base_q
    head = q.params["head"]
    n = head.w_q.shape[0]
    bias = np.where(np.arange(n) % 2 == 0, ACC_HI, ACC_LO).astype(np.int64)
    q2 = dataclasses.replace(q, params={**q.params, "head": dataclasses.replace(head, bias_q=bias)})
    images = random_images(cfg, 6, seed=22)
    ri = GraphIntegerExecutor(q2).run(images)
    acc = ri.codes["norm"] @ head.w_q.astype(np.int64).T + bias          # exact, independent of both
    expected = int(np.count_nonzero((acc > ACC_HI) | (acc < ACC_LO)))
    assert expected > 0
    for backend in BACKENDS:
        assert GraphIntegerExecutor(q2, gemm_backend=backend).run(images).trace.overflows == {"head": expected}, \
            backend
    rf = GraphFakeQuantExecutor(q2).run(images)
    assert rf.trace.overflows == {"head": expected}, (
        f"the fake-quant executor counts {rf.trace.overflows} overflows, the integer one {{'head': {expected}}}")
    for backend in BACKENDS:
        assert_equivalent(q2, images, backend)


def test_attention_accumulator_overflow_counted_identically(base_q):
    """16-bit q/k codes pinned at 32767: every q.k sum (head_dim * 32767**2) leaves int32.

    Only the ``numba`` backend: 16 x 16-bit operands are outside what the float32
    BLAS backend claims (see test_gemm.test_wide_operands_exact_or_refused).
    """
    cfg, q = base_q
    qkv0 = q.params["blocks.0.attn.qkv"]
    d = cfg["embed_dim"]
    hd = d // cfg["num_heads"]
    bias = qkv0.bias_q.copy()
    mult, shift = qkv0.out_mult.copy(), qkv0.out_shift.copy()
    bias[: 2 * d] = 1 << 30                       # q and k channels: acc + 2**30 ...
    mult[: 2 * d], shift[: 2 * d] = 1 << 30, 44   # ... times 2**-14 = 2**16 + small -> saturates at 32767
    qkv = dataclasses.replace(qkv0, bias_q=bias, out_mult=mult, out_shift=shift, out_bits=16)
    wide = {t: dataclasses.replace(q.quantizers[t], bits=16)          # 16-bit q, k, v codes
            for t in ("blocks.0.attn.qkv", "blocks.0.q", "blocks.0.k", "blocks.0.v")}
    q2 = dataclasses.replace(q, params={**q.params, "blocks.0.attn.qkv": qkv}, quantizers={**q.quantizers, **wide})
    images = random_images(cfg, 3, seed=23)
    rf, ri = assert_equivalent(q2, images, "numba")
    assert (rf.codes["blocks.0.q"] == 32767).all() and (rf.codes["blocks.0.k"] == 32767).all()
    assert hd * 32767 ** 2 > ACC_HI
    t = cfg["img_size"] ** 2 // cfg["patch_size"] ** 2 + 1
    assert ri.trace.overflows["blocks.0.attn.qk"] == len(images) * cfg["num_heads"] * t * t
    uniform = round(256 / t)
    assert np.abs(rf.codes["blocks.0.attn"].astype(np.int64) - uniform).max() <= 1   # saturated -> uniform rows
