"""``simulate sweep`` end to end: points, cache hits, resume, and the Dask engine.

The tiny sweep is a subset of configs/sweeps/quick.yaml (same recipes, fewer
images), so the Dask run of quick.yaml must reproduce its points exactly.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from simulator.cli import main

IMAGES = 24
TINY = {"name": "tiny", "models": [{"name": "vit_digits", "images": IMAGES}],
        "recipes": [{"recipe": "static", "bits": ["w8a8", "w4a4"]}], "accelerators": ["npu_int8", "mcu_int8"]}


def _sweep(capsys, *argv):
    code = main(["sweep", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _points(out_dir) -> dict:
    results = json.loads((out_dir / "results.json").read_text())
    return {(p["label"], p["accelerator"]): p for p in results["points"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return root, path


@pytest.fixture(scope="module")
def tiny_points(tiny):
    root, path = tiny
    code = main(["sweep", str(path), "--out", str(root / "out"), "--no-progress"])
    assert code == 0
    return _points(root / "out")


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_points_are_bit_exact_and_costed(tiny, tiny_points):
    root, _ = tiny
    assert set(tiny_points) == {(r, a) for r in ("static_w8a8", "static_w4a4") for a in ("npu_int8", "mcu_int8")}
    for p in tiny_points.values():
        assert p["images"] == IMAGES and p["bit_exact_images"] == IMAGES and p["first_mismatch"] is None
        assert p["top1"]["simulator"] == p["top1"]["fakequant_integer"] >= 85.0
        assert p["cost"]["cycles"] > 0 and p["cost"]["energy_uj"] > 0 and p["per_image_cycles"] is None
        assert sum(layer["cycles"] for layer in p["layers"]) == pytest.approx(p["cost"]["cycles"])
    w8, w4 = tiny_points[("static_w8a8", "mcu_int8")], tiny_points[("static_w4a4", "mcu_int8")]
    # MACs x 4 x 4 vs MACs x 8 x 8, except patch embed and head, kept at edge_bits = 8
    assert 0.25 < w4["bops_per_image"] / w8["bops_per_image"] < 0.26
    assert w4["cost"]["offchip_mb"] < w8["cost"]["offchip_mb"]   # 4-bit weights move half the bytes
    md = (root / "out" / "report.md").read_text()
    assert "## Pareto-optimal points" in md and f"{IMAGES}/{IMAGES}" in md
    for png in ("accuracy_vs_bops", "accuracy_vs_latency", "accuracy_vs_energy", "breakdown_npu_int8",
                "breakdown_mcu_int8"):
        assert (root / "out" / f"{png}.png").is_file()
    results = json.loads((root / "out" / "results.json").read_text())
    assert results["tool"]["name"] == "vit-intsim" and results["tool"]["created_utc"].endswith("Z")
    assert results["accelerators"]["mcu_int8"]["spec"]["clock_mhz"] == 200.0
    assert "Made by vit-intsim" in md and "| mcu_int8 | `mcu_int8.yaml`" in md
    assert all(p["grouping_bops_per_image"] == 0.0 for p in tiny_points.values())     # static: no groups
    # per-tensor SQNR vs fp32 in every run record, equal to `simulate --layers`' rows on the same images
    db = {label: {r["tensor"]: r["sqnr_db"] for r in tiny_points[(label, "npu_int8")]["sqnr_layers"]}
          for label in ("static_w8a8", "static_w4a4")}
    assert len(db["static_w8a8"]) == 91 and db["static_w8a8"]["logits"] > db["static_w4a4"]["logits"] + 6
    assert (root / "out" / "sqnr_vit_digits.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Where the error comes from" in md and "](sqnr_vit_digits.png)" in md
    # per-image correctness in every record (the paired tests' input), consistent with the top-1
    import numpy as np

    for p in tiny_points.values():
        for k in ("simulator", "fakequant_integer"):
            bits = np.unpackbits(np.frombuffer(bytes.fromhex(p["correct"][k]), dtype=np.uint8))[:IMAGES]
            assert 100 * bits.mean() == pytest.approx(p["top1"][k])
    worse = min(("static_w8a8", "static_w4a4"), key=lambda r: tiny_points[(r, "npu_int8")]["top1"]["simulator"])
    assert "## Paired comparisons" in md and f"| {worse} |" in md.split("## Paired comparisons")[1].split("##")[0]
    import csv

    rows = list(csv.DictReader((root / "out" / "results.csv").open()))
    assert len(rows) == 4 and {r["accelerator"] for r in rows} == {"npu_int8", "mcu_int8"}
    row = next(r for r in rows if r["label"] == "static_w4a4" and r["accelerator"] == "mcu_int8")
    assert float(row["cycles"]) == pytest.approx(w4["cost"]["cycles"]) and row["bit_exact_images"] == str(IMAGES)


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_rerun_hits_cache_resumes_and_adds_accelerators(capsys, tiny, tiny_points):
    root, path = tiny
    out = root / "out"
    drawn = (out / "report.md").stat().st_mtime_ns
    text = _sweep(capsys, str(path), "--out", str(out))
    assert "(0 computed, 2 cached)" in text and _points(out) == tiny_points
    assert (out / "report.md").stat().st_mtime_ns == drawn            # nothing changed: not redrawn
    runs = sorted((out / "cache" / "runs").glob("*.json"))
    kept = json.loads(runs[0].read_text())
    runs[0].unlink()                                               # an interrupted sweep
    text = _sweep(capsys, str(path), "--out", str(out))
    assert "(1 computed, 1 cached)" in text
    assert json.loads(runs[0].read_text())["top1"] == kept["top1"]
    path.write_text(yaml.safe_dump({**TINY, "accelerators": TINY["accelerators"] + ["npu_w4a8"]}))
    text = _sweep(capsys, str(path), "--out", str(out))
    assert "(0 computed, 2 cached) x 3 accelerators" in text
    assert {a for _, a in _points(out)} == {"npu_int8", "mcu_int8", "npu_w4a8"}
    path.write_text(yaml.safe_dump(TINY))


def _where(item, threads=None):
    return item * item, threads, os.getpid()


def test_process_engine_runs_items_in_other_processes_one_thread_each():
    from reports.engines import run_processes

    got = dict(run_processes(_where, [3, 1, 4, 1, 5], workers=2))
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert [got[i][0] for i in range(5)] == [9, 1, 16, 1, 25]
    assert {got[i][1] for i in range(5)} == {1}
    assert os.getpid() not in {got[i][2] for i in range(5)}


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_quick_sweep_through_a_dask_local_cluster(capsys, tmp_path, tiny_points):
    import distributed

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        text = _sweep(capsys, "configs/sweeps/quick.yaml", "--images", str(IMAGES), "--out", str(tmp_path),
                      "--cluster", cluster.scheduler_address)
    assert "(6 computed, 0 cached)" in text
    points = _points(tmp_path)
    assert len(points) == 18 and all(p["bit_exact_images"] == IMAGES for p in points.values())
    for key, expected in tiny_points.items():          # same runs, same numbers as the in-process engine
        got = points[key]
        assert got["top1"] == expected["top1"] and got["cost"] == expected["cost"]
    assert (tmp_path / "report.md").is_file()


def test_bad_sweep_cli_input_is_one_line(capsys, tmp_path):
    for argv, needle in ((["configs/sweeps/none.yaml"], "none.yaml"), (["configs/sweeps/quick.yaml", "--workers", "0"],
                                                                       "--workers"),
                         (["configs/sweeps/quick.yaml", "--bogus"], "bogus")):
        code = main(["sweep", *argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
