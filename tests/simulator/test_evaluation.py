"""--reference {full,sample,none}: which images the fake-quant reference checks, and what the main job
reports for each (simulator/evaluation.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from digits_executors import digits_setup

from simulator.cli import main
from simulator.errors import InputError
from simulator.evaluation import SAMPLE_SEED, evaluate_images, merge_shards, reference_positions


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reference_positions_modes():
    assert reference_positions(7, "full", 3).tolist() == list(range(7))
    assert reference_positions(7, "none", 3).tolist() == []
    assert reference_positions(3, "sample", 3).tolist() == [0, 1, 2]       # up to the sample size: all
    s = reference_positions(50_000, "sample")
    assert len(s) == 1000 and len(set(s.tolist())) == 1000 and (np.diff(s) > 0).all()
    assert s.min() >= 0 and s.max() < 50_000
    want = np.sort(np.random.default_rng(SAMPLE_SEED).permutation(50_000)[:1000])
    assert s.tolist() == want.tolist()                                       # the documented rule
    assert reference_positions(50_000, "sample").tolist() == s.tolist()     # fixed, not drawn per call


@pytest.mark.parametrize("mode, size, needle", [("some", 10, "--reference"), ("sample", 0, "--reference-images")])
def test_reference_positions_bad_values(mode, size, needle):
    with pytest.raises(InputError, match=needle):
        reference_positions(10, mode, size)


@pytest.fixture(scope="module")
def digits_w8a8():
    return digits_setup("configs/recipes/static_w8a8.yaml", 40)


def test_sampled_reference_is_the_full_reference_on_those_images(digits_w8a8):
    model, images, labels, executors = digits_w8a8
    full = evaluate_images(model, executors, images, labels, 0, reference_positions(40, "full"), 16)
    pos = reference_positions(40, "sample", 11)
    sampled = evaluate_images(model, executors, images, labels, 0, pos, 16)
    assert len(pos) == 11 and sampled.checked.tolist() == pos.tolist()
    for k in ("fq_int", "fq_float"):
        assert len(full.preds[k]) == 40 and sampled.preds[k].tolist() == full.preds[k][pos].tolist()
    assert sampled.exact.tolist() == full.exact[pos].tolist() == [True] * 11
    for k in ("fp32", "sim"):
        assert sampled.preds[k].tolist() == full.preds[k].tolist()
    assert sampled.trace.to_dict() == full.trace.to_dict()
    none = evaluate_images(model, executors, images, labels, 0, reference_positions(40, "none"), 16)
    assert len(none.exact) == 0 and len(none.preds["fq_int"]) == 0
    assert none.preds["sim"].tolist() == full.preds["sim"].tolist()


def test_shards_merge_to_the_whole_evaluation(digits_w8a8):
    model, images, labels, executors = digits_w8a8
    pos = reference_positions(40, "sample", 9)
    whole = evaluate_images(model, executors, images, labels, 0, pos, 8)
    parts = [evaluate_images(model, executors, images[a:b], labels[a:b], a, pos[(pos >= a) & (pos < b)], 8)
             for a, b in ((16, 40), (0, 16))]                                 # any order
    merged = merge_shards(parts)
    for k in whole.preds:
        assert merged.preds[k].tolist() == whole.preds[k].tolist()
    assert merged.exact.tolist() == whole.exact.tolist() and merged.checked.tolist() == pos.tolist()
    assert merged.labels.tolist() == labels.tolist()
    assert merged.trace.to_dict() == whole.trace.to_dict()
    with pytest.raises(ValueError, match="tile"):
        merge_shards([parts[0], parts[0]])


def test_cli_reference_sample_reports_the_sample(capsys, tmp_path):
    js = tmp_path / "s.json"
    code, out, err = _run(capsys, "--images", "60", "--reference-images", "20", "--batch-size", "16",
                          "--json", str(js), "--csv", str(tmp_path / "s.csv"), "--no-progress")
    assert code == 0, err
    assert "bit-exact: 20/20 sampled images (of 60" in out
    assert "(20 sampled images of 60)" in out
    r = json.loads(js.read_text())
    assert r["reference"] == {"mode": "sample", "sample_size": 20, "sample_seed": 0, "checked_images": 20,
                              "of_images": 60, "positions": reference_positions(60, "sample", 20).tolist()}
    assert r["bit_exact_images"] == 20 and r["images"] == 60
    assert r["top1_ci"]["fakequant_integer"]["total"] == 20 and r["top1_ci"]["simulator"]["total"] == 60
    assert all(isinstance(r[k], float) for k in ("wall_time_s", "since_process_start_s"))   # reported, not judged
    row = (tmp_path / "s.csv").read_text().splitlines()
    assert dict(zip(row[0].split(","), row[1].split(",")))["reference_images"] == "20"


def test_cli_reference_none_and_full(capsys, tmp_path):
    code, out, err = _run(capsys, "--images", "24", "--reference", "none", "--json", str(tmp_path / "n.json"),
                          "--csv", str(tmp_path / "n.csv"), "--no-progress")
    assert code == 0, err
    assert "bit-exact: not checked" in out and "not run (--reference none)" in out
    r = json.loads((tmp_path / "n.json").read_text())
    assert r["bit_exact_images"] is None and r["top1"]["fakequant_integer"] is None
    assert r["top1"]["fakequant_float_nonlinear"] is None and r["top1"]["simulator"] is not None
    assert r["reference"]["mode"] == "none" and r["reference"]["checked_images"] == 0
    assert r["reference"]["positions"] == []
    assert "fakequant_integer" not in r["top1_ci"] and "simulator" in r["top1_ci"]
    code, out, err = _run(capsys, "--images", "24", "--reference", "full", "--reference-images", "5",
                          "--json", str(tmp_path / "f.json"), "--no-progress")
    assert code == 0, err
    f = json.loads((tmp_path / "f.json").read_text())
    assert "bit-exact: 24/24 images" in out and f["bit_exact_images"] == 24
    assert f["reference"]["checked_images"] == 24 and f["reference"]["positions"] is None
    assert f["top1"]["simulator"] == r["top1"]["simulator"] and f["top1"]["fp32"] == r["top1"]["fp32"]


@pytest.mark.parametrize("argv, needle", [
    (["--reference", "some"], "--reference"),
    (["--reference-images", "0"], "--reference-images"),
    (["--reference-images", "x"], "--reference-images"),
    (["--cluster", "tcp://host:port"], "--cluster"),
    (["--cluster", ""], "--cluster"),
])
def test_bad_evaluation_flags_are_one_line_exit_2(capsys, argv, needle):
    code, out, err = _run(capsys, "--images", "8", "--no-progress", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("simulate: error:")
    assert needle in err
