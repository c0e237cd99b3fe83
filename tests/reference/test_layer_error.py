"""Per-tensor SQNR against the float model (`reference.layer_error`) and ``simulate --layers``."""

import csv
import json
import math

import numpy as np
import pytest

from reference.layer_error import boundary_sqnr, dequantize, sqnr_db
from reference.recipes.composed import quantize_graph
from reference.recipes.config import RecipeConfig, load_recipe
from simulator.cli import main
from simulator.qgraph import Quantizer
from simulator.two_scaled import v2sf_encode
from strategies import build_vit, random_images

SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=2, num_heads=3, num_classes=10,
             mlp_ratio=4, init_values=None)


def test_sqnr_db_definition():
    x = np.array([1.0, -2.0, 3.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(2 * x, x) == pytest.approx(0.0)
    assert sqnr_db(1.1 * x, x) == pytest.approx(20.0)


def test_dequantize_two_scaled_and_grouped():
    qz = Quantizer("two_scaled", 0.5, 4, signed=True, ratio_shift=2)
    # fine codes in [-4, 3] at 0.5; coarse codes at 2.0 above: value 5.0 -> coarse 3 (flag set) -> 3 << 2 = 12
    word = v2sf_encode(np.array([2, 10]), np.array([1, 3]), 4, 1)
    assert dequantize(qz, word).tolist() == [1.0, 6.0]
    g = Quantizer("grouped", 1.0, 4, exps=(1, 0))
    codes = np.ones((1, 2, 3))                   # [B, T, C], channel c in group groups[b, c]
    assert dequantize(g, codes, np.array([[0, 1, 0]])).tolist() == [[[0.5, 1.0, 0.5]] * 2]
    assert dequantize(Quantizer("predicted", 1.0, 8, predictor=object()), codes) is None


def test_sqnr_rows_follow_the_walk_and_rank_the_bit_widths():
    model = build_vit(SMALL, seed=2)
    images = random_images(SMALL, 48, seed=2)
    rows = {}
    for bits in (8, 4):
        qg = quantize_graph(model, images[:32], RecipeConfig(w_bits=bits, a_bits=bits, calib_images=32))
        rows[bits] = boundary_sqnr(qg, images[32:])
        names = [r["tensor"] for r in rows[bits]]
        assert names == [t for t in qg.graph.tensor_names()[1:] if t in qg.quantizers]
        assert [r["depth"] for r in rows[bits]] == sorted(r["depth"] for r in rows[bits])
    db = {b: {r["tensor"]: r["sqnr_db"] for r in rows[b]} for b in rows}
    assert db[8]["input"] > 35 and db[8]["logits"] > db[4]["logits"] + 6
    assert {r["block"] for r in rows[8]} == {None, 0, 1}


def test_tsptq_raises_the_softmax_sqnr_on_the_default_model(digits):
    model, calib, test = digits
    out = {}
    for name in ("static_w4a4", "tsptq_w4a4"):
        qg = quantize_graph(model, calib, load_recipe(f"configs/recipes/{name}.yaml"))
        out[name] = {r["tensor"]: r for r in boundary_sqnr(qg, test[:32])}
    assert out["tsptq_w4a4"]["blocks.0.attn"]["quantizer"] == "two_scaled"
    assert out["tsptq_w4a4"]["blocks.0.attn"]["sqnr_db"] > out["static_w4a4"]["blocks.0.attn"]["sqnr_db"] + 1


def test_layers_flag_writes_plot_and_cost_csv_next_to_json(tmp_path, capsys):
    js = tmp_path / "run.json"
    assert main(["--images", "16", "--layers", "--json", str(js), "--hw", "npu_int8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "per-tensor SQNR vs fp32" in out and "blocks.5.x_out" in out
    summary = json.loads(js.read_text())
    rows = summary["layers"]["rows"]
    assert len(rows) == 91 and rows[-1]["tensor"] == "logits"      # 4 embedding + 14 per block + pool, norm, logits
    png = (tmp_path / "run.layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader((tmp_path / "run.layers.csv").open()))
    assert table[0]["layer"] == "quantize_input" and "npu_int8_cycles" in table[0]
    assert sum(int(r["macs"]) for r in table) == summary["macs_per_image"]
