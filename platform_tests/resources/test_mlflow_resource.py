"""MlflowResource against a real MLflow store (SQLite in a temp dir; no server, no network)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from mlplatform.resources.mlflow import MlflowResource


@pytest.fixture(scope="module")
def resource(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowResource]:
    # One database per module: creating MLflow's schema takes a few seconds.
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        # No stray URI may point the resource elsewhere; the caller's variables come back on exit.
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            patch.delenv(name, raising=False)
        yield MlflowResource(
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri()
        )


def test_experiment_is_created_once_under_the_artifact_location(resource: MlflowResource) -> None:
    experiment_id = resource.experiment_id("bike_sharing")
    assert resource.experiment_id("bike_sharing") == experiment_id
    experiment = resource.client().get_experiment(experiment_id)
    assert experiment.name == "bike_sharing"
    assert experiment.artifact_location == f"{resource.artifact_location}/bike_sharing"


def test_successful_run_ends_finished_with_its_logs(resource: MlflowResource, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with resource.start_run("runs_ok", run_name="train", tags={"dataset": "bike", "partition": 3}) as run:
        assert mlflow.active_run().info.run_id == run.info.run_id
        mlflow.log_metric("rmse", 42.0)
        mlflow.log_artifact(str(note), artifact_path="report")
    assert mlflow.active_run() is None

    stored = resource.client().get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "train"
    assert stored.data.metrics == {"rmse": 42.0}
    assert stored.data.tags["dataset"] == "bike" and stored.data.tags["partition"] == "3"
    assert stored.info.experiment_id == resource.experiment_id("runs_ok")
    assert [item.path for item in resource.client().list_artifacts(run.info.run_id, "report")] == [
        "report/note.txt"
    ]


def test_failing_block_ends_the_run_failed_and_reraises(resource: MlflowResource) -> None:
    with pytest.raises(RuntimeError, match="boom"), resource.start_run("runs_bad", run_name="train") as run:
        mlflow.log_param("stage", "before failure")
        raise RuntimeError("boom")
    assert mlflow.active_run() is None
    assert resource.client().get_run(run.info.run_id).info.status == "FAILED"

    # The next run starts cleanly: nothing was left active.
    with resource.start_run("runs_bad") as next_run:
        pass
    assert resource.client().get_run(next_run.info.run_id).info.status == "FINISHED"


def test_nested_run_left_open_is_closed_with_the_outer_run(resource: MlflowResource) -> None:
    with pytest.raises(ValueError), resource.start_run("runs_nested") as outer:
        inner = mlflow.start_run(nested=True)
        raise ValueError("fails inside the nested run")
    client = resource.client()
    assert mlflow.active_run() is None
    assert client.get_run(outer.info.run_id).info.status == "FAILED"
    assert client.get_run(inner.info.run_id).info.status == "FAILED"


def test_aliases_point_at_registered_versions(resource: MlflowResource, tmp_path: Path) -> None:
    assert resource.get_alias_version("no_such_model", "champion") is None

    versions = []
    resource.ensure_registered_model("bike_model")
    for attempt in range(2):
        (tmp_path / "model.txt").write_text(f"tree {attempt}")
        with resource.start_run("registry", run_name=f"train {attempt}") as run:
            mlflow.log_artifact(str(tmp_path / "model.txt"), artifact_path="model")
        source = f"{run.info.artifact_uri}/model"
        versions.append(resource.client().create_model_version("bike_model", source, run_id=run.info.run_id))

    # The store may report versions as int or str; compare as text.
    assert [str(version.version) for version in versions] == ["1", "2"]
    assert resource.get_alias_version("bike_model", "champion") is None

    resource.set_alias("bike_model", "champion", versions[0].version)
    champion = resource.get_alias_version("bike_model", "champion")
    assert champion is not None and str(champion.version) == "1" and champion.run_id == versions[0].run_id

    resource.set_alias("bike_model", "champion", 2)  # moving the alias, version given as int
    moved = resource.get_alias_version("bike_model", "champion")
    assert moved is not None and str(moved.version) == "2"
    resource.ensure_registered_model("bike_model")  # idempotent


def test_the_fluent_api_points_at_the_store_only_inside_the_block(
    resource: MlflowResource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with resource.fluent_api():
        assert mlflow.get_tracking_uri() == resource.tracking_uri
        assert mlflow.get_registry_uri() == resource.effective_registry_uri
        with resource.start_run("fluent") as run:  # nested: the run's block restores the outer one
            assert mlflow.get_tracking_uri() == resource.tracking_uri
        assert mlflow.get_tracking_uri() == resource.tracking_uri
    assert mlflow.get_tracking_uri() == elsewhere, "the caller's URI is back"
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere and "MLFLOW_REGISTRY_URI" not in os.environ
    assert resource.client().get_run(run.info.run_id).info.status == "FINISHED"


def test_a_run_leaves_no_uri_behind(resource: MlflowResource, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    before = mlflow.get_tracking_uri()
    with resource.start_run("no_leak"):
        assert os.environ["MLFLOW_TRACKING_URI"] == resource.tracking_uri  # MLflow exports it meanwhile
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before != resource.tracking_uri


def test_registry_defaults_to_the_tracking_store() -> None:
    shared = MlflowResource(tracking_uri="sqlite:///tracking.db")
    assert shared.effective_registry_uri == "sqlite:///tracking.db"
    separate = MlflowResource(tracking_uri="sqlite:///tracking.db", registry_uri="sqlite:///registry.db")
    assert separate.effective_registry_uri == "sqlite:///registry.db"
