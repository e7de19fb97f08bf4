"""The `model` asset on the Dask engine: the train split read from the lake and trained with
lightgbm.dask (mlplatform.core.training_dask); the MLflow run, the registered version and the metadata
are those of the local engine (mlplatform.assets.training), plus `engine=dask` and the dashboard link.

Validation and test rows (the tail of the time range) are read on the driver through the warehouse's
view over the lake, in the local engine's total order: early stopping and the test metrics need them
whole there. The train split stays on the cluster; its metrics use every n-th row as locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
import dask.dataframe as dd
import duckdb
import mlflow as mlflow_module
import pandas as pd

from mlplatform.assets.common import missing_table_fails_the_step
from mlplatform.assets.training_records import (
    Provenance,
    fit_metadata,
    fit_summary,
    log_model,
    partition_range,
    recorded_window,
    training_run_params,
    version_links,
)
from mlplatform.contracts import Stage
from mlplatform.core.lake import partition_files
from mlplatform.core.splits import SPLIT_COLUMN
from mlplatform.core.sql import column_types, quote_ident, total_order_sql
from mlplatform.core.training import TrainedModel, lightgbm_params
from mlplatform.core.training_dask import dask_recency_weights, train_lightgbm_dask, worker_threads
from mlplatform.core.training_data import (
    TRAIN_METRICS_MAX_ROWS,
    categorical_inputs,
    model_feature_names,
    split_metrics,
    split_windows,
    table_data_version,
    train_metrics_step,
)
from mlplatform.core.warehouse import lake_of, read_frame, require_table, table_name, verify_tables
from mlplatform.models.registry import log_training_dataset
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.durations import parse_duration
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild

ENGINE = "dask"
DATASET_SAMPLE_ROWS = 1_000  # train rows MLflow's dataset input is logged with (schema, preview)


def _driver_split(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, split: str) -> pd.DataFrame:
    """One split's rows of the training set, in the order `read_training_set` gives them."""
    table = table_name(spec.name, Stage.TRAINING_SET)
    by = total_order_sql(spec.row_keys, list(column_types(conn, table)))
    frame = read_frame(
        conn, f"SELECT * FROM {table} WHERE {quote_ident(SPLIT_COLUMN)} = ? ORDER BY {by}", [split]
    )
    return frame.drop(columns=SPLIT_COLUMN)


def _train_span(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> tuple[pd.Timestamp, pd.Timestamp, int]:
    """First and last time of the train split, and its row count."""
    time, split = quote_ident(spec.time_column), quote_ident(SPLIT_COLUMN)
    table = table_name(spec.name, Stage.TRAINING_SET)
    first, last, rows = conn.execute(
        f"SELECT min({time}), max({time}), count(*) FROM {table} WHERE {split} = 'train'"
    ).fetchall()[0]
    return pd.Timestamp(first), pd.Timestamp(last), int(rows)


def _train_rows(lake: str, spec: DatasetSpec) -> dd.DataFrame:
    """The train split on the cluster, read from the training set's Parquet partitions."""
    frame = dd.read_parquet(partition_files(lake, spec.name, Stage.TRAINING_SET))
    return frame[frame[SPLIT_COLUMN] == "train"].drop(columns=SPLIT_COLUMN)


def _train_sample(train: dd.DataFrame, rows: int) -> pd.DataFrame:
    """Every n-th train row (the step the local engine uses), at most TRAIN_METRICS_MAX_ROWS of them."""
    step = train_metrics_step(rows)
    sample = train.map_partitions(lambda part: part.iloc[::step]).compute()
    return sample.iloc[:TRAIN_METRICS_MAX_ROWS].reset_index(drop=True)


def _empty_like(frame: dd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in frame.dtypes.items()})


def _fit(
    client: Any,
    spec: DatasetSpec,
    train: dd.DataFrame,
    validation: pd.DataFrame,
    features: list[str],
    params: dict[str, Any],
) -> TrainedModel:
    """`_train` of the local engine (same weights, categoricals, rounds) with the train rows on the cluster."""
    target, half_life = spec.target.column, spec.training.recency_half_life
    weight = dask_recency_weights(train[spec.time_column], parse_duration(half_life)) if half_life else None
    return train_lightgbm_dask(
        client,
        spec.target.task,
        train[features],
        train[target],
        validation[features],
        validation[target],
        params,
        spec.model.num_boost_round,
        spec.model.early_stopping_rounds,
        categorical_inputs(spec, _empty_like(train), features),
        weight=weight,
    )


@dataclass(frozen=True)
class _Inputs:
    """What the warehouse (its views over the lake) gives the Dask training before the cluster reads."""

    lake: str
    verified: int
    features: list[str]
    data_version: str
    validation: pd.DataFrame
    test: pd.DataFrame
    train_span: tuple[pd.Timestamp, pd.Timestamp, int]


def _read_inputs(warehouse: WarehouseResource, spec: DatasetSpec) -> _Inputs:
    """The checks, features, data version and driver-side splits the local engine's read gives."""
    with warehouse.get_connection(spec.name) as conn:
        in_lake = lake_of(conn)
        if in_lake is None:
            raise dg.Failure(f"{spec.name}: the Dask engine trains from the lake, but the warehouse has none")
        verified = len(verify_tables(conn, spec.name))
        with missing_table_fails_the_step():
            require_table(conn, spec.name, Stage.TRAINING_SET)
        return _Inputs(
            lake=in_lake[0],
            verified=verified,
            features=model_feature_names(conn, spec),
            data_version=table_data_version(conn, spec.name, Stage.TRAINING_SET),
            validation=_driver_split(conn, spec, "validation"),
            test=_driver_split(conn, spec, "test"),
            train_span=_train_span(conn, spec),
        )


def train_on_dask(
    context: dg.AssetExecutionContext,
    stage: StageBuild,
    code_version: str,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    dask: DaskResource,
) -> dg.MaterializeResult:
    """The body of the `model` asset with the Dask engine (see the module docstring)."""
    spec, task = stage.spec, stage.spec.target.task
    read = _read_inputs(warehouse, spec)
    lake, verified, features, data_version = read.lake, read.verified, read.features, read.data_version
    validation, test, (first, last, train_count) = read.validation, read.test, read.train_span
    client = dask.get_client()
    train = _train_rows(lake, spec)
    parts = {"train": _train_sample(train, train_count), "validation": validation, "test": test}
    threads = worker_threads(client)
    params = lightgbm_params(task, None, spec.model.params, threads)
    windows = {
        "train": {"first": str(first), "last": str(last)},
        **split_windows({"validation": validation, "test": test}, spec.time_column),
    }
    span = pd.Series(pd.to_datetime([window["last"] for window in windows.values()] + [str(first)]))
    window = recorded_window(context.instance, spec, data_version, pd.DataFrame({spec.time_column: [first]}))
    origin = Provenance(
        context.run.run_id,
        context.asset_key.to_user_string(),
        code_version,
        partition_range(stage.partitions, span),
        data_version,
    )
    tags = {**origin.run_tags(spec), "mlplatform.engine": ENGINE}
    with mlflow.start_run(spec.name, run_name=f"train {spec.name}", tags=tags) as run:
        run_params = training_run_params(spec, params, features, parts, windows, window)
        run_params.update(
            rows_train=train_count,
            train_metrics_every_nth_row=train_metrics_step(train_count),
            engine=ENGINE,
            dask_workers=len(client.nthreads()),
            num_threads=threads,  # lightgbm.dask gives LightGBM each worker's threads
        )
        mlflow_module.log_params(run_params)
        table = f"{spec.name}.{Stage.TRAINING_SET}"
        log_training_dataset(
            parts["train"].head(DATASET_SAMPLE_ROWS),
            table,
            data_version,
            warehouse.database_for(spec.name),
            spec.target.column,
        )
        trained = _fit(client, spec, train, validation, features, params)
        metrics = split_metrics(spec, trained, parts, features)
        version = log_model(spec, mlflow, run.info.run_id, trained, test[features], metrics, origin)
    context.log.info(fit_summary(spec, version, trained, metrics, threads, window) + " (Dask engine)")
    return dg.MaterializeResult(
        metadata={
            **version_links(spec, mlflow, run, version),
            "num_threads": threads,
            "engine": ENGINE,
            "training_set_data_version": data_version,
            "partition_range": origin.partition_range,
            **fit_metadata(task, trained, metrics, windows),
            **window.params(spec),
            "warehouse_tables_verified": verified,
            **dask.dashboard_metadata(),
        }
    )
