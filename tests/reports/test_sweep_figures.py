"""Figures and the markdown report, drawn from synthetic point records (JSON only)."""

from __future__ import annotations

import itertools
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from reports import figures, review  # noqa: E402
from reports.pareto import pareto_front  # noqa: E402

_LAYERS = ["quantize_input", "patch_embed", "pos_embed"] + [
    f"blocks.{b}.{n}" for b in range(2) for n in
    ("norm1", "attn.qkv", "attn.qk", "attn.softmax", "attn.av", "attn.proj", "add1", "norm2", "mlp.fc1",
     "mlp.gelu", "mlp.fc2", "add2")] + ["norm", "head"]
_KIND = {"quantize_input": "quantize_input", "pos_embed": "add", "add1": "add", "add2": "add", "norm1": "layernorm",
         "norm2": "layernorm", "norm": "layernorm", "qk": "matmul", "av": "matmul", "softmax": "softmax",
         "gelu": "gelu"}


def _point(label, accel, acc, bops, latency, energy, per_image=None, bits=(8, 8)):
    layers = [{"name": n, "kind": _KIND.get(n.rsplit(".", 1)[-1], "linear"), "ran_fraction": 1.0,
               "cycles": 100.0 + i, "offchip_bytes": 10.0 * i, "energy_pj": 1.0, "macs": 1.0, "bops": 1.0}
              for i, n in enumerate(_LAYERS)]
    return {"key": f"{label}@{accel}", "run_key": label, "label": label, "model": {"name": "vit_digits"},
            "recipe": {"recipe": label.split("_")[0], "w_bits": bits[0], "a_bits": bits[1]}, "images": 50,
            "top1": {"fp32": 99.0, "fakequant_integer": acc, "simulator": acc}, "bit_exact_images": 50,
            "macs_per_image": 1e7, "bops_per_image": bops, "accelerator": accel, "offchip_level": "dram",
            "cost": {"cycles": latency * 1e6, "latency_ms": latency, "energy_uj": energy, "offchip_mb": 0.5,
                     "pe_utilisation": 0.3},
            "layers": layers, "per_image_cycles": per_image}


def _results(dynamic=False, breakdown=("static_w4a8",)):
    runs = [("static_w8a8", 99.0, 7.4e8), ("static_w6a6", 98.9, 4.2e8), ("static_w4a8", 98.0, 3.8e8),
            ("static_w4a4", 97.0, 1.9e8), ("igq_w4a4", 98.6, 2.0e8)]
    points = []
    for (label, acc, bops), (accel, speed) in itertools.product(runs, [("npu_int8", 1.0), ("mcu_int8", 20.0)]):
        per_image = list(np.linspace(0.9, 1.1, 50) * 1e5 * speed) if dynamic and label == "igq_w4a4" else None
        points.append(_point(label, accel, acc, bops, speed * bops / 1e10, speed * bops / 1e7, per_image))
    return {"sweep": "synthetic", "source": "synthetic.yaml", "breakdown": list(breakdown), "points": points}


def test_report_tables_fronts_and_figures(tmp_path):
    results = _results()
    path = review.write_report(results, tmp_path)
    md = path.read_text()
    for stem in ("accuracy_vs_bops", "accuracy_vs_latency", "accuracy_vs_energy", "breakdown_npu_int8",
                 "breakdown_mcu_int8"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
        assert f"({stem}.png)" in md
    # one breakdown figure per accelerator (cycles and DRAM side by side); the second behind a selector
    assert sorted(f.name for f in tmp_path.glob("breakdown_*.png")) == ["breakdown_mcu_int8.png",
                                                                       "breakdown_npu_int8.png"]
    assert "<details><summary>mcu_int8</summary>" in md
    assert not (tmp_path / "cycles_per_image.png").exists() and "no histogram" in md
    assert "no dynamic recipe" not in md and "only early exits change that count" in md
    runs = review.unique_runs(results["points"])
    front = pareto_front([p["top1"]["simulator"] for p in runs], [p["bops_per_image"] for p in runs])
    # static_w4a8 (98.0 % at 0.38 GBOPs) is beaten by igq_w4a4 (98.6 % at 0.20 GBOPs); the rest trade off
    assert [runs[i]["label"] for i in front] == ["static_w4a4", "igq_w4a4", "static_w6a6", "static_w8a8"]
    assert "accuracy vs BOPs: static_w4a4, igq_w4a4, static_w6a6, static_w8a8" in md
    # numbered rows, exact (Clopper-Pearson) 95% interval of 49/50 = [89.4, 99.9] %, grouping overhead column
    assert "| 3 | static_w4a8 | vit_digits | W8A8 | 98.00 | 89.4–99.9 | 98.00 | 99.00 | 50/50 | 10.000 | 0.380 | " \
           "0.000 |  |" in md
    assert "| 5 | igq_w4a4 | vit_digits | W8A8 | 98.60 | " in md and "| 0.200 | 0.000 | ★ |" in md
    for p in runs:
        assert f"| {p['label']} | vit_digits |" in md and "50/50" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_histogram_only_when_cycles_vary(tmp_path):
    path = review.write_report(_results(dynamic=True, breakdown=["igq_w4a4"]), tmp_path)
    assert (tmp_path / "cycles_per_image.png").exists()
    assert "cycles_per_image.png" in path.read_text()


def test_breakdown_groups_cover_every_layer():
    p = _point("static_w8a8", "npu_int8", 99.0, 1e8, 1.0, 1.0)
    positions, groups, mat = figures._breakdown_matrix(p["layers"], "cycles")
    assert positions == ["embed", "block 0", "block 1", "head"]
    assert mat.sum() == pytest.approx(sum(r["cycles"] for r in p["layers"]))
    assert "other" not in groups and {"softmax", "GELU", "LayerNorm", "QKᵀ / AV"} <= set(groups)


def _boxes(anns, renderer):
    return [a.get_window_extent(renderer) for a in anns]


def test_labels_do_not_overlap_each_other_or_markers():
    rng = np.random.default_rng(0)
    xy = [(float(x), float(y)) for x, y in zip(rng.uniform(0, 10, 12), rng.uniform(95, 100, 12))]
    xy += [(5.0, 97.0), (5.05, 97.02), (5.1, 97.04)]          # a tight cluster
    fig, ax = plt.subplots(figsize=(7.6, 5.0))
    ax.scatter(*zip(*xy))
    ax.set_xlim(-2, 13)
    ax.set_ylim(94, 101)
    anns = figures.place_labels(ax, xy, [f"static_w{i}a{i} point" for i in range(len(xy))])
    renderer = fig.canvas.get_renderer()
    boxes = _boxes(anns, renderer)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    marker_px = ax.transData.transform(np.array(xy))
    for box in boxes:
        assert not any(box.x0 < x < box.x1 and box.y0 < y < box.y1 for x, y in marker_px)
    plt.close(fig)


def test_summary_lines_from_json_round_trip():
    results = json.loads(json.dumps(_results()))
    lines = review.summary_lines(results)
    assert lines[0].startswith("point") and "npu_int8 cycles" in lines[0]
    assert any(line.startswith("static_w4a4") for line in lines)


def test_accuracy_ci_is_the_exact_interval_in_percent():
    # 49/50 correct: Clopper-Pearson [0.8935, 0.9995]; the ends have closed forms at 0/n and n/n
    lo, hi = figures.accuracy_ci(98.0, 50)
    assert (lo, hi) == (pytest.approx(89.35, abs=0.01), pytest.approx(99.95, abs=0.01))
    assert figures.accuracy_ci(0.0, 10)[0] == 0.0 and figures.accuracy_ci(100.0, 10)[1] == 100.0
    assert figures.accuracy_ci(0.0, 10)[1] == pytest.approx(100 * (1 - 0.025 ** 0.1), rel=1e-9)
    assert figures.accuracy_ci(50.0, 0) == (0.0, 100.0)


def test_grouping_overhead_counts_in_bops_and_its_own_column(tmp_path):
    results = _results()
    for p in results["points"]:
        if p["label"] == "igq_w4a4":
            p["grouping_bops_per_image"] = 0.25e9       # 0.20 G GEMM + 0.25 G grouping: now behind static_w4a8
    path = review.write_report(results, tmp_path)
    md = path.read_text()
    assert "| 0.200 | 0.250 |" in md
    assert "accuracy vs BOPs: static_w4a4, static_w4a8, static_w6a6, static_w8a8" in md   # igq now dominated


def test_header_lists_version_date_and_accelerator_parameters(tmp_path):
    import dataclasses

    import hwmodels

    results = _results()
    npu = hwmodels.load("configs/npu_int8.yaml")
    results["tool"] = {"name": "vit-intsim", "version": "9.9.9", "git_revision": "abc123", "created_utc": "2026-01-02T03:04:05Z"}
    results["accelerators"] = {"npu_int8": {"file": "configs/npu_int8.yaml", "sha256": "0" * 64,
                                            "spec": dataclasses.asdict(npu)}}
    md = review.write_report(results, tmp_path).read_text()
    assert "Made by vit-intsim 9.9.9, git abc123 on 2026-01-02T03:04:05Z." in md
    row = next(line for line in md.splitlines() if line.startswith("| npu_int8 | `npu_int8.yaml`"))
    assert "| 1000 | 32×32 | weight_stationary |" in row and "W8A8 ×1" in row and "sram 1 MiB" in row


def test_every_point_numbered_with_error_bars_and_readable_log_ticks(tmp_path):
    points = [p for p in _results()["points"] if p["accelerator"] == "npu_int8"]
    for k, p in enumerate(points):
        p["cost"]["latency_ms"] = 0.03 * 3.0 ** k      # spans more than a decade: log axis
    fig_path, _ = figures.tradeoff_figure(points, "latency_ms", tmp_path / "lat.png")
    assert fig_path.exists()
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(0.02, 3)
    figures._cost_ticks(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 5 and "0.05" in labels and "0.1" in labels and "2" in labels
    plt.close(fig)
    texts, order = figures._merged_labels(points, np.arange(5.0), np.arange(5.0), list(range(5)),
                                          {p["label"]: i + 1 for i, p in enumerate(points)})
    assert texts == ["1", "2", "3", "4", "5"] and order == list(range(5))


def test_error_bars_at_zero_and_full_accuracy(tmp_path):
    points = [p for p in _results()["points"] if p["accelerator"] == "npu_int8"][:2]
    points[0]["top1"]["simulator"], points[1]["top1"]["simulator"] = 100.0, 0.0
    path, _ = figures.tradeoff_figure(points, "bops", tmp_path / "edge.png")
    assert path.stat().st_size > 1000
