"""An onnxruntime CPU session for the QDQ commands and comparisons (docs/onnx.md), and the logit SQNR."""

from __future__ import annotations

import numpy as np

from simulator.errors import InputError

__all__ = ["ort_session", "logit_sqnr_db"]


def ort_session(model_bytes: bytes, optimize: bool = True, threads: int = 1):
    """An onnxruntime CPU session; ``optimize`` lets it fuse QDQ into its integer kernels (ORT_ENABLE_ALL)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("onnxruntime is not installed (pip install -e \".[onnx]\")") from None
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own exception types
        raise InputError(f"onnxruntime cannot load the model: {str(e).splitlines()[0][:300]}") from None


def logit_sqnr_db(x: np.ndarray, ref: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (x - ref)^2)``; inf when equal."""
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    err = float(((x - ref) ** 2).sum())
    return float("inf") if err == 0 else float(10 * np.log10(float((ref ** 2).sum()) / err))
