"""Cost model: golden hand-computed numbers, an event-level systolic oracle,
SRAM/precision effects, whole-model totals and properties."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hwmodels
from hwmodels import dataflows
from hwmodels.cost import layer_cost
from hwmodels.load import parse
from simulator.errors import InputError
from simulator.trace import LayerRecord, Trace
from synthetic_trace import deit_tiny, early_exit_mask, tiny_npu_dict, vit_layers, vit_trace

ROOT = Path(__file__).resolve().parents[2]
NPU_INT8 = hwmodels.load(ROOT / "configs/npu_int8.yaml")
NPU_W4A8 = hwmodels.load(ROOT / "configs/npu_w4a8.yaml")
MCU = hwmodels.load(ROOT / "configs/mcu_int8.yaml")


def tiny(**kw):
    return parse(tiny_npu_dict(**kw), "tiny.yaml")


def lin(m, k, n, w=8, a=8, out=8, name="fc"):
    return LayerRecord(name, "linear", m=m, k=k, n=n, a_bits=a, b_bits=w, b_is_weight=True,
                       out_bits=out, weight_bytes=k * n * w // 8)


# ------------------------------------------------------- event-level oracle


def _fold_end(start, preload, t, rows, cols):
    """Last event of one fold, enumerated element by element: stream element i
    enters PE row r at start+preload+i+r, reaches column c at +c, and its
    result leaves the array one cycle after the last PE (partial folds are
    padded: every PE position of the array takes part)."""
    last = max(start + preload + i + r + c for i in range(t) for r in range(rows) for c in range(cols))
    return last + 1


def oracle_cycles(sr, sc, t, rows, cols, batch, preload, overlap):
    folds = batch * math.ceil(sr / rows) * math.ceil(sc / cols)
    one = _fold_end(0, preload, t, rows, cols)  # identical for every (padded) fold
    if overlap == "per_fold":  # SCALE-Sim: the next fold starts after the drain
        return folds * one
    # pipelined: fold f+1 streams once fold f's stream has entered (t) and its
    # stationary tile, preloaded under fold f, is ready (preload)
    start = 0
    for _ in range(folds - 1):
        start += max(t, preload)
    return start + one


# ------------------------------------------------------- golden tiny layer

# GEMM m=10, k=6, n=9 on a 4x4 array. Hand numbers:
#   WS: Sr=k=6 -> 2 row folds, Sc=n=9 -> 3 col folds, T=m=10, P=4:
#       per fold 4+10+4+4-2 = 20, 6 folds -> 120; pipelined 20 + 5*max(10,4) = 70
#   OS: Sr=m=10 -> 3, Sc=n=9 -> 3, T=k=6, P=0: per fold 6+4+4-2 = 12,
#       9 folds -> 108; pipelined 12 + 8*6 = 60
#   IS: Sr=k=6 -> 2, Sc=m=10 -> 3, T=n=9, P=4: per fold 4+9+6 = 19,
#       6 folds -> 114; pipelined 19 + 5*9 = 64
GOLDEN = {
    ("weight_stationary", "per_fold"): (2, 3, 6, 120),
    ("weight_stationary", "pipelined"): (2, 3, 6, 70),
    ("output_stationary", "per_fold"): (3, 3, 9, 108),
    ("output_stationary", "pipelined"): (3, 3, 9, 60),
    ("input_stationary", "per_fold"): (2, 3, 6, 114),
    ("input_stationary", "pipelined"): (2, 3, 6, 64),
}


@pytest.mark.parametrize("df,overlap", sorted(GOLDEN))
def test_golden_fold_timing(df, overlap):
    g = dataflows.GemmShape(10, 6, 9)
    t = dataflows.fold_timing(g, 4, 4, df, overlap)
    assert (t.row_folds, t.col_folds, t.folds, t.cycles) == GOLDEN[df, overlap]
    c = layer_cost(lin(10, 6, 9), tiny(dataflow=df, fold_overlap=overlap))
    assert c.array_cycles == GOLDEN[df, overlap][3] and c.folds == GOLDEN[df, overlap][2]


def test_golden_ws_layer_everything():
    """Full LayerCost of the tiny WS layer, every number by hand."""
    c = layer_cost(lin(10, 6, 9), tiny())
    # array<->sram: A=60 B re-streamed 3 col folds = 180, B = 54 once,
    # psums: 2 row folds -> one spill of 10*9*4 = 360 written + 360 read, out 90
    # resident (150 B activations + 2*24 B weight strips <= 1024): dram reads
    # the 54 weight bytes, which are also written into the sram.
    assert c.read_bytes == (54, 180 + 54 + 360, 540 * 2 + 540 * 4)
    assert c.write_bytes == (0, 360 + 90 + 54, 540 * 4)
    # cycles: dram 54/1, sram ceil(1098/8) = 138, regs ceil(5400/64) = 85
    assert c.level_cycles == (54, 138, 85)
    assert c.sfu_cycles[3] == math.ceil(90 / 4)  # requant, 4 lanes
    assert (c.compute_cycles, c.memory_cycles, c.cycles) == (120, 138, 138)
    assert c.bound == "memory" and c.macs == 540 and c.bops == 540 * 64
    assert c.utilisation == pytest.approx(540 / (138 * 16))
    # energy: MAC 540*0.5 + dram 54*10 + sram 594*1 + 504*2 + regs 5400*0.1
    #         + requant 90*0.25 + static 1 mW * 138 ns
    assert c.energy_pj == pytest.approx(270 + 540 + 594 + 1008 + 540 + 22.5 + 138)
    no_db = layer_cost(lin(10, 6, 9), tiny(double_buffering=False))
    assert no_db.cycles == 120 + 138


def test_golden_os_and_is_traffic():
    os_ = layer_cost(lin(10, 6, 9), tiny(dataflow="output_stationary"))
    # A 60 B x 3 col folds, B 54 B x 3 row folds, no psums
    assert os_.read_bytes[1] == 180 + 162 and os_.write_bytes[1] == 90 + 54
    is_ = layer_cost(lin(10, 6, 9), tiny(dataflow="input_stationary"))
    # A once, B 54 B x 3 col folds (m on columns), psums as WS
    assert is_.read_bytes[1] == 60 + 162 + 360 and is_.write_bytes[1] == 360 + 90 + 54


def test_golden_spill_and_sram_too_small():
    # 128 B sram, double buffered -> 64 B usable: blocking B (WS natural order)
    # s=4 rows of A: 1 weight column per block, 9 blocks: 54 + 9*60 = 594 read,
    # blocking A would be 60 + 10*54 = 600; outputs 90 written.
    c = layer_cost(lin(10, 6, 9), tiny(sram_bytes=128))
    assert (c.read_bytes[0], c.write_bytes[0], c.offchip_blocks) == (594, 90, 9)
    with pytest.raises(InputError, match=r"tiny\.yaml: memories\.sram\.size_bytes: 64 cannot hold "
                                         r"one array-wide strip of layer 'fc' \(needs >= 92\)"):
        layer_cost(lin(10, 6, 9), tiny(sram_bytes=64))


@settings(max_examples=150, deadline=None)
@given(m=st.integers(1, 14), k=st.integers(1, 14), n=st.integers(1, 14), batch=st.integers(1, 2),
       pack=st.sampled_from([1, 2, 4]), rows=st.integers(1, 6), cols=st.integers(1, 6),
       df=st.sampled_from(["weight_stationary", "output_stationary", "input_stationary"]),
       overlap=st.sampled_from(["per_fold", "pipelined"]))
def test_fold_timing_matches_event_oracle(m, k, n, batch, pack, rows, cols, df, overlap):
    g = dataflows.GemmShape(m, k, n, batch, pack=pack)
    t = dataflows.fold_timing(g, rows, cols, df, overlap)
    preload = rows if df != "output_stationary" else 0
    assert t.cycles == oracle_cycles(t.sr, t.sc, t.t, rows, cols, batch, preload, overlap)
    assert t.cycles == oracle_cycles(*dataflows.get(df).mapping(g), rows, cols, batch, preload, overlap)
    kp = -(-k // pack)
    sr, sc, tt = {"weight_stationary": (kp, n, m), "output_stationary": (m, n, kp),
                  "input_stationary": (kp, m, n)}[df]
    assert (t.sr, t.sc, t.t) == (sr, sc, tt)
    if overlap == "per_fold":  # SCALE-Sim's closed form
        assert t.cycles == t.folds * (preload + tt + rows + cols - 2)
    assert dataflows.fold_timing(g, rows, cols, df, "pipelined").cycles <= \
        dataflows.fold_timing(g, rows, cols, df, "per_fold").cycles


def test_bigger_array_never_adds_folds_but_skew_is_real():
    g = dataflows.GemmShape(197, 192, 768)
    small = dataflows.fold_timing(g, 32, 32, "weight_stationary", "per_fold")
    big = dataflows.fold_timing(g, 64, 64, "weight_stationary", "per_fold")
    assert big.folds <= small.folds and big.cycles < small.cycles
    # a GEMM smaller than the array pays the bigger array's fill/drain skew:
    one = dataflows.GemmShape(1, 1, 1)
    assert dataflows.fold_timing(one, 64, 64, "weight_stationary", "per_fold").cycles == 64 + 1 + 126
    assert dataflows.fold_timing(one, 32, 32, "weight_stationary", "per_fold").cycles == 32 + 1 + 62


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 300), k=st.integers(1, 300), n=st.integers(1, 300),
       r1=st.integers(1, 16), c1=st.integers(1, 16), dr=st.integers(0, 16), dc=st.integers(0, 16),
       df=st.sampled_from(["weight_stationary", "output_stationary", "input_stationary"]))
def test_bigger_array_never_adds_folds_or_stream_cycles(m, k, n, r1, c1, dr, dc, df):
    g = dataflows.GemmShape(m, k, n)
    a = dataflows.fold_timing(g, r1, c1, df, "per_fold")
    b = dataflows.fold_timing(g, r1 + dr, c1 + dc, df, "per_fold")
    assert b.folds <= a.folds and b.folds * b.t <= a.folds * a.t


# ------------------------------------------------------- memory effects


def test_sram_size_changes_dram_bytes_and_cycles():
    """DeiT-B fc1 (197x768x3072): shrinking the global buffer re-fetches more."""
    rec = lin(197, 768, 3072, out=32, name="blocks.0.mlp.fc1")
    import dataclasses
    costs = []
    for size in (8 << 20, 4 << 20, 1 << 20, 256 << 10, 64 << 10):
        gb = dataclasses.replace(NPU_INT8.memories[1], size_bytes=size)
        npu = dataclasses.replace(NPU_INT8, memories=(NPU_INT8.memories[0], gb, NPU_INT8.memories[2]))
        costs.append(layer_cost(rec, npu))
    dram = [c.offchip_bytes for c in costs]
    cycles = [c.cycles for c in costs]
    assert dram[0] == dram[1] == 768 * 3072  # resident: weights once
    assert all(a < b for a, b in zip(dram[1:], dram[2:]))  # strictly more as it shrinks
    assert all(a <= b for a, b in zip(cycles, cycles[1:])) and cycles[-1] > cycles[0]
    assert costs[-1].bound == "memory" and costs[-1].offchip_blocks > 1


def test_more_bandwidth_never_adds_cycles():
    import dataclasses
    trace = deit_tiny()
    base = hwmodels.estimate(trace, MCU)
    for i in range(3):
        lv = MCU.memories[i]
        faster = dataclasses.replace(lv, bandwidth_bytes_per_cycle=lv.bandwidth_bytes_per_cycle * 4)
        mems = tuple(faster if j == i else m for j, m in enumerate(MCU.memories))
        r = hwmodels.estimate(trace, dataclasses.replace(MCU, memories=mems))
        assert all(a.cycles <= b.cycles for a, b in zip(r.layers, base.layers))
    assert r.cycles <= base.cycles


# ------------------------------------------------------- precision modes


def test_precision_mode_speedup_on_w4a8():
    fc1 = {b: layer_cost(lin(197, 192, 768, w=w, a=a, out=32), NPU_W4A8)
           for b, (w, a) in {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}.items()}
    assert [c.mode for c in fc1.values()] == ["W8A8", "W4A8", "W4A4"]
    # k'=192/96/48 on 32 rows -> 6/3/2 row folds x 24 col folds, 291 cycles each
    assert [c.array_cycles for c in fc1.values()] == [144 * 291, 72 * 291, 48 * 291]
    assert fc1["W4A4"].energy_mac_pj < fc1["W4A8"].energy_mac_pj < fc1["W8A8"].energy_mac_pj
    w8 = hwmodels.estimate(deit_tiny(), NPU_W4A8)
    w4 = hwmodels.estimate(deit_tiny(w_bits=4, a_bits=4), NPU_W4A8)
    assert w4.cycles < 0.75 * w8.cycles and w4.energy_uj < w8.energy_uj
    assert w4.bops == pytest.approx(w8.bops / 4)
    # the int8-only NPU runs the W4A4 model in W8A8: same cycles as W8A8
    on_int8 = hwmodels.estimate(deit_tiny(w_bits=4, a_bits=4), NPU_INT8)
    assert {c.mode for c in on_int8.layers if c.mode} == {"W8A8"}


def test_unsupported_precision_names_layer_and_file():
    with pytest.raises(InputError, match=r"configs/npu_int8\.yaml: pe_array\.precisions: no mode "
                                         r"covers layer 'patch_embed' \(W16A8\); supported: W8A8"):
        hwmodels.estimate(vit_trace(1, 64, 2, 17, 128, 10, w_bits=16), NPU_INT8)


def test_missing_sfu_and_unknown_kind():
    rec = LayerRecord("blocks.0.igq", "group_assign", elements=100, rows=10, in_bits=8, out_bits=8)
    with pytest.raises(InputError, match=r"tiny\.yaml: sfus\.group_assign: missing, needed by layer "
                                         r"'blocks\.0\.igq'"):
        layer_cost(rec, tiny())
    assert layer_cost(rec, NPU_INT8).sfu_elements[4] == 100
    with pytest.raises(InputError, match="unknown kind 'conv'"):
        layer_cost(LayerRecord("x", "conv"), NPU_INT8)


# ------------------------------------------------------- whole model


def test_deit_tiny_macs_bops_and_sfu_counts():
    r = hwmodels.estimate(deit_tiny(), NPU_INT8)
    # patch 196*768*192 + 12 * (qkv + qk + av + proj + fc1 + fc2) + head 192*1000
    per_block = 197 * 192 * 576 + 2 * 3 * 197 * 64 * 197 + 197 * 192 * 192 + 2 * 197 * 192 * 768
    assert r.macs == 196 * 768 * 192 + 12 * per_block + 192 * 1000 == 1_253_683_200
    assert r.macs == pytest.approx(1.254e9, rel=1e-3)  # ANCHORS.md
    act_act = sum(c.macs for c in r.layers if c.kind == "matmul")
    assert act_act == pytest.approx(0.18e9, rel=0.01)
    assert r.bops == 64 * r.macs
    sfu = r.sfu_elements()
    assert sfu["softmax"] == 12 * 3 * 197 * 197  # ~1.4 M
    assert sfu["gelu"] == 12 * 197 * 768  # ~1.8 M
    assert sfu["layernorm"] == 24 * 197 * 192 + 192  # ~0.91 M
    assert r.bound == "compute" and 0.3 < r.utilisation < 1
    assert r.offchip_mb > 5.4  # at least the int8 weights cross once


def test_report_totals_are_sums_of_layers():
    r = hwmodels.estimate(deit_tiny(), NPU_INT8)
    assert r.cycles == sum(c.cycles for c in r.layers)
    assert r.energy_uj == pytest.approx(sum(c.energy_pj for c in r.layers) / 1e6)
    assert r.latency_ms == pytest.approx(r.cycles / 1e6)  # 1 GHz
    assert r.images_per_s == pytest.approx(1e3 / r.latency_ms)
    d = r.to_dict()
    json.dumps(d)
    assert d["per_image"]["macs"] == r.macs and len(d["layers"]) == len(r.layers)
    assert d["npu"]["fold_overlap"] == "per_fold"
    text = hwmodels.format_report(r)
    assert "blocks.11.mlp.fc2" in text and "images/s" in text and "PE utilisation" in text
    cmp_ = hwmodels.format_comparison([r, hwmodels.estimate(deit_tiny(), MCU)])
    assert "npu_int8" in cmp_ and "mcu_int8" in cmp_ and "latency ms" in cmp_


def test_per_image_distribution_with_layer_ran():
    full = deit_tiny()
    exits = [12, 12, 6, 3, 12, 9]
    trace = deit_tiny(n_images=len(exits), layer_ran=early_exit_mask(full, exits))
    r = hwmodels.estimate(trace, NPU_INT8)
    ref = hwmodels.estimate(full, NPU_INT8)
    cyc = r.per_image("cycles")
    assert cyc[0] == ref.cycles and cyc[0] > cyc[5] > cyc[2] > cyc[3]
    for e, c in zip(exits, cyc):
        short = Trace("t", "s", [x for x, keep in zip(full.layers, early_exit_mask(full, [e])[0]) if keep], 1)
        assert c == sum(layer_cost(x, NPU_INT8, input_offchip=x.kind == "quantize_input",
                                   output_offchip=x.name == "head").cycles for x in short.layers)
    d = r.distribution("cycles")
    assert d.mean == pytest.approx(cyc.mean()) == pytest.approx(r.cycles)
    assert d.p50 == np.percentile(cyc, 50) and d.p99 == np.percentile(cyc, 99)
    assert r.distribution("bops").mean == pytest.approx(r.bops)
    assert r.distribution("energy_uj").p99 <= ref.energy_uj + 1e-9
    assert "p99" in hwmodels.format_report(r)


# ------------------------------------------------------- properties

DIMS = st.integers(1, 96)


@settings(max_examples=120, deadline=None)
@given(m=DIMS, k=DIMS, n=DIMS, batch=st.integers(1, 3), which=st.sampled_from("mkn"),
       grow=st.integers(1, 64), weight=st.booleans(),
       df=st.sampled_from(["weight_stationary", "output_stationary", "input_stationary"]),
       overlap=st.sampled_from(["per_fold", "pipelined"]), sram=st.sampled_from([2048, 8192, 65536]))
def test_costs_monotone_in_m_k_n(m, k, n, batch, which, grow, weight, df, overlap, sram):
    npu = tiny(dataflow=df, fold_overlap=overlap, sram_bytes=sram)

    def rec(m, k, n):
        return LayerRecord("g", "linear" if weight else "matmul", m=m, k=k, n=n, batch=batch,
                           a_bits=8, b_bits=8, b_is_weight=weight, out_bits=8,
                           weight_bytes=k * n * batch if weight else 0)
    dims = {"m": m, "k": k, "n": n}
    bigger = dict(dims, **{which: dims[which] + grow})
    try:
        a, b = layer_cost(rec(**dims), npu), layer_cost(rec(**bigger), npu)
    except InputError:  # the buffer cannot hold one strip of the bigger layer
        return
    for f in ("macs", "bops", "array_cycles", "compute_cycles", "memory_cycles", "cycles", "energy_pj"):
        assert getattr(b, f) >= getattr(a, f) - 1e-9, f
    assert all(y >= x for x, y in zip(a.read_bytes + a.write_bytes, b.read_bytes + b.write_bytes))


@settings(max_examples=80, deadline=None)
@given(m=DIMS, k=DIMS, n=DIMS, w=st.integers(2, 8), a=st.integers(2, 8),
       dw=st.integers(0, 4), da=st.integers(0, 4))
def test_fewer_bits_never_add_bops_or_bytes(m, k, n, w, a, dw, da):
    lo = layer_cost(lin(m, k, n, w=max(1, w - dw), a=max(1, a - da)), NPU_W4A8)
    hi = layer_cost(lin(m, k, n, w=w, a=a), NPU_W4A8)
    assert lo.bops <= hi.bops
    assert all(x <= y + 1e-9 for x, y in zip(lo.read_bytes + lo.write_bytes, hi.read_bytes + hi.write_bytes))
    assert lo.compute_cycles <= hi.compute_cycles


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(1, 3), dim=st.sampled_from([32, 64, 96]), heads=st.sampled_from([1, 2, 4]),
       tokens=st.integers(2, 60), split=st.integers(1, 30))
def test_costs_additive_over_layers(depth, dim, heads, tokens, split):
    layers = vit_layers(depth, dim, heads, tokens, 2 * dim, 10)
    split = min(split, len(layers) - 1)
    costs = [layer_cost(r, NPU_INT8) for r in layers]
    first = sum(costs[1:split], costs[0])
    second = sum(costs[split + 1:], costs[split])
    whole = sum(costs[1:], costs[0])
    both = first + second
    for f in ("macs", "bops", "cycles", "energy_pj", "offchip_bytes", "buffer_bytes", "busy_pe_cycles"):
        assert getattr(both, f) == pytest.approx(getattr(whole, f)), f
    assert costs[0].scaled(2.0).energy_pj == pytest.approx((costs[0] + costs[0]).energy_pj)


def test_mixed_precision_trace_runs_each_layer_in_its_mode():
    layers = vit_layers(2, 64, 2, 17, 128, 10)
    mixed = [lin(r.m, r.k, r.n, w=4, a=8, out=r.out_bits, name=r.name) if r.name.endswith("fc1") else r
             for r in layers]
    r = hwmodels.estimate(Trace("m", "mixed", mixed, 1), NPU_W4A8)
    modes = {c.name: c.mode for c in r.layers if c.mode}
    assert modes["blocks.0.mlp.fc1"] == "W4A8" and modes["blocks.0.mlp.fc2"] == "W8A8"
    assert r.bops < hwmodels.estimate(Trace("m", "w8", layers, 1), NPU_W4A8).bops


def test_hwmodels_imports_only_trace_and_errors_from_the_project():
    import re
    for path in (ROOT / "hwmodels").rglob("*.py"):
        for line in path.read_text().splitlines():
            mod = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
            if mod and mod.group(1).split(".")[0] in ("simulator", "reference", "reports"):
                assert mod.group(1) in ("simulator.trace", "simulator.errors", "simulator.safe_yaml"), (path, line)


def test_bad_trace_records_and_accumulator_width():
    with pytest.raises(InputError, match=r"trace layer 'fc': k must be a positive int, got 0"):
        layer_cost(lin(4, 0, 4), NPU_INT8)
    with pytest.raises(InputError, match=r"trace layer 's': elements must be an int >= 0, got -1"):
        layer_cost(LayerRecord("s", "softmax", elements=-1), NPU_INT8)
    wide = LayerRecord("fc", "linear", m=2, k=2, n=2, a_bits=8, b_bits=8, b_is_weight=True,
                       acc_bits=48, out_bits=8)
    with pytest.raises(InputError, match=r"npu_int8\.yaml: pe_array\.acc_bits: 32 is narrower than "
                                         r"the 48-bit accumulators layer 'fc'"):
        layer_cost(wide, NPU_INT8)
    with pytest.raises(InputError, match="layer_ran has shape"):
        hwmodels.estimate(deit_tiny(n_images=3, layer_ran=np.ones((2, 5), bool)), NPU_INT8)
    with pytest.raises(InputError, match=r"memories\.psram\.size_bytes: 33554432 is smaller than"):
        hwmodels.estimate(vit_trace(12, 768, 12, 197, 3072, 1000), MCU)  # DeiT-B: 86 MB of weights
