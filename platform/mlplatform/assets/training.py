"""Stage 4, training: `features` -> `training_set` (time split) -> `model` (LightGBM, tracked in MLflow)."""

from typing import TYPE_CHECKING, Any

import dagster as dg
import mlflow as mlflow_module  # `mlflow` is the resource's name in the assets
import pandas as pd

from mlplatform.assets.common import read_training_step_input, spec_code_version, table_metadata
from mlplatform.assets.training_records import (
    NO_TRAIN_FROM,
    TRAIN_FROM_KEY,
    WINDOW_REASON_KEY,
    WINDOW_START_KEY,
    Provenance,
    fit_metadata,
    fit_summary,
    log_model,
    partition_range,
    recorded_window,
    training_run_params,
    version_links,
)
from mlplatform.contracts import (
    CHALLENGER_ALIAS,
    TRAIN_FROM_TAG,
    Stage,
    asset_key,
)
from mlplatform.core.splits import SPLIT_COLUMN, SPLIT_NAMES
from mlplatform.core.sql import quote_ident
from mlplatform.core.training import (
    TrainedModel,
    available_cpus,
    effective_threads,
    lightgbm_params,
    train_lightgbm,
)
from mlplatform.core.training_data import (
    categorical_inputs,
    split_metrics,
    split_windows,
    table_data_version,
)
from mlplatform.core.training_window import (
    choose_table_window,
    parse_train_from,
    recency_weights,
    write_training_set,
)
from mlplatform.core.warehouse import count_rows, table_exists
from mlplatform.models.registry import log_training_dataset
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.durations import parse_duration
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module


def build_training_set_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec = stage.spec
    split = spec.split

    @dg.asset(
        key=asset_key(spec, Stage.TRAINING_SET),
        pool=stage.pool,
        deps=[asset_key(spec, Stage.FEATURES)],
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "split", "target", "training"),
        description=(
            f"The labelled rows of `{spec.name}.features` in the training window (spec `training`: "
            f"window {spec.training.window}, or from the change point of run tag `{TRAIN_FROM_TAG}`) with a "
            f"`{SPLIT_COLUMN}` column: train, then validation (last {split.validation_fraction:.0%} before "
            f"test), then test (the last {split.test_fraction:.0%} of the window). Split by time, never shuffled."
        ),
    )
    def training_set(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        # op_execution_context.run_tags: {} when invoked directly (there is no run then).
        train_from = context.op_execution_context.run_tags.get(TRAIN_FROM_TAG)
        target = quote_ident(spec.target.column)
        with warehouse.get_connection(spec.name) as conn:
            if not table_exists(conn, spec.name, Stage.FEATURES):
                raise dg.Failure(
                    f"{spec.name}.{Stage.FEATURES} does not exist: materialize {spec.name}/{Stage.FEATURES} first"
                )
            try:  # a bad run tag, or a window too short to split: the message says which
                window, before_window = choose_table_window(conn, spec, parse_train_from(train_from))
                frame, windows = write_training_set(conn, spec, window.start)
            except ValueError as error:
                raise dg.Failure(f"{spec.name}.{Stage.TRAINING_SET}: {error}") from error
            unlabelled = count_rows(conn, spec.name, Stage.FEATURES, f"{target} IS NULL")
            data_version = table_data_version(conn, spec.name, Stage.TRAINING_SET)
            metadata = table_metadata(conn, spec.name, Stage.TRAINING_SET, len(frame))
        counts = frame[SPLIT_COLUMN].value_counts()
        context.log.info(
            f"{spec.name} training set: "
            + ", ".join(f"{name} {int(counts.get(name, 0)):,}" for name in SPLIT_NAMES)
            + f" rows; {unlabelled:,} unlabelled rows left out; training window: {window.reason} "
            f"({before_window:,} older labelled rows left out)"
        )
        return dg.MaterializeResult(
            metadata={
                **metadata,
                **{f"rows_{name}": int(counts.get(name, 0)) for name in SPLIT_NAMES},
                "unlabelled_rows_left_out": unlabelled,
                WINDOW_START_KEY: str(window.start),
                WINDOW_REASON_KEY: window.reason,
                TRAIN_FROM_KEY: NO_TRAIN_FROM if window.train_from is None else str(window.train_from),
                "rows_before_window_left_out": before_window,
                "windows": dg.MetadataValue.json(windows.as_dict()),
                "data_version": data_version,
            },
            data_version=dg.DataVersion(data_version),
        )

    return training_set


def _train(
    spec: DatasetSpec, parts: dict[str, pd.DataFrame], features: list[str], params: dict[str, Any]
) -> TrainedModel:
    train, validation, target = parts["train"], parts["validation"], spec.target.column
    half_life = spec.training.recency_half_life
    # Ages count back from the train split's newest row; the validation rows stay unweighted.
    weight = recency_weights(train[spec.time_column], parse_duration(half_life)) if half_life else None
    return train_lightgbm(
        spec.target.task,
        train[features],
        train[target],
        validation[features],
        validation[target],
        params,
        spec.model.num_boost_round,
        spec.model.early_stopping_rounds,
        categorical_inputs(spec, train, features),
        weight=weight,
    )


def build_model_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions, task = stage.spec, stage.partitions, stage.spec.target.task
    code_version = spec_code_version(spec, "model", "target", "split", "training")

    @dg.asset(
        key=asset_key(spec, Stage.MODEL),
        pool=stage.pool,
        deps=[asset_key(spec, Stage.TRAINING_SET)],
        owners=spec.owners,
        tags=spec.tags,
        code_version=code_version,
        description=(
            f"LightGBM {spec.target.task} model of `{spec.target.column}`, early-stopped on the validation "
            f"split; one MLflow run per training in experiment `{spec.name}`, registered as a new version of "
            f"model `{spec.name}` with alias `{CHALLENGER_ALIAS}`. Saved in LightGBM's text format."
        ),
    )
    def model(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        mlflow: MlflowResource,
        dask: DaskResource,
    ) -> dg.MaterializeResult:
        if dask.enabled:  # the same records, the train rows on the cluster (imports dask only then)
            from mlplatform.assets.training_dask import train_on_dask

            return train_on_dask(context, stage, code_version, warehouse, mlflow, dask)
        # A damaged block anywhere in the dataset must fail the run now, not after a promotion.
        read = read_training_step_input(spec, warehouse, verify=True)
        frame, features, data_version = read.frame, read.features, read.data_version
        parts = {name: frame[frame[SPLIT_COLUMN] == name] for name in SPLIT_NAMES}
        params = lightgbm_params(task, None, spec.model.params, available_cpus())
        threads = effective_threads(params)  # what LightGBM uses: the spec's num_threads, if any
        windows = split_windows(parts, spec.time_column)
        window = recorded_window(context.instance, spec, data_version, parts["train"])
        trained_on = partition_range(partitions, frame[spec.time_column])
        origin = Provenance(
            context.run.run_id, context.asset_key.to_user_string(), code_version, trained_on, data_version
        )
        # Training runs inside the MLflow run: its duration is the training's, and a failure leaves a
        # FAILED run with the params that caused it.
        with mlflow.start_run(spec.name, run_name=f"train {spec.name}", tags=origin.run_tags(spec)) as run:
            mlflow_module.log_params(training_run_params(spec, params, features, parts, windows, window))
            table = f"{spec.name}.{Stage.TRAINING_SET}"
            database = warehouse.database_for(spec.name)
            log_training_dataset(frame, table, data_version, database, spec.target.column)
            del frame  # the splits are copies: free the whole set before training doubles it
            trained = _train(spec, parts, features, params)
            metrics = split_metrics(spec, trained, parts, features)
            test_features = parts["test"][features]
            version = log_model(spec, mlflow, run.info.run_id, trained, test_features, metrics, origin)
        context.log.info(fit_summary(spec, version, trained, metrics, threads, window))
        return dg.MaterializeResult(
            metadata={
                **version_links(spec, mlflow, run, version),
                "num_threads": threads,
                "training_set_data_version": data_version,
                "partition_range": origin.partition_range,
                **fit_metadata(task, trained, metrics, windows),
                **window.params(spec),
                "warehouse_tables_verified": read.verified,
            }
        )

    return model
