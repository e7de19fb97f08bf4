"""The rows a drift report judges: features of a window joined with the predictions of the same rows."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd
import pytest

from mlplatform.core.drift_windows import window_partitions, window_rows
from mlplatform.specs.model import DatasetSpec


def _spec(window: str = "7d", grain: str = "day") -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "entity_key": "store",
            "partition_grain": grain,
            "columns": {"ts": {"type": "timestamp"}, "store": {"type": "string"}, "sales": {"type": "float"}},
            "target": {"column": "sales", "task": "regression"},
            "drift": {"window": window},
        }
    )


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("CREATE SCHEMA toy")
    connection.execute(
        "CREATE TABLE toy.features AS SELECT * FROM (VALUES "
        "(TIMESTAMP '2024-01-01 00:00', 'a', 1.0, 10.0), (TIMESTAMP '2024-01-01 00:00', 'b', 2.0, 20.0), "
        "(TIMESTAMP '2024-01-02 00:00', 'a', 3.0, 30.0), (TIMESTAMP '2024-01-03 00:00', 'a', 4.0, 40.0)"
        ") t(ts, store, lag_1, sales)"
    )
    return connection


def test_without_predictions_the_window_is_the_features(conn: duckdb.DuckDBPyConnection) -> None:
    rows = window_rows(conn, _spec(), datetime(2024, 1, 1), datetime(2024, 1, 3))
    assert list(rows.columns) == ["ts", "store", "lag_1", "sales"]
    assert sorted(rows["sales"]) == [10.0, 20.0, 30.0]  # [start, end): the 3rd is outside


def test_predictions_join_by_time_and_entity(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        "CREATE TABLE toy.predictions AS SELECT * FROM (VALUES "
        "(TIMESTAMP '2024-01-01 00:00', 'a', 11.0, 3), (TIMESTAMP '2024-01-01 00:00', 'a', 11.0, 3), "
        "(TIMESTAMP '2024-01-02 00:00', 'a', 29.0, 4), (TIMESTAMP '2024-01-03 00:00', 'a', 41.0, 4)"
        ") t(ts, store, prediction, model_version)"
    )
    rows = window_rows(conn, _spec(), datetime(2024, 1, 1), datetime(2024, 1, 3))
    assert list(rows.columns) == ["ts", "store", "lag_1", "sales", "prediction", "model_version"]
    # Each feature row once, even with a duplicated prediction; the unscored row (store b) gets NULL.
    assert len(rows) == 3
    by_key = {(str(r.ts.date()), r.store): r for r in rows.itertuples()}
    assert by_key[("2024-01-01", "a")].prediction == 11.0 and by_key[("2024-01-01", "a")].model_version == 3
    assert by_key[("2024-01-02", "a")].prediction == 29.0 and by_key[("2024-01-02", "a")].model_version == 4
    assert pd.isna(by_key[("2024-01-01", "b")].prediction) and pd.isna(
        by_key[("2024-01-01", "b")].model_version
    )


@pytest.mark.parametrize(
    ("window", "grain", "partitions"),
    [("7d", "day", 7), ("36h", "day", 2), ("7d", "week", 1), ("60d", "month", 3)],
)
def test_window_partitions_reach_back_far_enough(window: str, grain: str, partitions: int) -> None:
    assert window_partitions(_spec(window, grain)) == partitions
