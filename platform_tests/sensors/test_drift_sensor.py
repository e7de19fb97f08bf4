"""drift_sensor with build_sensor_context: requests, run keys, cool-down, retries, cursor."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.test_utils import create_run_for_test

from mlplatform.jobs.dataset_jobs import build_retrain_job, retrain_job_name
from mlplatform.sensors.drift import DriftState, Verdict, build_drift_sensor, decide, read_verdicts
from mlplatform.settings import load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import parse_duration

SPEC = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
COOLDOWN = parse_duration(SPEC.drift.cooldown)
DRIFT_KEY = dg.AssetKey(["bike_sharing", "drift_report"])
T0 = datetime(2024, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sensor(clock: Clock) -> dg.SensorDefinition:
    return build_drift_sensor(SPEC, build_retrain_job(SPEC), load_settings(), clock=clock)


def report(instance: dg.DagsterInstance, partition: str, drifted: bool) -> None:
    """What a drift_report materialization leaves in the event log."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            DRIFT_KEY,
            partition=partition,
            metadata={"drifted": drifted, "verdict_partition": partition, "reason": "test verdict"},
        )
    )


class Ticker:
    """Evaluates the sensor like the daemon does: each tick starts from the previous tick's cursor."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> None:
        self.sensor, self.instance, self.cursor = sensor, instance, None

    def tick(self) -> list[dg.RunRequest]:
        result = self.sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor))
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def finish(self, request: dg.RunRequest, status: dg.DagsterRunStatus) -> None:
        """The run the daemon would have launched for `request`, ended with `status`."""
        create_run_for_test(
            self.instance,
            job_name=retrain_job_name(SPEC),
            status=status,
            tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: self.sensor.name},
        )


def test_no_drift_no_request(sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> None:
    ticker = Ticker(sensor, instance)
    assert ticker.tick() == []
    report(instance, "2024-02-28", drifted=False)
    assert ticker.tick() == []


def test_drift_requests_the_retraining_job_once(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance
) -> None:
    ticker = Ticker(sensor, instance)
    report(instance, "2024-02-28", drifted=True)
    requests = ticker.tick()
    assert len(requests) == 1
    assert requests[0].run_key.startswith("drift:bike_sharing:")
    assert requests[0].tags["mlplatform/trigger"] == "drift"
    assert sensor.job_name == retrain_job_name(SPEC)


def test_same_drift_twice_one_request(sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> None:
    ticker = Ticker(sensor, instance)
    report(instance, "2024-02-28", drifted=True)
    first = ticker.tick()
    assert len(first) == 1
    assert ticker.tick() == []  # the cursor moved past the event
    # Even a lost cursor asks for the same run key, which Dagster drops as already launched.
    fresh = sensor(dg.build_sensor_context(instance=instance, cursor=None))
    assert [r.run_key for r in fresh.run_requests] == [first[0].run_key]


def test_cooldown_is_respected_and_the_drift_stays_pending(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, clock: Clock
) -> None:
    ticker = Ticker(sensor, instance)
    report(instance, "2024-02-28", drifted=True)
    first = ticker.tick()
    ticker.finish(first[0], dg.DagsterRunStatus.SUCCESS)
    clock.now = T0 + timedelta(days=1)
    report(instance, "2024-02-29", drifted=True)
    assert ticker.tick() == []
    clock.now = T0 + COOLDOWN - timedelta(hours=1)
    assert ticker.tick() == []
    clock.now = T0 + COOLDOWN + timedelta(hours=1)
    second = ticker.tick()
    assert len(second) == 1 and second[0].run_key != first[0].run_key
    assert DriftState.from_cursor(ticker.cursor).requests == 2


def test_failed_retraining_is_retried_once(sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> None:
    ticker = Ticker(sensor, instance)
    report(instance, "2024-02-28", drifted=True)
    first = ticker.tick()
    ticker.finish(first[0], dg.DagsterRunStatus.FAILURE)
    retry = ticker.tick()
    assert [r.run_key for r in retry] == [f"{first[0].run_key}:retry1"]
    assert retry[0].tags["mlplatform/retry_of"] == first[0].run_key
    ticker.finish(retry[0], dg.DagsterRunStatus.FAILURE)
    assert SPEC.drift.max_retries == 1
    assert ticker.tick() == []  # bounded
    assert DriftState.from_cursor(ticker.cursor).last_request.gave_up


def test_no_new_request_while_a_retraining_runs(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, clock: Clock
) -> None:
    ticker = Ticker(sensor, instance)
    report(instance, "2024-02-28", drifted=True)
    first = ticker.tick()
    ticker.finish(first[0], dg.DagsterRunStatus.STARTED)
    clock.now = T0 + 2 * COOLDOWN
    report(instance, "2024-03-30", drifted=True)
    assert ticker.tick() == []


def test_cursor_survives_a_restart(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, clock: Clock
) -> None:
    ticker = Ticker(sensor, instance)
    report(instance, "2024-02-28", drifted=True)
    assert len(ticker.tick()) == 1
    restarted = Ticker(
        build_drift_sensor(SPEC, build_retrain_job(SPEC), load_settings(), clock=clock), instance
    )
    restarted.cursor = ticker.cursor  # Dagster stores the cursor with the instance
    assert restarted.tick() == []


def test_latest_verdict_wins() -> None:
    now, cooldown = T0, timedelta(days=7)
    drifted_then_stable = [Verdict(1, True, "d1"), Verdict(2, False, "d2")]
    decision = decide(DriftState(), drifted_then_stable, None, now, cooldown, 1, "ds")
    assert decision.run_key is None and decision.state.pending is None
    stable_then_drifted = [Verdict(3, False, "d3"), Verdict(4, True, "d4")]
    decision = decide(decision.state, stable_then_drifted, None, now, cooldown, 1, "ds")
    assert decision.run_key == "drift:ds:4"


def test_a_run_of_more_partitions_than_a_page_is_read_to_its_newest(instance: dg.DagsterInstance) -> None:
    """Each partition's event has its own verdict; the newest (stable) one must win over older drifted ones."""
    days = [(T0 + timedelta(days=i)).date().isoformat() for i in range(25)]
    for day in days:
        report(instance, day, drifted=day != days[-1])
    verdicts = read_verdicts(instance, DRIFT_KEY, 0, page=10)
    assert [v.partition for v in verdicts] == days
    decision = decide(DriftState(), verdicts, None, T0, COOLDOWN, SPEC.drift.max_retries, SPEC.name)
    assert decision.run_key is None
