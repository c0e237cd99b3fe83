"""``simulate cost --model swin_tiny_patch4_window7_224`` from shapes alone (issue 16).

Its MACs equal ``FlopCounterMode`` FLOPs / 2 exactly (timm's explicit attention
path, so that ``q @ k^T`` and ``attn @ v`` are counted, as for the ViTs in
``test_shapes.py``); window attention is costed as windows x heads batched GEMMs
with the relative position bias (and, in shifted blocks, the mask) fused into
the ``q k^T`` output stage.
"""

from __future__ import annotations

import json

import timm
import torch

from simulator.cli import main
from timm_flops import timm_flops


def test_swin_cost_from_shapes_macs_equal_flop_counter(tmp_path, capsys):
    name = "swin_tiny_patch4_window7_224"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    flops = timm_flops(model, 224)
    out = tmp_path / "c.json"
    assert main(["cost", "--model", name, "--hw", "configs/npu_int8.yaml", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    hw = rep["hardware"][0]
    assert hw["per_image"]["macs"] * 2 == flops
    layers = {r["name"]: r for r in hw["layers"]}
    qk = layers["layers.0.blocks.1.attn.qk"]        # 64 windows x 3 heads of 49 x 32 x 49
    assert (qk["macs"], qk["bops"]) == (64 * 3 * 49 * 32 * 49, 64 * 3 * 49 * 32 * 49 * 64)
    assert layers["layers.0.blocks.1.attn.bias"]["unit"] == "fused"
    assert "layers.0.blocks.1.attn.bias.mask" in layers and "layers.0.blocks.0.attn.bias.mask" not in layers
    assert "layers.3.blocks.1.attn.bias.mask" not in layers     # 7x7 grid = one window: timm does not shift
    assert "swin_tiny_patch4_window7_224  224x224  3136 tokens" in text
