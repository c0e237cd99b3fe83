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
        t = t.detach().reshape(-1)
        v = t.numpy()                                 # sampled in the tensor's own dtype, then widened:
        # draws depend on the size only and widening is exact; max |x| as max(max, -min, 0) in one
        # multi-threaded pass (torch.aminmax; a NaN propagates as in numpy's max)
        m = 0.0
        if v.size:
            lo, hi = (float(b) for b in torch.aminmax(t))
            m = max(hi, -lo, 0.0) if lo == lo and hi == hi else np.nan
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


