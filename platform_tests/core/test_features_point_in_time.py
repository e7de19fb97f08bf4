"""Feature SQL: exact lag and rolling values, and point-in-time correctness on the bike data."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest

from mlplatform.core.cleaning import clean_window
from mlplatform.core.features import features_sql
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.warehouse import replace_window
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.toy_spec import customer_spec

START, END = datetime(2011, 1, 1), datetime(2013, 1, 1)


@pytest.fixture(scope="module")
def bike() -> tuple[DatasetSpec, duckdb.DuckDBPyConnection]:
    spec = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", START, END)
    clean_window(conn, spec, START, END)
    return spec, conn


def _features(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, clean: str, start: datetime, end: datetime
) -> pd.DataFrame:
    return conn.sql(features_sql(spec, clean, start, end)).df().sort_values("ts").reset_index(drop=True)


def test_lag_and_rolling_values_are_exact(bike: tuple[DatasetSpec, duckdb.DuckDBPyConnection]) -> None:
    spec, conn = bike
    feats = _features(conn, spec, "bike_sharing.clean", datetime(2011, 3, 1), datetime(2011, 3, 8))
    clean = conn.sql("SELECT ts, count FROM bike_sharing.clean").df().set_index("ts")["count"]
    for row in feats.sample(40, random_state=1).itertuples():
        day_before, week_before = row.ts - timedelta(days=1), row.ts - timedelta(days=7)
        for got, moment in ((row.count_lag_1d, day_before), (row.count_lag_7d, week_before)):
            expected = clean.get(moment)
            assert (pd.isna(got) and expected is None) or got == expected, row.ts
        window = clean[(clean.index > row.ts - timedelta(days=2)) & (clean.index <= day_before)]
        assert row.count_mean_24h_gap_1d == pytest.approx(window.mean()), row.ts


def test_a_window_alone_gives_the_same_features_as_the_whole_history(
    bike: tuple[DatasetSpec, duckdb.DuckDBPyConnection],
) -> None:
    spec, conn = bike
    whole = _features(conn, spec, "bike_sharing.clean", START, END)
    one_week = _features(conn, spec, "bike_sharing.clean", datetime(2012, 6, 10), datetime(2012, 6, 17))
    expected = whole[(whole.ts >= "2012-06-10") & (whole.ts < "2012-06-17")].reset_index(drop=True)
    pd.testing.assert_frame_equal(one_week, expected, check_dtype=False)


@pytest.mark.parametrize("cutoff", ["2011-05-15 13:00", "2012-02-29 00:00", "2012-10-01 07:00"])
def test_no_feature_uses_target_data_after_row_time_minus_horizon(
    bike: tuple[DatasetSpec, duckdb.DuckDBPyConnection], cutoff: str
) -> None:
    """Scramble every target after `cutoff`: rows up to cutoff + 1 day (the shortest horizon) keep
    every feature; rows after it see the change, so the test can tell a leak from no effect."""
    spec, conn = bike
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE clean_future_changed AS SELECT * REPLACE "
        f"(CASE WHEN ts > TIMESTAMP '{cutoff}' THEN count * 1000 + 7 ELSE count END AS count) FROM bike_sharing.clean"
    )
    window = (datetime(2011, 1, 1), datetime(2013, 1, 1))
    original = _features(conn, spec, "bike_sharing.clean", *window)
    changed = _features(conn, spec, "clean_future_changed", *window)
    horizon_end = pd.Timestamp(cutoff) + pd.Timedelta(days=1)
    known = original.ts <= horizon_end
    inputs = [c for c in original.columns if c != "count"]
    pd.testing.assert_frame_equal(original.loc[known, inputs], changed.loc[known, inputs])
    later = original.ts > horizon_end
    assert (original.loc[later, "count_lag_1d"] != changed.loc[later, "count_lag_1d"]).any()


def test_entity_rolling_stays_within_the_entity() -> None:
    spec = customer_spec({"rolling": [{"column": "amount", "window": "2d", "agg": "sum"}]})
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE clean AS SELECT * FROM (VALUES "
        "(TIMESTAMP '2024-01-01 10:00', 'a', 1.0, 0), (TIMESTAMP '2024-01-02 10:00', 'a', 2.0, 0),"
        "(TIMESTAMP '2024-01-02 11:00', 'b', 100.0, 1), (TIMESTAMP '2024-01-03 10:00', 'a', 4.0, 1),"
        "(TIMESTAMP '2024-01-03 12:00', 'b', 200.0, 0)) t(ts, customer, amount, label)"
    )
    feats = conn.sql(features_sql(spec, "clean", datetime(2024, 1, 1), datetime(2024, 1, 4))).df()
    got = dict(zip(zip(feats.customer, feats.ts.dt.day, strict=True), feats.amount_sum_2d, strict=True))
    # (t - 2d, t]: the row itself is known at its time; a's row on day 1 falls out on day 3.
    assert got == {("a", 1): 1.0, ("a", 2): 3.0, ("a", 3): 6.0, ("b", 2): 100.0, ("b", 3): 300.0}
