"""Shape-only quantized graphs (`static_graph.shape_only_graph`): MAC counts agree with torch's
FlopCounterMode; `simulate cost`, including models the removed legacy walk refused."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from reference.lowering import lower
from reference.recipes.config import RecipeConfig
from reference.recipes.static_graph import shape_only_graph
from simulator.cli import main
from timm_flops import timm_flops
from simulator.graph_trace import graph_layers
from simulator.trace import Trace


def _layers(model, w, a, edge_bits=8):
    return graph_layers(shape_only_graph(lower(model.eval()), RecipeConfig(w_bits=w, a_bits=a, edge_bits=edge_bits)))


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"])
def test_macs_equal_flop_counter(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    flops = timm_flops(model, 224)
    trace = Trace(model=name, recipe="shapes", layers=_layers(model, 8, 8), n_images=1)
    assert int(trace.macs_per_image()[0]) * 2 == flops


def test_bops_scale_with_bits():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    b8 = sum(r.bops for r in _layers(model, 8, 8, edge_bits=0))
    b4 = sum(r.bops for r in _layers(model, 4, 4, edge_bits=0))
    assert b8 == 4 * b4


def test_cost_command_any_resolution(capsys, tmp_path):
    out = tmp_path / "c.json"
    code = main(["cost", "--model", "deit_tiny_patch16_224", "--img-size", "288", "--hw", "configs/npu_int8.yaml",
                 "configs/npu_w4a8.yaml", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    r = json.loads(out.read_text())
    assert r["arch"]["num_tokens"] == (288 // 16) ** 2 + 1
    assert len(r["hardware"]) == 2 and "npu_w4a8" in text


def test_cost_command_bad_bits(capsys):
    code = main(["cost", "--wbits", "9", "--hw", "configs/npu_int8.yaml"])
    err = capsys.readouterr().err
    assert code == 2 and "--wbits" in err and len(err.strip().splitlines()) == 1


def test_cost_command_runs_deit3_and_avg_pooling(capsys, tmp_path):
    """Models the removed legacy walk refused (no_embed_class + LayerScale; avg pooling, no class
    token) are costed from the lowered graph."""
    for model, tokens in (("deit3_small_patch16_224", 14 * 14 + 1), ("vit_medium_patch16_gap_256", 16 * 16)):
        out = tmp_path / f"{model}.json"
        code = main(["cost", "--model", model, "--hw", "npu_int8", "--json", str(out), "--quiet"])
        assert code == 0, capsys.readouterr().err
        assert json.loads(out.read_text())["arch"]["num_tokens"] == tokens
