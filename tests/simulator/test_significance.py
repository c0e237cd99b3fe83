"""Exact intervals and McNemar's exact test (`simulator.significance`), against closed forms."""

from fractions import Fraction
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import binom

from simulator.significance import accuracy_interval, mcnemar_exact, paired_test


@st.composite
def counts(draw, max_n=400):
    n = draw(st.integers(1, max_n))
    return draw(st.integers(0, n)), n


@given(counts())
def test_interval_brackets_the_estimate_and_mirrors(kn):
    k, n = kn
    ci = accuracy_interval(k, n)
    assert 0.0 <= ci.low <= k / n <= ci.high <= 1.0
    mirror = accuracy_interval(n - k, n)
    assert abs(ci.low - (1 - mirror.high)) < 1e-9 and abs(ci.high - (1 - mirror.low)) < 1e-9


@given(st.integers(1, 300), st.sampled_from([0.9, 0.95, 0.99]))
def test_interval_ends_have_closed_forms(n, level):
    tail = (1 - level) / 2
    assert abs(accuracy_interval(0, n, level).high - (1 - tail ** (1 / n))) < 1e-9
    assert abs(accuracy_interval(n, n, level).low - tail ** (1 / n)) < 1e-9


@given(st.integers(1, 60), st.floats(0.01, 0.99))
@settings(max_examples=40)
def test_interval_coverage_is_at_least_the_level(n, p):
    """Clopper-Pearson is conservative: P_p[p in CI(K)] >= 0.95 for K ~ Binomial(n, p), summed exactly."""
    covered = sum(binom.pmf(k, n, p) for k in range(n + 1)
                  if accuracy_interval(k, n).low <= p <= accuracy_interval(k, n).high)
    assert covered >= 0.95 - 1e-9


@given(st.integers(0, 200), st.integers(0, 200))
def test_mcnemar_matches_the_binomial_sum(b, c):
    n = b + c
    expected = 1.0 if n == 0 else float(min(1, 2 * Fraction(sum(comb(n, i) for i in range(min(b, c) + 1)), 2 ** n)))
    got = mcnemar_exact(b, c)
    assert abs(got.p_value - expected) < 1e-9
    assert got.p_value == mcnemar_exact(c, b).p_value
    assert got.significant == (got.p_value < 0.05)


def test_mcnemar_known_cases():
    assert mcnemar_exact(5, 5).p_value == 1.0
    assert not mcnemar_exact(0, 5).significant          # 2 / 32 = 0.0625
    assert mcnemar_exact(0, 6).significant              # 2 / 64 = 0.03125
    assert abs(mcnemar_exact(0, 6).p_value - 2 / 64) < 1e-12


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_paired_test_counts_only_discordant_images(pairs):
    a, b = np.array(pairs).T
    t = paired_test(a, b)
    assert t.a_only == int(np.sum(a & ~b)) and t.b_only == int(np.sum(~a & b))


@pytest.mark.parametrize("k,n", [(-1, 5), (6, 5), (0, 0)])
def test_interval_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError):
        accuracy_interval(k, n)


def test_summary_record_has_an_interval_per_executor_and_the_paired_test():
    from simulator.summary import significance_record

    rng = np.random.default_rng(0)
    correct = {k: rng.random(50) < p for k, p in (("fp32", 0.9), ("fq_int", 0.6), ("fq_float", 0.7), ("sim", 0.6))}
    rec = significance_record(correct)
    for key, name in (("fp32", "fp32"), ("fq_int", "fakequant_integer"), ("sim", "simulator")):
        ci = rec["top1_ci"][name]
        assert ci["correct"] == int(correct[key].sum()) and ci["total"] == 50
        assert ci["ci_low"] <= ci["accuracy"] <= ci["ci_high"]
    m = rec["simulator_vs_fp32"]
    assert (m["a_only_correct"], m["b_only_correct"]) == (int(np.sum(correct["sim"] & ~correct["fp32"])),
                                                          int(np.sum(~correct["sim"] & correct["fp32"])))
    assert m["p_value"] == paired_test(correct["sim"], correct["fp32"]).p_value
