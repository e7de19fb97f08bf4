"""KS test and Wasserstein distance of new values against a reference kept as 101 quantiles.

The profile (core.profile) keeps the reference's quantiles at 0%, 1%, ..., 100% instead of its rows,
so a drift report never rescans the training data. How close that comes to the full-data tests:

* KS: for a column with at most 64 distinct values (counts, flags) the profile keeps each value's
  share and D is exact, as ``ks_2samp`` on the full data would give. Otherwise the reference CDF is
  taken as piecewise linear through (q_k, k/100). Between knots it is off from the reference's
  ECDF by at most one 1% step, so D is within about 0.01 of ``ks_2samp`` on the full data – far
  below the effect floor. The p-value uses Smirnov's asymptotic distribution with
  n_eff = n_ref·n_cur / (n_ref + n_cur): ``scipy.stats.distributions.kstwo.sf(D, round(n_eff))``,
  exactly what ``scipy.stats.ks_2samp(method="asymp")`` does. Above n_eff = 10,000 (where kstwo.sf
  takes up to a second a call) it is Kolmogorov's limit with Stephens' correction,
  ``kstwobign.sf(D·(√n + 0.12 + 0.11/√n))``: within 1% of kstwo.sf wherever p > 1e-10.
* Wasserstein-1: integral of |Q_ref(u) - Q_cur(u)| over u in [0, 1] between the two piecewise-linear
  quantile functions through the 101 quantiles, held flat below 1% and above 99% (the min and max are
  too noisy); within a few % of ``scipy.stats.wasserstein_distance`` for light tails, ~15% for heavy
  ones. Divided by the reference IQR (robust to outliers, unlike the std), falling back to the std of
  the quantile function, then to 1, when the IQR is 0. Reported, not decisive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import integrate, stats

from mlplatform.core.profile import numeric_values

# Above this effective sample size the KS p-value uses the asymptotic distribution (see ks_pvalue).
_EXACT_KS_MAX_N = 10_000


class DriftTestResult(NamedTuple):
    statistic: float
    p_value: float


def ks_statistic_vs_quantiles(ref_quantiles: Sequence[float], values: Iterable[Any]) -> float:
    """Two-sample KS statistic D against the reference CDF rebuilt from its quantiles (see module doc)."""
    return ks_statistic_sorted(np.asarray(ref_quantiles, dtype=float), present_sorted(values))


def ks_statistic_sorted(knots: np.ndarray, current: np.ndarray) -> float:
    """`current`: sorted, NaN-free."""
    if knots.size < 2 or current.size == 0:
        return float("nan")
    probabilities = np.linspace(0.0, 1.0, knots.size)
    # Both CDFs are monotone and the ECDF is flat between points, so the largest gap sits at a
    # knot or a current value, approached from the left or from the right.
    gaps = [
        np.abs(
            piecewise_linear_cdf(knots, knots, probabilities, side)
            - np.searchsorted(current, knots, side) / current.size
        ).max()
        for side in ("left", "right")
    ]
    # At the current values the ECDF's left and right limits are where each run of equal values
    # starts and ends in the sorted array: no search over a million values needed.
    starts = np.flatnonzero(np.concatenate([[True], current[1:] != current[:-1]]))
    ends = np.append(starts[1:], current.size)
    distinct = current[starts]
    gaps.append(
        np.abs(piecewise_linear_cdf(distinct, knots, probabilities, "left") - starts / current.size).max()
    )
    gaps.append(
        np.abs(piecewise_linear_cdf(distinct, knots, probabilities, "right") - ends / current.size).max()
    )
    return float(max(gaps))


def ks_statistic_exact(values: np.ndarray, shares: np.ndarray, current: np.ndarray) -> float:
    """D between the reference step CDF (distinct `values` with `shares`) and the ECDF of sorted
    `current`. Both are right-continuous steps, so the largest gap is at one of their jump points."""
    if current.size == 0:
        return float("nan")
    points = np.union1d(values, current)
    reference_cdf = np.concatenate([[0.0], np.cumsum(shares)])[np.searchsorted(values, points, "right")]
    current_cdf = np.searchsorted(current, points, "right") / current.size
    return float(np.abs(reference_cdf - current_cdf).max())


def ks_pvalue(statistic: float, n_ref: int, n_cur: int) -> float:
    """Asymptotic two-sided two-sample KS p-value, as scipy.stats.ks_2samp(method="asymp")."""
    if not np.isfinite(statistic) or n_ref <= 0 or n_cur <= 0:
        return float("nan")
    n_eff = n_ref * n_cur / (n_ref + n_cur)
    if n_eff > _EXACT_KS_MAX_N:
        # kstwo.sf takes up to a second per call at n ~ 1e5-1e6 (1.3 s of a 3 s report at 1M rows);
        # Kolmogorov's limit with Stephens' small-sample correction is within 1% there.
        root = np.sqrt(n_eff)
        return float(np.clip(stats.kstwobign.sf(statistic * (root + 0.12 + 0.11 / root)), 0.0, 1.0))
    return float(np.clip(stats.distributions.kstwo.sf(statistic, max(1.0, np.round(n_eff))), 0.0, 1.0))


def ks_test_vs_quantiles(
    ref_quantiles: Sequence[float], ref_count: int, values: Iterable[Any]
) -> DriftTestResult:
    current = present_sorted(values)
    statistic = ks_statistic_sorted(np.asarray(ref_quantiles, dtype=float), current)
    return DriftTestResult(statistic, ks_pvalue(statistic, ref_count, current.size))


def wasserstein_vs_quantiles(
    ref_quantiles: Sequence[float], values: Iterable[Any], normalise: bool = True
) -> float:
    """Wasserstein-1 distance between quantile-function approximations, divided by the reference IQR."""
    return wasserstein_sorted(np.asarray(ref_quantiles, dtype=float), present_sorted(values), normalise)


def wasserstein_sorted(knots: np.ndarray, current: np.ndarray, normalise: bool = True) -> float:
    """`current`: sorted, NaN-free."""
    if knots.size < 2 or current.size == 0:
        return float("nan")
    return wasserstein_from_quantiles(
        knots, np.quantile(current, np.linspace(0.0, 1.0, knots.size)), normalise
    )


def wasserstein_from_quantiles(knots: np.ndarray, current: np.ndarray, normalise: bool = True) -> float:
    """The distance of `wasserstein_sorted` from the current values' quantiles at the knots' probabilities."""
    probabilities = np.linspace(0.0, 1.0, knots.size)
    difference = knots - current
    if difference.size > 3:
        # Hold the outer segments flat at the 1st/99th percentile: linear out to the sample min/max lets
        # one extreme value dominate (5x too large on lognormal data); flat stays within ~15%.
        difference[0], difference[-1] = difference[1], difference[-2]
    left, right, width = difference[:-1], difference[1:], np.diff(probabilities)
    same_sign = left * right >= 0
    # Exact integral of |linear|: a trapezoid, or two triangles where the line crosses zero.
    crossing = (left**2 + right**2) / np.where(same_sign, 1.0, np.abs(left) + np.abs(right)) / 2
    distance = float(np.sum(np.where(same_sign, (np.abs(left) + np.abs(right)) / 2, crossing) * width))
    return distance / _quantile_scale(knots, probabilities) if normalise else distance


def piecewise_linear_cdf(
    points: np.ndarray, knots: np.ndarray, probabilities: np.ndarray, side: str
) -> np.ndarray:
    """CDF through (knots, probabilities): side="right" gives F(x), side="left" the limit F(x-).
    Tied knots (discrete data) make a jump, as in an ECDF."""
    below = np.searchsorted(knots, points, side=side) - 1  # last knot <= x ("right") or < x ("left")
    cdf = np.where(below >= knots.size - 1, 1.0, 0.0)
    inside = (below >= 0) & (below < knots.size - 1)
    j = below[inside]
    # Strictly knots[j] < knots[j+1] here, by the choice of `side`, so no division by zero.
    fraction = (points[inside] - knots[j]) / (knots[j + 1] - knots[j])
    cdf[inside] = probabilities[j] + (probabilities[j + 1] - probabilities[j]) * fraction
    return cdf


def _quantile_scale(knots: np.ndarray, probabilities: np.ndarray) -> float:
    iqr = float(np.interp(0.75, probabilities, knots) - np.interp(0.25, probabilities, knots))
    if iqr > 0:
        return iqr
    mean = integrate.trapezoid(knots, probabilities)
    std = float(np.sqrt(integrate.trapezoid((knots - mean) ** 2, probabilities)))
    return std if std > 0 else 1.0


def present_sorted(values: Iterable[Any]) -> np.ndarray:
    numbers = numeric_values(values)
    return np.sort(numbers[~np.isnan(numbers)])
