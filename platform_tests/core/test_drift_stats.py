"""Drift statistics checked against scipy on the same arrays, hand-computed PSI, and the drift verdicts.

Tolerances, from the 101-quantile reference summary: KS statistic within 0.015 of ks_2samp on the full
reference; Wasserstein within 3% (normal) / 5% (exponential) of scipy.stats.wasserstein_distance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlplatform.core.drift import (
    DriftThresholds,
    categorical_psi,
    chi_square_test,
    dataset_verdict,
    feature_drift,
    jensen_shannon,
    ks_pvalue,
    ks_statistic_vs_quantiles,
    ks_test_vs_quantiles,
    numeric_psi,
    performance_drop,
    psi,
    wasserstein_vs_quantiles,
)
from mlplatform.core.profile import build_profile
from mlplatform.specs.model import DriftSpec

PERCENTS = np.linspace(0.0, 1.0, 101)
# PSI of a 50/50 split becoming 25/75, by hand: -0.25·ln(0.5) + 0.25·ln(1.5).
PSI_50_50_TO_25_75 = 0.25 * math.log(2.0) + 0.25 * math.log(1.5)


def _frame(
    rng: np.random.Generator, n: int, shift: float = 0.0, weights: list[float] | None = None
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "temperature": rng.normal(15.0 + shift * 8.0, 8.0, n),
            "humidity": rng.beta(5, 2, n),
            "weather": rng.choice(["clear", "mist", "rain", "snow"], n, p=weights or [0.6, 0.25, 0.1, 0.05]),
        }
    )


@pytest.fixture(scope="module")
def reference_profile():
    return build_profile(_frame(np.random.default_rng(1), 20_000), ["temperature", "humidity"], ["weather"])


def test_psi_matches_hand_computed_values() -> None:
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(PSI_50_50_TO_25_75, rel=1e-12)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # An empty bucket is clipped at eps: (0.5 - 1)·ln(0.5) + (0.5 - 1e-4)·ln(0.5 / 1e-4).
    by_hand = -0.5 * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="matching buckets"):
        psi([0.5, 0.5], [1.0])


def test_numeric_psi_uses_reference_bins_and_a_null_bucket() -> None:
    entry = build_profile(pd.DataFrame({"x": np.arange(100.0)}), ["x"], [], n_bins=2).numeric["x"]
    assert entry.bin_edges == (-np.inf, 50.0, np.inf)
    assert numeric_psi(entry, [10.0] * 25 + [90.0] * 75) == pytest.approx(PSI_50_50_TO_25_75, rel=1e-12)
    # A quarter of the rows turn null: buckets 0.5/0.5/0 become 0.5/0.25/0.25.
    by_hand = -0.25 * math.log(0.5) + (0.25 - 1e-4) * math.log(0.25 / 1e-4)
    assert numeric_psi(entry, [10.0] * 50 + [90.0] * 25 + [None] * 25) == pytest.approx(by_hand, rel=1e-12)
    assert math.isnan(numeric_psi(entry, []))


def test_categorical_psi_pools_unseen_categories_into_other() -> None:
    entry = build_profile(pd.DataFrame({"g": ["a", "b"] * 50}), [], ["g"]).categorical["g"]
    assert categorical_psi(entry, ["a"] * 25 + ["b"] * 75) == pytest.approx(PSI_50_50_TO_25_75, rel=1e-12)
    # "c" is new: 0.5/0.5/0 (a/b/__other__) becomes 0.5/0.25/0.25, the same as the null case above.
    by_hand = -0.25 * math.log(0.5) + (0.25 - 1e-4) * math.log(0.25 / 1e-4)
    assert categorical_psi(entry, ["a"] * 50 + ["b"] * 25 + ["c"] * 25) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize(
    ("make_reference", "make_current"),
    [
        (lambda rng: rng.normal(0, 1, 8_000), lambda rng: rng.normal(0, 1, 3_000)),
        (lambda rng: rng.normal(0, 1, 8_000), lambda rng: rng.normal(0.3, 1.5, 3_000)),
        (lambda rng: rng.exponential(1, 8_000), lambda rng: rng.exponential(1.4, 3_000)),
        (lambda rng: rng.poisson(3, 8_000).astype(float), lambda rng: rng.poisson(3.5, 3_000).astype(float)),
    ],
    ids=["same-normal", "shifted-normal", "exponential", "poisson"],
)
def test_ks_from_quantiles_is_close_to_ks_2samp_on_the_full_reference(make_reference, make_current) -> None:
    rng = np.random.default_rng(11)
    reference, current = make_reference(rng), make_current(rng)
    exact = stats.ks_2samp(reference, current)
    approximate = ks_statistic_vs_quantiles(np.quantile(reference, PERCENTS), current)
    assert approximate == pytest.approx(exact.statistic, abs=0.015)
    # With every reference value as a knot the approximation is within one 1/n step.
    assert ks_statistic_vs_quantiles(np.sort(reference), current) == pytest.approx(exact.statistic, abs=2e-3)


def test_ks_pvalue_is_scipy_asymptotic_pvalue() -> None:
    rng = np.random.default_rng(5)
    reference, current = rng.normal(0, 1, 5_000), rng.normal(0.05, 1, 1_200)
    exact = stats.ks_2samp(reference, current, method="asymp")
    assert ks_pvalue(exact.statistic, 5_000, 1_200) == pytest.approx(exact.pvalue, rel=1e-9)
    result = ks_test_vs_quantiles(np.quantile(reference, PERCENTS), 5_000, current)
    assert result.p_value == pytest.approx(ks_pvalue(result.statistic, 5_000, 1_200))
    assert math.isnan(ks_pvalue(float("nan"), 5_000, 1_200))


def test_ks_sees_the_gap_just_below_tied_current_values() -> None:
    # Every current value is 0.8: the largest gap is F_ref(0.8-) - 0, reached from the left.
    reference = np.random.default_rng(9).uniform(0, 1, 5_000)
    statistic = ks_statistic_vs_quantiles(np.quantile(reference, PERCENTS), np.full(40, 0.8))
    assert statistic == pytest.approx(stats.ks_2samp(reference, np.full(40, 0.8)).statistic, abs=0.015)
    assert statistic == pytest.approx(0.8, abs=0.02)


def test_ks_supremum_is_searched_from_both_sides() -> None:
    # Uniform reference on [0, 1]; all current values at 0.8: the gap is 0.8, just left of 0.8.
    assert ks_statistic_vs_quantiles([0.0, 1.0], [0.8] * 40) == pytest.approx(0.8)
    assert ks_statistic_vs_quantiles([0.0, 1.0], [0.2] * 40) == pytest.approx(0.8)


def test_ks_detects_a_step_at_tied_reference_values() -> None:
    # Reference is 0 or 1; current all 1: the CDFs differ by the share of zeros at x = 0.
    reference = np.array([0.0] * 600 + [1.0] * 400)
    statistic = ks_statistic_vs_quantiles(np.quantile(reference, PERCENTS), np.ones(50))
    assert statistic == pytest.approx(stats.ks_2samp(reference, np.ones(50)).statistic, abs=0.015)


@pytest.mark.parametrize(
    ("make_reference", "make_current", "relative_tolerance"),
    [
        (lambda rng: rng.normal(0, 1, 10_000), lambda rng: rng.normal(0.5, 1.2, 4_000), 0.03),
        (lambda rng: rng.exponential(1, 10_000), lambda rng: rng.exponential(1.5, 4_000), 0.05),
        # Heavy tail: the outer 1% held flat keeps one extreme value from dominating.
        (lambda rng: rng.lognormal(0, 1, 10_000), lambda rng: rng.lognormal(0.2, 1, 4_000), 0.15),
    ],
    ids=["normal", "exponential", "lognormal"],
)
def test_wasserstein_from_quantiles_is_close_to_scipy(
    make_reference, make_current, relative_tolerance
) -> None:
    rng = np.random.default_rng(3)
    reference, current = make_reference(rng), make_current(rng)
    knots = np.quantile(reference, PERCENTS)
    raw = wasserstein_vs_quantiles(knots, current, normalise=False)
    assert raw == pytest.approx(stats.wasserstein_distance(reference, current), rel=relative_tolerance)
    iqr = np.quantile(reference, 0.75) - np.quantile(reference, 0.25)
    assert wasserstein_vs_quantiles(knots, current) == pytest.approx(raw / iqr, rel=1e-9)


def test_wasserstein_is_not_dominated_by_one_extreme_reference_value() -> None:
    rng = np.random.default_rng(8)
    reference, current = rng.normal(0, 1, 10_000), rng.normal(0, 1, 4_000)
    reference[0] = 1e4  # a linear last 1% segment out to it would add about 0.005 · 1e4 = 50
    assert wasserstein_vs_quantiles(np.quantile(reference, PERCENTS), current, normalise=False) < 0.05


def test_wasserstein_of_a_constant_reference_is_not_divided_by_zero() -> None:
    assert wasserstein_vs_quantiles([2.0] * 101, [3.0] * 10) == pytest.approx(1.0)


def test_jensen_shannon_is_squared_scipy_distance_in_bits() -> None:
    ref_freqs = {"a": 0.5, "b": 0.3, "c": 0.2}
    values = ["a"] * 20 + ["b"] * 50 + ["c"] * 20 + ["new"] * 10
    # Same buckets, in the same order: a, b, c, __other__.
    expected = jensenshannon([0.5, 0.3, 0.2, 0.0], [0.2, 0.5, 0.2, 0.1], base=2) ** 2
    assert jensen_shannon(ref_freqs, values) == pytest.approx(expected, rel=1e-9)
    assert jensen_shannon(ref_freqs, ["a"] * 5 + ["b"] * 3 + ["c"] * 2) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon({"a": 1.0}, ["b"] * 10) == pytest.approx(1.0)


def test_chi_square_is_a_homogeneity_test_on_reference_and_current_counts() -> None:
    ref_freqs = {"a": 0.5, "b": 0.3, "c": 0.2}
    values = ["a"] * 40 + ["b"] * 35 + ["c"] * 15 + ["new", "newer"] * 5 + [None] * 3
    result = chi_square_test(ref_freqs, 1_000, values)
    # New labels and nulls (no __null__ key here) are pooled into __other__, which the reference lacks.
    table = np.array([[500, 300, 200, 0], [40, 35, 15, 13]])
    expected = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_chi_square_on_two_categories_has_no_continuity_correction() -> None:
    result = chi_square_test({"yes": 0.4, "no": 0.6}, 500, ["yes"] * 30 + ["no"] * 70)
    expected = stats.chi2_contingency(np.array([[200, 300], [30, 70]]), correction=False)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-9)


def test_chi_square_tends_to_scipy_chisquare_for_a_huge_reference() -> None:
    ref_freqs = {"a": 0.5, "b": 0.3, "c": 0.2}
    values = ["a"] * 45 + ["b"] * 35 + ["c"] * 20
    result = chi_square_test(ref_freqs, 10**9, values)
    goodness_of_fit = stats.chisquare([45, 35, 20], [50, 30, 20])
    assert result.statistic == pytest.approx(goodness_of_fit.statistic, rel=1e-6)
    assert result.p_value == pytest.approx(goodness_of_fit.pvalue, rel=1e-6)


def test_same_distribution_is_not_drifted(reference_profile) -> None:
    table = feature_drift(reference_profile, _frame(np.random.default_rng(2), 5_000), DriftThresholds())
    assert list(table["feature"]) == ["temperature", "humidity", "weather"]
    assert list(table["test"]) == ["ks", "ks", "chi2"]
    assert not table["drifted"].any(), table["reason"].tolist()
    assert (table["psi"] < 0.05).all()
    verdict = dataset_verdict(table, drifted_share_threshold=0.3)
    assert not verdict.drifted and verdict.n_drifted == 0 and verdict.reason.startswith("stable")


def test_shifted_distribution_is_drifted(reference_profile) -> None:
    current = _frame(np.random.default_rng(2), 5_000, shift=1.0, weights=[0.3, 0.3, 0.3, 0.1])
    table = feature_drift(reference_profile, current, DriftSpec()).set_index("feature")
    assert table.loc["temperature", "drifted"] and table.loc["weather", "drifted"]
    assert not table.loc["humidity", "drifted"]
    assert table.loc["temperature", "psi"] >= 0.2 and "psi" in table.loc["temperature", "reason"]
    assert table.loc["temperature", "wasserstein"] > 0.5 and table.loc["weather", "jensen_shannon"] > 0.02
    verdict = dataset_verdict(table.reset_index(), drifted_share_threshold=0.5)
    assert verdict.drifted and verdict.n_drifted == 2 and verdict.drifted_share == pytest.approx(2 / 3)
    assert verdict.drifted_features == ("temperature", "weather")


def test_a_significant_but_tiny_shift_in_a_huge_sample_is_not_drifted() -> None:
    rng = np.random.default_rng(4)
    profile = build_profile(pd.DataFrame({"x": rng.normal(0, 1, 100_000)}), ["x"], [])
    row = feature_drift(profile, pd.DataFrame({"x": rng.normal(0.05, 1, 100_000)}), DriftThresholds()).iloc[0]
    assert row["p_value"] < 1e-6 and row["effect_size"] < 0.1
    assert not row["drifted"]
    strict = DriftThresholds(min_ks_statistic=0.0)
    assert feature_drift(profile, pd.DataFrame({"x": rng.normal(0.05, 1, 100_000)}), strict).iloc[0][
        "drifted"
    ]


def test_a_jump_in_null_share_is_drift(reference_profile) -> None:
    current = _frame(np.random.default_rng(2), 2_000)
    current.loc[current.index[:600], "temperature"] = np.nan
    row = feature_drift(reference_profile, current, DriftThresholds()).set_index("feature").loc["temperature"]
    assert row["drifted"] and row["psi"] >= 0.2


def test_feature_drift_needs_every_profiled_column(reference_profile) -> None:
    with pytest.raises(KeyError, match="weather"):
        feature_drift(reference_profile, pd.DataFrame({"temperature": [1.0], "humidity": [0.5]}), DriftSpec())
    empty = feature_drift(reference_profile, _frame(np.random.default_rng(0), 0), DriftSpec())
    assert not empty["drifted"].any() and empty["reason"].str.startswith("no current rows").all()


def test_verdict_on_performance_drop() -> None:
    table = pd.DataFrame({"feature": ["a", "b", "c", "d"], "drifted": [True, False, False, False]})
    assert not dataset_verdict(table, 0.3).drifted  # 25% of features < 30%
    worse_rmse = {"metric": "rmse", "reference": 10.0, "current": 13.0}
    verdict = dataset_verdict(table, 0.3, worse_rmse, performance_drop_threshold=0.25)
    assert (
        verdict.drifted and verdict.performance_drop == pytest.approx(0.3) and "performance" in verdict.reason
    )
    better_rmse = {"metric": "rmse", "reference": 10.0, "current": 7.0}
    assert not dataset_verdict(table, 0.3, better_rmse, 0.25).drifted
    unchanged = {"metric": "rmse", "reference": 10.0, "current": 10.0}
    assert not dataset_verdict(table, 0.3, unchanged, performance_drop_threshold=0.0).drifted
    # ROC AUC: the share of the lift over random (0.5) lost, 0.2 of 0.3; at or below 0.5, of the value.
    assert performance_drop({"metric": "roc_auc", "reference": 0.8, "current": 0.6}) == pytest.approx(2 / 3)
    assert performance_drop({"metric": "roc_auc", "reference": 0.5, "current": 0.4}) == pytest.approx(0.2)
    assert performance_drop({"metric": "accuracy", "reference": 0.8, "current": 0.6}) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):  # one direction table: metrics.py
        performance_drop({"metric": "auc", "reference": 0.8, "current": 0.6})
    assert performance_drop({"reference": 0.8, "current": 0.6, "higher_is_better": False}) == pytest.approx(
        -0.25
    )
    assert dataset_verdict(table, 0.25).drifted  # share >= threshold
    no_labels_yet = {"metric": "rmse", "reference": 10.0, "current": None}
    assert dataset_verdict(table, 0.3, no_labels_yet, 0.25).performance_drop is None
