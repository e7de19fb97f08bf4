"""Drift statistics: compare new data with a stored reference Profile, never the raw reference rows.

Decision rule, per feature: drifted when ``PSI >= psi_threshold`` OR
``(p_value < pvalue_threshold AND effect >= floor)``.

* Numeric: PSI on the reference decile bins + two-sample Kolmogorov–Smirnov test; the effect is the KS
  statistic D (largest gap between the two CDFs), floor ``min_ks_statistic`` = 0.1 (about a
  0.25-standard-deviation mean shift of a normal feature).
* Categorical: PSI on the category buckets + chi-square test of homogeneity; the effect is the total
  variation distance (share of rows that would have to change category), floor ``min_total_variation``
  = 0.1.

Why both: PSI is the industry yardstick (< 0.1 stable, 0.1–0.2 moderate, >= 0.2 major) and measures
the size of a shift whatever the sample size, but coarse bins can hide a shift inside a bin. A test
sees finer shifts, yet with large batches any tiny shift is significant, so a test only counts with an
effect above a floor. Caveat: PSI is biased upwards by about (buckets - 1) / n_current, so judge
batches of a few hundred rows or more (e.g. a rolling window, not one 24-row day).

Nulls are a bucket of their own for PSI and chi-square, so a change of the null share is drift too.
Unseen categories are pooled into "__other__". Every PSI clips shares at ``eps`` to keep ln finite.

How KS and Wasserstein are computed against the profile's 101 quantiles (exactly for columns with
few distinct values), and how close that is to the full-data tests: `core.quantile_tests`.
Jensen–Shannon is the divergence in bits, in [0, 1]; it equals
``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``. Reported, not decisive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import stats

from mlplatform.contracts import VerdictStatus
from mlplatform.core.drift_weights import weighted_drifted_share
from mlplatform.core.metrics import higher_is_better, no_skill_value
from mlplatform.core.profile import (
    NULL_KEY,
    OTHER_KEY,
    CategoricalProfile,
    FeatureProfile,
    NumericProfile,
    Profile,
    bin_counts,
    category_counts,
    numeric_values,
)
from mlplatform.core.quantile_tests import DriftTestResult as DriftTestResult
from mlplatform.core.quantile_tests import ks_pvalue as ks_pvalue
from mlplatform.core.quantile_tests import (
    ks_statistic_exact,
    ks_statistic_sorted,
    wasserstein_sorted,
)
from mlplatform.core.quantile_tests import ks_statistic_vs_quantiles as ks_statistic_vs_quantiles
from mlplatform.core.quantile_tests import ks_test_vs_quantiles as ks_test_vs_quantiles
from mlplatform.core.quantile_tests import wasserstein_vs_quantiles as wasserstein_vs_quantiles

DEFAULT_MIN_KS_STATISTIC = 0.1
DEFAULT_MIN_TOTAL_VARIATION = 0.1
FEATURE_TABLE_COLUMNS = [
    "feature",
    "kind",
    "n_current",
    "psi",
    "test",
    "statistic",
    "p_value",
    "effect_size",
    "wasserstein",
    "jensen_shannon",
    "drifted",
    "reason",
]


class ThresholdsLike(Protocol):
    """DriftSpec satisfies this; the two effect floors are optional attributes (see DriftThresholds)."""

    @property
    def psi_threshold(self) -> float: ...
    @property
    def pvalue_threshold(self) -> float: ...


@dataclass(frozen=True)
class DriftThresholds:
    psi_threshold: float = 0.2
    pvalue_threshold: float = 0.01
    min_ks_statistic: float = DEFAULT_MIN_KS_STATISTIC
    min_total_variation: float = DEFAULT_MIN_TOTAL_VARIATION


@dataclass(frozen=True)
class DriftVerdict:
    drifted: bool
    drifted_share: float
    n_drifted: int
    reason: str
    n_features: int = 0
    drifted_features: tuple[str, ...] = ()
    performance_drop: float | None = None
    # drifted or stable here; core.drift_windows makes it insufficient_data when too little was judged.
    status: VerdictStatus = VerdictStatus.STABLE


def psi(
    expected_props: Sequence[float] | np.ndarray,
    actual_props: Sequence[float] | np.ndarray,
    eps: float = 1e-4,
) -> float:
    """Population stability index: sum((a - e) * ln(a / e)), shares clipped at `eps` (not renormalised)."""
    expected = np.clip(np.asarray(expected_props, dtype=float), eps, None)
    actual = np.clip(np.asarray(actual_props, dtype=float), eps, None)
    if expected.shape != actual.shape:
        raise ValueError(f"PSI needs matching buckets, got {expected.shape} and {actual.shape}")
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def numeric_psi(profile_entry: NumericProfile, values: Iterable[Any]) -> float:
    """PSI of `values` on the reference bins, nulls as an extra bucket; NaN when there are no values."""
    numbers = numeric_values(values)
    present = numbers[~np.isnan(numbers)]
    return _numeric_psi(profile_entry, present, numbers.size)


def _numeric_psi(profile_entry: NumericProfile, present: np.ndarray, n_values: int) -> float:
    if n_values == 0:
        return float("nan")
    actual = np.append(bin_counts(profile_entry.bin_edges, present), n_values - present.size)
    return psi(profile_entry.distribution(), actual / n_values)


def categorical_psi(profile_entry: CategoricalProfile, values: Iterable[Any]) -> float:
    """PSI over the reference categories plus "__other__" and "__null__"; NaN when there are no values."""
    keys, expected = _aligned(profile_entry.distribution())
    return _categorical_psi(expected, _category_counts(keys, values))


def _categorical_psi(expected: np.ndarray, observed: np.ndarray) -> float:
    if observed.sum() == 0:
        return float("nan")
    return psi(expected, observed / observed.sum())


def chi_square_test(ref_freqs: Mapping[str, float], ref_count: int, values: Iterable[Any]) -> DriftTestResult:
    """Chi-square test of homogeneity on the 2 x k table (reference counts = ref_freqs · ref_count,
    current counts); unseen categories are pooled into "__other__", nulls into "__null__" if that
    key is in ref_freqs. A homogeneity test rather than goodness of fit because the reference is a
    sample too; it tends to scipy.stats.chisquare(current, ref_freqs · n) as ref_count grows."""
    keys, expected = _aligned(ref_freqs)
    return _chi_square(expected, ref_count, _category_counts(keys, values))


def _chi_square(expected: np.ndarray, ref_count: int, observed: np.ndarray) -> DriftTestResult:
    table = np.vstack([np.round(expected * ref_count), observed])
    table = table[:, table.sum(axis=0) > 0]
    if observed.sum() == 0 or table[0].sum() == 0:
        return DriftTestResult(float("nan"), float("nan"))
    if table.shape[1] < 2:  # one category on both sides: nothing can differ
        return DriftTestResult(0.0, 1.0)
    result = stats.chi2_contingency(table, correction=False)
    return DriftTestResult(float(result.statistic), float(result.pvalue))


def jensen_shannon(ref_freqs: Mapping[str, float], values: Iterable[Any]) -> float:
    """Jensen–Shannon divergence in bits (in [0, 1]) between ref_freqs and the shares of `values`."""
    keys, expected = _aligned(ref_freqs)
    return _jensen_shannon(expected, _category_counts(keys, values))


def _jensen_shannon(expected: np.ndarray, observed: np.ndarray) -> float:
    if observed.sum() == 0 or expected.sum() == 0:
        return float("nan")
    p, q = expected / expected.sum(), observed / observed.sum()
    middle = (p + q) / 2
    divergence = 0.5 * _kl_bits(p, middle) + 0.5 * _kl_bits(q, middle)
    return float(np.clip(divergence, 0.0, 1.0))


def _total_variation(expected: np.ndarray, observed: np.ndarray) -> float:
    if observed.sum() == 0 or expected.sum() == 0:
        return float("nan")
    return float(0.5 * np.abs(expected / expected.sum() - observed / observed.sum()).sum())


def feature_drift(profile: Profile, df: pd.DataFrame, thresholds: ThresholdsLike) -> pd.DataFrame:
    """One row per profiled feature, columns FEATURE_TABLE_COLUMNS; `thresholds` may be a DriftSpec."""
    if missing := [name for name in profile.features if name not in df.columns]:
        raise KeyError(f"profiled features missing from the data: {missing}")
    rows = [_feature_row(name, entry, df[name], thresholds) for name, entry in profile.features.items()]
    return pd.DataFrame(rows, columns=FEATURE_TABLE_COLUMNS)


def _feature_row(
    name: str, entry: FeatureProfile, values: pd.Series, thresholds: ThresholdsLike
) -> tuple[Any, ...]:
    """Values in FEATURE_TABLE_COLUMNS order. Parses, sorts or counts the values once per column and
    hands the result to every statistic (the public functions above each start from raw values)."""
    if isinstance(entry, NumericProfile):
        numbers = numeric_values(values)
        present = np.sort(numbers[~np.isnan(numbers)])
        knots = np.asarray(entry.quantiles, dtype=float)
        if entry.values:  # few distinct values: the exact reference CDF, so D is ks_2samp's
            statistic = ks_statistic_exact(np.asarray(entry.values), np.asarray(entry.value_shares), present)
        else:
            statistic = ks_statistic_sorted(knots, present)
        test_name, test = "ks", DriftTestResult(statistic, ks_pvalue(statistic, entry.count, present.size))
        psi_value, effect = _numeric_psi(entry, present, numbers.size), statistic
        floor = getattr(thresholds, "min_ks_statistic", DEFAULT_MIN_KS_STATISTIC)
        distances = (wasserstein_sorted(knots, present), float("nan"))
    else:
        keys, expected = _aligned(entry.distribution())
        observed = _category_counts(keys, values)
        test_name, test = "chi2", _chi_square(expected, entry.n_rows, observed)
        psi_value, effect = _categorical_psi(expected, observed), _total_variation(expected, observed)
        floor = getattr(thresholds, "min_total_variation", DEFAULT_MIN_TOTAL_VARIATION)
        distances = (float("nan"), _jensen_shannon(expected, observed))
    drifted, reason = _judge(psi_value, test_name, test, effect, floor, thresholds, len(values))
    return (name, entry.kind, len(values), psi_value, test_name, *test, effect, *distances, drifted, reason)


def performance_drop(performance: Mapping[str, Any]) -> float:
    """Relative degradation from `performance["reference"]` to `performance["current"]` (> 0 = worse).

    Direction: `performance["higher_is_better"]` if given, else that of `performance["metric"]` (a
    platform metric name, see `metrics.higher_is_better`). For a metric with a fixed no-skill score
    (ROC AUC: 0.5) the drop is the share of the reference's lift over it that was lost: ROC AUC 0.78
    -> 0.72 loses 21 % of its lift over random, where 8 % of the value would understate it."""
    reference, current = float(performance["reference"]), float(performance["current"])
    higher = performance.get("higher_is_better")
    if higher is None:
        higher = higher_is_better(str(performance.get("metric", "")))
    change = (reference - current) if higher else (current - reference)
    floor = no_skill_value(str(performance.get("metric", "")))
    scale = abs(reference - floor) if floor is not None and reference > floor else abs(reference)
    return change / scale if scale != 0 else (np.inf if change > 0 else 0.0)


def dataset_verdict(
    feature_table: pd.DataFrame,
    drifted_share_threshold: float,
    performance: Mapping[str, Any] | None = None,
    performance_drop_threshold: float = 0.25,
    weights: Mapping[str, float] | None = None,
) -> DriftVerdict:
    """Dataset-level call: drifted when the share of drifted features >= drifted_share_threshold (and at
    least one feature drifted), or when the model's relative performance drop >= the drop threshold.
    `performance`: {"reference": float, "current": float, "metric"?: str, "higher_is_better"?: bool,
    "source"?: "realized" | "estimated"}; the source names the drop in the reason.
    `weights` (core.drift_weights.importance_weights): the share is then the weighted share, weights
    renormalised over the table's features, so drift in a feature weighing 0 counts for nothing; when
    no feature of the table has a positive weight the share falls back to the plain count (said so)."""
    n_features = len(feature_table)
    flags = feature_table["drifted"].astype(bool).tolist()
    names = [str(name) for name in feature_table["feature"]]
    drifted_names = tuple(name for name, flag in zip(names, flags, strict=True) if flag)
    share = len(drifted_names) / n_features if n_features else 0.0
    weighted = weighted_drifted_share(names, flags, weights) if weights is not None else None
    if weighted is not None:
        share = weighted[0]
    reasons = []
    by_features = bool(drifted_names) and share >= drifted_share_threshold and share > 0
    if by_features:
        comparison = f" >= {drifted_share_threshold:.0%}"
        reasons.append(_drifted_description(drifted_names, n_features, share, weights, weighted, comparison))
    drop = None
    # A missing or NaN current metric (e.g. no labels yet) means no performance signal, not a drop.
    if performance and performance.get("current") is not None and np.isfinite(float(performance["current"])):
        drop = performance_drop(performance)
    by_performance = drop is not None and drop > 0 and drop >= performance_drop_threshold
    what = _performance_name(performance)
    if by_performance:
        reasons.append(f"{what} dropped {drop:.1%} >= {performance_drop_threshold:.0%}")
    if not reasons:
        perf = f", {what} drop {drop:.1%}" if drop is not None else ""
        described = _drifted_description(drifted_names, n_features, share, weights, weighted, "")
        reasons.append(f"stable: {described}{perf}")
    return DriftVerdict(
        drifted=by_features or by_performance,
        drifted_share=share,
        n_drifted=len(drifted_names),
        reason="; ".join(reasons),
        n_features=n_features,
        drifted_features=drifted_names,
        performance_drop=drop,
        status=VerdictStatus.DRIFTED if by_features or by_performance else VerdictStatus.STABLE,
    )


def _drifted_description(
    drifted: tuple[str, ...],
    n_features: int,
    share: float,
    weights: Mapping[str, float] | None,
    weighted: tuple[float, dict[str, float]] | None,
    comparison: str,
) -> str:
    """What drifted: the count, the share (importance-weighted when weighted) with `comparison`, names."""
    counted = f"{len(drifted)}/{n_features} features drifted"
    if weighted is None:
        fallback = " (no feature has an importance weight: counted unweighted)" if weights is not None else ""
        listed = (": " + ", ".join(drifted)) if drifted else ""
        return f"{counted} ({share:.0%}{comparison}){fallback}{listed}"
    by_feature = weighted[1]
    listed = ", ".join(f"{name} (weight {by_feature[name]:.2f})" for name in drifted)
    return f"{counted}, importance-weighted {share:.0%}{comparison}" + (f": {listed}" if listed else "")


def _performance_name(performance: Mapping[str, Any] | None) -> str:
    source = performance.get("source") if performance else None
    if source not in (None, "realized", "estimated"):
        raise ValueError(f"performance source must be 'realized' or 'estimated', got {source!r}")
    return f"{source} performance" if source else "performance"


def _judge(
    psi_value: float,
    test_name: str,
    test: DriftTestResult,
    effect: float,
    floor: float,
    thresholds: ThresholdsLike,
    n_current: int,
) -> tuple[bool, str]:
    if n_current == 0:
        return False, "no current rows: not judged"
    by_psi = bool(psi_value >= thresholds.psi_threshold)  # False for NaN
    by_test = bool(test.p_value < thresholds.pvalue_threshold and effect >= floor)
    found = []
    if by_psi:
        found.append(f"psi {psi_value:.3f} >= {thresholds.psi_threshold}")
    if by_test:
        found.append(
            f"{test_name} p={test.p_value:.2g} < {thresholds.pvalue_threshold} with effect {effect:.3f} >= {floor}"
        )
    if found:
        return True, "; ".join(found)
    return False, f"stable: psi {psi_value:.3f}, {test_name} p={test.p_value:.2g}, effect {effect:.3f}"


def _aligned(freqs: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    """Category keys with "__other__" always present, and their shares in the same order."""
    keys = list(freqs) + ([] if OTHER_KEY in freqs else [OTHER_KEY])
    return keys, np.array([float(freqs.get(key, 0.0)) for key in keys])


def _category_counts(keys: list[str], values: Iterable[Any]) -> np.ndarray:
    counts, n_null = category_counts(values)
    known = set(keys) - {OTHER_KEY, NULL_KEY}
    vector = np.array([counts.get(key, 0) if key in known else 0 for key in keys], dtype=float)
    # Everything without its own bucket goes to "__other__": unseen labels, and nulls when not tracked.
    vector[keys.index(OTHER_KEY)] += sum(n for label, n in counts.items() if label not in known)
    vector[keys.index(NULL_KEY) if NULL_KEY in keys else keys.index(OTHER_KEY)] += n_null
    return vector


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0  # 0 · log 0 = 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))
