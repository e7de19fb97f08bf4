"""The fast paths (drift statistics, metrics, DuckDB reads) give the same answers as the plain ones."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from mlplatform.core.drift import DriftThresholds, feature_drift
from mlplatform.core.metrics import compute_metrics, encode_labels
from mlplatform.core.profile import (
    MAX_EXACT_VALUES,
    Profile,
    build_profile,
    category_counts,
    category_labels,
    numeric_values,
)
from mlplatform.core.warehouse import read_frame

RNG = np.random.default_rng(5)


def test_a_count_column_keeps_exact_shares_and_its_ks_statistic_is_ks_2samp() -> None:
    reference = RNG.poisson(1.5, 200_000).astype(float)
    current = RNG.poisson(1.56, 30_000).astype(float)
    profile = build_profile(pd.DataFrame({"n": reference}), ["n"], [])
    entry = profile.numeric["n"]
    assert 0 < len(entry.values) <= MAX_EXACT_VALUES
    assert sum(entry.value_shares) == pytest.approx(1.0)
    table = feature_drift(profile, pd.DataFrame({"n": current}), DriftThresholds())
    assert table.loc[0, "statistic"] == pytest.approx(stats.ks_2samp(reference, current).statistic, abs=1e-12)


def test_exact_shares_survive_the_table_and_continuous_columns_have_none() -> None:
    frame = pd.DataFrame({"n": RNG.integers(0, 5, 1000).astype(float), "x": RNG.normal(size=1000)})
    profile = build_profile(frame, ["n", "x"], [])
    assert profile.numeric["x"].values == ()
    assert Profile.from_frame(profile.to_frame()) == profile


def test_category_counts_count_like_category_labels() -> None:
    values = pd.Series([1.0, 2.0, None, 1.0, 3.0, np.nan], dtype=object)
    labels, nulls = category_labels(values)
    counts, counted_nulls = category_counts(values)
    assert counts == pd.Series(labels).value_counts().to_dict() and counted_nulls == nulls == 2
    assert category_counts(pd.Series(["a", "b", "a"])) == ({"a": 2, "b": 1}, 0)


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1.0, np.inf, np.nan]),
        np.array([1, 2, 3]),
        pd.Series([True, False]),
        pd.Series(["1", "x", None]),
    ],
)
def test_numeric_values_fast_path_matches_the_parsing_path(values: object) -> None:
    parsed = (
        pd.to_numeric(pd.Series(values), errors="coerce")
        .astype("Float64")
        .to_numpy(dtype=float, na_value=np.nan)
    )
    parsed[~np.isfinite(parsed)] = np.nan
    np.testing.assert_array_equal(numeric_values(values), parsed)


def test_encode_labels_looks_up_distinct_values() -> None:
    assert encode_labels(pd.Series([1, 0, 1] * 1000), [0, 1]).tolist() == [1, 0, 1] * 1000
    assert encode_labels([True, 1.0, 0], [0, 1]).tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="2 label"):
        encode_labels([0, None, 7], [0, 1])


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_binary_metrics_equal_sklearn_with_and_without_tied_scores(decimals: int | None) -> None:
    y = (RNG.random(5000) < 0.2).astype(int)
    proba = np.clip(RNG.random(5000) * 0.6 + y * 0.3, 0, 1)
    proba = proba if decimals is None else np.round(proba, decimals)
    result = compute_metrics("binary", y, proba)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba), abs=1e-12)
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y, proba), abs=1e-12)
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, np.clip(proba, 1e-15, 1 - 1e-15)), abs=1e-12)
    assert result["f1"] == pytest.approx(skm.f1_score(y, proba >= 0.5), abs=1e-12)


def test_read_frame_gives_the_dtypes_of_duckdb_df() -> None:
    conn = duckdb.connect()
    conn.execute(
        """CREATE TABLE t AS SELECT range AS i, CASE WHEN range % 3 = 0 THEN NULL ELSE range END AS i_null,
        range::DOUBLE AS f, CASE WHEN range % 3 = 0 THEN NULL ELSE range::DOUBLE END AS f_null,
        range % 2 = 0 AS b, CASE WHEN range % 3 = 0 THEN NULL ELSE range % 2 = 0 END AS b_null,
        'x' || range AS s, CASE WHEN range % 3 = 0 THEN NULL ELSE 'x' END AS s_null,
        TIMESTAMP '2024-01-01' + INTERVAL (range) SECOND AS ts, range::INTEGER AS i32,
        CASE WHEN range % 3 = 0 THEN NULL ELSE range::INTEGER END AS i32_null, CAST(NULL AS BIGINT) AS no_int
        FROM range(7)"""
    )
    for sql in ("SELECT * FROM t", "SELECT * FROM t WHERE false", "SELECT *, DATE '2024-01-01' AS d FROM t"):
        pd.testing.assert_frame_equal(read_frame(conn, sql), conn.sql(sql).df())
    assert read_frame(conn, "SELECT i FROM t WHERE i > ?", [4])["i"].tolist() == [5, 6]
