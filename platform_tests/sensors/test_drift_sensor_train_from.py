"""The drift sensor passes a verdict's change point to the retraining as TRAIN_FROM_TAG.

A verdict driven by performance may carry `change_point` (where the champion's per-partition error
stepped up): the run request it causes, a retry of that request and a request delayed by the
cool-down all carry it; a verdict without one requests a retraining without the tag.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from mlplatform.contracts import TRAIN_FROM_TAG, DriftVerdictMetadata, VerdictStatus
from mlplatform.jobs.dataset_jobs import build_retrain_job
from mlplatform.sensors.drift import DriftState, Verdict, build_drift_sensor, decide
from mlplatform.settings import load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import parse_duration

SPEC = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
COOLDOWN = parse_duration(SPEC.drift.cooldown)
DRIFT_KEY = dg.AssetKey(["bike_sharing", "drift_report"])
T0 = datetime(2024, 3, 1, tzinfo=UTC)
CHANGE = "2024-02-12T00:00:00"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def report(instance: dg.DagsterInstance, partition: str, change_point: str | None) -> None:
    """A drifted drift_report event, written through the codec the asset uses."""
    verdict = DriftVerdictMetadata(
        True, partition, "realized performance dropped 30.0% >= 15%", VerdictStatus.DRIFTED, change_point
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(DRIFT_KEY, partition=partition, metadata=verdict.to_metadata())
    )


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_the_codec_round_trips_the_change_point_and_reads_older_events_without_one() -> None:
    verdict = DriftVerdictMetadata(True, "2024-02-28", "dropped", VerdictStatus.DRIFTED, CHANGE)
    assert DriftVerdictMetadata.from_metadata(verdict.to_metadata()) == verdict
    plain = DriftVerdictMetadata(True, "2024-02-28", "dropped", VerdictStatus.DRIFTED)
    assert "change_point" not in plain.to_metadata()
    assert DriftVerdictMetadata.from_metadata(plain.to_metadata()) == plain
    older = {"drifted": True, "verdict_partition": "2024-02-28", "reason": "dropped"}
    read = DriftVerdictMetadata.from_metadata(older)
    assert read is not None and read.change_point is None


def test_a_verdict_with_a_change_point_requests_a_retraining_from_it(instance: dg.DagsterInstance) -> None:
    sensor = build_drift_sensor(SPEC, build_retrain_job(SPEC), load_settings(), clock=Clock())
    report(instance, "2024-02-28", CHANGE)
    [request] = tick(sensor, instance, None).run_requests
    assert request.tags[TRAIN_FROM_TAG] == CHANGE
    assert request.tags["mlplatform/trigger"] == "drift"


def test_a_verdict_without_a_change_point_requests_a_plain_retraining(instance: dg.DagsterInstance) -> None:
    sensor = build_drift_sensor(SPEC, build_retrain_job(SPEC), load_settings(), clock=Clock())
    report(instance, "2024-02-28", None)
    [request] = tick(sensor, instance, None).run_requests
    assert TRAIN_FROM_TAG not in request.tags


def test_a_drift_held_back_by_the_cooldown_keeps_its_change_point_in_the_cursor(
    instance: dg.DagsterInstance,
) -> None:
    clock = Clock()
    sensor = build_drift_sensor(SPEC, build_retrain_job(SPEC), load_settings(), clock=clock)
    report(instance, "2024-02-28", None)
    first = tick(sensor, instance, None)
    assert [TRAIN_FROM_TAG in r.tags for r in first.run_requests] == [False]
    clock.now = T0 + timedelta(days=1)
    report(instance, "2024-02-29", CHANGE)
    waiting = tick(sensor, instance, first.cursor)
    assert not waiting.run_requests and "cool-down" in str(waiting.skip_reason)
    pending = DriftState.from_cursor(waiting.cursor).pending
    assert pending is not None and pending.change_point == CHANGE
    clock.now = T0 + COOLDOWN + timedelta(hours=1)
    [later] = tick(sensor, instance, waiting.cursor).run_requests
    assert later.tags[TRAIN_FROM_TAG] == CHANGE


def test_a_retry_of_a_failed_retraining_trains_from_the_same_change_point() -> None:
    requested = decide(
        DriftState(),
        [Verdict(7, True, "2024-02-28", "dropped", "drifted", CHANGE)],
        None,
        T0,
        COOLDOWN,
        max_retries=1,
        dataset="bike_sharing",
    )
    assert requested.run_key == "drift:bike_sharing:7" and requested.tags()[TRAIN_FROM_TAG] == CHANGE
    state = DriftState.from_cursor(requested.state.to_cursor())  # through the cursor, as between ticks
    retried = decide(state, [], "FAILURE", T0 + timedelta(hours=1), COOLDOWN, 1, "bike_sharing")
    assert retried.run_key == "drift:bike_sharing:7:retry1" and retried.retry_of == "drift:bike_sharing:7"
    assert retried.tags()[TRAIN_FROM_TAG] == CHANGE
