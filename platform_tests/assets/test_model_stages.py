"""Unit tests of the model and monitoring stages' assets (training_set, model, evaluation, predictions,
reference_profile, drift_report) on the tiny dataset, through Dagster's public testing API.

One home for the module (a warehouse file, an MLflow SQLite store and a Dagster instance in a temp
dir): each fixture materializes one stage on top of the previous ones, once, and its test reads what
that stage wrote. January and February are loaded and trained on; March (shifted) only scored.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlplatform.contracts import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    DriftVerdictMetadata,
    MaterializationKey,
    MlflowTag,
    Stage,
)
from platform_tests.assets.tiny import MONTHS, TinyDataset, make_tiny_dataset, metadata_of

JANUARY, FEBRUARY, MARCH = MONTHS
DATA_STAGES = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)


def plain(result: dg.MaterializeResult) -> dict[str, Any]:
    return {name: getattr(value, "value", value) for name, value in (result.metadata or {}).items()}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """The tiny dataset with January and February loaded up to `features`."""
    tiny = make_tiny_dataset(tmp_path_factory.mktemp("tiny_home"))
    for partition in (JANUARY, FEBRUARY):
        tiny.materialize(DATA_STAGES, partition_key=partition)
    return tiny


@pytest.fixture(scope="module")
def training_set(home: TinyDataset) -> dg.MaterializeResult:
    """Invoked directly with `build_asset_context` (it is not partitioned and needs only the warehouse)."""
    context = dg.build_asset_context(resources={"warehouse": home.resources()["warehouse"]})
    result = home.asset(Stage.TRAINING_SET)(context)
    assert isinstance(result, dg.MaterializeResult)
    return result


@pytest.fixture(scope="module")
def model(home: TinyDataset, training_set: dg.MaterializeResult) -> dg.ExecuteInProcessResult:
    return home.materialize([Stage.MODEL])


@pytest.fixture(scope="module")
def evaluation(home: TinyDataset, model: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    return home.materialize([Stage.EVALUATION])


@pytest.fixture(scope="module")
def predictions(
    home: TinyDataset, evaluation: dg.ExecuteInProcessResult
) -> dict[str, dg.ExecuteInProcessResult]:
    """February and March scored by the champion (March loaded first: it arrives after training)."""
    home.materialize(DATA_STAGES, partition_key=MARCH)
    return {p: home.materialize([Stage.PREDICTIONS], partition_key=p) for p in (FEBRUARY, MARCH)}


@pytest.fixture(scope="module")
def reference_profile(home: TinyDataset, evaluation: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    return home.materialize([Stage.REFERENCE_PROFILE])


@pytest.fixture(scope="module")
def drift_reports(
    home: TinyDataset,
    predictions: dict[str, dg.ExecuteInProcessResult],
    reference_profile: dg.ExecuteInProcessResult,
) -> dict[str, dg.ExecuteInProcessResult]:
    return {p: home.materialize([Stage.DRIFT_REPORT], partition_key=p) for p in (FEBRUARY, MARCH)}


def test_training_set_splits_every_labelled_row_by_time(
    home: TinyDataset, training_set: dg.MaterializeResult
) -> None:
    metadata = plain(training_set)
    good = len(home.source.good_records_in(JANUARY)) + len(home.source.good_records_in(FEBRUARY))
    counts = {name: metadata[f"rows_{name}"] for name in ("train", "validation", "test")}
    assert sum(counts.values()) == metadata["dagster/row_count"] == good
    assert metadata["unlabelled_rows_left_out"] == 0
    assert abs(counts["test"] - 0.1 * good) <= 24 and abs(counts["validation"] - 0.1 * good) <= 24
    rows = home.query("SELECT split, count(*), min(ts), max(ts) FROM tiny.training_set GROUP BY split")
    spans = {split: (n, first, last) for split, n, first, last in rows}
    assert {split: n for split, (n, _, _) in spans.items()} == counts
    # By time, never shuffled: every train row before every validation row, before every test row.
    assert spans["train"][2] < spans["validation"][1] and spans["validation"][2] < spans["test"][1]
    assert training_set.data_version is not None
    assert training_set.data_version.value == metadata["data_version"]


def test_model_registers_a_challenger_version_tagged_with_its_run(
    home: TinyDataset, training_set: dg.MaterializeResult, model: dg.ExecuteInProcessResult
) -> None:
    metadata = metadata_of(model, home.key(Stage.MODEL))
    assert metadata[MaterializationKey.MODEL_VERSION] == 1
    assert metadata["training_set_data_version"] == plain(training_set)["data_version"]
    client = home.resources()["mlflow"].client()
    version = client.get_model_version("tiny", "1")
    assert version.tags[MlflowTag.DAGSTER_RUN_ID] == model.run_id
    assert version.tags[MlflowTag.TRAINING_SET_DATA_VERSION] == metadata["training_set_data_version"]
    assert str(client.get_model_version_by_alias("tiny", CHALLENGER_ALIAS).version) == "1"
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["rows_train"] == str(plain(training_set)["rows_train"])
    assert run.data.metrics["test_rmse"] == pytest.approx(metadata["test_rmse"])
    assert 0 < metadata["best_iteration"] <= 60


def test_evaluation_promotes_a_first_model_that_beats_the_baseline(
    home: TinyDataset, evaluation: dg.ExecuteInProcessResult
) -> None:
    metadata = metadata_of(evaluation, home.key(Stage.EVALUATION))
    assert metadata["decision"] == "promoted", metadata["reason"]
    assert metadata["metric"] == "rmse"
    assert metadata["challenger_version"] == metadata["champion_version"] == 1
    assert metadata["previous_champion_version"] == "none"
    assert metadata["challenger_rmse"] < metadata["baseline_rmse"]
    client = home.resources()["mlflow"].client()
    assert str(client.get_model_version_by_alias("tiny", CHAMPION_ALIAS).version) == "1"
    tags = client.get_model_version("tiny", "1").tags
    assert tags[MlflowTag.PROMOTION_DECISION.on_model_version] == "promoted"
    report = Path(metadata["report_path"])
    assert report.is_file() and report.parent == home.settings.reports_dir / "tiny" / "version_1"


def test_predictions_score_every_row_of_their_partition_with_the_champion(
    home: TinyDataset,
    evaluation: dg.ExecuteInProcessResult,
    predictions: dict[str, dg.ExecuteInProcessResult],
) -> None:
    for partition, result in predictions.items():
        metadata = metadata_of(result, home.key(Stage.PREDICTIONS))
        assert metadata["dagster/row_count"] == len(home.source.good_records_in(partition))
        assert metadata["model_version"] == 1
    # Each row named by its time and the spec's unique id, with the actual value (all labelled here).
    columns = [c for c, *_ in home.query("DESCRIBE tiny.predictions")]
    assert columns == ["ts", "id", "prediction", "model_version", "inputs_hash", "actual"]
    unmatched = home.query(
        "SELECT count(*) FROM tiny.predictions p LEFT JOIN tiny.clean c USING (id) "
        "WHERE c.value IS DISTINCT FROM p.actual OR c.ts <> p.ts"
    )
    assert unmatched == [(0,)]
    per_month = home.query(
        "SELECT strftime(ts, '%Y-%m-01'), count(*), count(prediction), min(model_version), max(model_version) "
        "FROM tiny.predictions GROUP BY 1 ORDER BY 1"
    )
    expected = [(p, len(home.source.good_records_in(p))) for p in (FEBRUARY, MARCH)]
    assert [(month, n) for month, n, *_ in per_month] == expected
    assert all(scored == n and versions == [1, 1] for _, n, scored, *versions in per_month)
    # The champion's predictions, not any numbers: on February they beat the evaluation's baseline.
    values = {r["stamp"]: float(r["value"]) for r in home.source.good_records_in(FEBRUARY)}
    scored = home.query("SELECT strftime(ts, '%Y-%m-%d %H:%M'), prediction FROM tiny.predictions")
    errors = [(prediction - values[stamp]) ** 2 for stamp, prediction in scored if stamp in values]
    assert len(errors) == len(values)
    baseline = metadata_of(evaluation, home.key(Stage.EVALUATION))["baseline_rmse"]
    assert math.sqrt(sum(errors) / len(errors)) < baseline


def test_reference_profile_describes_the_champions_training_rows(
    home: TinyDataset,
    training_set: dg.MaterializeResult,
    model: dg.ExecuteInProcessResult,
    reference_profile: dg.ExecuteInProcessResult,
) -> None:
    metadata = metadata_of(reference_profile, home.key(Stage.REFERENCE_PROFILE))
    split_rows = plain(training_set)
    assert metadata["champion_version"] == 1
    assert metadata["training_rows"] == split_rows["rows_train"]
    assert metadata["test_rows"] == split_rows["rows_test"]
    # The champion's error on its test rows, as its training run measured it on the same rows.
    assert metadata["reference_metric"] == "rmse"
    trained = metadata_of(model, home.key(Stage.MODEL))
    assert metadata["reference_error"] == pytest.approx(trained["test_rmse"], rel=1e-6)
    [(rows, versions)] = home.query(
        "SELECT count(*), list(DISTINCT model_version) FROM tiny.reference_profile"
    )
    assert rows == metadata["dagster/row_count"] and versions == [1]
    profiled = {name for (name,) in home.query("SELECT DISTINCT feature FROM tiny.reference_profile")}
    assert {"x", "kind", "x_mean_1d", "value", "prediction"} <= profiled


def test_reference_profile_reuses_the_champions_predictions_and_profiles_the_same(
    home: TinyDataset,
    predictions: dict[str, dg.ExecuteInProcessResult],
    reference_profile: dg.ExecuteInProcessResult,
) -> None:
    """With February scored, its split rows' outputs come from the predictions table; the profile is
    the one scoring every row gives (the first build may have run before or after the scoring)."""
    profile_sql = "SELECT feature, kind, key, value FROM tiny.reference_profile ORDER BY ALL"
    before = home.query(profile_sql)
    again = metadata_of(home.materialize([Stage.REFERENCE_PROFILE]), home.key(Stage.REFERENCE_PROFILE))
    [(scored_split_rows,)] = home.query(
        "SELECT count(*) FROM tiny.training_set t JOIN tiny.predictions p USING (id) WHERE p.model_version = 1"
    )
    assert scored_split_rows > 0
    assert again["outputs_from_predictions"] == scored_split_rows
    assert home.query(profile_sql) == before


def test_drift_report_flags_the_shifted_month_and_not_the_one_trained_on(
    home: TinyDataset, drift_reports: dict[str, dg.ExecuteInProcessResult]
) -> None:
    verdicts = {}
    for partition, result in drift_reports.items():
        verdict = DriftVerdictMetadata.from_metadata(metadata_of(result, home.key(Stage.DRIFT_REPORT)))
        assert verdict is not None and verdict.verdict_partition == partition
        verdicts[partition] = verdict
    assert not verdicts[FEBRUARY].drifted, verdicts[FEBRUARY].reason
    assert verdicts[MARCH].drifted, verdicts[MARCH].reason
    stored = home.query(
        "SELECT strftime(partition_start, '%Y-%m-%d'), drifted, reason, n_rows, drifted_columns "
        "FROM tiny.drift_verdict ORDER BY 1"
    )
    assert [(p, d, r[: DriftVerdictMetadata.REASON_LIMIT]) for p, d, r, *_ in stored] == [
        (p, v.drifted, v.reason) for p, v in verdicts.items()
    ]
    # Each partition is judged on the trailing drift.window of rows ending with it: by default one
    # partition on monthly partitions (1mo), so the whole calendar month.
    assert home.spec.drift.window == "1mo"
    ends = {FEBRUARY: datetime(2024, 3, 1), MARCH: datetime(2024, 4, 1)}
    for partition, n_rows, columns in [(p, n, c) for p, _, _, n, c in stored]:
        in_window = [
            r
            for r in home.source.good_records_in(partition)
            if datetime.strptime(r["stamp"], "%Y-%m-%d %H:%M") < ends[partition]
        ]
        assert n_rows == len(in_window) == {FEBRUARY: 29 * 24 - 1, MARCH: 31 * 24}[partition]
        assert ("x" in columns.split(", ")) == (partition == MARCH)
