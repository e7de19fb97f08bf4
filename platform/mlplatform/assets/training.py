"""Stage 4, training: `features` -> `training_set` (time split) -> `model` (LightGBM, tracked in MLflow)."""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import mlflow as mlflow_module  # `mlflow` is the resource's name in the assets
import pandas as pd

from mlplatform.assets.common import read_training_step_input, spec_code_version, table_metadata
from mlplatform.contracts import (
    CHALLENGER_ALIAS,
    MODEL_ARTIFACT_KEY,
    TRAIN_FROM_TAG,
    MaterializationKey,
    MlflowMetric,
    MlflowParam,
    MlflowTag,
    Stage,
    asset_key,
    metadata_value,
)
from mlplatform.core.metrics import PRIMARY_METRIC
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
    train_metrics_step,
)
from mlplatform.core.training_window import (
    choose_table_window,
    parse_train_from,
    recency_weights,
    write_training_set,
)
from mlplatform.core.warehouse import count_rows, table_exists
from mlplatform.models.registry import log_lightgbm_model, log_training_dataset, register_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.durations import parse_duration
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module


# Metadata of `training_set` that `model` reads back (same module, so no shared contract needed).
WINDOW_START_KEY, WINDOW_REASON_KEY, TRAIN_FROM_KEY = (
    "training_window_start",
    "training_window_reason",
    "train_from",
)
NO_TRAIN_FROM = "none"


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


def _input_example(model: TrainedModel, features: pd.DataFrame) -> pd.DataFrame:
    """A few rows the way a caller passes them: categories as text, every other feature as float."""
    example = features.head(5).reset_index(drop=True).copy()
    for column in example.columns:
        categorical = column in model.categorical_levels
        example[column] = example[column].astype(object if categorical else "float64")
    return example


def _run_params(
    spec: DatasetSpec,
    params: dict[str, Any],
    features: list[str],
    parts: dict[str, pd.DataFrame],
    windows: dict[str, dict[str, str]],
    window: "_WindowRecord",
) -> dict[str, Any]:
    """What the MLflow training run records as parameters (the evaluation reads the windows back)."""
    return {
        **window.params(spec),
        **params,
        "num_boost_round": spec.model.num_boost_round,
        "early_stopping_rounds": spec.model.early_stopping_rounds,
        "validation_fraction": spec.split.validation_fraction,
        "test_fraction": spec.split.test_fraction,
        "features": ",".join(features)[:6000],  # MLflow's limit for a parameter value
        **{f"rows_{name}": len(part) for name, part in parts.items()},
        "train_metrics_every_nth_row": train_metrics_step(len(parts["train"])),
        **{
            MlflowParam.window(name): f"{w['first']}{MlflowParam.WINDOW_SEPARATOR}{w['last']}"
            for name, w in windows.items()
        },
    }


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


@dataclass(frozen=True)
class _WindowRecord:
    """The training window a model is trained on, as its `training_set` materialization recorded it."""

    start: str
    reason: str
    train_from: str  # the change point asked for (run tag), NO_TRAIN_FROM when none was

    def params(self, spec: DatasetSpec) -> dict[str, str]:
        """MLflow params (and model metadata): the window, its reason, the half-life, the change point."""
        return {
            "training_window": spec.training.window,
            WINDOW_START_KEY: self.start,
            WINDOW_REASON_KEY: self.reason,
            "recency_half_life": spec.training.recency_half_life or "none",
            TRAIN_FROM_KEY: self.train_from,
        }


def _recorded_window(
    instance: dg.DagsterInstance, spec: DatasetSpec, data_version: str, train: pd.DataFrame
) -> _WindowRecord:
    """The window of the latest `training_set` materialization, when it wrote this very table (same
    data version); else only what the table shows (its first train row), saying it was not recorded."""
    event = instance.get_latest_materialization_event(asset_key(spec, Stage.TRAINING_SET))
    materialization = event.asset_materialization if event is not None else None
    metadata = dict(materialization.metadata) if materialization is not None else {}
    if metadata_value(metadata.get("data_version")) == data_version and WINDOW_START_KEY in metadata:
        start, reason, train_from = (
            str(metadata_value(metadata.get(key, NO_TRAIN_FROM)))
            for key in (WINDOW_START_KEY, WINDOW_REASON_KEY, TRAIN_FROM_KEY)
        )
        return _WindowRecord(start, reason, train_from)
    first = str(pd.to_datetime(train[spec.time_column]).min())
    reason = (
        f"not recorded: no {Stage.TRAINING_SET} materialization in the event log wrote this table "
        f"(data version {data_version}); its train split starts at {first}"
    )
    return _WindowRecord(first, reason, "unknown")


@dataclass(frozen=True)
class _Provenance:
    """Where a training comes from: the Dagster run and asset, the code and the rows it read."""

    dagster_run_id: str
    asset_key: str
    code_version: str
    partition_range: str
    data_version: str

    def run_tags(self, spec: DatasetSpec) -> dict[str, str]:
        """Tags of the MLflow training run (for people browsing MLflow)."""
        return {
            "mlplatform.stage": "training",
            "mlplatform.dataset": spec.name,
            "mlplatform.task": spec.target.task,
            "dagster.run_id": self.dagster_run_id,
            "dagster.asset_key": self.asset_key,
            "dagster.code_version": self.code_version,
            "dagster.partition_range": self.partition_range,
            "training_set.data_version": self.data_version,
        }

    def version_tags(self) -> dict[str, str]:
        """Tags of the registered version; the evaluation checks `dagster_run_id` against its run."""
        return {
            MlflowTag.DAGSTER_RUN_ID.value: self.dagster_run_id,
            MlflowTag.TRAINING_SET_DATA_VERSION.value: self.data_version,
            MlflowTag.CODE_VERSION.value: self.code_version,
        }


def _partition_range(partitions: dg.TimeWindowPartitionsDefinition, times: pd.Series) -> str:
    """`<first>..<last>` partition keys of the times trained on."""

    def key_at(moment: Any) -> str:
        return partitions.get_partition_key_for_timestamp(pd.Timestamp(moment).tz_localize("UTC").timestamp())

    return f"{key_at(times.min())}..{key_at(times.max())}"


def _fit_metadata(
    task: str, trained: TrainedModel, metrics: dict[str, float], windows: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """What the model materialization shows of the fit: iterations, time, the primary test metric."""
    primary = MlflowMetric.test(PRIMARY_METRIC[task])
    return {
        "best_iteration": trained.best_iteration,
        "training_seconds": round(trained.training_seconds, 2),
        primary: metrics[primary],
        "metrics": dg.MetadataValue.json({k: round(v, 6) for k, v in metrics.items()}),
        "windows": dg.MetadataValue.json(windows),
    }


def _fit_summary(
    spec: DatasetSpec,
    version: str,
    trained: TrainedModel,
    metrics: dict[str, float],
    threads: int,
    window: _WindowRecord,
) -> str:
    """The run log's line about a training: version, fit, time, and the window it learned from."""
    primary = MlflowMetric.test(PRIMARY_METRIC[spec.target.task])
    weights = spec.training.recency_half_life
    return (
        f"{spec.name}: version {version} best iteration {trained.best_iteration}, {primary} "
        f"{metrics[primary]:.4g}, trained in {trained.training_seconds:.1f} s on {threads} thread(s); "
        f"window from {window.start} ({window.reason}); "
        + (f"recency weights halving every {weights}" if weights else "rows weighted equally")
    )


def _version_links(
    spec: DatasetSpec, mlflow: MlflowResource, run: mlflow_module.ActiveRun, version: str
) -> dict[str, Any]:
    """The training's MLflow run and the registered version it made, as metadata of the model."""
    return {
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run.info.experiment_id, run.info.run_id)),
        "mlflow_run_id": run.info.run_id,
        MaterializationKey.MODEL_VERSION.value: int(version),
        "model_version_link": dg.MetadataValue.url(mlflow.model_version_url(spec.name, version)),
        "model_uri": f"models:/{spec.name}/{version}",
    }


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
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        # A damaged block anywhere in the dataset must fail the run now, not after a promotion.
        read = read_training_step_input(spec, warehouse, verify=True)
        frame, features, data_version = read.frame, read.features, read.data_version
        parts = {name: frame[frame[SPLIT_COLUMN] == name] for name in SPLIT_NAMES}
        params = lightgbm_params(task, None, spec.model.params, available_cpus())
        threads = effective_threads(params)  # what LightGBM uses: the spec's num_threads, if any
        windows = split_windows(parts, spec.time_column)
        window = _recorded_window(context.instance, spec, data_version, parts["train"])
        trained_on = _partition_range(partitions, frame[spec.time_column])
        origin = _Provenance(
            context.run.run_id, context.asset_key.to_user_string(), code_version, trained_on, data_version
        )
        # Training runs inside the MLflow run: its duration is the training's, and a failure leaves a
        # FAILED run with the params that caused it.
        with mlflow.start_run(spec.name, run_name=f"train {spec.name}", tags=origin.run_tags(spec)) as run:
            mlflow_module.log_params(_run_params(spec, params, features, parts, windows, window))
            table = f"{spec.name}.{Stage.TRAINING_SET}"
            database = warehouse.database_for(spec.name)
            log_training_dataset(frame, table, data_version, database, spec.target.column)
            del frame  # the splits are copies: free the whole set before training doubles it
            trained = _train(spec, parts, features, params)
            metrics = split_metrics(spec, trained, parts, features)
            test_features = parts["test"][features]
            version = _log_model(spec, mlflow, run.info.run_id, trained, test_features, metrics, origin)
        context.log.info(_fit_summary(spec, version, trained, metrics, threads, window))
        return dg.MaterializeResult(
            metadata={
                **_version_links(spec, mlflow, run, version),
                "num_threads": threads,
                "training_set_data_version": data_version,
                "partition_range": origin.partition_range,
                **_fit_metadata(task, trained, metrics, windows),
                **window.params(spec),
                "warehouse_tables_verified": read.verified,
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
    origin: _Provenance,
) -> str:
    """Log metrics and the model to the active run and register it. Returns the new version."""
    mlflow_module.log_metrics(
        {
            **metrics,
            MlflowMetric.BEST_ITERATION: trained.best_iteration,
            MlflowMetric.TRAINING_SECONDS: trained.training_seconds,
        }
    )
    with tempfile.TemporaryDirectory(prefix="mlplatform-train-") as work_dir:
        info = log_lightgbm_model(trained, _input_example(trained, test_features), Path(work_dir))
        # The text model also among the run's own artifacts: readable in the UI without the model page.
        mlflow_module.log_artifacts(str(Path(work_dir) / MODEL_ARTIFACT_KEY), MODEL_ARTIFACT_KEY)
    registered = register_version(resource, spec.name, info, run_id, origin.version_tags())
    mlflow_module.set_tag(MlflowTag.MODEL_VERSION.value, registered.version)
    return str(registered.version)
