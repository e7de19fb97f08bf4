"""Feature SQL on rows that share an entity and a time: the same features whatever the storage order,
and every rolling aggregate equal to its definition computed by brute force."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlplatform.core.features import features_sql, rolling_name
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.toy_spec import customer_spec

AGGREGATES = ("mean", "sum", "std", "count", "min", "max")
T0 = datetime(2024, 1, 3, 10)


def _spec(gap: str = "0h") -> DatasetSpec:
    return customer_spec(
        {
            "lags": [{"column": "amount", "lag": "1d"}],
            "rolling": [{"column": "amount", "window": "2d", "gap": gap, "agg": agg} for agg in AGGREGATES],
        }
    )


def _rows() -> list[tuple[datetime, str, float | None, int]]:
    """Customer a: three rows at T0 whose float sum depends on the order they are added in
    ((0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3)), two at T0 - 1d for the lag, a null amount; customer b
    far away in value (a large level, a small spread) and in time."""
    day = timedelta(days=1)
    return [
        (T0 - day, "a", 5.0, 0),
        (T0 - day, "a", 7.0, 1),
        (T0 - timedelta(hours=30), "a", None, 0),
        (T0, "a", 0.1, 0),
        (T0, "a", 0.2, 1),
        (T0, "a", 0.3, 0),
        (T0 + timedelta(hours=5), "a", 2.5, 1),
        (T0 - day, "b", 1e9 + 0.5, 0),
        (T0, "b", 1e9 + 1.5, 1),
        (T0, "b", 1e9 + 2.5, 0),
        (T0 + 3 * day, "b", 1e9 + 4.0, 1),
    ]


def _features(rows: list[tuple], spec: DatasetSpec) -> pd.DataFrame:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE clean (ts TIMESTAMP, customer VARCHAR, amount DOUBLE, label INTEGER)")
    conn.executemany("INSERT INTO clean VALUES (?, ?, ?, ?)", rows)
    sql = features_sql(spec, "clean", datetime(2024, 1, 1), datetime(2024, 1, 10))
    frame = conn.sql(sql).df()
    return frame.sort_values(["customer", "ts", "amount", "label"], na_position="first").reset_index(
        drop=True
    )


def test_tied_rows_give_the_same_features_in_any_storage_order() -> None:
    spec = _spec()
    rows = _rows()
    tied = [i for i, row in enumerate(rows) if row[0] == T0 and row[1] == "a"]
    lag_ties = [i for i, row in enumerate(rows) if row[0] == T0 - timedelta(days=1) and row[1] == "a"]
    first = None
    for order in itertools.permutations(tied):
        for lag_order in itertools.permutations(lag_ties):
            stored = list(rows)
            for slot, i in zip(tied, order, strict=True):
                stored[slot] = rows[i]
            for slot, i in zip(lag_ties, lag_order, strict=True):
                stored[slot] = rows[i]
            for arrangement in (stored, stored[::-1]):
                features = _features(arrangement, spec)
                if first is None:
                    first = features
                # Bit for bit: no tolerance.
                pd.testing.assert_frame_equal(features, first, check_exact=True)
    # Tied values at the lag time: the smallest, every time.
    at_t0 = first[(first.customer == "a") & (first.ts == T0)]
    assert (at_t0.amount_lag_1d == 5.0).all()


@pytest.mark.parametrize("gap", ["0h", "1d"])
def test_rolling_aggregates_match_their_definition_with_ties_and_nulls(gap: str) -> None:
    spec = _spec(gap)
    features = _features(_rows(), spec)
    rows = pd.DataFrame(_rows(), columns=["ts", "customer", "amount", "label"])
    gap_delta, window = pd.Timedelta(gap), pd.Timedelta("2d")
    for row in features.itertuples():
        # The half-open window (t - gap - 2d, t - gap] of the same customer, ties included.
        end = row.ts - gap_delta
        seen = rows[
            (rows.customer == row.customer) & (rows.ts > end - window) & (rows.ts <= end)
        ].amount.dropna()
        expected = {
            "mean": seen.mean() if len(seen) else np.nan,
            "sum": seen.sum() if len(seen) else np.nan,
            "std": seen.std(ddof=1) if len(seen) > 1 else np.nan,
            "count": len(seen),
            "min": seen.min() if len(seen) else np.nan,
            "max": seen.max() if len(seen) else np.nan,
        }
        for agg, want in expected.items():
            got = getattr(row, rolling_name("amount", agg, "2d", gap))
            if np.isnan(want):
                assert pd.isna(got), (row.customer, row.ts, agg, got)
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (row.customer, row.ts, agg)
    assert features[rolling_name("amount", "count", "2d", gap)].dtype == np.int64
