"""ONNX fixtures: timm models exported by ``torch.onnx.export`` (TorchScript exporter, opset 17) and
quantized by ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel symmetric int8), as in
scripts/onnx_import_agreement.py and docs/onnx.md. The bundled digits model's file is made once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch


def export_and_quantize(model, calib: np.ndarray, fp32_path, qdq_path) -> None:
    """fp32 ONNX of ``model`` (dynamic batch), then quantize_static QDQ with ``calib`` (symmetric int8,
    GEMM outputs left float as the simulator keeps int32 accumulators)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.ascontiguousarray(calib, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.as_tensor(calib[:1]),), str(fp32_path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "b"}, "logits": {0: "b"}},
                          opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"images": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm"]})


@pytest.fixture(scope="session")
def ort_quantize():
    """`export_and_quantize` (a fixture: test modules do not import conftest)."""
    pytest.importorskip("onnxruntime")
    return export_and_quantize


@pytest.fixture(scope="session")
def digits_qdq(digits, tmp_path_factory, ort_quantize):
    """Path of the bundled digits ViT quantized by quantize_static (32 calibration images)."""
    model, calib, _ = digits
    d = tmp_path_factory.mktemp("digits_qdq")
    ort_quantize(model, calib[:32], d / "fp32.onnx", d / "qdq.onnx")
    return d / "qdq.onnx"
