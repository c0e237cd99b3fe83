"""A QDQ file is self-sufficient: the timm ViT architecture and every float param are read from the graph
(`reference.onnx_architecture`), and give the same integer graph as importing with the right model."""

import dataclasses
import logging
from functools import partial

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")          # the `onnx` extra (in `test`, so CI runs these)
pytest.importorskip("onnxruntime")

from timm.layers import LayerNorm  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from reference.models import default_model_config  # noqa: E402
from reference.onnx_architecture import state_dict_of  # noqa: E402
from reference.onnx_vit_reader import read_vit  # noqa: E402
from reference.onnx_import import QDQModel, import_qdq  # noqa: E402
from simulator.cli import main  # noqa: E402
from simulator.errors import InputError  # noqa: E402
from simulator.int_ops import GraphIntegerExecutor  # noqa: E402

TINY = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=24, depth=2, num_heads=2, num_classes=5)
_QUANTIZED_BIASES = ("patch_embed.proj.bias", "head.bias", "head_dist.bias")   # int32 DQ at s_in s_w in the file


def _assert_same_simulation(a, b, images):
    """Same ops, quantizers and integer params, so the same codes at every boundary and the same logits."""
    assert [(op.kind, op.name, op.inputs, op.outputs) for op in a.graph.ops] == \
        [(op.kind, op.name, op.inputs, op.outputs) for op in b.graph.ops]
    assert a.quantizers.keys() == b.quantizers.keys()
    for t, q in a.quantizers.items():
        for f in dataclasses.fields(q):
            x, y = getattr(q, f.name), getattr(b.quantizers[t], f.name)
            assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, (t, f.name)
    ra, rb = GraphIntegerExecutor(a).run(images), GraphIntegerExecutor(b).run(images)
    assert ra.codes.keys() == rb.codes.keys() and len(ra.codes) > 10
    for t in ra.codes:
        assert np.array_equal(ra.codes[t], rb.codes[t]), t
    assert np.array_equal(ra.logits, rb.logits)


def _assert_params_are_the_checkpoint(path, model):
    """Read from the file under timm names: the float tensors verbatim, GEMM weights within half a
    per-channel step (max |w| / 127), the int32-quantized Conv/Gemm biases within 1e-4."""
    sd = state_dict_of(read_vit(QDQModel(str(path))), model, str(path))
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert sd.keys() == ref.keys()
    for k, v in sd.items():
        r = ref[k]
        if v.ndim >= 2 and k.endswith("weight"):
            step = np.abs(r).reshape(len(r), -1).max(1) / 127
            err = np.abs(v - r).reshape(len(r), -1).max(1)
            assert (err <= 0.5 * step * (1 + 1e-3)).all(), k      # 1e-3: ties, rounded in float32
        elif k in _QUANTIZED_BIASES:
            assert np.abs(v - r).max() < 1e-4, k
        else:
            assert np.array_equal(v, r), k


def test_digits_file_alone_is_the_bundled_model(digits, digits_qdq):
    """No --model: the bundled architecture is read from the file, and the integer graph equals the one of
    --model vit_digits (its checkpoint) and of a randomly initialised model of that architecture."""
    model, calib, test = digits
    calib = calib[:32]
    alone = import_qdq(str(digits_qdq), None, calib)
    arch = alone.meta["architecture"]
    kwargs = default_model_config()["model_kwargs"]
    assert arch["source"] == "onnx" and arch["float_gap"] < 1e-5
    assert {k: arch["kwargs"][k] for k in kwargs} == kwargs
    assert arch["kwargs"]["norm_eps"] == 1e-6 and arch["kwargs"]["act_layer"] == "gelu"
    _assert_params_are_the_checkpoint(digits_qdq, model)
    _assert_same_simulation(alone, import_qdq(str(digits_qdq), model, calib), test[:16])
    torch.manual_seed(5)
    _assert_same_simulation(alone, import_qdq(str(digits_qdq), VisionTransformer(**kwargs).eval(), calib), test[:16])


def test_random_deit_tiny_file_alone(tmp_path, ort_quantize):
    """deit_tiny_patch16_224 at 32 px, random weights + noise (as scripts/onnx_import_agreement.py):
    the file alone gives the model's architecture and the same integer graph as importing with it."""
    import timm

    from reference.lowering.coverage import perturb_

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10).eval()
    perturb_(model, 1)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    test = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    ort_quantize(model, calib, tmp_path / "f.onnx", tmp_path / "q.onnx")
    alone = import_qdq(str(tmp_path / "q.onnx"), None, calib)
    kw = alone.meta["architecture"]["kwargs"]
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["patch_size"], kw["img_size"], kw["num_classes"],
            kw["mlp_ratio"], kw["qkv_bias"], kw["class_token"], kw["global_pool"]) == \
        (192, 12, 3, 16, 32, 10, 4.0, True, True, "token")
    _assert_params_are_the_checkpoint(tmp_path / "q.onnx", model)
    _assert_same_simulation(alone, import_qdq(str(tmp_path / "q.onnx"), model, calib), test)


@pytest.mark.parametrize("cls, kw", [
    (VisionTransformer, dict(reg_tokens=2, global_pool="avg", act_layer="quick_gelu")),
    (VisionTransformer, dict(init_values=1e-5, qkv_bias=False, act_layer="gelu_tanh", img_size=(16, 20))),
    (VisionTransformerDistilled, dict()),
    (VisionTransformer, dict(pre_norm=True, no_embed_class=True, fc_norm=True,
                             norm_layer=partial(LayerNorm, eps=1e-5))),
    (VisionTransformer, dict(class_token=False, global_pool="avg", fc_norm=False, proj_bias=False, mlp_ratio=3.0)),
], ids=["registers-avg-quickgelu", "layerscale-noqkvbias-tanh-16x20", "distilled", "prenorm-noembedclass-fcnorm-eps",
        "nocls-avg-noprojbias-mlp3"])
def test_configurations_are_read_from_the_file(tmp_path, ort_quantize, cls, kw):
    """Each inferred kwarg is the constructor's (LayerScale's init value aside: gamma is read), and the
    file alone imports to the integer graph of importing with the model."""
    torch.manual_seed(0)
    model = cls(**(TINY | kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, *model.patch_embed.img_size)).astype(np.float32)
    ort_quantize(model, images[:4], tmp_path / "f.onnx", tmp_path / "q.onnx")
    alone = import_qdq(str(tmp_path / "q.onnx"), None, images[:4])
    got = alone.meta["architecture"]["kwargs"]
    want = TINY | {k: v for k, v in kw.items() if k not in ("init_values", "norm_layer")}
    assert {k: got[k] for k in want} == want
    assert got["distilled"] == (cls is VisionTransformerDistilled)
    assert got["norm_eps"] == (1e-5 if "norm_layer" in kw else 1e-6)
    assert (got["init_values"] is not None) == ("init_values" in kw)
    _assert_params_are_the_checkpoint(tmp_path / "q.onnx", model)
    _assert_same_simulation(alone, import_qdq(str(tmp_path / "q.onnx"), model, images[:4]), images[4:])


def _one_error_line(capsys, argv) -> str:
    code = main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("simulate: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_heads_that_are_not_constant_ask_for_num_heads(digits, digits_qdq, tmp_path, capsys):
    """The attention Reshape's H and head_dim computed (Max of constants) instead of constant: one line
    asking for --num-heads (no guess); with --num-heads 3 the file imports as before."""
    m = onnx.load(str(digits_qdq))
    for n in list(m.graph.node):
        if n.op_type == "Concat" and len(n.input) == 5 and "/attn/" in n.output[0]:
            for j in (3, 4):
                computed = n.input[j] + "_computed"
                m.graph.node.append(onnx.helper.make_node("Max", [n.input[j], n.input[j]], [computed]))
                n.input[j] = computed
    onnx.save(_sorted(m), str(tmp_path / "h.onnx"))
    line = _one_error_line(capsys, ["--onnx-qdq", str(tmp_path / "h.onnx")])
    assert "cannot determine num_heads" in line and "pass --num-heads H or --model NAME" in line, line
    model, calib, test = digits
    qg = import_qdq(str(tmp_path / "h.onnx"), None, calib[:32], num_heads=3)
    assert qg.meta["architecture"]["kwargs"]["num_heads"] == 3
    _assert_same_simulation(qg, import_qdq(str(digits_qdq), None, calib[:32]), test[:8])
    line = _one_error_line(capsys, ["--onnx-qdq", str(digits_qdq), "--num-heads", "4"])
    assert "--num-heads 4, the file's attention Reshape has [3]" in line, line


def _sorted(m):
    """``m`` with its nodes in topological order (appended nodes moved before their users)."""
    made = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer} | {""}
    pending, order = list(m.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in made for i in n.input)]
        order += ready
        made |= {o for n in ready for o in n.output}
        pending = [n for n in pending if n not in ready]
    del m.graph.node[:]
    m.graph.node.extend(order)
    return m


def test_unreadable_and_mismatched_files_fail_in_one_line(tmp_path, ort_quantize, digits_qdq, capsys):
    """qk_norm (LayerNorms the reader does not place): one line asking for --model, exit 2; with the model
    it imports with a warning (GEMM weights and scales from the file). A --model of other shapes, or of
    the same shapes but another function (quick_gelu for gelu): one line each."""
    torch.manual_seed(0)
    model = VisionTransformer(**(TINY | dict(qk_norm=True, depth=1))).eval()
    images = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ort_quantize(model, images, tmp_path / "f.onnx", tmp_path / "q.onnx")
    line = _one_error_line(capsys, ["--onnx-qdq", str(tmp_path / "q.onnx")])
    assert "LayerNormalizations" in line and "qk_norm" in line
    assert line.endswith("pass --model NAME (the timm architecture)")
    records, handler = [], logging.Handler(logging.WARNING)
    handler.emit = records.append                 # the CLI may have stopped propagation to the root logger
    logging.getLogger("reference.onnx_import").addHandler(handler)
    try:
        qg = import_qdq(str(tmp_path / "q.onnx"), model, images)
    finally:
        logging.getLogger("reference.onnx_import").removeHandler(handler)
    assert qg.meta["architecture"]["params"] == "GEMM weights only"
    assert any("only the GEMM weights and activation scales come from the file" in r.getMessage() for r in records)
    line = _one_error_line(capsys, ["--onnx-qdq", str(digits_qdq), "--model", "vit_tiny_patch16_224"])
    assert line.endswith("qdq.onnx: cls_token: shape (1, 1, 96) in the file, (1, 1, 192) in the model"), line
    plain = VisionTransformer(**(TINY | dict(depth=1))).eval()
    ort_quantize(plain, images, tmp_path / "p.onnx", tmp_path / "pq.onnx")
    quick = VisionTransformer(**(TINY | dict(depth=1, act_layer="quick_gelu"))).eval()
    with pytest.raises(InputError, match="the model's architecture with the file's params does not compute the "
                                         "file's float function"):
        import_qdq(str(tmp_path / "pq.onnx"), quick, images)
