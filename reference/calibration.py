"""Collect calibration statistics of every boundary tensor of the float model.

Each boundary keeps its exact max |x| and a seeded random subsample of its
values (at most ``max_samples``), which the percentile and MSE calibrators
search over; the max is always kept so minmax stays exact.
"""

from __future__ import annotations

import numpy as np
import torch

from reference.degenerate import check_boundary_ranges
from reference.vit_float import float_boundaries
from simulator.progress import track

__all__ = ["BoundaryStats", "collect_boundaries"]


class BoundaryStats:
    """Running max |x| and a bounded sample of one tensor's values."""

    def __init__(self, max_samples: int, rng: np.random.Generator):
        self.max_samples = max_samples
        self.rng = rng
        self.amax = 0.0
        self.chunks: list[np.ndarray] = []
        self.seen = 0

    def add(self, t: torch.Tensor) -> None:
        v = t.detach().double().reshape(-1).numpy()
        m = float(np.abs(v).max(initial=0.0))
        self.amax = max(self.amax, m if np.isfinite(m) else np.inf)   # NaN kept as inf, not lost by max()
        self.seen += v.size
        take = min(v.size, self.max_samples)
        self.chunks.append(v if take == v.size else self.rng.choice(v, size=take, replace=False))

    def values(self) -> np.ndarray:
        v = np.concatenate(self.chunks) if self.chunks else np.zeros(1)
        if v.size > self.max_samples:
            v = self.rng.choice(v, size=self.max_samples, replace=False)
        i = int(np.argmax(np.abs(v)))
        v[i] = np.sign(v[i]) * self.amax if v[i] != 0 else self.amax   # keep the true extreme
        return v


def collect_boundaries(model, images: np.ndarray, batch_size: int = 64,
                       max_samples: int = 1 << 16, seed: int = 0) -> dict[str, BoundaryStats]:
    """Run the float model over ``images`` and gather `BoundaryStats` per boundary."""
    rng = np.random.default_rng(seed)
    stats: dict[str, BoundaryStats] = {}
    batches = range(0, len(images), batch_size)
    for start in track(batches, f"calibrating on {len(images)} images", unit="batch"):
        x = torch.as_tensor(np.asarray(images[start:start + batch_size], dtype=np.float32))
        for name, t in float_boundaries(model, x).items():
            stats.setdefault(name, BoundaryStats(max_samples, rng)).add(t)
    check_boundary_ranges(stats, len(images))   # overflowing / all-zero layers: one line naming the layer
    return stats
