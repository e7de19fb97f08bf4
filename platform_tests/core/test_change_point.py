"""The change-point rule on known series: one step to worse in the mean, NaN skipped, nothing else."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlplatform.core.change_point import ChangePoint, detect_change


def days(n: int, start: str = "2026-01-05") -> list[pd.Timestamp]:
    return list(pd.date_range(start, periods=n, freq="D"))


def stepped(n_before: int, n_after: int, before: float, after: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = np.r_[np.full(n_before, before), np.full(n_after, after)]
    return levels + rng.normal(scale=noise, size=levels.size)


def test_a_noisy_step_up_of_an_error_is_found_where_it_happened() -> None:
    times, values = days(30), stepped(18, 12, before=50.0, after=60.0, noise=2.0, seed=1)
    found = detect_change(times, values, higher_is_better=False)
    assert found is not None
    assert found.at == times[18] and (found.n_before, found.n_after) == (18, 12)
    assert found.before == pytest.approx(values[:18].mean())
    assert found.after == pytest.approx(values[18:].mean())
    # The statistic is Welch's t, positive for worse; p is one-sided, times the 25 candidate splits.
    welch = stats.ttest_ind(values[18:], values[:18], equal_var=False, alternative="greater")
    assert found.statistic == pytest.approx(welch.statistic)
    assert found.p_value == pytest.approx(min(1.0, welch.pvalue * (30 - 2 * 3 + 1)))
    assert "2026-01-23" in found.describe() and "Welch t" in found.describe()


def test_a_clean_step_without_noise_is_found() -> None:
    times = days(8)
    found = detect_change(times, [0.8] * 4 + [0.7] * 4, higher_is_better=True)
    assert found == ChangePoint(times[4], 0.8, 0.7, math.inf, 4, 4, 0.0)


def test_a_step_to_better_is_no_change_to_retrain_from() -> None:
    assert detect_change(days(20), stepped(10, 10, 60.0, 50.0, 1.0, seed=2), higher_is_better=False) is None
    assert detect_change(days(20), stepped(10, 10, 0.70, 0.80, 0.01, seed=2), higher_is_better=True) is None
    # The same ROC AUC series read the other way round is a drop.
    assert detect_change(days(20), stepped(10, 10, 0.80, 0.70, 0.01, seed=2), higher_is_better=True)


def noise_alarms(n_series: int, **rule: float) -> int:
    return sum(
        detect_change(days(30), 10 + np.random.default_rng(seed).normal(size=30), False, **rule) is not None
        for seed in range(n_series)
    )


def test_noise_without_a_step_raises_few_alarms() -> None:
    # The significance test alone (no size floor) alarms on about alpha of pure noise series (16 and
    # 9 of 400 here); the best-of-25-splits t without the Bonferroni correction alarms on 92.
    assert noise_alarms(400, min_relative_shift=0.0) <= 0.06 * 400
    assert noise_alarms(400, min_relative_shift=0.0, alpha=0.01) <= 0.03 * 400


def test_a_significant_but_negligible_step_is_ignored() -> None:
    values = stepped(20, 20, before=100.0, after=101.0, noise=0.01, seed=3)  # 1% worse, very significant
    assert detect_change(days(40), values, higher_is_better=False) is None
    assert detect_change(days(40), values, higher_is_better=False, min_relative_shift=0.005) is not None


def test_too_short_a_series_has_no_change() -> None:
    assert detect_change(days(5), [1.0, 1.0, 1.0, 9.0, 9.0], higher_is_better=False) is None
    assert detect_change(days(4), [1.0, 1.0, 9.0, 9.0], higher_is_better=False, min_segment=2) is not None
    assert detect_change([], [], higher_is_better=False) is None
    with pytest.raises(ValueError, match="min_segment"):
        detect_change(days(4), [1.0, 1.0, 9.0, 9.0], higher_is_better=False, min_segment=1)
    with pytest.raises(ValueError, match="3 times but 2 values"):
        detect_change(days(3), [1.0, 2.0], higher_is_better=False)


def test_nan_values_are_skipped_and_not_counted() -> None:
    times = days(12)
    values = [1.0, np.nan, 1.1, 0.9, 1.0, 1.05, np.nan, np.nan, 2.0, 2.1, 1.9, 2.0]
    found = detect_change(times, values, higher_is_better=False)
    assert found is not None
    assert found.at == times[8] and (found.n_before, found.n_after) == (5, 4)
    assert found.before == pytest.approx(np.nanmean(values[:8])) and found.after == pytest.approx(2.0)
    # NaNs leave too few values: no change.
    assert detect_change(times, [np.nan] * 7 + [1.0, 1.0, 1.0, 5.0, 5.0], higher_is_better=False) is None


def test_the_series_is_read_in_time_order() -> None:
    times, values = days(10), [1.0] * 5 + [3.0] * 5
    order = np.random.default_rng(4).permutation(10)
    found = detect_change([str(times[i]) for i in order], [values[i] for i in order], higher_is_better=False)
    assert found is not None and found.at == times[5]
