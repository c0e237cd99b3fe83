"""The fixed-point ScalePredictor kernel over a batch (numba).

`predict_log2` runs the predictor of `simulator.scale_predictor` (sorted
|codes| -> order statistic -> `normalise_statistic` -> `horner_log2`) in a
numba kernel over a batch of source codes; the integer graph's predicted
quantizers (`simulator.predicted_graph`) turn its Q15 log2 ratios into
per-image multipliers. The torch twin is `reference.fakequant_predicted.predict_log2`.
"""

from __future__ import annotations

import numpy as np

from simulator.jit import horner_log2, kernel, normalise_statistic, statistic_rank

__all__ = ["predict_log2"]


@kernel
def _predict(codes, permille, center, norm_shift, coeffs, stats, out):
    b, n = codes.shape
    rank = statistic_rank(np.int64(n), permille)
    for i in range(b):
        a = np.abs(codes[i].astype(np.int64))
        a.sort()
        s = a[rank]
        stats[i] = s
        x = normalise_statistic(s, center, norm_shift)
        for j in range(coeffs.shape[0]):
            out[i, j] = horner_log2(x, coeffs[j, 0], coeffs[j, 1], coeffs[j, 2], coeffs[j, 3])


def predict_log2(x0_codes: np.ndarray, sp) -> tuple[np.ndarray, np.ndarray]:
    """(statistic [B], predicted log2 ratios [B, len(sp.coeffs)] in Q15) of a batch of codes [B, ...];
    ``sp`` has ``permille``, ``center``, ``norm_shift`` and int64 ``coeffs [n, 4]``
    (`simulator.qgraph.PredictedScale`)."""
    c = np.ascontiguousarray(x0_codes.reshape(len(x0_codes), -1))
    stats = np.empty(len(c), dtype=np.int64)
    out = np.empty((len(c), len(sp.coeffs)), dtype=np.int64)
    _predict(c, np.int64(sp.permille), np.int64(sp.center), np.int64(sp.norm_shift),
             np.ascontiguousarray(sp.coeffs, dtype=np.int64), stats, out)
    return stats, out
