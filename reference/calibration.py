"""Collect calibration statistics of every boundary tensor of the float model.

Each boundary keeps its exact max |x| and a seeded random subsample of its
values (at most ``max_samples``), which the percentile and MSE calibrators
search over; the max is always kept so minmax stays exact.
"""

from __future__ import annotations

import numpy as np
import torch


__all__ = ["BoundaryStats"]


class BoundaryStats:
    """Running max |x| and a bounded sample of one tensor's values."""

    def __init__(self, max_samples: int, rng: np.random.Generator):
        self.max_samples = max_samples
        self.rng = rng
        self.amax = 0.0
        self.chunks: list[np.ndarray] = []
        self.seen = 0

    def add(self, t: torch.Tensor) -> None:
        v = t.detach().reshape(-1).numpy()            # sampled in the tensor's own dtype, then widened:
        # draws depend on the size only and widening is exact; max |x| as max(max, -min): no |v| copy
        m = max(float(v.max(initial=0.0)), -float(v.min(initial=0.0))) if v.size else 0.0
        self.amax = max(self.amax, m if np.isfinite(m) else np.inf)   # NaN kept as inf, not lost by max()
        self.seen += v.size
        take = min(v.size, self.max_samples)
        self.chunks.append((v if take == v.size else self.rng.choice(v, size=take, replace=False)).astype(np.float64))

    def values(self) -> np.ndarray:
        v = np.concatenate(self.chunks) if self.chunks else np.zeros(1)
        if v.size > self.max_samples:
            v = self.rng.choice(v, size=self.max_samples, replace=False)
        i = int(np.argmax(np.abs(v)))
        v[i] = np.sign(v[i]) * self.amax if v[i] != 0 else self.amax   # keep the true extreme
        return v


