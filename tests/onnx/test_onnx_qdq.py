"""ONNX QDQ export (`simulator.onnx_export`) and import (`reference.onnx_import`) against onnxruntime."""

import dataclasses

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")          # the `onnx` extra (in `test`, so CI runs these)
ort = pytest.importorskip("onnxruntime")

from reference.lowering import lower  # noqa: E402
from reference.onnx_import import import_qdq, ort_comparison  # noqa: E402
from reference.recipes.composed import quantize_graph  # noqa: E402
from reference.recipes.config import RecipeConfig  # noqa: E402
from reference.standard_fakequant import StandardFakeQuantModel  # noqa: E402
from simulator.cli import main  # noqa: E402
from simulator.errors import InputError  # noqa: E402
from simulator.int_ops import GraphIntegerExecutor  # noqa: E402
from simulator.onnx_export import export_qdq  # noqa: E402
from simulator.onnx_session import logit_sqnr_db, ort_session  # noqa: E402
from simulator.qgraph import Quantizer  # noqa: E402
from strategies import build_vit, random_images  # noqa: E402

SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=2, num_heads=3, num_classes=10,
             mlp_ratio=4, init_values=None)


def _ort(model, images, optimize=False):
    sess = ort_session(model.SerializeToString(), optimize=optimize)
    return sess.run(None, {"images": images.astype(np.float32)})[0]


@pytest.mark.parametrize("bits", [(8, 8), (4, 4), (6, 6)])
def test_export_is_the_standard_fake_quant_function(bits):
    """onnxruntime on the export computes what the torch standard-op model computes (both round half to
    even, both float32), and agrees with the simulator on top-1."""
    model = build_vit(SMALL, seed=3)
    images = random_images(SMALL, 64, seed=3)
    qg = quantize_graph(model, images[:32], RecipeConfig(w_bits=bits[0], a_bits=bits[1], calib_images=32))
    m = export_qdq(qg)
    assert m.opset_import[0].version >= 13
    kinds = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul", "LayerNormalization", "Softmax", "Gelu"} <= kinds
    x = images[32:]
    got = _ort(m, x)
    std = StandardFakeQuantModel(qg)(x).numpy()
    assert logit_sqnr_db(got, std) > 45, logit_sqnr_db(got, std)
    assert (got.argmax(1) == std.argmax(1)).mean() >= 31 / 32
    sim = GraphIntegerExecutor(qg).run(x)
    assert (got.argmax(1) == sim.predictions).mean() >= 0.85
    opt = _ort(m, x, optimize=True)                 # its QDQ fusions (integer GEMMs at W8A8)
    assert (opt.argmax(1) == got.argmax(1)).mean() >= 31 / 32


def test_export_on_random_configurations_runs_in_onnxruntime():
    """Register tokens + avg pooling, ResPostBlock, distilled DeiT, quick-GELU, dynamic padding."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import ResPostBlock, VisionTransformer
    base = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=1, num_heads=2, num_classes=5)
    cases = [(VisionTransformer, dict(reg_tokens=2, global_pool="avg", act_layer="quick_gelu"), (16, 16)),
             (VisionTransformer, dict(block_fn=ResPostBlock, act_layer="gelu_tanh", qk_norm=True), (16, 16)),
             (VisionTransformerDistilled, dict(), (16, 16)),
             (VisionTransformer, dict(dynamic_img_size=True, dynamic_img_pad=True), (14, 18)),
             (VisionTransformer, dict(img_size=18), (18, 18))]
    for cls, kw, size in cases:
        torch.manual_seed(0)
        model = cls(**(base | kw)).eval()
        images = np.random.default_rng(0).standard_normal((24, 3, *size)).astype(np.float32)
        qg = quantize_graph(lower(model, image_size=size), images[:8], RecipeConfig(calib_images=8))
        got = _ort(export_qdq(qg), images[8:])
        std = StandardFakeQuantModel(qg)(images[8:]).numpy()
        assert got.shape == std.shape
        assert logit_sqnr_db(got, std) > 40, (cls.__name__, kw, logit_sqnr_db(got, std))


def test_kinds_qdq_cannot_express_are_refused(digits):
    model, calib, _ = digits
    qg = quantize_graph(model, calib[:32], RecipeConfig(calib_images=32))
    t = "blocks.0.attn"
    bad = dataclasses.replace(qg, quantizers={**qg.quantizers, t: Quantizer("two_scaled", 2.0 ** -8, 8, False, 2)})
    with pytest.raises(InputError, match=r"^export-onnx: tensor blocks.0.attn has a 'two_scaled' quantizer"):
        export_qdq(bad)


def test_export_command_writes_a_model_onnxruntime_loads(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", "--out", str(out), "--recipe", "static_w4a4", "--no-progress"]) == 0
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    types = {i.data_type for i in m.graph.initializer}
    assert onnx.TensorProto.INT4 in types         # 4-bit weights stored as INT4 (opset 21)
    ort_session(m.SerializeToString())
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--onnx-qdq", "{tmp}/missing.onnx"], "missing.onnx: no such file"),
    (["--onnx-qdq", "{tmp}/garbage.onnx"], "garbage.onnx: not an ONNX model"),
    (["--onnx-qdq", "{tmp}/float.onnx"], "float.onnx: no QuantizeLinear/DequantizeLinear nodes: not a QDQ model"),
])
def test_bad_onnx_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "f",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8, 8])])
    onnx.save(helper.make_model(g), str(tmp_path / "float.onnx"))
    code = main([a.format(tmp=tmp_path) for a in argv] + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("simulate: error")]
    assert len(lines) == 1 and needle in lines[0], err


@pytest.mark.filterwarnings("ignore")
def test_import_of_an_onnxruntime_quantized_digits_model(digits, digits_qdq, tmp_path):
    """quantize_static (QDQ, per-channel) of the bundled model, imported: weight codes equal, top-1 agrees
    with onnxruntime, first-block codes within one LSB (measured: 256 images, 100% top-1, docs/onnx.md)."""
    model, calib, test = digits
    calib = np.ascontiguousarray(calib[:32], dtype=np.float32)
    qg = import_qdq(str(digits_qdq), model, calib)
    same, total = qg.meta["weight_codes_equal"]
    assert same == total == sum(np.asarray(p.w_q).size for p in qg.params.values() if hasattr(p, "w_q"))
    assert len(qg.meta["onnx_codes"]) == 50          # input + 8 per block + final norm
    r = ort_comparison(qg, digits_qdq.read_bytes(), test)
    assert r["summary"]["top1_agreement"] >= 62 / 64
    rows = {row["tensor"]: row for row in r["boundaries"]}
    assert rows["input"]["equal"] == 1.0
    for t in ("blocks.0.norm1", "blocks.0.q", "blocks.0.k", "blocks.0.v"):
        assert rows[t]["within_1"] == 1.0 and rows[t]["equal"] > 0.95, rows[t]
    assert r["summary"]["codes_within_1"] > 0.9
    js = tmp_path / "imp.json"                    # the command: import, simulate, compare
    assert main(["--onnx-qdq", str(digits_qdq), "--images", "32", "--calib-images", "32",
                 "--json", str(js), "--no-progress"]) == 0
    import json
    summary = json.loads(js.read_text())["summary"]
    assert summary["images"] == 32 and summary["top1_agreement"] >= 31 / 32 and summary["boundaries"] == 50


def test_import_refuses_another_architecture(digits_qdq):
    """A --model whose shapes differ from the file's: one line naming the first tensor that does not fit."""
    other = build_vit(SMALL | dict(in_chans=1, img_size=8, depth=1, num_classes=10, embed_dim=96), seed=1)
    with pytest.raises(InputError, match=r"qdq.onnx: pos_embed: shape \(1, 17, 96\) in the file, "
                                         r"\(1, 5, 96\) in the model$"):
        import_qdq(str(digits_qdq), other, np.zeros((4, 1, 8, 8), np.float32))
