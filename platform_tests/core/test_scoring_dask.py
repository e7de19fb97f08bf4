"""Scoring on the Dask engine gives the local path's predictions: same rows, columns, types and values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from mlplatform.contracts import Stage
from mlplatform.core.features import feature_names, write_features_window
from mlplatform.core.lake import partition_files
from mlplatform.core.scoring import inputs_hash_sql, score_frame
from mlplatform.core.scoring_dask import score_window_dask
from mlplatform.core.sql import column_types
from mlplatform.core.training import TrainedModel, lightgbm_params, train_lightgbm
from mlplatform.core.warehouse import read_frame, replace_window, table_name, window_predicate
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from platform_tests.core.dask_cluster import copy_to_lake, lake_warehouse, local_clean, local_dask_client

SPEC = parse_spec(BUNDLED_SPECS_DIR / "transactions.yaml")
START, END = datetime(2024, 1, 1), datetime(2024, 3, 1)
WINDOW = (datetime(2024, 2, 1), datetime(2024, 3, 1))
VERSION = 3


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with local_dask_client() as client:
        yield client


def _champion(conn: duckdb.DuckDBPyConnection) -> TrainedModel:
    """A small binary model on January's features (the local way)."""
    features = table_name(SPEC.name, Stage.FEATURES)
    january = read_frame(conn, f"SELECT * FROM {features} WHERE ts < TIMESTAMP '2024-02-01'")
    inputs = feature_names(SPEC, column_types(conn, table_name(SPEC.name, Stage.CLEAN))["ts"])
    params = lightgbm_params("binary", None, {"num_leaves": 7}, num_threads=1)
    return train_lightgbm("binary", january[inputs], january["is_fraud"], None, None, params, 15, 5)


def _score_locally(conn: duckdb.DuckDBPyConnection, model: TrainedModel) -> None:
    """What the predictions asset does with the local engine."""
    features = table_name(SPEC.name, Stage.FEATURES)
    hashed = inputs_hash_sql(model.feature_names)  # compared too: the lake files hash as the table does
    frame = read_frame(conn, f"SELECT *, {hashed} FROM {features} WHERE {window_predicate('ts', *WINDOW)}")
    conn.register("predictions_frame", score_frame(SPEC, model, frame, VERSION))
    replace_window(conn, SPEC.name, Stage.PREDICTIONS, "SELECT * FROM predictions_frame", "ts", *WINDOW)


@pytest.mark.e2e
def test_predictions_on_dask_equal_the_local_path(dask_client: Any, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    local = local_clean(SPEC, START, END)
    write_features_window(local, SPEC, START, END)
    copy_to_lake(local, SPEC, Stage.FEATURES, lake, START, END)
    model = _champion(local)
    _score_locally(local, model)
    warehouse = lake_warehouse(SPEC, lake, Stage.FEATURES)
    rows = score_window_dask(warehouse, dask_client, SPEC, (VERSION, model), *WINDOW, lake)
    predictions = table_name(SPEC.name, Stage.PREDICTIONS)
    assert rows == local.sql(f"SELECT count(*) FROM {predictions}").fetchall()[0][0] > 0
    assert column_types(warehouse, predictions) == column_types(local, predictions)
    ordered = f"SELECT * FROM {predictions} ORDER BY ALL"
    pd.testing.assert_frame_equal(
        read_frame(warehouse, ordered), read_frame(local, ordered), check_exact=True
    )
    assert len(partition_files(lake, SPEC.name, Stage.PREDICTIONS)) == 29  # one file per day of February
    assert partition_files(lake, SPEC.name, Stage.PREDICTIONS, [date(2024, 1, 31)]) == []
