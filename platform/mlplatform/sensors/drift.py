"""`<ds>__drift_sensor`: drift verdicts -> a retraining run, at most once per cool-down.

What it reads: only the materialization events of `<ds>/drift_report` in the Dagster event log (each
partition's event carries that partition's verdict; a run's events come in partition order). It never opens the DuckDB
warehouse: a DuckDB file has one writer process, and a daemon holding it, even read-only, would make
the runs that write it fail. The event log is built for concurrent readers and is small.

The decision (`decide`, pure, also used by the replay with a simulated clock):
* verdicts are read in event order; the latest wins: a drifted verdict becomes the pending drift, a
  later stable one clears it (the newer window no longer looks drifted); an `insufficient_data` one
  (too few rows, or predictions not by the champion) neither requests a retraining nor clears a
  pending drift, and the tick says so: it is never reported as stable;
* pending drift requests `<ds>__retrain` with run key `drift:<ds>:<event id>` unless a retraining is
  in flight or the last request was less than `drift.cooldown` ago (the drift stays pending);
* a requested retraining that failed is requested again (`...:retry<n>`), at most `drift.max_retries`
  times, without waiting for the cool-down: the drift signal is not lost;
* a verdict driven by performance may carry a change point (where the champion's per-partition error
  stepped up, `assets.drift_report`): the request, and its retries, carry it as the run tag
  `TRAIN_FROM_TAG`, and the retraining trains from there (spec `training.change_point`).
The state lives in the sensor cursor (JSON), which Dagster stores with the instance, so it survives
daemon restarts; the run keys make Dagster drop a request it has already launched anyway.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

import dagster as dg

from mlplatform.contracts import TRAIN_FROM_TAG, DriftVerdictMetadata, Stage, VerdictStatus, asset_key
from mlplatform.dagster_adapter import RUN_KEY_TAG, SENSOR_NAME_TAG, UnresolvedAssetJobDefinition
from mlplatform.jobs.dataset_jobs import retrain_job_name
from mlplatform.sensors.common import (
    FAILED_RUN_STATUSES,
    IN_FLIGHT_RUN_STATUSES,
    sensor_interval,
    sensor_status,
)
from mlplatform.settings import Settings
from mlplatform.specs.durations import Duration, parse_calendar_duration
from mlplatform.specs.model import DatasetSpec

_IN_FLIGHT = {status.value for status in IN_FLIGHT_RUN_STATUSES}  # the cursor keeps status values
_FAILED = {status.value for status in FAILED_RUN_STATUSES}
_EVENTS_PER_TICK = 500
_MAX_PAGES = 40  # 20,000 partition events a tick: decades of daily partitions in one run


@dataclass(frozen=True)
class Verdict:
    storage_id: int
    drifted: bool
    partition: str | None = None
    reason: str = ""
    status: str = ""  # a VerdictStatus value; "" in cursors written before it existed
    change_point: str | None = None  # ISO time the retraining should train from

    @property
    def insufficient(self) -> bool:
        return self.status == VerdictStatus.INSUFFICIENT_DATA


@dataclass(frozen=True)
class Request:
    run_key: str
    storage_id: int  # the drift event that caused it
    partition: str | None
    at: str  # ISO time of the (first) request
    attempt: int = 1
    status: str | None = None  # last seen status of its run
    gave_up: bool = False
    train_from: str | None = None  # the change point of the verdict that caused it


@dataclass(frozen=True)
class DriftState:
    last_storage_id: int = 0
    pending: Verdict | None = None
    last_request: Request | None = None
    requests: int = 0

    def to_cursor(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> "DriftState":
        if not cursor:
            return cls()
        data = json.loads(cursor)
        pending = Verdict(**data["pending"]) if data.get("pending") else None
        request = Request(**data["last_request"]) if data.get("last_request") else None
        return cls(data.get("last_storage_id", 0), pending, request, data.get("requests", 0))


@dataclass(frozen=True)
class Decision:
    state: DriftState
    run_key: str | None  # None: no request this tick
    message: str
    retry_of: str | None = None
    train_from: str | None = None  # the request's TRAIN_FROM_TAG

    def tags(self) -> dict[str, str]:
        """The run tags of the request this decision makes."""
        tags = {"mlplatform/trigger": "drift", "mlplatform/drift_reason": self.message[:250]}
        if self.retry_of:
            tags["mlplatform/retry_of"] = self.retry_of
        if self.train_from:
            tags[TRAIN_FROM_TAG] = self.train_from
        return tags


def decide(
    state: DriftState,
    verdicts: Sequence[Verdict],
    run_status: str | None,
    now: datetime,
    cooldown: Duration | timedelta,
    max_retries: int,
    dataset: str,
) -> Decision:
    """One tick of the drift sensor. `run_status`: status of the last requested run (None: unseen)."""
    pending, unjudged = state.pending, None
    for verdict in sorted(verdicts, key=lambda v: v.storage_id):
        if verdict.storage_id <= state.last_storage_id:
            continue
        unjudged = verdict if verdict.insufficient else None
        if not verdict.insufficient:  # not judged: says nothing against a pending drift
            pending = verdict if verdict.drifted else None
    last_id = max([state.last_storage_id, *(v.storage_id for v in verdicts)])
    request = state.last_request
    if request is not None and run_status is not None:
        request = replace(request, status=run_status)
    base = DriftState(last_id, pending, request, state.requests)

    if request is not None and not request.gave_up and request.status in _FAILED:
        if request.attempt > max_retries:
            gave_up = replace(base, last_request=replace(request, gave_up=True))
            return Decision(
                gave_up, None, f"retraining {request.run_key} failed {request.attempt} times; giving up"
            )
        run_key = f"{request.run_key.split(':retry')[0]}:retry{request.attempt}"
        retried = replace(request, run_key=run_key, attempt=request.attempt + 1, status=None)
        # The retry retrains on all data so far (from the same change point), which covers newer drift too.
        new_state = replace(base, pending=None, last_request=retried, requests=state.requests + 1)
        return Decision(
            new_state,
            run_key,
            f"retrying failed retraining ({request.status})",
            retry_of=request.run_key,
            train_from=request.train_from,
        )
    if pending is None:
        if unjudged is not None:
            return Decision(
                base, None, f"no retraining: latest verdict ({unjudged.partition}) {unjudged.reason}"
            )
        return Decision(base, None, "no drift")
    if request is not None and request.status in _IN_FLIGHT:
        return Decision(base, None, f"drift pending; retraining {request.run_key} still {request.status}")
    if request is not None:
        at = datetime.fromisoformat(request.at)
        ready_at = cooldown.after(at) if isinstance(cooldown, Duration) else at + cooldown
        if now < ready_at:
            return Decision(
                base, None, f"drift pending; cool-down until {ready_at.isoformat(timespec='seconds')}"
            )
    run_key = f"drift:{dataset}:{pending.storage_id}"
    new_request = Request(
        run_key, pending.storage_id, pending.partition, now.isoformat(), train_from=pending.change_point
    )
    new_state = replace(base, pending=None, last_request=new_request, requests=state.requests + 1)
    message = f"drift at {pending.partition}: {pending.reason}"
    return Decision(new_state, run_key, message, train_from=pending.change_point)


def read_verdicts(
    instance: dg.DagsterInstance, key: dg.AssetKey, after_storage_id: int, page: int = _EVENTS_PER_TICK
) -> list[Verdict]:
    """Verdicts from drift_report materializations newer than `after_storage_id` (event log only).

    Every new event, read `page` at a time: each partition's event holds its own verdict, so a run of
    more partitions than one page must be read to its newest, or an older drifted partition would
    decide the tick. Bounded at _MAX_PAGES (the rest waits for the next tick).
    """
    verdicts, cursor = [], None
    for _ in range(_MAX_PAGES):
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after_storage_id or None),
            limit=page,
            cursor=cursor,
            ascending=True,
        )
        for record in result.records:
            materialization = record.asset_materialization
            verdict = DriftVerdictMetadata.from_metadata(materialization.metadata if materialization else {})
            if verdict is not None:
                partition = verdict.verdict_partition or None
                verdicts.append(
                    Verdict(
                        record.storage_id,
                        verdict.drifted,
                        partition,
                        verdict.reason,
                        verdict.status.value,
                        verdict.change_point,
                    )
                )
        if not result.has_more:
            break
        cursor = result.cursor
    return verdicts


def run_status(instance: dg.DagsterInstance, sensor_name: str, run_key: str) -> str | None:
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}), limit=1
    )
    return runs[0].status.value if runs else None


def build_drift_sensor(
    spec: DatasetSpec,
    retrain_job: UnresolvedAssetJobDefinition,
    settings: Settings,
    clock: Callable[[], datetime] | None = None,
) -> dg.SensorDefinition:
    drift_key = asset_key(spec, Stage.DRIFT_REPORT)
    cooldown = parse_calendar_duration(spec.drift.cooldown)
    name = f"{spec.name}__drift_sensor"
    now = clock or (lambda: datetime.now(UTC))

    @dg.sensor(
        name=name,
        job=retrain_job,
        minimum_interval_seconds=sensor_interval(settings),
        default_status=sensor_status(settings, spec.name),
        description=(
            f"Requests {retrain_job_name(spec)} when {spec.name}/drift_report's verdict is drifted; at most once "
            f"per {spec.drift.cooldown} (spec drift.cooldown), a failed retraining is retried up to "
            f"{spec.drift.max_retries} time(s). Reads materialization metadata only."
        ),
    )
    def drift_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = DriftState.from_cursor(context.cursor)
        verdicts = read_verdicts(context.instance, drift_key, state.last_storage_id)
        status = (
            run_status(context.instance, name, state.last_request.run_key) if state.last_request else None
        )
        decision = decide(state, verdicts, status, now(), cooldown, spec.drift.max_retries, spec.name)
        context.log.info(decision.message)
        requests = []
        if decision.run_key:
            requests.append(dg.RunRequest(run_key=decision.run_key, tags=decision.tags()))
        return dg.SensorResult(
            run_requests=requests,
            skip_reason=None if requests else dg.SkipReason(decision.message),
            cursor=decision.state.to_cursor(),
        )

    return drift_sensor
