"""What a training records, on either engine: the MLflow run's params, tags, metrics and model, the
registered version, the `model` materialization's metadata and the run log's summary line.

Shared by the `model` asset (mlplatform.assets.training) and its Dask-engine body
(mlplatform.assets.training_dask), so both record the same things the same way.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow as mlflow_module  # `mlflow` is the resource's name in the assets
import pandas as pd

from mlplatform.contracts import (
    MODEL_ARTIFACT_KEY,
    MaterializationKey,
    MlflowMetric,
    MlflowParam,
    MlflowTag,
    Stage,
    asset_key,
    metadata_value,
)
from mlplatform.core.metrics import PRIMARY_METRIC
from mlplatform.core.training import TrainedModel
from mlplatform.core.training_data import train_metrics_step
from mlplatform.models.registry import log_lightgbm_model, register_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.specs.model import DatasetSpec

# Metadata of `training_set` that `model` reads back (both in mlplatform.assets.training).
WINDOW_START_KEY, WINDOW_REASON_KEY = "training_window_start", "training_window_reason"
TRAIN_FROM_KEY = "train_from"
NO_TRAIN_FROM = "none"


def input_example(model: TrainedModel, features: pd.DataFrame) -> pd.DataFrame:
    """A few rows the way a caller passes them: categories as text, every other feature as float."""
    example = features.head(5).reset_index(drop=True).copy()
    for column in example.columns:
        categorical = column in model.categorical_levels
        example[column] = example[column].astype(object if categorical else "float64")
    return example


def training_run_params(
    spec: DatasetSpec,
    params: dict[str, Any],
    features: list[str],
    parts: dict[str, pd.DataFrame],
    windows: dict[str, dict[str, str]],
    window: "WindowRecord",
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


@dataclass(frozen=True)
class WindowRecord:
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


def recorded_window(
    instance: dg.DagsterInstance, spec: DatasetSpec, data_version: str, train: pd.DataFrame
) -> WindowRecord:
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
        return WindowRecord(start, reason, train_from)
    first = str(pd.to_datetime(train[spec.time_column]).min())
    reason = (
        f"not recorded: no {Stage.TRAINING_SET} materialization in the event log wrote this table "
        f"(data version {data_version}); its train split starts at {first}"
    )
    return WindowRecord(first, reason, "unknown")


@dataclass(frozen=True)
class Provenance:
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


def partition_range(partitions: dg.TimeWindowPartitionsDefinition, times: pd.Series) -> str:
    """`<first>..<last>` partition keys of the times trained on."""

    def key_at(moment: Any) -> str:
        return partitions.get_partition_key_for_timestamp(pd.Timestamp(moment).tz_localize("UTC").timestamp())

    return f"{key_at(times.min())}..{key_at(times.max())}"


def fit_metadata(
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


def fit_summary(
    spec: DatasetSpec,
    version: str,
    trained: TrainedModel,
    metrics: dict[str, float],
    threads: int,
    window: WindowRecord,
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


def version_links(
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


def log_model(
    spec: DatasetSpec,
    resource: MlflowResource,
    run_id: str,
    trained: TrainedModel,
    test_features: pd.DataFrame,
    metrics: dict[str, float],
    origin: Provenance,
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
        info = log_lightgbm_model(trained, input_example(trained, test_features), Path(work_dir))
        # The text model also among the run's own artifacts: readable in the UI without the model page.
        mlflow_module.log_artifacts(str(Path(work_dir) / MODEL_ARTIFACT_KEY), MODEL_ARTIFACT_KEY)
    registered = register_version(resource, spec.name, info, run_id, origin.version_tags())
    mlflow_module.set_tag(MlflowTag.MODEL_VERSION.value, registered.version)
    return str(registered.version)
