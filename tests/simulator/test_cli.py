"""The `simulate` command end to end on the bundled default model."""

from __future__ import annotations

import json

import pytest

from simulator.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_main_job_prints_summary_and_is_bit_exact(capsys, tmp_path):
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--images", "96", "--json", str(js), "--no-progress")
    assert code == 0, err
    assert "bit-exact: 96/96 images" in out
    for line in ("fp32 top-1", "fake-quant top-1 (integer-only)", "fake-quant top-1 (float nonlinear)",
                 "integer simulator top-1", "wall time"):
        assert line in out
    r = json.loads(js.read_text())
    assert r["bit_exact_images"] == 96 and r["images"] == 96
    assert r["top1"]["simulator"] == r["top1"]["fakequant_integer"]
    assert r["top1"]["fp32"] >= 90.0
    assert abs(r["top1"]["simulator"] - r["top1"]["fp32"]) <= 3.0
    assert r["recipe"]["w_bits"] == 8 and r["recipe"]["a_bits"] == 8
    assert r["macs_per_image"] > 0 and r["bops_per_image"] == pytest.approx(r["bops_per_image"])
    ci = r["top1_ci"]["simulator"]
    assert ci["correct"] == round(r["top1"]["simulator"] * 96 / 100) and ci["ci_low"] < ci["accuracy"] < ci["ci_high"]
    assert "95% CI" in out and r["simulator_vs_fp32"]["test"] == "mcnemar-exact"
    g = r["gemm_backend"]                  # --backend auto: one exact backend per GEMM shape class
    assert g["requested"] == "auto" and g["classes"]
    assert all(c["backend"] in ("numba", "int_mm", "blas_f32", "blas_f64") for c in g["classes"].values())
    assert all(c["source"] in ("measured", "cached", "only") for c in g["classes"].values())
    assert r["threads"]["torch"] >= 1 and r["threads"]["numba"] >= 1
    assert "simulator GEMMs: " in out and "threads: torch" in out


def test_fixed_backend_and_threads_are_reported(capsys, tmp_path):
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--images", "8", "--backend", "blas_f64", "--threads", "1", "--json", str(js),
                          "--no-progress")
    assert code == 0, err
    r = json.loads(js.read_text())
    assert r["threads"]["torch"] == 1 and r["threads"]["numba"] == 1
    assert r["threads"]["numba_layer"] in ("tbb", "omp", "workqueue")
    assert {c["backend"] for c in r["gemm_backend"]["classes"].values()} == {"blas_f64"}
    assert "(--backend blas_f64); threads: torch 1, numba 1" in out and r["bit_exact_images"] == 8


def test_plant_outliers_keeps_fp32_and_is_reported(capsys, tmp_path):
    js = tmp_path / "p.json"
    code, out, err = _run(capsys, "--images", "24", "--plant-outliers", "{alpha_range: [20, 40], seed: 3}",
                          "--recipe", "static_w4a4", "--json", str(js), "--no-progress")
    assert code == 0, err
    r = json.loads(js.read_text())
    assert r["planted_outliers"]["spec"]["seed"] == 3 and r["planted_outliers"]["planted"]
    assert r["bit_exact_images"] == 24
    code, _, _ = _run(capsys, "--images", "24", "--recipe", "static_w4a4", "--json", str(tmp_path / "o.json"),
                      "--no-progress")
    assert code == 0 and json.loads((tmp_path / "o.json").read_text())["top1"]["fp32"] == r["top1"]["fp32"]


def test_bad_outlier_spec_is_one_line_exit_2(capsys):
    code, out, err = _run(capsys, "--images", "4", "--plant-outliers", "{fraction: 2}", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--plant-outliers" in err and "fraction" in err


def test_recipe_by_name_bits_override_and_hw(capsys, tmp_path):
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--recipe", "static_w8a8", "--wbits", "4", "--abits", "4", "--images", "40",
                          "--hw", "configs/npu_int8.yaml", "configs/mcu_int8.yaml", "--json", str(js),
                          "--no-progress")
    assert code == 0, err
    r = json.loads(js.read_text())
    assert r["recipe"]["label"] == "static_w4a4"
    assert r["bit_exact_images"] == 40
    assert len(r["hardware"]) == 2
    assert "npu_int8" in out and "mcu_int8" in out


@pytest.mark.parametrize("argv, needle", [
    (["--recipe", "no_such_recipe.yaml"], "no_such_recipe.yaml"),
    (["--model", "not_a_model_xyz"], "not_a_model_xyz"),
    (["--wbits", "1"], "w_bits"),
    (["--images", "0"], "--images"),
    (["--hw", "configs/none.yaml"], "configs/none.yaml"),
    (["--checkpoint", "missing.pth"], "missing.pth"),
    (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--data", "clutter"], "dataset 'clutter' has 1x56x56"),
    (["--model", "vit_clutter", "--data", "digits"], "dataset 'digits' has 1x8x8"),
    (["--model", "vit_clutter", "--img-size", "64"], "--img-size 64"),
    (["--bogus-flag"], "bogus"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    extra = [] if "--images" in argv else ["--images", "8"]
    code, out, err = _run(capsys, *argv, *extra, "--no-progress")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simulate: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_bad_json_dir_writes_nothing(capsys, tmp_path):
    target = tmp_path / "missing_dir" / "r.json"
    code, _, err = _run(capsys, "--images", "8", "--json", str(target), "--no-progress")
    assert code == 2 and "missing_dir" in err
    assert not target.parent.exists()


def test_bad_recipe_yaml_field(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: static\nw_bits: 8\na_bitz: 8\n")
    code, _, err = _run(capsys, "--recipe", str(bad), "--images", "8", "--no-progress")
    assert code == 2 and "a_bitz" in err and "a_bits" in err


def test_save_qvit_round_trips(capsys, tmp_path):
    from simulator.qgraph import QuantizedGraph

    path = tmp_path / "m.npz"
    code, _, err = _run(capsys, "--images", "8", "--save-qvit", str(path), "--no-progress")
    assert code == 0, err
    q = QuantizedGraph.load(path)
    assert q.meta["model"] == "vit_digits" and q.meta["w_bits"] == 8


def test_bundled_clutter_model_reads_its_own_dataset(capsys, tmp_path):
    js = tmp_path / "c.json"
    code, out, err = _run(capsys, "--model", "vit_clutter", "--images", "4", "--json", str(js), "--no-progress")
    assert code == 0, err
    r = json.loads(js.read_text())
    assert r["data"] == "clutter" and r["images"] == 4 and r["bit_exact_images"] == 4
    assert r["model_config"]["input_size"] == [1, 56, 56]
