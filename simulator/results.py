"""What an executor's ``.run(images)`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.trace import Trace

__all__ = ["RunResult", "first_mismatch", "bit_exact_images"]


@dataclass
class RunResult:
    """Logits (dequantized logit codes), the codes of every tensor boundary
    (batch-first int arrays, empty when ``keep_codes=False``) and the trace."""

    logits: np.ndarray
    logit_codes: np.ndarray
    trace: Trace
    codes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logit_codes, axis=1)


def bit_exact_images(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
    """Bool per image: every boundary's codes equal in ``a`` and ``b``."""
    if set(a) != set(b):
        raise ValueError(f"boundaries differ: {sorted(set(a) ^ set(b))}")
    n = len(next(iter(a.values())))
    ok = np.ones(n, dtype=bool)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape:
            return np.zeros(n, dtype=bool)
        ok &= (x.reshape(n, -1) == y.reshape(n, -1)).all(axis=1)
    return ok


def first_mismatch(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """Describe the first differing boundary/index, or None when all equal."""
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape:
            return f"{k}: shape {x.shape} vs {y.shape}"
        diff = np.argwhere(x != y)
        if len(diff):
            idx = tuple(int(i) for i in diff[0])
            return f"{k}{list(idx)}: {x[idx]} vs {y[idx]}"
    return None
