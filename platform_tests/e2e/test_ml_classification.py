"""Binary and multiclass through the whole model graph, on small generated datasets with specs
written by the tests (Parquet in tmp_path, a few weeks of hourly rows for three stores)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlflow import MlflowClient

from mlplatform.factory import build_definitions
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.runner import run_datasets
from mlplatform.settings import load_settings
from mlplatform.specs.loader import parse_spec
from mlplatform.stages import runnable_stages
from mlplatform.warehouse_cli import warehouse_session

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("restore_mlflow_env")]

DAYS = 42
STORES = ("s1", "s2", "s3")


def generated_frame(task: str, seed: int = 7) -> pd.DataFrame:
    """Hourly rows per store; the label depends on x1, x2 and the hour, plus noise."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-03-01", periods=DAYS * 24, freq="h")
    frame = pd.DataFrame([(t, store) for t in times for store in STORES], columns=["ts", "store"]).astype(
        {"ts": "datetime64[us]"}
    )
    n = len(frame)
    frame["x1"] = rng.normal(size=n)
    frame["x2"] = rng.choice(["red", "green", "blue"], size=n)
    signal = 1.5 * frame["x1"] + np.where(frame["x2"] == "red", 1.0, -0.5) + 0.3 * rng.normal(size=n)
    if task == "binary":
        frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-(2 * signal - 1)))).astype("int64")
    else:
        frame["label"] = np.select([signal < -0.5, signal < 0.8], ["low", "mid"], "high")
    return frame


def spec_for(task: str, name: str, source: Path) -> dict:
    label = (
        {"type": "int", "nullable": False, "allowed": [0, 1]}
        if task == "binary"
        else {"type": "category", "nullable": False, "allowed": ["low", "mid", "high"]}
    )
    return {
        "name": name,
        "source": {"path": str(source), "format": "parquet"},
        "time_column": "ts",
        "entity_key": "store",
        "columns": {
            "ts": {"type": "timestamp", "nullable": False},
            "store": {"type": "string", "nullable": False},
            "x1": {"type": "float", "nullable": False},
            "x2": {"type": "category", "nullable": False},
            "label": label,
        },
        "target": {"column": "label", "task": task},
        "features": {
            "calendar": ["hour", "day_of_week"],
            "rolling": [{"column": "x1", "window": "1d", "agg": "mean"}],
        },
        "model": {"params": {"num_leaves": 15, "min_data_in_leaf": 20}, "num_boost_round": 300},
    }


def train_generated(
    task: str,
    name: str,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    use_extra_specs: Callable[[Path], None],
) -> dg.Definitions:
    source = tmp_path / f"{name}.parquet"
    generated_frame(task).to_parquet(source, index=False)
    use_extra_specs(write_spec(spec_for(task, name, source), f"{name}.yaml").parent)
    defs = build_definitions()
    outcome = run_datasets(defs, [name], instance=dg.DagsterInstance.get(), stages=runnable_stages())[0]
    assert outcome.success, outcome.failed_steps
    return defs


def query_frame(sql: str) -> pd.DataFrame:
    with warehouse_session(load_settings()).conn as conn:  # every dataset's file, read-only
        return conn.sql(sql).df()


def client() -> MlflowClient:
    settings = load_settings()
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)


def champion_inputs(name: str, features: pd.DataFrame) -> pd.DataFrame:
    """Feature columns as the registered signature wants them: numbers as float64, categories as text."""
    with MlflowResource.from_settings(load_settings()).fluent_api():  # the fluent API reads global URIs
        schema = mlflow.models.get_model_info(f"models:/{name}@champion").signature.inputs
    types = {column.name: str(column.type) for column in schema.inputs}
    return features[list(types)].astype({c: "float64" for c, t in types.items() if t.endswith("double")})


def assert_trained_and_promoted(name: str, metric_names: tuple[str, ...], primary: str) -> dict[str, float]:
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(name).experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    metrics = runs[0].data.metrics
    for split in ("train", "validation", "test"):
        assert {f"{split}_{m}" for m in metric_names} <= set(metrics)
    assert f"baseline_test_{primary}" in metrics
    version = mlflow_client.get_model_version_by_alias(name, "champion")
    assert str(version.version) == "1" and set(version.aliases) == {"challenger", "champion"}
    assert version.tags["promotion_decision"] == "promoted"
    return metrics


def test_binary_dataset_trains_promotes_and_scores_probabilities(
    platform_home: Path,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    use_extra_specs: Callable[[Path], None],
) -> None:
    train_generated("binary", "toy_binary", tmp_path, write_spec, use_extra_specs)
    metrics = assert_trained_and_promoted(
        "toy_binary", ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1"), "roc_auc"
    )
    assert metrics["test_roc_auc"] > max(0.75, metrics["baseline_test_roc_auc"])

    predictions = query_frame("SELECT * FROM toy_binary.predictions ORDER BY ts, store")
    assert list(predictions.columns) == [
        "ts",
        "store",
        "prediction",
        "probability",
        "model_version",
        "inputs_hash",
        "actual",
    ]
    assert len(predictions) == DAYS * 24 * len(STORES) and set(predictions["model_version"]) == {1}
    assert predictions["probability"].between(0, 1).all()
    assert (predictions["prediction"] == (predictions["probability"] >= 0.5).astype(int)).all()

    report = load_settings().reports_dir / "toy_binary" / "version_1"
    for plot in ("roc_curve", "precision_recall_curve", "calibration", "feature_importance"):
        assert (report / f"{plot}.png").is_file()

    # The registered MLflow model (text LightGBM behind pyfunc) gives the table's probabilities.
    features = query_frame("SELECT * FROM toy_binary.features ORDER BY ts, store LIMIT 20")
    with MlflowResource.from_settings(load_settings()).fluent_api():
        pyfunc = mlflow.pyfunc.load_model("models:/toy_binary@champion")
    probabilities = pyfunc.predict(champion_inputs("toy_binary", features))
    assert list(probabilities) == pytest.approx(list(predictions["probability"][:20]))


def test_multiclass_dataset_scores_class_probabilities_and_refuses_mismatched_features(
    platform_home: Path,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    use_extra_specs: Callable[[Path], None],
) -> None:
    defs = train_generated("multiclass", "toy_multi", tmp_path, write_spec, use_extra_specs)
    metrics = assert_trained_and_promoted("toy_multi", ("log_loss", "macro_f1", "accuracy"), "log_loss")
    assert metrics["test_log_loss"] < metrics["baseline_test_log_loss"]

    predictions = query_frame("SELECT * FROM toy_multi.predictions")
    # Class columns follow the sorted labels the model was trained on.
    probability_columns = ["probability_high", "probability_low", "probability_mid"]
    assert list(predictions.columns) == [
        "ts",
        "store",
        "prediction",
        *probability_columns,
        "model_version",
        "inputs_hash",
        "actual",
    ]
    assert predictions[probability_columns].sum(axis=1).to_numpy() == pytest.approx(1.0)
    best = predictions[probability_columns].idxmax(axis=1).str.removeprefix("probability_")
    assert (predictions["prediction"] == best).all()

    # A spec whose features changed: the champion cannot score them, and says so.
    spec = parse_spec(next(Path(os.environ["MLPLATFORM_SPECS"]).glob("toy_multi.yaml")))
    changed = spec.model_copy(update={"features": spec.features.model_copy(update={"rolling": []})})
    job = build_definitions(specs=[changed]).resolve_job_def("toy_multi__all")
    keys = job.partitions_def.get_partition_keys()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[-2], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        asset_selection=[dg.AssetKey(["toy_multi", "predictions"])],
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description or ""
    assert "champion version 1 of toy_multi expects feature(s) ['x1_mean_1d']" in message
    assert defs is not None
