"""Sweep YAML validation: grids expand as written, bad input is one line naming file and field."""

from __future__ import annotations

import pytest
import yaml

from reports.sweep_config import CONFIG_DIR, load_sweep, parse_sweep
from simulator.errors import InputError

BASE = {"models": [{"name": "vit_digits", "images": 16}],
        "recipes": [{"recipe": "static", "bits": ["w8a8", "w4a4"]}],
        "accelerators": ["npu_int8"]}


def _parse(tmp_path, **changes):
    data = {**BASE, **changes}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_sweep(path)


def test_bits_and_grid_expand_to_the_cartesian_product(tmp_path):
    spec = _parse(tmp_path, recipes=[{"recipe": "static", "bits": ["w8a8", "w6a6", "w4a8"],
                                      "grid": {"act_calibration": ["mse", "percentile"], "params.softmax": [{"scale": "calibrated"}]},
                                      "calib_images": 32}])
    assert len(spec.runs) == 6
    bits = {(r.recipe["w_bits"], r.recipe["a_bits"]) for r in spec.runs}
    assert bits == {(8, 8), (6, 6), (4, 8)}
    assert all(r.recipe["calib_images"] == 32 and r.recipe["params"] == {"softmax": {"scale": "calibrated"}}
               for r in spec.runs)
    labels = [r.label for r in spec.runs]
    assert len(set(labels)) == 6 and "static_softmax_calibrated_w6a6 act=percentile,calib=32,softmax={'scale': 'calibrated'}" in labels
    assert spec.accelerators == (str(CONFIG_DIR / "npu_int8.yaml"),)


def test_star_expands_to_every_registered_recipe(tmp_path):
    from reference.recipes import RECIPES

    spec = _parse(tmp_path, recipes=[{"recipe": "*", "bits": ["w8a8"]}])
    assert sorted(r.recipe["recipe"] for r in spec.runs) == sorted(RECIPES)


def test_shipped_sweeps_are_valid():
    quick = load_sweep(CONFIG_DIR / "sweeps" / "quick.yaml")
    assert len(quick.runs) == 6 and len(quick.accelerators) == 3
    review = load_sweep(CONFIG_DIR / "sweeps" / "design_review.yaml")
    assert len(review.accelerators) == 3
    assert {(r.recipe["w_bits"], r.recipe["a_bits"]) for r in review.runs} >= {(8, 8), (6, 6), (4, 4)}


@pytest.mark.parametrize("changes, needles", [
    ({"modles": []}, ["modles", "did you mean 'models'"]),
    ({"models": []}, ["models", "non-empty list"]),
    ({"models": [{"name": "vit_digits", "images": 0}]}, ["models[0]: images", "positive integer"]),
    ({"models": [{"name": "vit_digits", "checkpoint": "nope.pth"}]}, ["models[0]: checkpoint", "nope.pth"]),
    ({"models": [{"name": "vit_digits", "data": "no_dir"}]}, ["models[0]: data", "no such directory"]),
    ({"recipes": [{"recipe": "statik"}]}, ["recipes[0]", "recipe", "did you mean 'static'"]),
    ({"recipes": [{"recipe": "static", "bits": ["w8"]}]}, ["recipes[0]: bits[0]", "w<bits>a<bits>"]),
    ({"recipes": [{"recipe": "static", "bits": ["w9a8"]}]}, ["recipes[0]", "w_bits", "[2, 8]"]),
    ({"recipes": [{"recipe": "static", "grid": {"act_calibration": "mse"}}]},
     ["recipes[0]: grid: act_calibration", "list"]),
    ({"recipes": [{"recipe": "static", "grid": {"act_calib": ["mse"]}}]}, ["recipes[0]", "act_calib"]),
    ({"recipes": [{"recipe": "static"}, {"recipe": "static", "w_bits": 8}]}, ["duplicate point", "static_w8a8"]),
    ({"accelerators": ["npu_int9"]}, ["accelerators[0]", "did you mean 'npu_int8'"]),
    ({"accelerators": ["missing/x.yaml"]}, ["accelerators[0]", "missing/x.yaml"]),
    ({"report": {"breakdown": ["static_w8a4"]}}, ["report: breakdown[0]", "static_w8a4"]),
    ({"batch_size": -1}, ["batch_size", "positive integer"]),
])
def test_bad_sweep_is_one_line_naming_file_and_field(tmp_path, changes, needles):
    with pytest.raises(InputError) as err:
        _parse(tmp_path, **changes)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "s.yaml"))
    for needle in needles:
        assert needle in msg, msg


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="accelerators: missing"):
        parse_sweep({"models": BASE["models"], "recipes": BASE["recipes"]}, "x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(InputError, match="invalid YAML at line"):
        load_sweep(bad)
    with pytest.raises(InputError, match="no such sweep file"):
        load_sweep(tmp_path / "none.yaml")
