"""Confidence intervals for accuracies and paired tests between runs on the same images.

Two exact procedures, no normal approximation (tables here have 100-1000
images, where the Wald interval is visibly wrong near 0 and 1):

* `accuracy_interval` -- the Clopper-Pearson interval (Clopper & Pearson,
  Biometrika 1934): for ``k`` correct of ``n``, the ``(1-level)/2`` and
  ``(1+level)/2`` quantiles of ``Beta(k, n-k+1)`` and ``Beta(k+1, n-k)``
  (0 and 1 at the ends). Its coverage is at least ``level`` for every true
  accuracy.
* `mcnemar_exact` -- McNemar's test in its exact (binomial) form for two
  classifiers on the same images (McNemar, Psychometrika 1947; exact form as
  in Fagerland et al., BMC Med. Res. Methodol. 2013): only the discordant
  images count, ``b`` = A right / B wrong and ``c`` = A wrong / B right;
  under H0 ``b ~ Binomial(b + c, 1/2)`` and the two-sided p-value is
  ``min(1, 2 * P[X <= min(b, c)])`` (1 when ``b + c = 0``).

Pure numpy/scipy on counts or boolean arrays, through ``scipy.special`` (the
Beta quantile is ``betaincinv``, the inverse regularised incomplete beta
function, which is what ``scipy.stats.beta.ppf`` evaluates; the binomial CDF is
``bdtr``): importing ``scipy.stats`` cost ~0.9 s of every ``simulate``; ``SIGNIFICANCE_LEVEL`` marks
a comparison significant when ``p < 0.05``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import bdtr, betaincinv

__all__ = ["SIGNIFICANCE_LEVEL", "Interval", "accuracy_interval", "clopper_pearson_upper", "Paired", "mcnemar_exact",
           "paired_test"]

SIGNIFICANCE_LEVEL = 0.05


@dataclass(frozen=True)
class Interval:
    """An accuracy ``k / n`` with its exact two-sided interval [low, high] at ``level``."""

    correct: int
    total: int
    low: float
    high: float
    level: float = 0.95

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                "ci_low": self.low, "ci_high": self.high, "ci_level": self.level,
                "ci_method": "clopper-pearson"}

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def accuracy_interval(correct: int, total: int, level: float = 0.95) -> Interval:
    """Clopper-Pearson interval of ``correct / total`` (see the module docstring)."""
    correct, total = int(correct), int(total)
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"accuracy_interval: expected 0 <= correct <= total and total > 0, got {correct}/{total}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"accuracy_interval: level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0
    low = 0.0 if correct == 0 else float(betaincinv(correct, total - correct + 1, tail))
    return Interval(correct, total, low, clopper_pearson_upper(correct, total, tail), level)


def clopper_pearson_upper(k: int, n: int, tail: float) -> float:
    """One-sided Clopper-Pearson upper bound of ``k / n`` at confidence ``1 - tail``:
    the ``1 - tail`` quantile of ``Beta(k + 1, n - k)`` (1 when ``k = n``)."""
    return 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - tail))


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test of A vs B on the same images."""

    a_only: int        # b: A right, B wrong
    b_only: int        # c: A wrong, B right
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE_LEVEL

    def as_dict(self) -> dict:
        return {"a_only_correct": self.a_only, "b_only_correct": self.b_only, "p_value": self.p_value,
                "significant": self.significant, "test": "mcnemar-exact"}


def mcnemar_exact(a_only: int, b_only: int) -> Paired:
    """Two-sided exact McNemar p-value from the discordant counts (see the module docstring)."""
    b, c = int(a_only), int(b_only)
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(bdtr(min(b, c), n, 0.5)))
    return Paired(b, c, p)


def paired_test(a_correct, b_correct) -> Paired:
    """`mcnemar_exact` from two boolean per-image correctness arrays of the same images (same order)."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test: expected two 1-D arrays of one length, got {a.shape} and {b.shape}")
    return mcnemar_exact(int(np.sum(a & ~b)), int(np.sum(~a & b)))
