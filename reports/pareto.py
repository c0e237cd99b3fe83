"""Pareto front of design points: maximise accuracy, minimise a cost.

A point ``p`` *dominates* ``q`` when it is at least as accurate and at most as
costly, and strictly better in one of the two (the usual weak-dominance
definition, e.g. Deb, *Multi-objective optimization using evolutionary
algorithms*, 2001, def. 2.5). The front is the set of non-dominated points;
points with identical (accuracy, cost) are all on the front or all off it.

Pure functions over plain floats: no plotting, no file access.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["dominates", "pareto_front"]


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when point ``a = (accuracy, cost)`` dominates ``b``."""
    acc_a, cost_a = a
    acc_b, cost_b = b
    return acc_a >= acc_b and cost_a <= cost_b and (acc_a > acc_b or cost_a < cost_b)


def pareto_front(accuracy: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points, ordered by increasing cost.

    Sweep in order of (cost ascending, accuracy descending): a point is on the
    front iff it is strictly more accurate than every cheaper point seen so
    far, or it ties the best (accuracy, cost) pair exactly. O(n log n).
    """
    if len(accuracy) != len(cost):
        raise ValueError(f"accuracy has {len(accuracy)} values, cost {len(cost)}")
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    front: list[int] = []
    best: tuple[float, float] | None = None     # (accuracy, cost) of the last point kept
    for i in order:
        point = (accuracy[i], cost[i])
        if best is None or point[0] > best[0] or point == best:
            front.append(i)
            best = point
    return front
