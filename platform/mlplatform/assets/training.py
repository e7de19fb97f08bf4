"""Stage 4, training: `features` -> `training_set` (time split) -> `model` (LightGBM, tracked in MLflow)."""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import mlflow as mlflow_module  # `mlflow` is the resource's name in the assets
import pandas as pd
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import asset_key, spec_code_version, table_metadata
from mlplatform.core.features import feature_names
from mlplatform.core.metrics import PRIMARY_METRIC, compute_metrics
from mlplatform.core.splits import SPLIT_NAMES, assign_split, time_split
from mlplatform.core.sql import column_types, quote_ident, total_order_sql
from mlplatform.core.training import TrainedModel, available_cpus, lightgbm_params, predict, train_lightgbm
from mlplatform.core.warehouse import count_rows, read_frame, table_exists, table_name, verify_tables
from mlplatform.models.registry import MODEL_ARTIFACT_KEY, log_lightgbm_model, register_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.specs.model import DatasetSpec

SPLIT_COLUMN = "split"
TRAINING_SET = "training_set"
TRAIN_METRICS_MAX_ROWS = 1_000_000
MODEL_VERSION_KEY = "model_version"  # metadata of the model materialization: the version it registered
RUN_ID_TAG = "dagster_run_id"  # tag of a registered model version: the Dagster run that trained it


@dataclass(frozen=True)
class MaterializedVersion:
    """A model version as recorded by a materialization, and which materialization that was."""

    version: int
    dagster_run_id: str
    same_run: bool  # materialized by the run asking, rather than the latest of another run

    @property
    def source(self) -> str:
        which = "this run" if self.same_run else f"the latest materialization (run {self.dagster_run_id})"
        return f"version {self.version}, from {which}"


def version_materialized(
    instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str, metadata_key: str = MODEL_VERSION_KEY
) -> MaterializedVersion | None:
    """The `metadata_key` version of `key`'s materialization in run `run_id`, else of its latest one.

    Two concurrent runs each register a version; reading "the newest version" or an alias would let
    one run evaluate (and promote) the other's model, so a run uses the version it materialized itself.
    """
    record = instance.get_run_record_by_id(run_id)
    started = record.start_time if record is not None else None
    if started is not None:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_timestamp=started - 1), limit=1000
        ).records
        for own in found:
            if own.run_id == run_id and own.asset_materialization is not None:
                value = own.asset_materialization.metadata.get(metadata_key)
                if value is not None:
                    return MaterializedVersion(int(value.value), run_id, same_run=True)
    latest = instance.get_latest_materialization_event(key)
    materialization = latest.asset_materialization if latest is not None else None
    value = materialization.metadata.get(metadata_key) if materialization is not None else None
    if latest is None or value is None:
        return None
    return MaterializedVersion(int(value.value), latest.run_id, same_run=latest.run_id == run_id)


def model_feature_names(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> list[str]:
    """The model inputs among the features table's columns (no time, entity key, target or split)."""
    time_type = column_types(conn, table_name(spec.name, "features"))[spec.time_column]
    return feature_names(spec, time_type)


def read_training_set(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> pd.DataFrame:
    if not table_exists(conn, spec.name, TRAINING_SET):
        raise dg.Failure(
            f"{spec.name}.{TRAINING_SET} does not exist: materialize {spec.name}/training_set first"
        )
    table = table_name(spec.name, TRAINING_SET)
    # LightGBM's result depends on the row order: a total order makes the same rows the same model.
    by = total_order_sql(spec.row_keys, list(column_types(conn, table)))
    return read_frame(conn, f"SELECT * FROM {table} ORDER BY {by}")


def table_data_version(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """A content hash of a table, independent of row order: same rows and columns, same version."""
    name = table_name(schema, table)
    rows, row_hash_sum = conn.execute(f"SELECT count(*), sum(hash(t)::HUGEINT) FROM {name} t").fetchall()[0]
    columns = sorted(column_types(conn, name).items())
    return hashlib.sha256(f"{columns}|{rows}|{row_hash_sum}".encode()).hexdigest()[:16]


def split_windows(parts: dict[str, pd.DataFrame], time_column: str) -> dict[str, dict[str, str]]:
    """First and last timestamp of each split, as stored (closed intervals, easy to read)."""
    windows: dict[str, dict[str, str]] = {}
    for name, part in parts.items():
        times = pd.to_datetime(part[time_column])
        windows[name] = {"first": str(times.min()), "last": str(times.max())}
    return windows


def build_training_assets(
    spec: DatasetSpec, partitions: dg.TimeWindowPartitionsDefinition
) -> list[dg.AssetsDefinition]:
    return [build_training_set_asset(spec), build_model_asset(spec, partitions)]


def build_training_set_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    split = spec.split

    @dg.asset(
        key=asset_key(spec, TRAINING_SET),
        deps=[asset_key(spec, "features")],
        group_name="training",
        kinds={"duckdb", "pandas"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "split", "target"),
        description=(
            f"All labelled rows of `{spec.name}.features` with a `{SPLIT_COLUMN}` column: train, then "
            f"validation (last {split.validation_fraction:.0%} before test), then test (the last "
            f"{split.test_fraction:.0%} of the time range). Split by time, never shuffled."
        ),
    )
    def training_set(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
        features, target = table_name(spec.name, "features"), quote_ident(spec.target.column)
        target_table = table_name(spec.name, TRAINING_SET)
        with warehouse.get_connection() as conn:
            if not table_exists(conn, spec.name, "features"):
                raise dg.Failure(
                    f"{spec.name}.features does not exist: materialize {spec.name}/features first"
                )
            frame = read_frame(conn, f"SELECT * FROM {features} WHERE {target} IS NOT NULL")
            unlabelled = count_rows(conn, spec.name, "features", f"{target} IS NULL")
            windows = time_split(frame, spec.time_column, split.validation_fraction, split.test_fraction)
            frame[SPLIT_COLUMN] = assign_split(frame, spec.time_column, windows)
            conn.register("training_set_frame", frame)
            try:
                conn.execute(f"CREATE OR REPLACE TABLE {target_table} AS SELECT * FROM training_set_frame")
            finally:
                conn.unregister("training_set_frame")
            data_version = table_data_version(conn, spec.name, TRAINING_SET)
            metadata = table_metadata(conn, spec.name, TRAINING_SET, len(frame))
        counts = frame[SPLIT_COLUMN].value_counts()
        context.log.info(
            f"{spec.name} training set: "
            + ", ".join(f"{name} {int(counts.get(name, 0)):,}" for name in SPLIT_NAMES)
            + f" rows; {unlabelled:,} unlabelled rows left out"
        )
        return dg.MaterializeResult(
            metadata={
                **metadata,
                **{f"rows_{name}": int(counts.get(name, 0)) for name in SPLIT_NAMES},
                "unlabelled_rows_left_out": unlabelled,
                "windows": dg.MetadataValue.json(windows.as_dict()),
                "data_version": data_version,
            },
            data_version=dg.DataVersion(data_version),
        )

    return training_set


def _input_example(model: TrainedModel, features: pd.DataFrame) -> pd.DataFrame:
    """A few rows the way a caller passes them: categories as text, every other feature as float."""
    example = features.head(5).reset_index(drop=True).copy()
    for column in example.columns:
        categorical = column in model.categorical_levels
        example[column] = example[column].astype(object if categorical else "float64")
    return example


def train_metrics_step(train_rows: int) -> int:
    """Train-split metrics use every n-th row (time-ordered, so the sample spans the whole window).

    They only show how well the model fits what it saw; scoring all 8M training rows of a 10M-row
    data set for them took a quarter of the training time (benchmarks/BENCHMARKS.md)."""
    return max(1, -(-train_rows // TRAIN_METRICS_MAX_ROWS))


def _split_metrics(
    spec: DatasetSpec, model: TrainedModel, parts: dict[str, pd.DataFrame], features: list[str]
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, part in parts.items():
        if name == "train":
            part = part.iloc[:: train_metrics_step(len(part))]
        scores = predict(model, part[features])
        split_metrics = compute_metrics(spec.target.task, part[spec.target.column], scores, model.classes)
        metrics.update({f"{name}_{metric}": value for metric, value in split_metrics.items()})
    return metrics


def build_model_asset(
    spec: DatasetSpec, partitions: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    task, target = spec.target.task, spec.target.column
    code_version = spec_code_version(spec, "model", "target", "split")

    def partition_key_at(moment: Any) -> str:
        return partitions.get_partition_key_for_timestamp(pd.Timestamp(moment).tz_localize("UTC").timestamp())

    @dg.asset(
        key=asset_key(spec, "model"),
        deps=[asset_key(spec, TRAINING_SET)],
        group_name="training",
        kinds={"lightgbm", "mlflow"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=code_version,
        description=(
            f"LightGBM {task} model of `{target}`, early-stopped on the validation split; one MLflow run per "
            f"training in experiment `{spec.name}`, registered as a new version of model `{spec.name}` with "
            "alias `challenger`. Saved in LightGBM's text format."
        ),
    )
    def model(
        context: dg.AssetExecutionContext, warehouse: DuckDBResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        with warehouse.get_connection() as conn:
            # A damaged block anywhere in the dataset must fail the run now, not after a promotion.
            verified = verify_tables(conn, spec.name)
            frame = read_training_set(conn, spec)
            features = model_feature_names(conn, spec)
            data_version = table_data_version(conn, spec.name, TRAINING_SET)
        parts = {name: frame[frame[SPLIT_COLUMN] == name] for name in SPLIT_NAMES}
        threads = available_cpus()
        params = lightgbm_params(task, None, spec.model.params, threads)
        windows = split_windows(parts, spec.time_column)
        times = frame[spec.time_column]
        partition_range = f"{partition_key_at(times.min())}..{partition_key_at(times.max())}"
        del frame, times  # the splits are copies: free the whole set before training doubles it
        run_id = context.run.run_id
        run_tags = {
            "mlplatform.stage": "training",
            "mlplatform.dataset": spec.name,
            "mlplatform.task": task,
            "dagster.run_id": run_id,
            "dagster.asset_key": context.asset_key.to_user_string(),
            "dagster.code_version": code_version,
            "dagster.partition_range": partition_range,
            "training_set.data_version": data_version,
        }
        run_params: dict[str, Any] = {
            **params,
            "num_boost_round": spec.model.num_boost_round,
            "early_stopping_rounds": spec.model.early_stopping_rounds,
            "validation_fraction": spec.split.validation_fraction,
            "test_fraction": spec.split.test_fraction,
            "features": ",".join(features)[:6000],  # MLflow's limit for a parameter value
            **{f"rows_{name}": len(part) for name, part in parts.items()},
            "train_metrics_every_nth_row": train_metrics_step(len(parts["train"])),
            **{f"window_{name}": f"{w['first']} .. {w['last']}" for name, w in windows.items()},
        }
        version_tags = {
            RUN_ID_TAG: run_id,
            "training_set_data_version": data_version,
            "code_version": code_version,
        }
        # Training runs inside the MLflow run: its duration is the training's, and a failure leaves a
        # FAILED run with the params that caused it.
        with mlflow.start_run(spec.name, run_name=f"train {spec.name}", tags=run_tags) as run:
            mlflow_module.log_params(run_params)
            trained = train_lightgbm(
                task,
                parts["train"][features],
                parts["train"][target],
                parts["validation"][features],
                parts["validation"][target],
                params,
                spec.model.num_boost_round,
                spec.model.early_stopping_rounds,
            )
            metrics = _split_metrics(spec, trained, parts, features)
            version = _log_model(
                spec, mlflow, run.info.run_id, trained, parts["test"][features], metrics, version_tags
            )
        primary = f"test_{PRIMARY_METRIC[task]}"
        context.log.info(
            f"{spec.name}: version {version} best iteration {trained.best_iteration}, {primary} "
            f"{metrics[primary]:.4g}, trained in {trained.training_seconds:.1f} s on {threads} thread(s)"
        )
        return dg.MaterializeResult(
            metadata={
                "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
                "mlflow_run_id": run.info.run_id,
                MODEL_VERSION_KEY: int(version),
                "model_version_link": dg.MetadataValue.url(mlflow.model_version_url(spec.name, version)),
                "model_uri": f"models:/{spec.name}/{version}",
                "best_iteration": trained.best_iteration,
                "training_seconds": round(trained.training_seconds, 2),
                "num_threads": threads,
                "training_set_data_version": data_version,
                "partition_range": partition_range,
                primary: metrics[primary],
                "metrics": dg.MetadataValue.json({k: round(v, 6) for k, v in metrics.items()}),
                "windows": dg.MetadataValue.json(windows),
                "warehouse_tables_verified": len(verified),
            }
        )

    return model


def _log_model(
    spec: DatasetSpec,
    resource: MlflowResource,
    run_id: str,
    trained: TrainedModel,
    test_features: pd.DataFrame,
    metrics: dict[str, float],
    version_tags: dict[str, str],
) -> str:
    """Log metrics and the model to the active run and register it. Returns the new version."""
    mlflow_module.log_metrics(
        {**metrics, "best_iteration": trained.best_iteration, "training_seconds": trained.training_seconds}
    )
    with tempfile.TemporaryDirectory(prefix="mlplatform-train-") as work_dir:
        info = log_lightgbm_model(trained, _input_example(trained, test_features), Path(work_dir))
        # The text model also among the run's own artifacts: readable in the UI without the model page.
        mlflow_module.log_artifacts(str(Path(work_dir) / MODEL_ARTIFACT_KEY), MODEL_ARTIFACT_KEY)
    registered = register_version(resource, spec.name, info, run_id, version_tags)
    mlflow_module.set_tag("model_version", registered.version)
    return str(registered.version)
