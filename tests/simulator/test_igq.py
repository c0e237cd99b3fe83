"""IGQ-ViT grouped datapath: the grouped quantizer and grouped GEMM against
Python-int oracles (random group counts, channel counts not divisible by G,
degenerate groupings), and both executors bit-exact end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import oracles
from types import SimpleNamespace

from reference.fakequant_ops import FakeQuantOps, GraphFakeQuantExecutor
from reference.igq_fakequant import group_quantize as fq_group_quantize
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from simulator import ir
from simulator.igq import SITES, GroupQuantizer, index_bits
from simulator.int_ops import GraphIntegerExecutor, IntOps
from simulator.kernels.gemm import BACKENDS
from simulator.kernels.grouped import group_quantize
from simulator.qgraph import QuantizedGraph, Quantizer
from simulator.qvit import Linear
from simulator.results import first_mismatch
from strategies import build_vit, random_images, vit_configs

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


# --- oracle ---------------------------------------------------------------------------------------
def oracle_code(u: int, mult: int, shift: int, lo: int, hi: int) -> int:
    return oracles.saturate(oracles.requantize(u, mult, shift), lo, hi)


def oracle_group_quantize(u: np.ndarray, gq: GroupQuantizer):
    """[B, T, C] -> codes, indices: per channel the finest group whose rounded extremes stay in range."""
    nb, nt, nc = u.shape
    codes = np.zeros(u.shape, dtype=np.int64)
    gidx = np.zeros((nb, nc), dtype=np.int64)
    exps = [int(e) for e in gq.exps]
    for b in range(nb):
        for c in range(nc):
            col = [int(v) for v in u[b, :, c]]
            g = len(exps) - 1
            for j, e in enumerate(exps):
                sh = gq.shift - e
                if all(gq.lo <= oracles.requantize(v, gq.mult, sh) <= gq.hi for v in (max(col), min(col))):
                    g = j
                    break
            gidx[b, c] = g
            for t in range(nt):
                codes[b, t, c] = oracle_code(col[t], gq.mult, gq.shift - exps[g], gq.lo, gq.hi)
    return codes, gidx


@st.composite
def group_quantizers(draw, signed=st.booleans()):
    groups = draw(st.integers(1, 6))
    exps = sorted(draw(st.sets(st.integers(1, 20), min_size=groups - 1, max_size=groups - 1)), reverse=True) + [0]
    mult = draw(st.one_of(st.just(1), st.integers(1, (1 << 31) - 1)))
    shift = draw(st.integers(exps[0], exps[0] + 40))
    bits = draw(st.sampled_from([2, 4, 6, 8]))
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if draw(signed) else (0, (1 << bits) - 1)
    return GroupQuantizer(np.array(exps, dtype=np.int64), mult, shift, lo, hi, 0.1)


@st.composite
def wide_values(draw, gq: GroupQuantizer):
    """[B, T, C] wide intermediates at a drawn magnitude (0, tiny, in range, huge) so that all
    channels may land in one group, some groups stay empty, or groups mix."""
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 11)))
    bound = ((1 << 62) - 1) // max(gq.mult, 1)
    mag = draw(st.sampled_from([0, 1, 1 << max(gq.shift - 8, 0), 1 << gq.shift, bound]))
    mag = min(mag, bound)
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(-mag, mag)))


@settings(max_examples=80)
@given(data=st.data(), gq=group_quantizers())
def test_group_quantize_matches_oracle(data, gq):
    u = data.draw(wide_values(gq))
    want_codes, want_g = oracle_group_quantize(u, gq)
    codes, g = group_quantize(u, gq, np.int64)
    assert np.array_equal(codes, want_codes) and np.array_equal(g, want_g)
    tc, tg = fq_group_quantize(torch.as_tensor(u), gq)
    assert np.array_equal(tc.numpy(), want_codes) and np.array_equal(tg.numpy(), want_g)
    # rows mode = the channel rule on the transposed matrix
    rc, rg = group_quantize(np.ascontiguousarray(u.transpose(0, 2, 1)), gq, np.int64, rows=True)
    assert np.array_equal(rc, want_codes.transpose(0, 2, 1)) and np.array_equal(rg, want_g)
    tc, tg = fq_group_quantize(torch.as_tensor(u.transpose(0, 2, 1)), gq, dim=-1)
    assert np.array_equal(tc.numpy(), want_codes.transpose(0, 2, 1)) and np.array_equal(tg.numpy(), want_g)


def test_degenerate_groupings():
    """All-zero input: every channel in the finest group; huge input: all in the coarsest (clipped)."""
    gq = GroupQuantizer(np.array([5, 2, 0]), 1, 10, -8, 7, 1.0)
    zeros = np.zeros((2, 4, 7), dtype=np.int64)
    codes, g = group_quantize(zeros, gq, np.int64)
    assert (g == 0).all() and (codes == 0).all()
    huge = np.full((2, 4, 7), 1 << 40, dtype=np.int64)
    codes, g = group_quantize(huge, gq, np.int64)
    assert (g == 2).all() and (codes == 7).all()
    assert index_bits(1) == 0 and index_bits(2) == 1 and index_bits(5) == 3 and index_bits(16) == 4


@st.composite
def grouped_gemm_case(draw):
    gq = draw(group_quantizers(signed=st.just(True)))
    bsz, t, c, n = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 13)), draw(st.integers(1, 6))
    a_bits, w_bits = draw(st.sampled_from([(4, 4), (6, 6), (8, 8), (4, 8)]))
    lo, hi = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
    codes = draw(hnp.arrays(np.int64, (bsz, t, c), elements=st.integers(lo, hi)))
    gidx = draw(hnp.arrays(np.int64, (bsz, c), elements=st.integers(0, gq.groups - 1)))
    wl = 1 << (w_bits - 1)
    w = draw(hnp.arrays(np.int8, (n, c), elements=st.integers(-wl, wl - 1)))
    bias = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-(1 << 20), 1 << 20)))
    mult = draw(hnp.arrays(np.int64, (n,), elements=st.integers(1 << 30, (1 << 31) - 1)))
    shift = draw(hnp.arrays(np.int64, (n,), elements=st.integers(30, 50)))
    lin = Linear(w_q=w, bias_q=bias, w_scale=np.ones(n), w_bits=w_bits, in_bits=a_bits, in_scale=1.0,
                 out_mult=mult, out_shift=shift, out_bits=8, out_scale=np.ones(n))
    return gq, lin, codes, gidx


@settings(max_examples=60)
@given(case=grouped_gemm_case(), backend=st.sampled_from(BACKENDS))
def test_grouped_gemm_matches_oracle(case, backend):
    """out = saturate(requantize(sat32(sum_c (code << (e0 - e_g(c))) * w + bias))) in both executors."""
    gq, lin, codes, gidx = case
    exps = [int(e) for e in gq.exps]
    bsz, t, c = codes.shape
    n = lin.w_q.shape[0]
    want = np.zeros((bsz, t, n), dtype=np.int64)
    for b in range(bsz):
        for i in range(t):
            for j in range(n):
                acc = sum(int(codes[b, i, k]) * (1 << (exps[0] - exps[gidx[b, k]])) * int(lin.w_q[j, k])
                          for k in range(c))
                acc = oracles.saturate(oracles.saturate(acc, ACC_LO, ACC_HI) + int(lin.bias_q[j]), ACC_LO, ACC_HI)
                want[b, i, j] = oracle_code(acc, int(lin.out_mult[j]), int(lin.out_shift[j]), -128, 127)
    # the graph's two op sets on a one-op graph: a linear reading a grouped tensor "x"
    q = {"x": Quantizer("grouped", 1.0, int(lin.in_bits), exps=tuple(exps)), "y": Quantizer("static", 1.0, 8)}
    qg = SimpleNamespace(quantizers=q, params={"l": lin})
    op = ir.Linear(name="l", inputs=("x",), outputs=("y",))
    ex, fq = IntOps(qg, gemm_backend=backend), FakeQuantOps(qg)
    ex.groups["x"], fq.groups["x"] = gidx, torch.as_tensor(gidx)
    assert np.array_equal(ex.linear(op, codes.astype(np.int8)), want)
    assert np.array_equal(fq.linear(op, torch.as_tensor(codes)).numpy(), want)
    assert ex.overflows == fq.overflows


# --- end to end (the integer graph) -----------------------------------------------------------------
def _igq(cfg, seed, bits, params, n_calib=6):
    rc = RecipeConfig(recipe="igq", w_bits=bits[0], a_bits=bits[1], weight_calibration="minmax",
                      act_calibration="minmax", calib_images=n_calib, params=params)
    return quantize(build_vit(cfg, seed=seed), random_images(cfg, n_calib, seed=seed), rc, model_name="rand")


def _both(qg, images, backend="auto"):
    """(fake-quant, integer) runs of the graph: identical codes (group maps included), logits, traces."""
    rf, ri = GraphFakeQuantExecutor(qg).run(images), GraphIntegerExecutor(qg, gemm_backend=backend).run(images)
    assert first_mismatch(rf.codes, ri.codes) is None
    assert np.array_equal(rf.logits, ri.logits) and rf.trace.layers == ri.trace.layers
    assert rf.trace.overflows == ri.trace.overflows
    return rf, ri


def _sites(qg):
    """Group count of every grouped tensor (views such as ``attn.av`` share their owner's quantizer)."""
    return {t: len(qz.exps) for t, qz in qg.quantizers.items() if qz.kind == "grouped"}


@settings(max_examples=12)
@given(cfg=vit_configs(layer_scale=st.booleans()), seed=st.integers(0, 1000),
       bits=st.sampled_from([(4, 4), (6, 6), (8, 8)]), groups=st.sampled_from([2, 4, 8, 16]),
       max_exp=st.integers(1, 15), backend=st.sampled_from(BACKENDS), boost=st.sampled_from([1.0, 30.0]))
def test_random_vits_igq_bit_exact(cfg, seed, bits, groups, max_exp, backend, boost):
    q = _igq(cfg, seed, bits, {"groups": groups, "max_exp": max_exp})
    images = np.concatenate([random_images(cfg, 3, seed=seed + 7), random_images(cfg, 2, seed=seed + 8, scale=boost)])
    rf, _ = _both(q, images, backend)
    names = [r.name for r in rf.trace.layers]
    assert sum(n.endswith(".group_assign") for n in names) == 5 * cfg["depth"]
    maps = {k[: -len(".groups")]: v for k, v in rf.codes.items() if k.endswith(".groups")}
    assert {f"blocks.{i}.{site}" for i in range(cfg["depth"]) for site in SITES} <= maps.keys()
    sites = _sites(q)
    for t, m in maps.items():
        assert m.min() >= 0 and m.max() < sites[t]


@pytest.fixture(scope="module")
def small_cfg():
    return dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=3,
                num_classes=7, init_values=0.1)


@pytest.mark.parametrize("bits", [(4, 4), (6, 6), (8, 8)], ids=lambda b: f"W{b[0]}A{b[1]}")
def test_g1_reproduces_static_exactly(small_cfg, bits):
    """igq with G = 1 everywhere: the same frozen params and the same codes at every static tensor."""
    cfg = small_cfg
    rc = dict(w_bits=bits[0], a_bits=bits[1], weight_calibration="mse", act_calibration="mse", calib_images=6)
    model, cal = build_vit(cfg, seed=5), random_images(cfg, 6, seed=5)
    qs = quantize(model, cal, RecipeConfig(**rc))
    q1 = quantize(model, cal, RecipeConfig(recipe="igq", params={"groups": 1}, **rc))
    assert q1.params.keys() == qs.params.keys()
    assert all(_same(q1.params[k], qs.params[k]) for k in qs.params)
    x = np.concatenate([random_images(cfg, 4, seed=6), random_images(cfg, 2, seed=7, scale=30.0)])
    for ex in (GraphIntegerExecutor, GraphFakeQuantExecutor):
        rs, r1 = ex(qs).run(x), ex(q1).run(x)
        for k in rs.codes:
            assert np.array_equal(rs.codes[k], r1.codes[k]), k
        assert all((r1.codes[k] == 0).all() for k in r1.codes if k.endswith(".groups"))
    assert GraphIntegerExecutor(q1).run(x[:1]).trace.layers == GraphIntegerExecutor(qs).run(x[:1]).trace.layers


def _same(a, b) -> bool:
    """Deep equality of frozen parameter trees (dataclasses, tuples, arrays, scalars)."""
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_groups_change_codes_and_reduce_error(small_cfg):
    """With G = 8 the grouped boundaries use several groups and the codes differ from static."""
    q = _igq(small_cfg, 9, (4, 4), {"groups": 8})
    r = GraphIntegerExecutor(q).run(random_images(small_cfg, 4, seed=10))
    used = np.unique(r.codes["blocks.0.gelu.groups"])
    assert len(used) >= 2


def test_save_load_roundtrip(small_cfg, tmp_path):
    q = _igq(small_cfg, 3, (4, 4), {"groups": 4})
    p = tmp_path / "igq.npz"
    q.save(p)
    q2 = QuantizedGraph.load(p)
    x = random_images(small_cfg, 3, seed=4)
    a, b = GraphIntegerExecutor(q).run(x), GraphIntegerExecutor(q2).run(x)
    assert all(np.array_equal(a.codes[k], b.codes[k]) for k in a.codes)
    assert q2.quantizers["blocks.0.norm1"].kind == "grouped" and _sites(q2) == _sites(q)


def test_float_nonlinear_mode_runs_grouped(small_cfg):
    q = _igq(small_cfg, 2, (4, 4), {"groups": 4})
    x = random_images(small_cfg, 3, seed=2)
    rf = GraphFakeQuantExecutor(q, "float").run(x)
    ri = GraphFakeQuantExecutor(q, "integer").run(x)
    assert rf.logits.shape == ri.logits.shape
    assert rf.codes["blocks.0.gelu.groups"].max() < 4


def test_default_model_igq_bit_exact_and_g1_is_static():
    """The bundled digits ViT at W4A4: G = 1 equals static; G = 4 both executors bit-exact."""
    from reference import load_dataset, load_model
    from reference.recipes.config import load_recipe

    model = load_model()
    x, _ = load_dataset("digits", model, split="test", limit=24)
    calib, _ = load_dataset("digits", model, split="calib", limit=64)
    static = dataclasses.replace(load_recipe("configs/recipes/static_w4a4.yaml"), calib_images=64)
    igq = dataclasses.replace(load_recipe("configs/recipes/igq_w4a4.yaml"), calib_images=64)
    qs = quantize(model, calib, static)
    q1 = quantize(model, calib, dataclasses.replace(igq, params={"groups": 1}))
    rs, r1 = GraphIntegerExecutor(qs).run(x), GraphIntegerExecutor(q1).run(x)
    assert all(np.array_equal(rs.codes[k], r1.codes[k]) for k in rs.codes)
    q4 = quantize(model, calib, dataclasses.replace(igq, params={"groups": 4}))
    _, ri = _both(q4, x)
    assert not np.array_equal(ri.codes["blocks.0.norm1"], rs.codes["blocks.0.norm1"])
