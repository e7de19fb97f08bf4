"""Mergeable drift statistics: merged per-partition summaries against the direct computation."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.drift import DriftThresholds, feature_drift
from mlplatform.core.drift_summaries import (
    SummaryPlan,
    feature_drift_from_summary,
    ks_grid_bound,
    merge,
    partition_summaries,
    partition_summary,
    read_summary,
    summary_frame,
)
from mlplatform.core.profile import build_profile

NUMERIC = ["lognormal", "with_nulls", "counts"]
CATEGORICAL = ["city", "flag"]
EXACT_COLUMNS = ["psi", "n_current", "jensen_shannon"]


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    with_nulls = rng.normal(shift, 1.0, n)
    with_nulls[rng.random(n) < 0.05] = np.nan
    cities = np.array(["a", "b", "c", "d", "e", "f"])
    weights = np.array([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    city = rng.choice(cities, n, p=weights).astype(object)
    city[rng.random(n) < 0.02] = None
    return pd.DataFrame(
        {
            "lognormal": rng.lognormal(shift, 1.0, n),
            "with_nulls": with_nulls,
            "counts": rng.poisson(3 + shift, n),  # few distinct values: exact KS
            "city": city,
            "flag": rng.random(n) < 0.3 + shift / 10,
        }
    )


def _pieces(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    return [frame.iloc[positions] for positions in np.array_split(np.arange(len(frame)), n)]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    rows = _rows(np.random.default_rng(1), 20_000)
    # one category the reference never saw pooled into __other__ later; one only the reference has
    rows.loc[:9, "city"] = "rare"
    return rows


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_merged_partition_summaries_give_todays_statistics(reference: pd.DataFrame, shift: float) -> None:
    profile = build_profile(reference, NUMERIC, CATEGORICAL)
    plan = SummaryPlan.of(profile)
    current = _rows(np.random.default_rng(2), 30_000, shift)
    current.loc[:50, "city"] = "unseen"
    thresholds = DriftThresholds()
    direct = feature_drift(profile, current, thresholds).set_index("feature")
    parts = [partition_summary(plan, part) for part in _pieces(current, 7)]
    merged = merge(plan, parts)
    rows = [
        feature_drift_from_summary(plan, name, merged.columns[name], thresholds) for name in profile.features
    ]
    summarised = pd.DataFrame(rows, columns=["feature", *direct.columns]).set_index("feature")
    for name in profile.features:
        got, want = summarised.loc[name], direct.loc[name]
        for column in EXACT_COLUMNS:
            assert got[column] == pytest.approx(want[column], rel=1e-12, nan_ok=True), (name, column)
        if name in CATEGORICAL or name == "counts":  # chi-square, TV and the exact KS: equal
            assert got["statistic"] == pytest.approx(want["statistic"], rel=1e-12), name
            assert got["p_value"] == pytest.approx(want["p_value"], rel=1e-9), name
        else:  # the grid's D: never above today's, at most the stated bound below it
            bound = ks_grid_bound(profile.numeric[name])
            assert bound == pytest.approx(0.01 / 20)
            assert want["statistic"] - bound - 1e-12 <= got["statistic"] <= want["statistic"] + 1e-12, name
            assert got["wasserstein"] == pytest.approx(want["wasserstein"], rel=0.15, abs=0.005), name
        assert got["drifted"] == want["drifted"], name
    assert bool(direct["drifted"].any()) == (shift > 0)


def test_the_merge_of_partitions_is_the_summary_of_their_union(reference: pd.DataFrame) -> None:
    plan = SummaryPlan.of(build_profile(reference, NUMERIC, CATEGORICAL))
    current = _rows(np.random.default_rng(3), 10_000, 0.1)
    whole = partition_summary(plan, current)
    merged = merge(plan, [partition_summary(plan, part) for part in _pieces(current, 4)])
    assert merged.n_rows == whole.n_rows == len(current)
    for name, column in whole.columns.items():
        assert np.array_equal(merged.columns[name].counts, column.counts), name
        assert merged.columns[name].n_values == column.n_values
        assert merged.columns[name].minimum == pytest.approx(column.minimum, nan_ok=True)
        assert merged.columns[name].maximum == pytest.approx(column.maximum, nan_ok=True)


def test_summaries_of_many_partitions_at_once_equal_one_at_a_time(reference: pd.DataFrame) -> None:
    plan = SummaryPlan.of(build_profile(reference, NUMERIC, CATEGORICAL))
    current = _rows(np.random.default_rng(4), 6_000).assign(model_version=[1, 2, None] * 2_000)
    part = np.random.default_rng(5).integers(0, 3, len(current))
    together = partition_summaries(plan, current, part, 4, "model_version")  # partition 3 has no rows
    assert together[3].n_rows == 0 and together[3].versions == {}
    for index in range(3):
        alone = partition_summary(plan, current[part == index], "model_version")
        assert together[index].versions == alone.versions
        for name, column in alone.columns.items():
            assert np.array_equal(together[index].columns[name].counts, column.counts), name


def test_a_summary_survives_its_long_table_and_a_worker_round_trip(reference: pd.DataFrame) -> None:
    plan = SummaryPlan.of(build_profile(reference, NUMERIC, CATEGORICAL))
    summary = partition_summary(
        plan, _rows(np.random.default_rng(6), 2_000).assign(model_version=4), "model_version"
    )
    read = read_summary(plan, summary_frame(summary, "123-456"))
    assert read is not None
    back, fingerprint = read
    assert fingerprint == "123-456" and back.n_rows == summary.n_rows and back.versions == {4: 2_000}
    for name, column in summary.columns.items():
        assert np.array_equal(back.columns[name].counts, column.counts)
    shipped = pickle.loads(pickle.dumps((plan, summary)))
    assert np.array_equal(shipped[1].columns["lognormal"].counts, summary.columns["lognormal"].counts)
    other_plan = SummaryPlan.of(build_profile(reference.iloc[:5_000], NUMERIC, CATEGORICAL))
    assert read_summary(other_plan, summary_frame(summary)) is None  # other cells: recomputed, never merged


def test_a_column_missing_from_some_partitions_counts_as_null_there(reference: pd.DataFrame) -> None:
    profile = build_profile(reference, NUMERIC, CATEGORICAL)
    plan = SummaryPlan.of(profile)
    current = _rows(np.random.default_rng(7), 4_000)
    first, second = current.iloc[:1_000], current.iloc[1_000:]
    merged = merge(
        plan,
        [partition_summary(plan, first.drop(columns=["city", "counts"])), partition_summary(plan, second)],
    )
    both = pd.concat([first.assign(city=None, counts=np.nan), second], ignore_index=True)
    direct = feature_drift(profile, both, DriftThresholds()).set_index("feature")
    for name in ("city", "counts"):
        row = feature_drift_from_summary(plan, name, merged.columns[name], DriftThresholds())
        assert row[3] == pytest.approx(direct.loc[name, "psi"], rel=1e-12)
        assert row[5] == pytest.approx(direct.loc[name, "statistic"], rel=1e-12)
