"""tsptq end to end on the graph: the fake-quant (integer-only) and integer executors
bit-exact on random small ViTs (all GEMM backends, all widths 4-8, outlier
LayerNorm channels forced) and on the bundled default model; the trace
tallies the V-2SF decode on the requant unit and hwmodels costs it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwmodels
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.recipes import quantize
from simulator.kernels.gemm import BACKENDS
from equivalence_support import assert_equivalent
from strategies import build_vit, random_images, vit_configs


def _tsptq(cfg, seed, bits, outlier_gain=8.0, n_calib=6):
    model = build_vit(cfg, seed=seed)
    with torch.no_grad():                       # a few high-range LayerNorm channels, as in real ViTs
        for blk in model.blocks:
            blk.norm1.weight[:1] *= outlier_gain
            blk.norm2.weight[-1:] *= outlier_gain
    rc = {"recipe": "tsptq", "w_bits": bits, "a_bits": bits, "weight_calibration": "minmax",
          "act_calibration": "mse", "calib_images": n_calib}
    return quantize(model, random_images(cfg, n_calib, seed=seed), rc, model_name="rand")




@settings(max_examples=25)
@given(cfg=vit_configs(layer_scale=st.booleans()), seed=st.integers(0, 1000), bits=st.integers(4, 8),
       backend=st.sampled_from(BACKENDS), boost=st.sampled_from([1.0, 30.0]))
@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_random_vits_tsptq_bit_exact(cfg, seed, bits, backend, boost):
    q = _tsptq(cfg, seed, bits)
    images = np.concatenate([random_images(cfg, 3, seed=seed + 7), random_images(cfg, 2, seed=seed + 8,
                                                                                   scale=boost)])
    rf, _ = assert_equivalent(q, images, backend)
    for i in range(cfg["depth"]):
        assert q.quantizers[f"blocks.{i}.attn"].ratio_shift >= 1 and q.quantizers[f"blocks.{i}.gelu"].ratio_shift >= 1
        for name in ("attn", "gelu"):
            words = rf.codes[f"blocks.{i}.{name}"]
            assert words.min() >= 0 and words.max() < 2 ** bits


def test_both_regions_used_and_outliers_folded():
    cfg = dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=3,
               num_classes=7, init_values=0.1)
    q = _tsptq(cfg, 5, 6)
    images = np.concatenate([random_images(cfg, 6, seed=6), random_images(cfg, 2, seed=7, scale=10.0)])
    rfs = [assert_equivalent(q, images, backend)[0] for backend in BACKENDS]
    rf = rfs[0]
    assert any(q.params[f"blocks.{i}.{n}"].channel_shift.any() for i in range(2) for n in ("norm1", "norm2"))
    for i in range(2):
        for name in ("attn", "gelu"):
            flags = rf.codes[f"blocks.{i}.{name}"] >> 5
            assert 0 < flags.mean() < 1, f"{name}: both the fine and the coarse region occur"
    rff = GraphFakeQuantExecutor(q, nonlinear="float").run(images, keep_codes=False)
    assert rff.logits.shape == rf.logits.shape


@pytest.fixture(scope="module")
def digits():
    from reference import load_dataset, load_model
    model = load_model()
    x, y = load_dataset("digits", model, split="test", limit=48)
    cal, _ = load_dataset("digits", model, split="calib", limit=64)
    return model, x, y, cal


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
@pytest.mark.parametrize("bits", [8, 4])
def test_default_model_bit_exact_and_costed(digits, bits):
    model, x, y, cal = digits
    q = quantize(model, cal, f"configs/recipes/tsptq_w{bits}a{bits}.yaml", model_name="vit_digits")
    rf, ri = assert_equivalent(q, x, "auto")
    assert (ri.predictions == y).mean() >= 0.9
    names = [r.name for r in ri.trace.layers]
    depth, t = len(model.blocks), model.patch_embed.num_patches + 1
    h, hidden = model.blocks[0].attn.num_heads, model.blocks[0].mlp.fc1.out_features
    dec = {r.name: r for r in ri.trace.layers if r.name.endswith(".decode")}
    assert len(dec) == 2 * depth
    assert dec["blocks.0.attn.decode"].elements == h * t * t and dec["blocks.0.mlp.decode"].elements == t * hidden
    assert names.index("blocks.0.attn.decode") == names.index("blocks.0.attn.av") - 1
    av = next(r for r in ri.trace.layers if r.name == "blocks.0.attn.av")
    assert av.a_bits == bits                                  # the stored word, flag included
    rep = hwmodels.estimate(ri.trace, hwmodels.load("configs/npu_int8.yaml"))
    from dataclasses import replace
    plain = replace(ri.trace, layers=[r for r in ri.trace.layers if not r.name.endswith(".decode")])
    rep0 = hwmodels.estimate(plain, hwmodels.load("configs/npu_int8.yaml"))
    assert rep.total.cycles > rep0.total.cycles                # the shifts cost requant cycles
    req = hwmodels.spec.SFU_UNITS.index("requant")
    extra = rep.total.sfu_elements[req] - rep0.total.sfu_elements[req]
    assert extra == sum(r.elements for r in dec.values())
