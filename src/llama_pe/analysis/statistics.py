"""The report's statistics, as pure functions of numbers: Student's t intervals, the paired t-test, Holm's
correction for a family of tests and the smallest difference a paired comparison could detect.

Nothing here knows of experiments, metrics or DVC; llama_pe.analysis.experiments applies it to the groups of runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05  # two-sided, for every verdict: after Holm's correction for the verdicts, before it for the power
POWER = 0.80  # the power at which the report states the smallest detectable difference


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the Student's t 95% interval of the mean (NaN below n = 2)."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    return mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def paired_t_p_value(differences: np.ndarray) -> float:
    """The two-sided p-value of a paired t-test that the mean difference is 0.

    NaN below 2 pairs, and when every difference is exactly 0 (the same values on both sides: nothing was
    tested); 0 when the differences are all one nonzero value (no spread, so no noise to explain them).
    """
    n = len(differences)
    if n < 2:
        return math.nan
    mean, std = float(np.mean(differences)), float(np.std(differences, ddof=1))
    if std == 0:
        return math.nan if mean == 0 else 0.0
    t = mean / (std / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the order given; a NaN (no test) stays NaN and out of the family.

    Holm (1979), "A simple sequentially rejective multiple test procedure": the i-th smallest of m p-values
    (i from 0) is multiplied by the m - i hypotheses still standing, and a larger p never gets a smaller adjusted
    value than a smaller one (the running maximum). Rejecting where the adjusted p < alpha controls the chance of
    any false verdict in the family at alpha.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return adjusted


def family_size(p_values: Sequence[float]) -> int:
    """How many tests a family holds: its p-values that are not NaN."""
    return int(np.count_nonzero(~np.isnan(np.asarray(p_values, dtype=float))))


def detectable_difference(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest mean paired difference that a two-sided paired t-test of n pairs, at level alpha, detects
    with the given power when the paired differences have standard deviation std (NaN below 2 pairs)."""
    if n < 2 or math.isnan(std):
        return math.nan
    return std / math.sqrt(n) * _noncentrality_for_power(n, alpha, power)


@cache
def _noncentrality_for_power(n: int, alpha: float, power: float) -> float:
    """The noncentrality at which the paired t-test of n pairs has the given power.

    Exact, from the noncentral t (not the normal approximation, which is far off at n = 3): with a true mean
    difference delta, the statistic mean / (std / sqrt n) is noncentral t with n - 1 degrees of freedom and
    noncentrality delta * sqrt(n) / std; the power is the chance that it falls beyond either critical value.
    """
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(noncentrality: float) -> float:
        # P(T < -critical) as the upper tail of the mirrored statistic: scipy's nct.cdf gives NaN far in the tail.
        rejected = stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality)
        return rejected - power

    upper = 2 * critical + 10.0
    while shortfall(upper) < 0:  # one degree of freedom has heavy tails: widen until the root is bracketed
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10))
