"""Pareto front properties (hypothesis): nothing on the front is dominated,
everything off it is dominated by a front point, and the order is by cost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reports.pareto import dominates, pareto_front

# few distinct values so that ties (equal accuracy and/or cost) are common
_value = st.one_of(st.sampled_from([0.0, 1.0, 2.5, 50.0, 99.0]), st.floats(0, 100, allow_nan=False))
_points = st.lists(st.tuples(_value, _value), max_size=40)


@given(_points)
def test_front_is_exactly_the_non_dominated_set(points):
    acc, cost = [p[0] for p in points], [p[1] for p in points]
    front = pareto_front(acc, cost)
    assert len(set(front)) == len(front)
    for i in front:
        assert not any(dominates(points[j], points[i]) for j in range(len(points)))
    for i in set(range(len(points))) - set(front):
        assert any(dominates(points[j], points[i]) for j in front)


@given(_points)
def test_front_is_sorted_by_cost_and_accuracy_rises(points):
    acc, cost = [p[0] for p in points], [p[1] for p in points]
    front = pareto_front(acc, cost)
    assert [cost[i] for i in front] == sorted(cost[i] for i in front)
    assert [acc[i] for i in front] == sorted(acc[i] for i in front)
    if points:
        assert max(acc) in [acc[i] for i in front] and min(cost) in [cost[i] for i in front]


def test_known_front_with_ties():
    acc = [99.0, 99.0, 98.5, 97.0, 99.0, 98.5]
    cost = [0.74, 0.42, 0.19, 0.19, 0.42, 0.30]
    # 1 and 4 tie exactly (both kept); 0 costs more than 1 at equal accuracy; 3 and 5 lose to 2
    assert pareto_front(acc, cost) == [2, 1, 4]


def test_dominance_is_strict():
    assert not dominates((1.0, 1.0), (1.0, 1.0))
    assert dominates((1.0, 1.0), (1.0, 2.0)) and dominates((2.0, 1.0), (1.0, 1.0))
    assert not dominates((2.0, 2.0), (1.0, 1.0))
