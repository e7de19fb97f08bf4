"""`<ds>__rescore_sensor`: after a change of champion, re-score the predictions it affects.

The champion changes by a promotion (a `<ds>/evaluation` materialization: `<ds>__retrain`, requested by
the drift sensor, or by hand) or by `mlplatform rollback` (an observation of `<ds>/model`). Predictions
by another version cannot be judged against the champion's reference (their verdicts say
`insufficient_data`: prediction drift and performance unjudged), so the sensor requests `<ds>__rescore`
(reference_profile -> predictions -> drift_report) for the partitions whose latest predictions are not by
the champion (core.rescoring), as one run over the range from the first to the last of them.

Event log only, like the drift sensor (the daemon never opens the DuckDB file); it reads the latest
predictions event of each partition, so a tick costs the number of partitions, not the history. It
waits while a `<ds>__retrain`, `<ds>__rescore`, `<ds>__all` or `<ds>__ingest` run is in flight (the
last two score with the champion they promote), and looks again whenever predictions were
materialized since (an ingest run that started before the change scores with the old champion).
A failed or canceled re-scoring is requested again (`...:retry<n>`), at most `drift.max_retries` times.
The cursor (JSON) holds the last event read of each kind, the champion they name and the last request.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import dagster as dg

from mlplatform.contracts import MaterializationKey, Stage, asset_key, metadata_value
from mlplatform.core.rescoring import (
    ChampionEvent,
    champion_version,
    latest_change,
    partitions_to_rescore,
    rescore_range,
)
from mlplatform.dagster_adapter import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    UnresolvedAssetJobDefinition,
)
from mlplatform.jobs.dataset_jobs import ingest_job_name, job_name, rescore_job_name, retrain_job_name
from mlplatform.sensors.alert_events import ROLLBACK
from mlplatform.sensors.common import (
    FAILED_RUN_STATUSES,
    IN_FLIGHT_RUN_STATUSES,
    sensor_interval,
    sensor_status,
)
from mlplatform.sensors.drift import run_status
from mlplatform.settings import Settings
from mlplatform.specs.model import DatasetSpec

_PAGE = 1000
_FAILED = {status.value for status in FAILED_RUN_STATUSES}


@dataclass(frozen=True)
class RescoreState:
    change_mark: int = 0  # newest champion-change event read (evaluation or model observation)
    predictions_mark: int = 0  # newest predictions event when the partitions were last compared
    champion: int | None = None
    change_id: int = 0  # the event that made it champion
    request_key: str = ""  # run key of the last request ("" none, or given up)
    attempt: int = 0  # retries of it so far

    def to_cursor(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> RescoreState:
        return cls(**json.loads(cursor)) if cursor else cls()


def _metadata(record: dg.EventLogRecord) -> dict[str, Any]:
    event = record.asset_materialization or record.asset_observation
    return {key: metadata_value(value) for key, value in (event.metadata if event else {}).items()}


def champion_changes(instance: dg.DagsterInstance, spec: DatasetSpec, after: int) -> list[ChampionEvent]:
    """Evaluations (each names the champion after it) and rollbacks newer than `after`."""
    found = []
    evaluations = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(spec, Stage.EVALUATION), after_storage_id=after or None),
        limit=_PAGE,
    )
    for record in evaluations.records:
        version = champion_version(_metadata(record).get(MaterializationKey.CHAMPION_VERSION.value))
        if version is not None:
            found.append(ChampionEvent(record.storage_id, version, "evaluation"))
    observations = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key(spec, Stage.MODEL), after_storage_id=after or None),
        limit=_PAGE,
    )
    for record in observations.records:
        metadata = _metadata(record)
        version = champion_version(metadata.get(MaterializationKey.CHAMPION_VERSION.value))
        if metadata.get(MaterializationKey.CHAMPION_CHANGE.value) == ROLLBACK and version is not None:
            found.append(ChampionEvent(record.storage_id, version, ROLLBACK))
    return found


def newest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else 0


def latest_prediction_versions(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, int | None]:
    """The model version of each partition's latest predictions (metadata `model_version`): one event
    per partition is read, however often the partitions were scored before."""
    latest_ids = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    ids = sorted(latest_ids.values())
    latest: dict[str, int | None] = {}
    for start in range(0, len(ids), _PAGE):
        chunk = ids[start : start + _PAGE]
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        )
        for record in result.records:
            if record.partition_key is not None:
                version = _metadata(record).get(MaterializationKey.MODEL_VERSION.value)
                latest[record.partition_key] = champion_version(version)
    return latest


def rescore_bounds(
    instance: dg.DagsterInstance,
    dataset: str,
    partitions: dg.PartitionsDefinition,
    champion: int,
) -> tuple[str, str] | None:
    """First and last partition whose latest predictions are not by `champion` (None: there are none)."""
    position = {key: i for i, key in enumerate(partitions.get_partition_keys())}
    scored = latest_prediction_versions(instance, dg.AssetKey([dataset, str(Stage.PREDICTIONS)]))
    versions = {key: version for key, version in scored.items() if key in position}
    return rescore_range(partitions_to_rescore(versions, champion, position.__getitem__))


def rescore_tags(bounds: tuple[str, str], champion: int) -> dict[str, str]:
    """The tags of a `<ds>__rescore` run over `bounds` (a single-run partition range)."""
    return {
        ASSET_PARTITION_RANGE_START_TAG: bounds[0],
        ASSET_PARTITION_RANGE_END_TAG: bounds[1],
        "mlplatform/trigger": "champion_change",
        "mlplatform/champion_version": str(champion),
    }


def busy_run(instance: dg.DagsterInstance, spec: DatasetSpec) -> str | None:
    """A run of the dataset still queued or running that may promote or score (and so re-score itself)."""
    jobs = (retrain_job_name(spec), rescore_job_name(spec), job_name(spec), ingest_job_name(spec))
    for job in jobs:
        runs = instance.get_runs(dg.RunsFilter(job_name=job, statuses=list(IN_FLIGHT_RUN_STATUSES)), limit=1)
        if runs:
            return f"{job} run {runs[0].run_id} is {runs[0].status.value}"
    return None


def rescore_sensor_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__rescore_sensor"


def _skip(message: str, state: RescoreState | str | None) -> dg.SensorResult:
    cursor = state.to_cursor() if isinstance(state, RescoreState) else state
    return dg.SensorResult(skip_reason=dg.SkipReason(message), cursor=cursor)


def failed_request(instance: dg.DagsterInstance, spec: DatasetSpec, state: RescoreState) -> str | None:
    """The status of the last requested re-scoring if it failed or was canceled (None otherwise)."""
    if not state.request_key:
        return None
    status = run_status(instance, rescore_sensor_name(spec), state.request_key)
    return status if status in _FAILED else None


def rescore_tick(
    instance: dg.DagsterInstance,
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    cursor: str | None,
) -> dg.SensorResult:
    state = RescoreState.from_cursor(cursor)
    change = latest_change(champion_changes(instance, spec, state.change_mark))
    if change is not None:
        state = replace(
            state, change_mark=change.storage_id, champion=change.version, change_id=change.storage_id
        )
    failed = None if change is not None else failed_request(instance, spec, state)
    if failed and state.attempt >= spec.drift.max_retries:
        message = f"re-scoring {state.request_key} {failed} {state.attempt + 1} time(s); giving up"
        return _skip(message, replace(state, request_key="", attempt=0))
    newest = newest_storage_id(instance, asset_key(spec, Stage.PREDICTIONS))
    if state.champion is None or (change is None and not failed and newest <= state.predictions_mark):
        return _skip("no change of champion or predictions", state)
    busy = busy_run(instance, spec)
    if busy:  # its evaluation or scoring is not finished: look again at the next tick
        return _skip(f"waiting: {busy}", cursor)
    bounds = rescore_bounds(instance, spec.name, partitions, state.champion)
    state = replace(state, predictions_mark=newest)
    if bounds is None:
        message = f"every scored partition is by the champion, version {state.champion}"
        return _skip(message, replace(state, request_key="", attempt=0))
    attempt = state.attempt + 1 if failed else 0  # the retry's range: what is still not re-scored
    run_key = f"rescore:{spec.name}:{state.change_id}:{bounds[0]}..{bounds[1]}"
    run_key += f":retry{attempt}" if attempt else ""
    tags = rescore_tags(bounds, state.champion)
    if failed:
        tags["mlplatform/retry_of"] = state.request_key
    request = dg.RunRequest(run_key=run_key, tags=tags)
    state = replace(state, request_key=run_key, attempt=attempt)
    return dg.SensorResult(run_requests=[request], cursor=state.to_cursor())


def build_rescore_sensor(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    rescore_job: UnresolvedAssetJobDefinition,
    settings: Settings,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=rescore_sensor_name(spec),
        job=rescore_job,
        minimum_interval_seconds=sensor_interval(settings),
        default_status=sensor_status(settings, spec.name),
        description=(
            f"After {spec.name}'s champion changes (a promotion or `mlplatform rollback`), requests "
            f"{rescore_job_name(spec)} for the partitions whose predictions are by another version, so "
            "their drift verdicts judge the champion again; a failed re-scoring is retried up to "
            f"{spec.drift.max_retries} time(s). Reads the event log only."
        ),
    )
    def rescore_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return rescore_tick(context.instance, spec, partitions, context.cursor)

    return rescore_sensor
