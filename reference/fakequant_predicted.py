"""The ScalePredictor in torch: the fake-quant twin of `simulator.predicted_scales.predict_log2`.

The predictor (sorted |codes| -> order statistic -> `normalise_statistic` ->
`horner_log2`, `simulator.scale_predictor`) vectorised over the batch with
the operator-only primitives of `reference.tensor_primitives`.
"""

from __future__ import annotations

import numpy as np
import torch

from reference.tensor_primitives import horner_log2, normalise_statistic, statistic_rank

__all__ = ["predict_log2"]


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def predict_log2(x0: torch.Tensor, sp) -> tuple[torch.Tensor, torch.Tensor]:
    """(statistic [B], predicted log2 ratios [B, len(sp.coeffs)], Q15) from codes [B, ...]."""
    a = x0.reshape(len(x0), -1).long().abs()      # codes may be narrow (int8: |-128| wraps)
    rank = statistic_rank(a.shape[1], sp.permille)
    stat = torch.sort(a, dim=1).values[:, rank]
    x = normalise_statistic(stat, sp.center, sp.norm_shift)[:, None]
    c = _t(sp.coeffs)
    return stat, horner_log2(x, c[:, 0], c[:, 1], c[:, 2], c[:, 3])
