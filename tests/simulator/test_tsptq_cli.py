"""`simulate --recipe tsptq_*` end to end on the bundled default model."""

from __future__ import annotations

import json

import pytest

from simulator.cli import main


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_tsptq_recipe_from_cli_bit_exact_and_costed(capsys, tmp_path):
    js = tmp_path / "r.json"
    code = main(["--recipe", "configs/recipes/tsptq_w6a6.yaml", "--images", "32", "--hw", "configs/npu_int8.yaml",
                 "--json", str(js), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "bit-exact: 32/32 images" in out and "tsptq_w6a6" in out
    r = json.loads(js.read_text())
    assert r["recipe"]["recipe"] == "tsptq" and r["bit_exact_images"] == 32
    layers = {row["name"]: row for row in r["hardware"][0]["layers"]}
    dec = layers["blocks.0.attn.decode"]                   # the V-2SF shifts, costed on the requant unit
    assert dec["kind"] == "requantize" and dec["sfu_elements"]["requant"] > 0


def test_bad_tsptq_params_one_line_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: tsptq\nparams:\n  max_ratio_shift: 99\n")
    code = main(["--recipe", str(bad), "--images", "4", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == f"simulate: error: {bad}: params.max_ratio_shift: expected an integer in [1, 12], got 99"
