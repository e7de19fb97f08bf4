"""The model half on the bundled bike-sharing data, end to end in a temp home.

One materialization of the whole graph (all 106 weekly partitions as one run) is shared by the module;
the last test then trains a deliberately worse model, rolls the champion back and forth and re-scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlflow import MlflowClient

from mlplatform.cli import main as cli_main
from mlplatform.core.training import available_cpus
from mlplatform.factory import build_definitions
from mlplatform.home import prepare_home
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.runner import RunOutcome, print_summary, run_datasets
from mlplatform.settings import load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import ModelSpec
from mlplatform.stages import runnable_stages
from mlplatform.warehouse_cli import warehouse_session
from platform_tests.conftest import BIKE_ROWS

pytestmark = pytest.mark.e2e

DATASET = "bike_sharing"
STAGES = ("raw", "clean", "quarantine", "features", "training_set", "model", "evaluation", "predictions")
_ENV = ("MLPLATFORM_HOME", "DAGSTER_HOME", "MLPLATFORM_SPECS", "MLPLATFORM_WAREHOUSE")
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # MLflow itself sets these when activated


@dataclass
class BikeRun:
    home: Path
    defs: dg.Definitions
    outcome: RunOutcome


@pytest.fixture(scope="module")
def bike(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BikeRun]:
    home = tmp_path_factory.mktemp("bike") / "home"
    saved = {name: os.environ.get(name) for name in (*_ENV, *_MLFLOW_ENV)}
    try:
        for name in (*_ENV, *_MLFLOW_ENV):
            os.environ.pop(name, None)
        os.environ.update(MLPLATFORM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
        prepare_home(load_settings())
        defs = build_definitions()
        # The model graph raw .. predictions (the job also holds later stages, e.g. drift monitoring).
        instance = dg.DagsterInstance.get()
        outcome = run_datasets(defs, [DATASET], instance=instance, stages=runnable_stages())[0]
        yield BikeRun(home, defs, outcome)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def client() -> MlflowClient:
    settings = load_settings()
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)


def query(sql: str) -> list[tuple]:
    with warehouse_session(load_settings()).conn as conn:  # every dataset's file, read-only
        return conn.execute(sql).fetchall()


def alias_version(alias: str) -> int:
    return int(client().get_model_version_by_alias(DATASET, alias).version)


def latest_metadata(stage: str) -> dict:
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey([DATASET, stage]))
    assert event is not None and event.asset_materialization is not None, stage
    return event.asset_materialization.metadata


def check_results(run_id: str) -> dict[str, bool]:
    events = dg.DagsterInstance.get().all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    data = [e.get_dagster_event().event_specific_data for e in events]
    return {f"{d.asset_key.to_user_string()}:{d.check_name}": d.passed for d in data}


def test_the_whole_graph_materializes_with_passing_checks(bike: BikeRun) -> None:
    assert bike.outcome.success, bike.outcome.failed_steps
    for stage in STAGES:
        latest_metadata(stage)
    checks = check_results(bike.outcome.run_id)
    assert checks["bike_sharing/evaluation:model_beats_baseline"] is True
    assert checks["bike_sharing/predictions:finite_predictions"] is True
    assert all(checks.values()), checks

    splits = dict(query("SELECT split, count(*) FROM bike_sharing.training_set GROUP BY 1"))
    assert sum(splits.values()) == BIKE_ROWS and splits["train"] > 8 * splits["test"] > 0
    last_train, first_validation, last_validation, first_test = query(
        "SELECT max(ts) FILTER (split = 'train'), min(ts) FILTER (split = 'validation'), "
        "max(ts) FILTER (split = 'validation'), min(ts) FILTER (split = 'test') FROM bike_sharing.training_set"
    )[0]
    assert last_train < first_validation <= last_validation < first_test  # time order, no overlap
    assert latest_metadata("training_set")["rows_test"].value == splits["test"]

    columns = [row[0] for row in query("DESCRIBE bike_sharing.predictions")]
    assert columns == ["ts", "instant", "prediction", "model_version", "inputs_hash", "actual"]
    assert query(
        "SELECT count(*) FROM bike_sharing.predictions p JOIN bike_sharing.clean c USING (instant) "
        'WHERE p.actual = c."count" AND p.ts = c.ts'
    ) == [(BIKE_ROWS,)]
    assert query("SELECT count(*), min(model_version), max(model_version) FROM bike_sharing.predictions") == [
        (BIKE_ROWS, 1, 1)
    ]


def test_training_is_one_finished_mlflow_run_with_everything_logged(bike: BikeRun) -> None:
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(DATASET)
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["objective"] == "regression" and params["num_threads"] == str(available_cpus())
    assert int(params["rows_train"]) + int(params["rows_validation"]) + int(params["rows_test"]) == BIKE_ROWS
    assert params["window_train"].startswith("2011-01-01 00:00:00 .. ")
    assert params["window_test"].endswith(" .. 2012-12-31 23:00:00")
    assert 0 < metrics["best_iteration"] < int(params["num_boost_round"])
    for split in ("train", "validation", "test"):
        assert {f"{split}_{m}" for m in ("mae", "rmse", "r2", "mape")} <= set(metrics)
    assert metrics["test_rmse"] < metrics["baseline_test_rmse"]
    assert tags["dagster.run_id"] == bike.outcome.run_id
    assert tags["dagster.partition_range"] == "2010-12-26..2012-12-30"
    model_def = bike.defs.get_assets_def(dg.AssetKey([DATASET, "model"]))
    assert tags["dagster.code_version"] == model_def.code_versions_by_key[dg.AssetKey([DATASET, "model"])]
    assert tags["training_set.data_version"] == latest_metadata("training_set")["data_version"].value
    (dataset_input,) = run.inputs.dataset_inputs  # MLflow's "Datasets": the training set, by its version
    assert dataset_input.dataset.name == "bike_sharing.training_set"
    assert dataset_input.dataset.digest == tags["training_set.data_version"]
    assert tags["promotion.decision"] == "promoted" and "beats baseline" in tags["promotion.reason"]

    version = mlflow_client.get_model_version(DATASET, "1")
    assert set(version.aliases) == {"challenger", "champion"}
    assert version.run_id == run.info.run_id
    assert latest_metadata("model")["model_version"].value == 1
    assert latest_metadata("model")["mlflow_run_id"].value == run.info.run_id

    # The registered model: signature and input example, LightGBM text inside, no pickle anywhere.
    with MlflowResource.from_settings(load_settings()).fluent_api():  # the fluent API reads global URIs
        info = mlflow.models.get_model_info(f"models:/{DATASET}/1")
        root = Path(
            mlflow.artifacts.download_artifacts(f"models:/{DATASET}/1", dst_path=str(bike.home / "dl"))
        )
    assert info.signature is not None and "count_lag_7d" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert "artifacts/lightgbm/model.txt" in files and not [
        f for f in files if f.endswith((".pkl", ".pickle"))
    ]
    assert (root / "artifacts/lightgbm/model.txt").read_text().startswith("tree\n")
    run_files = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "lightgbm")}
    assert run_files == {"lightgbm/model.txt", "lightgbm/model.json"}

    # The pyfunc wrapper scores like the platform does.
    with warehouse_session(load_settings()).conn as conn:
        features = conn.sql("SELECT * FROM bike_sharing.features ORDER BY ts LIMIT 5").df()
    expected = [
        row[0] for row in query("SELECT prediction FROM bike_sharing.predictions ORDER BY ts LIMIT 5")
    ]
    with MlflowResource.from_settings(load_settings()).fluent_api():
        pyfunc = mlflow.pyfunc.load_model(f"models:/{DATASET}@champion")
    # Numbers go in as float64, as the signature says (MLflow's advice for integers that may be missing).
    inputs = features[info.signature.inputs.input_names()].astype("float64")
    assert list(pyfunc.predict(inputs)) == pytest.approx(expected)


def test_evaluation_report_and_summary_show_real_figures(
    bike: BikeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    report = load_settings().reports_dir / DATASET / "version_1" / "report.md"
    assert latest_metadata("evaluation")["report_path"].value == str(report)
    text = report.read_text()
    # Same hour last week beats yesterday on the validation rows (weekday/weekend turns).
    assert "seasonal_lag_7d" in text and "**PROMOTE**" in text
    for plot in ("predicted_vs_actual", "residuals_over_time", "feature_importance"):
        assert (report.parent / f"{plot}.png").stat().st_size > 1000
        assert f"({plot}.png)" in text
    run_id = client().get_model_version(DATASET, "1").run_id
    assert "evaluation/report.md" in {a.path for a in client().list_artifacts(run_id, "evaluation")}

    print_summary(load_settings(), bike.defs, [bike.outcome])
    out = capsys.readouterr().out
    metrics = client().get_run(run_id).data.metrics
    assert f"training_set {BIKE_ROWS:,}, predictions {BIKE_ROWS:,}" in out
    assert "champion: version 1" in out
    assert f"{metrics['test_rmse']:.4g}" in out and f"{metrics['baseline_test_rmse']:.4g}" in out
    assert f"evaluation report: {report}" in out
    assert f"mlflow ui --backend-store-uri {load_settings().mlflow_tracking_uri}" in out
    assert "dagster dev -m mlplatform.definitions" in out


def test_worse_model_is_not_promoted_and_rollback_moves_the_champion(
    bike: BikeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    bundled = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
    weak = ModelSpec(
        params={"num_leaves": 2, "learning_rate": 0.001}, num_boost_round=3, early_stopping_rounds=2
    )
    weak_defs = build_definitions(specs=[bundled.model_copy(update={"model": weak})])
    instance = dg.DagsterInstance.get()
    outcome = run_datasets(weak_defs, [DATASET], instance=instance, stages=["model", "evaluation"])[0]
    assert outcome.success, outcome.failed_steps

    assert alias_version("challenger") == 2 and alias_version("champion") == 1
    version = client().get_model_version(DATASET, "2")
    assert version.tags["promotion_decision"] == "not promoted"
    assert "worse than the champion" in version.tags["promotion_reason"]
    assert client().get_run(version.run_id).data.tags["promotion.decision"] == "not promoted"
    assert latest_metadata("evaluation")["decision"].value == "not promoted"
    assert check_results(outcome.run_id)["bike_sharing/evaluation:model_beats_baseline"] is False

    # Nothing to go back to yet: version 1 is the only champion there has been.
    capsys.readouterr()
    assert cli_main(["rollback", "--dataset", DATASET]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mlplatform: error: bike_sharing has no earlier champion to roll back to (champion: version 1); "
        "name a version with --to"
    ]
    assert cli_main(["rollback", "--dataset", DATASET, "--to", "9"]) == 2
    assert "bike_sharing has no version 9 (versions: [1, 2])" in capsys.readouterr().err
    assert cli_main(["rollback", "--dataset", "nope"]) == 2
    assert "no registered model 'nope'" in capsys.readouterr().err

    assert cli_main(["rollback", "--dataset", DATASET, "--to", "2"]) == 0
    assert "champion moved from version 1 to version 2" in capsys.readouterr().out
    assert alias_version("champion") == 2

    # Evaluating again without a new model re-checks the champion and keeps its record as it was.
    recheck = run_datasets(bike.defs, [DATASET], instance=dg.DagsterInstance.get(), stages=["evaluation"])[0]
    assert recheck.success and latest_metadata("evaluation")["decision"].value == "already champion"
    assert client().get_model_version(DATASET, "2").tags["promotion_decision"] == "not promoted"
    assert (load_settings().reports_dir / DATASET / "version_2" / "recheck" / "report.md").is_file()

    # Re-score the last two weeks: those rows now carry version 2, the rest still version 1.
    job = bike.defs.resolve_job_def(f"{DATASET}__all")
    tags = {ASSET_PARTITION_RANGE_START_TAG: "2012-12-23", ASSET_PARTITION_RANGE_END_TAG: "2012-12-30"}
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(), tags=tags, asset_selection=[dg.AssetKey([DATASET, "predictions"])]
    )
    assert result.success
    rescored = query("SELECT count(*) FROM bike_sharing.features WHERE ts >= '2012-12-23'")[0][0]
    assert query("SELECT model_version, count(*) FROM bike_sharing.predictions GROUP BY 1 ORDER BY 1") == [
        (1, BIKE_ROWS - rescored),
        (2, rescored),
    ]

    assert cli_main(["rollback", "--dataset", DATASET]) == 0  # undo: back to the champion before 2
    assert alias_version("champion") == 1

    runs = client().search_runs([client().get_experiment_by_name(DATASET).experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
