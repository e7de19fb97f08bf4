"""Features on the Dask engine equal the local engine's bit for bit (bundled transactions and bike data),
also when a worker is killed mid-stage; and how the window is split into shards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from mlplatform.contracts import Stage
from mlplatform.core.dask_work import ShardTask, StagedWrite, run_and_commit
from mlplatform.core.features import ENTITY_SHARDS, rolling_name, write_features_window
from mlplatform.core.features_dask import build_feature_shard, plan_feature_shards, write_features_window_dask
from mlplatform.core.grain import partition_days
from mlplatform.core.lake import partition_files
from mlplatform.core.sql import column_types
from mlplatform.core.warehouse import read_frame, table_name
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.dask_cluster import (
    copy_to_lake,
    kill_worker_once,
    lake_warehouse,
    local_clean,
    local_dask_client,
)

TRANSACTIONS = parse_spec(BUNDLED_SPECS_DIR / "transactions.yaml")
BIKE = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
TX_START, TX_END = datetime(2024, 1, 1), datetime(2024, 3, 1)
# Bike: the whole of 2011-2012 is the clean history; features of a window that needs the lookback.
BIKE_CLEAN = (datetime(2010, 12, 26), datetime(2013, 1, 6))
BIKE_WINDOW = (datetime(2011, 6, 5), datetime(2012, 9, 2))


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with local_dask_client() as client:
        yield client


def _sorted_features(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> pd.DataFrame:
    return read_frame(conn, f"SELECT * FROM {table_name(spec.name, Stage.FEATURES)} ORDER BY ALL")


def float_window_sums(spec: DatasetSpec) -> list[str]:
    """Rolling sums, means and stds of floating-point columns: the features whose last bits depend on
    which entities share the window operator's input (core.features), so they test the shards most."""
    floats = {name for name, column in spec.columns.items() if column.type == "float"}
    return [
        rolling_name(r.column, r.agg, r.window, r.gap)
        for r in spec.features.rolling
        if r.agg in ("sum", "mean", "std") and r.column in floats
    ]


def _assert_same_features(
    local: duckdb.DuckDBPyConnection, lake: duckdb.DuckDBPyConnection, spec: DatasetSpec
) -> None:
    """Same columns, types, rows and values, bit for bit (float rolling sums included)."""
    features = table_name(spec.name, Stage.FEATURES)
    assert column_types(lake, features) == column_types(local, features)
    expected, got = _sorted_features(local, spec), _sorted_features(lake, spec)
    assert len(expected) > 0
    pd.testing.assert_frame_equal(got, expected, check_exact=True)  # values and dtypes


def _local_and_lake(
    spec: DatasetSpec, lake: str, clean: tuple[datetime, datetime]
) -> duckdb.DuckDBPyConnection:
    local = local_clean(spec, *clean)
    copy_to_lake(local, spec, Stage.CLEAN, lake, *clean)
    return local


def test_entity_shards_cover_the_window_and_read_its_lookback(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    copy_to_lake(
        local_clean(TRANSACTIONS, TX_START, TX_END), TRANSACTIONS, Stage.CLEAN, lake, TX_START, TX_END
    )
    start, end = datetime(2024, 2, 1), datetime(2024, 2, 4)
    shards = plan_feature_shards(lake, TRANSACTIONS, start, end)
    # The local engine's shards, whatever the cluster: the same query per shard on both engines.
    assert [(s.index, s.entities) for s in shards] == [(k, ENTITY_SHARDS) for k in range(ENTITY_SHARDS)]
    assert {s.days for s in shards} == {(date(2024, 2, 1), date(2024, 2, 2), date(2024, 2, 3))}
    lookback_files = partition_files(
        lake, TRANSACTIONS.name, Stage.CLEAN, partition_days("day", start - TRANSACTIONS.lookback, end)
    )
    assert all(s.files == tuple(lookback_files) for s in shards)
    assert len(lookback_files) == 7 + 3  # 7 days of rolling windows before the 3 days
    assert [s.writes_empty for s in shards] == [True] + [False] * (ENTITY_SHARDS - 1)


def test_a_series_without_entities_is_one_shard_reading_its_lookback(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    copy_to_lake(local_clean(BIKE, *BIKE_CLEAN), BIKE, Stage.CLEAN, lake, *BIKE_CLEAN)
    start, end = datetime(2011, 6, 5), datetime(2011, 7, 31)  # 8 weeks
    (shard,) = plan_feature_shards(lake, BIKE, start, end)
    assert (shard.entities, shard.start, shard.end) == (None, start, end)
    assert shard.days == tuple(partition_days("week", start, end))
    history = partition_days("week", start - BIKE.lookback, end)  # 7 days of lookback: a week more
    assert shard.files == tuple(partition_files(lake, BIKE.name, Stage.CLEAN, history))
    assert len(history) == len(shard.days) + 1


@pytest.mark.e2e
def test_transactions_features_equal_the_local_engine(dask_client: Any, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    local = _local_and_lake(TRANSACTIONS, lake, (TX_START, TX_END))
    expected = write_features_window(local, TRANSACTIONS, TX_START, TX_END)
    warehouse = lake_warehouse(TRANSACTIONS, lake, Stage.CLEAN)
    written = write_features_window_dask(warehouse, dask_client, TRANSACTIONS, TX_START, TX_END, lake)
    assert (written.rows, written.feature_columns) == (expected.rows, expected.feature_columns)
    assert float_window_sums(TRANSACTIONS)  # amount_mean_7d: the sums the shards must keep exact
    _assert_same_features(local, warehouse, TRANSACTIONS)
    # One file per entity shard and day, and a re-run replaces them.
    assert len(partition_files(lake, TRANSACTIONS.name, Stage.FEATURES, [date(2024, 2, 1)])) == ENTITY_SHARDS
    # A re-run of one day on both engines: its window operator holds 8 days, not 60, so its float sums
    # may move in the last bits from the full run's, the same on both engines.
    rerun = (datetime(2024, 2, 1), datetime(2024, 2, 2))
    write_features_window_dask(warehouse, dask_client, TRANSACTIONS, *rerun, lake)
    write_features_window(local, TRANSACTIONS, *rerun)
    _assert_same_features(local, warehouse, TRANSACTIONS)


@pytest.mark.e2e
def test_bike_features_equal_the_local_engine_bit_for_bit(dask_client: Any, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    local = _local_and_lake(BIKE, lake, BIKE_CLEAN)
    expected = write_features_window(local, BIKE, *BIKE_WINDOW)
    warehouse = lake_warehouse(BIKE, lake, Stage.CLEAN)
    written = write_features_window_dask(warehouse, dask_client, BIKE, *BIKE_WINDOW, lake)
    assert (written.rows, written.feature_columns) == (expected.rows, expected.feature_columns)
    assert float_window_sums(BIKE) == []  # integer counts: every feature bit for bit
    _assert_same_features(local, warehouse, BIKE)


@pytest.mark.e2e
def test_a_worker_killed_mid_features_retries_to_the_same_features(dask_client: Any, tmp_path: Path) -> None:
    lake, marker = str(tmp_path / "lake"), str(tmp_path / "killed-once")
    start, end = datetime(2024, 2, 1), datetime(2024, 2, 8)
    local = _local_and_lake(TRANSACTIONS, lake, (TX_START, TX_END))
    write_features_window(local, TRANSACTIONS, start, end)
    warehouse = lake_warehouse(TRANSACTIONS, lake, Stage.CLEAN)
    time_type = column_types(warehouse, table_name(TRANSACTIONS.name, Stage.CLEAN))["ts"]
    shards = plan_feature_shards(lake, TRANSACTIONS, start, end)
    tasks = [
        ShardTask(s.name, kill_worker_once, (marker, build_feature_shard, TRANSACTIONS, s, time_type))
        for s in shards
    ]
    write = StagedWrite(lake, TRANSACTIONS.name, Stage.FEATURES, tuple(partition_days("day", start, end)))
    run_and_commit(dask_client, write, tasks)
    assert Path(marker).exists()
    _assert_same_features(local, lake_warehouse(TRANSACTIONS, lake, Stage.FEATURES), TRANSACTIONS)
