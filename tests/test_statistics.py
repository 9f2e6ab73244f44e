"""The report's statistics against independent implementations: statsmodels' Holm and power, scipy's paired t-test,
and a simulation of the power they promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from llama_pe.analysis.statistics import ALPHA, POWER, detectable_difference, holm, paired_t_p_value, t_interval

P_VALUES = [
    [0.01, 0.04, 0.03, 0.2],
    [0.001, 0.011, 0.012, 0.013, 0.5, 0.9],  # the running maximum: a later, larger p lifts none below it
    [0.04, 0.04, 0.04],  # ties
    [0.3, 0.6, 0.9],  # m × p above 1: clipped
    [0.0, 0.049],  # a difference without spread has p = 0
    [0.02],  # a family of one: unadjusted
]


@pytest.mark.parametrize("p_values", P_VALUES)
def test_holm_matches_statsmodels(p_values):
    _, expected, _, _ = multipletests(p_values, alpha=ALPHA, method="holm")
    assert holm(p_values) == pytest.approx(expected, abs=1e-12)


def test_holm_keeps_the_order_given_and_leaves_untested_members_out_of_the_family():
    p_values = [0.04, math.nan, 0.01, 0.03]
    _, expected, _, _ = multipletests([0.04, 0.01, 0.03], method="holm")  # a family of three, not four
    adjusted = holm(p_values)
    assert math.isnan(adjusted[1])
    assert adjusted[[0, 2, 3]] == pytest.approx(expected)
    assert holm([]).size == 0 and np.isnan(holm([math.nan])).all()


@pytest.mark.parametrize("differences", [[-0.2, -0.1, -0.15], [0.3, -0.1, 0.05, 0.2], [1.0, 2.0]])
def test_the_paired_p_value_is_scipys_paired_t_test(differences):
    base = np.array([5.0, 5.2, 5.1, 4.9])[: len(differences)]
    expected = stats.ttest_rel(base + np.array(differences), base).pvalue
    assert paired_t_p_value(np.array(differences)) == pytest.approx(expected, rel=1e-9)


def test_differences_without_spread():
    assert paired_t_p_value(np.array([-0.5, -0.5, -0.5])) == 0.0  # the same nonzero difference every seed
    assert math.isnan(paired_t_p_value(np.zeros(3)))  # the same values on both sides: nothing tested
    assert math.isnan(paired_t_p_value(np.array([0.1])))  # one pair: no test


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10, 30])
def test_the_detectable_difference_matches_statsmodels_power(n):
    effect = TTestPower().solve_power(nobs=n, alpha=ALPHA, power=POWER, alternative="two-sided")  # in units of std
    assert detectable_difference(0.05, n) == pytest.approx(0.05 * effect, rel=1e-6)


def test_a_difference_of_the_detectable_size_is_detected_four_times_in_five():
    # The promise itself, by simulation: paired differences ~ N(delta, 1), n = 3, the two-sided t-test at 0.05.
    n, std = 3, 1.0
    delta = detectable_difference(std, n)
    samples = np.random.default_rng(0).normal(delta, std, size=(200_000, n))
    mean, sd = samples.mean(axis=1), samples.std(axis=1, ddof=1)
    rejected = np.abs(mean / (sd / math.sqrt(n))) > stats.t.ppf(1 - ALPHA / 2, n - 1)
    assert rejected.mean() == pytest.approx(POWER, abs=0.005)
    assert math.isnan(detectable_difference(std, 1)) and detectable_difference(0.0, 3) == 0.0


def test_t_interval_by_hand():
    mean, std, half = t_interval(np.array([5.0, 5.2, 5.1]))
    assert (mean, std) == pytest.approx((5.1, 0.1)) and half == pytest.approx(4.302652729749462 * 0.1 / math.sqrt(3))
    assert math.isnan(t_interval(np.array([1.0]))[2])
