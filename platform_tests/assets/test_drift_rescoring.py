"""Verdicts never say "stable" about nothing, and a change of champion re-scores what it affects.

One tiny home for the module (monthly partitions, hourly rows; see tiny.py): January and February
trained on, March scored. Then a retraining that promotes version 2, and a rollback to version 1: each
leaves predictions by the previous champion, whose verdict is `insufficient_data`, until the
`<ds>__rescore_sensor`'s request is run; afterwards the partitions carry the champion's version and the
verdict judges prediction drift and performance again.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import create_run_for_test

from mlplatform import cli
from mlplatform.contracts import CHAMPION_ALIAS, DriftVerdictMetadata, Stage, VerdictStatus
from mlplatform.dagster_adapter import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
)
from mlplatform.factory import build_dataset
from mlplatform.home import open_instance, prepare_home
from mlplatform.jobs.dataset_jobs import RESCORE_STAGES, ingest_job_name, job_name
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import (
    MONTHS,
    NAME,
    TinyDataset,
    make_tiny_dataset,
    metadata_of,
    tiny_spec_dict,
)

JANUARY, FEBRUARY, MARCH = MONTHS
DATA = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)
TRAIN = (Stage.TRAINING_SET, Stage.MODEL, Stage.EVALUATION, Stage.REFERENCE_PROFILE)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyDataset]:
    """Version 1 trained on January and February; February and March scored and judged by it.

    Its state is where the home's settings put it (warehouse, MLflow store, Dagster instance), so the
    `mlplatform` commands see it too."""
    root = tmp_path_factory.mktemp("tiny_rescore")
    tiny = make_tiny_dataset(root)
    (root / "specs").mkdir()
    (root / "specs" / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec_dict(tiny.source.path)))
    settings = tiny.settings
    prepare_home(settings)
    with open_instance(settings) as instance:
        tiny = replace(
            tiny,
            warehouse_path=Path(settings.warehouse_for(NAME)),
            mlflow_root=settings.home,
            instance=instance,
        )
        materialize_range(tiny, DATA, JANUARY, FEBRUARY)
        tiny.materialize(TRAIN)
        tiny.materialize(DATA, partition_key=MARCH)
        materialize_range(tiny, [Stage.PREDICTIONS, Stage.DRIFT_REPORT], FEBRUARY, MARCH)
        yield tiny


@pytest.fixture
def in_home(home: TinyDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a user of the home: its folder and spec folder, nothing else."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLPLATFORM_WAREHOUSE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLPLATFORM_HOME", str(home.settings.home))
    monkeypatch.setenv("DAGSTER_HOME", str(home.settings.dagster_home))
    monkeypatch.setenv("MLPLATFORM_SPECS", str(home.source.path.parent / "specs"))


def materialize_range(
    home: TinyDataset, stages: Sequence[Stage], first: str, last: str, assets: Sequence[Any] = ()
) -> dg.ExecuteInProcessResult:
    """One run over the partitions first .. last, as a single-run backfill does."""
    return dg.materialize(
        assets or home.assets,
        selection=[home.key(stage) for stage in stages],
        resources=home.resources(),
        instance=home.instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
    )


def champion(home: TinyDataset) -> int:
    return int(home.resources()["mlflow"].get_alias_version(home.spec.name, CHAMPION_ALIAS).version)


def verdict(home: TinyDataset, partition: str) -> dict[str, Any]:
    names = ["status", "drifted", "outputs_judged", "current_error", "reason", "reference_version"]
    [row] = home.query(
        f"SELECT {', '.join(names)} FROM tiny.drift_verdict WHERE partition_start = CAST(? AS TIMESTAMP)",
        [partition],
    )
    return dict(zip(names, row, strict=True))


def scored_versions(home: TinyDataset) -> list[tuple[str, int]]:
    return home.query(
        "SELECT DISTINCT strftime(date_trunc('month', ts), '%Y-%m-%d'), model_version "
        "FROM tiny.predictions ORDER BY 1"
    )


def rescore_sensor(home: TinyDataset) -> dg.SensorDefinition:
    return next(s for s in home.built.automation.sensors if s.name == "tiny__rescore_sensor")


def tick(home: TinyDataset, cursor: str | None) -> tuple[list[dg.RunRequest], str | None]:
    result = rescore_sensor(home)(dg.build_sensor_context(instance=home.instance, cursor=cursor))
    return list(result.run_requests or []), result.cursor


def tick_result(home: TinyDataset, cursor: str | None) -> dg.SensorResult:
    return rescore_sensor(home)(dg.build_sensor_context(instance=home.instance, cursor=cursor))


def launched(home: TinyDataset, request: dg.RunRequest, status: dg.DagsterRunStatus) -> None:
    """The run the daemon would have launched for `request`, ended with `status`."""
    tags = {RUN_KEY_TAG: str(request.run_key), SENSOR_NAME_TAG: rescore_sensor(home).name}
    create_run_for_test(home.instance, job_name=f"{NAME}__rescore", status=status, tags=tags)


def run_request(home: TinyDataset, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """What the daemon launches for the request: `<ds>__rescore` over the requested range."""
    return dg.materialize(
        home.assets,
        selection=[home.key(stage) for stage in RESCORE_STAGES],
        resources=home.resources(),
        instance=home.instance,
        tags=request.tags,
    )


def test_version_1_judges_its_own_predictions(home: TinyDataset) -> None:
    assert champion(home) == 1 and scored_versions(home) == [(FEBRUARY, 1), (MARCH, 1)]
    judged = verdict(home, MARCH)
    assert judged["status"] == VerdictStatus.DRIFTED and judged["outputs_judged"]  # March is shifted
    assert judged["current_error"] is not None


def test_a_retraining_re_scores_the_partitions_it_affects(home: TinyDataset) -> None:
    _, cursor = tick(home, None)  # the sensor's first tick: version 1's promotion, all scored by it
    assert tick(home, cursor)[0] == []

    home.materialize(TRAIN)  # the retraining: trained on March too, it beats version 1
    assert champion(home) == 2
    for partition in (FEBRUARY, MARCH):  # judged again before any re-scoring
        stale = home.materialize([Stage.DRIFT_REPORT], partition_key=partition)
        read = DriftVerdictMetadata.from_metadata(metadata_of(stale, home.key(Stage.DRIFT_REPORT)))
        assert read is not None and read.status != VerdictStatus.STABLE, read
        assert "predictions are by version 1, the reference profile is of version 2" in read.reason
        assert "prediction drift and performance unjudged" in read.reason
        assert not verdict(home, partition)["outputs_judged"]

    for job in (job_name(home.spec), ingest_job_name(home.spec)):  # they score with the new champion
        busy = create_run_for_test(home.instance, job_name=job, status=dg.DagsterRunStatus.STARTED)
        waiting = tick_result(home, cursor)
        assert not waiting.run_requests and waiting.cursor == cursor
        assert f"waiting: {job} run {busy.run_id} is STARTED" in str(waiting.skip_reason)
        home.instance.delete_run(busy.run_id)
    [request], cursor = tick(home, cursor)
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == FEBRUARY
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == MARCH
    launched(home, request, dg.DagsterRunStatus.FAILURE)
    [retry], cursor = tick(home, cursor)  # drift.max_retries is 1: once more, under a new run key
    assert (
        retry.run_key == f"{request.run_key}:retry1" and retry.tags["mlplatform/retry_of"] == request.run_key
    )
    launched(home, retry, dg.DagsterRunStatus.CANCELED)
    given_up = tick_result(home, cursor)
    assert not given_up.run_requests and "giving up" in str(given_up.skip_reason)
    cursor = given_up.cursor
    assert tick(home, cursor)[0] == []
    assert run_request(home, retry).success  # by hand, e.g. `mlplatform rescore`
    assert scored_versions(home) == [(FEBRUARY, 2), (MARCH, 2)]
    for partition in (FEBRUARY, MARCH):
        rescored = verdict(home, partition)
        assert rescored["outputs_judged"] and rescored["reference_version"] == 2, rescored
        assert rescored["status"] != VerdictStatus.INSUFFICIENT_DATA and rescored["current_error"] is not None
    assert tick(home, cursor)[0] == []  # nothing left scored by another version


def test_rollback_then_the_printed_rescore_command_judges_the_old_champion_again(
    home: TinyDataset, in_home: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert champion(home) == 2 and scored_versions(home) == [(FEBRUARY, 2), (MARCH, 2)]
    sensor_cursor = tick(home, None)[1]
    assert cli.main(["rollback", "--dataset", NAME]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert champion(home) == 1 and printed[-1] == f"re-score with it: mlplatform rescore --dataset {NAME}"
    # The daemon's sensor sees the rollback too; here the printed command re-scores instead.
    [request], _ = tick(home, sensor_cursor)
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        FEBRUARY,
        MARCH,
    )
    command = shlex.split(printed[-1].removeprefix("re-score with it: "))
    assert command[0] == "mlplatform" and cli.main(command[1:]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{NAME}: re-scored {FEBRUARY} .. {MARCH}")
    assert scored_versions(home) == [(FEBRUARY, 1), (MARCH, 1)]
    for partition in (FEBRUARY, MARCH):
        back = verdict(home, partition)
        assert back["outputs_judged"] and back["reference_version"] == 1 and back["current_error"] is not None
    assert tick(home, sensor_cursor)[0] == []  # nothing left for the sensor
    assert cli.main(command[1:]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{NAME}: every scored partition is by the champion, version 1"
    ]


@pytest.mark.parametrize(
    ("drift", "reason"),
    [
        ({"window": "1m"}, "insufficient data: no rows in the window (rows are about 1 hour(s) apart"),
        ({"window": "7d", "min_rows": 1000}, "insufficient data: 168 row(s) in the window, fewer than"),
    ],
)
def test_windows_too_short_to_judge_are_insufficient_data_never_stable(
    home: TinyDataset, drift: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The tiny monthly spec with a window shorter than its partitions (logged when it loads)."""
    with caplog.at_level(logging.WARNING, logger="mlplatform.specs"):
        spec = DatasetSpec.model_validate({**tiny_spec_dict(home.source.path), "drift": drift})
    assert f"spec tiny: drift.window {drift['window']} is shorter than one partition" in caplog.text
    short = build_dataset(spec, settings=home.settings)
    result = materialize_range(home, [Stage.DRIFT_REPORT], FEBRUARY, MARCH, short.assets)
    warnings = [
        entry.user_message
        for entry in home.instance.all_logs(result.run_id)
        if entry.level == logging.WARNING and "hold no rows" in entry.user_message
    ]
    if drift["window"] == "1m":  # once for the run, naming the spacing and the setting to change
        assert warnings == [
            "tiny/drift_report: 2 of 2 partition window(s) hold no rows (rows are about 1 hour(s) apart, "
            "more than drift.window 1m: set a drift.window spanning enough rows to judge, at least "
            "drift.min_rows)"
        ]
    else:
        assert warnings == []
    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key == home.key(Stage.DRIFT_REPORT)
    ]
    assert len(events) == 2
    for event in events:
        read = DriftVerdictMetadata.from_metadata(
            {k: v.value for k, v in event.materialization.metadata.items()}
        )
        assert read is not None and read.status == VerdictStatus.INSUFFICIENT_DATA and not read.drifted
    for partition in (FEBRUARY, MARCH):
        stored = verdict(home, partition)
        assert stored["status"] == VerdictStatus.INSUFFICIENT_DATA and not stored["drifted"]
        assert stored["reason"].startswith(reason) and "stable" not in stored["reason"]
