"""The model events of the tiny dataset, end to end in one platform home: the first promotion, a drift
verdict that the real drift sensor turns into a retraining run, that run's promotion, and a rollback
by the `mlplatform rollback` command; each sends one alert to the webhook and one e-mail."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.contracts import MaterializationKey, Stage
from mlplatform.dagster_adapter import RUN_KEY_TAG, SENSOR_NAME_TAG
from mlplatform.home import open_instance, prepare_home
from platform_tests.alerts.receivers import smtp_receiver, webhook_receiver
from platform_tests.alerts.tiny_alerts import DAGSTER_URL, WEBHOOK_ENV, Ticker, alerting_tiny, alerts_sensor
from platform_tests.assets.tiny import MONTHS, TinyDataset, metadata_of
from platform_tests.conftest import mlplatform_cli

DATA_STAGES = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)
JANUARY, FEBRUARY, MARCH = MONTHS


def champion_before_drift(tiny: TinyDataset) -> None:
    """January and February trained on and promoted; March (shifted) scored and judged drifted."""
    for partition in (JANUARY, FEBRUARY):
        tiny.materialize(DATA_STAGES, partition_key=partition)
    evaluation = tiny.materialize([Stage.TRAINING_SET, Stage.MODEL, Stage.EVALUATION])
    assert (
        metadata_of(evaluation, tiny.key(Stage.EVALUATION))[MaterializationKey.DECISION.value] == "promoted"
    )
    tiny.materialize([Stage.REFERENCE_PROFILE])
    tiny.materialize(DATA_STAGES, partition_key=MARCH)
    tiny.materialize([Stage.PREDICTIONS], partition_key=MARCH)
    report = tiny.materialize([Stage.DRIFT_REPORT], partition_key=MARCH)
    assert metadata_of(report, tiny.key(Stage.DRIFT_REPORT))["drifted"] is True


def retrain_as_the_daemon_would(tiny: TinyDataset) -> dg.ExecuteInProcessResult:
    """The drift sensor's request, run like the daemon launches it (its run key and sensor tags)."""
    sensor = next(s for s in tiny.built.automation.sensors if s.name == "tiny__drift_sensor")
    result = sensor(dg.build_sensor_context(instance=tiny.instance))
    (request,) = result.run_requests
    defs = dg.Definitions(
        assets=tiny.assets, asset_checks=tiny.built.checks, jobs=tiny.built.jobs, resources=tiny.resources()
    )
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor.name}
    return defs.resolve_job_def("tiny__retrain").execute_in_process(instance=tiny.instance, tags=tags)


@pytest.mark.e2e
def test_promotion_drift_retraining_and_rollback_each_send_one_alert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_receiver() as hook, smtp_receiver() as smtp:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        built = alerting_tiny(tmp_path, dg.DagsterInstance.ephemeral(), smtp.port)
        home = built.settings.home
        prepare_home(built.settings)
        with open_instance(built.settings) as instance:
            # The home's Dagster instance and MLflow store: what `mlplatform rollback --home` opens.
            tiny = replace(built, instance=instance, mlflow_root=home)
            ticker = Ticker(alerts_sensor(tiny), instance)
            ticker.tick()

            champion_before_drift(tiny)
            assert ticker.tick().startswith("2 alert message(s) sent, 0 waiting")  # webhook and e-mail
            (first,) = hook.texts()
            assert first.startswith("tiny: model version 1 promoted to champion (before: no champion)")
            assert "\nscores: rmse: challenger " in first and ", baseline " in first

            retraining = retrain_as_the_daemon_would(tiny)
            assert retraining.success
            decision = metadata_of(retraining, tiny.key(Stage.EVALUATION))
            ticker.tick()
            texts = hook.texts()[1:]
            (drift,) = [t for t in texts if "drift triggered retraining" in t]
            assert drift.startswith(
                f"tiny: drift triggered retraining (run {retraining.run_id[:8]} of tiny__retrain)"
            )
            assert "partition: 2024-03-01" in drift and drift.endswith(
                f"{DAGSTER_URL}/runs/{retraining.run_id}"
            )
            promoted = [t for t in texts if "promoted to champion" in t]
            if decision[MaterializationKey.DECISION.value] == "promoted":
                assert len(promoted) == 1 and promoted[0].startswith(
                    "tiny: model version 2 promoted to champion (before: version 1)"
                )
                assert promoted[0].endswith(f"/runs/{retraining.run_id}")
                command, expected = ["rollback", "--dataset", "tiny"], "from version 2 to version 1"
            else:
                assert promoted == []
                command, expected = (
                    ["rollback", "--dataset", "tiny", "--to", "2"],
                    "from version 1 to version 2",
                )

            sent_before = len(hook.payloads)
            cli = mlplatform_cli(*command, "--home", str(home), home=home)
            assert cli.returncode == 0, cli.stderr
            assert ticker.tick().startswith("2 alert message(s) sent, 0 waiting")
            rollback = hook.texts()[-1]
            assert rollback.splitlines()[0] == f"tiny: champion rolled back {expected}"
            assert (
                rollback.endswith(f"{DAGSTER_URL}/assets/tiny/model")
                and len(hook.payloads) == sent_before + 1
            )
            assert ticker.tick().startswith("0 alert message(s) sent, 0 waiting")
    assert smtp.bodies() == [text + "\n" for text in hook.texts()]
