"""What the `<ds>__alerts` sensor reads: the events of one dataset since its marks, as `Alert`s.

Everything comes from the Dagster instance the platform already writes, through public APIs:
* run failures, and failed asset checks in runs that ended (failed, succeeded or were canceled): run
  status changes (`fetch_run_status_changes`), then the check evaluations of each such run. A failed
  non-blocking check leaves its run SUCCESS, so the checks are read in every ended run, not only in
  failed ones;
* drift-triggered retraining: the runs `<ds>__drift_sensor` requested (job `<ds>__retrain`, tag
  `mlplatform/trigger: drift`); the verdict is the drift_report event named by the run key;
* promotions: `<ds>/evaluation` materializations whose `decision` is `promoted`;
* rollbacks: `<ds>/model` observations that `mlplatform rollback` records (`record_rollback`).
Each kind has a mark: the storage id of the last event read, so each event is read once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import dagster as dg

from mlplatform.contracts import DriftVerdictMetadata, MaterializationKey, Stage, asset_key
from mlplatform.core.alerts import (
    Alert,
    ChampionChange,
    CheckFacts,
    RunFacts,
    check_failure_alert,
    drift_retraining_alert,
    promotion_alert,
    rollback_alert,
    run_failure_alert,
)
from mlplatform.dagster_adapter import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    RUN_KEY_TAG,
)
from mlplatform.jobs.dataset_jobs import ingest_job_name, job_name, retrain_job_name
from mlplatform.specs.model import DatasetSpec

EVENTS_PER_TICK = 100  # per kind; the rest are read at the next tick
PARTITION_TAG = "dagster/partition"  # Dagster's tag of a single-partition run
# The tags `<ds>__drift_sensor` (mlplatform.sensors.drift) puts on the retraining runs it requests.
DRIFT_TRIGGER_TAGS = {"mlplatform/trigger": "drift"}
DRIFT_REASON_TAG = "mlplatform/drift_reason"
RETRY_OF_TAG = "mlplatform/retry_of"
ROLLBACK = "rollback"
RUN_ENDS = {
    "run_failure": dg.DagsterEventType.RUN_FAILURE,
    "run_success": dg.DagsterEventType.RUN_SUCCESS,
    "run_canceled": dg.DagsterEventType.RUN_CANCELED,
}
MARKS = (*RUN_ENDS, "drift", "evaluation", "rollback")


def _plain(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


_PLANNED = {
    dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
}


def belongs_to(instance: dg.DagsterInstance, run: dg.DagsterRun, spec: DatasetSpec) -> bool:
    """A run of one of the dataset's jobs, or one that planned any of its assets or checks (a run
    launched with `dg.materialize` or from the UI has no job of the dataset, maybe no asset selection)."""
    if run.job_name in (job_name(spec), ingest_job_name(spec), retrain_job_name(spec)):
        return True
    keys = [*(run.asset_selection or ()), *(check.asset_key for check in run.asset_check_selection or ())]
    if any(key.path[0] == spec.name for key in keys):
        return True
    for entry in instance.all_logs(run.run_id, of_type=_PLANNED):
        planned = getattr(entry.dagster_event, "event_specific_data", None)
        key = getattr(planned, "asset_key", None)
        if isinstance(key, dg.AssetKey) and key.path[0] == spec.name:
            return True
    return False


def _partition(tags: Mapping[str, str]) -> str | None:
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start and end:
        return start if start == end else f"{start}..{end}"
    return tags.get(PARTITION_TAG)


def _first_step_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        if event is not None:
            error = event.step_failure_data.error
            return f"{event.step_key}: {error.message.strip()}" if error else event.message
    return None


def run_facts(instance: dg.DagsterInstance, run: dg.DagsterRun, end_message: str | None = None) -> RunFacts:
    error = (_first_step_error(instance, run.run_id) or end_message) if run.is_failure else None
    return RunFacts(run.run_id, run.job_name, run.status.value, _partition(run.tags), error)


def failed_check_alerts(
    instance: dg.DagsterInstance, spec: DatasetSpec, run: RunFacts, dagster_url: str
) -> list[Alert]:
    alerts = []
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.asset_check_evaluation_data if entry.dagster_event else None
        if evaluation is None or evaluation.passed or evaluation.asset_key.path[0] != spec.name:
            continue
        check = CheckFacts(
            tuple(evaluation.asset_key.path),
            evaluation.check_name,
            evaluation.partition,
            bool(evaluation.blocking),
            evaluation.severity.value,
            evaluation.description,
        )
        alerts.append(check_failure_alert(spec.name, check, run, dagster_url))
    return alerts


def run_end_alerts(
    instance: dg.DagsterInstance, spec: DatasetSpec, mark: str, after: int, dagster_url: str
) -> tuple[list[Alert], int]:
    """Alerts of the dataset's runs that ended with RUN_ENDS[mark] after storage id `after`."""
    result = instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(RUN_ENDS[mark], after_storage_id=after or None),
        limit=EVENTS_PER_TICK,
        ascending=True,
    )
    alerts: list[Alert] = []
    for record in result.records:
        after = max(after, record.storage_id)
        run = instance.get_run_by_id(record.event_log_entry.run_id)
        if run is None or not belongs_to(instance, run, spec):
            continue
        end = record.event_log_entry.dagster_event
        facts = run_facts(instance, run, end.message if end else None)
        if mark == "run_failure":
            alerts.append(run_failure_alert(spec.name, facts, dagster_url))
        alerts += failed_check_alerts(instance, spec, facts, dagster_url)
    return alerts, after


def _drift_verdict(
    instance: dg.DagsterInstance, spec: DatasetSpec, run_key: str
) -> DriftVerdictMetadata | None:
    """The verdict whose event the run key names (`drift:<ds>:<storage id>[:retry<n>]`)."""
    parts = run_key.split(":")
    if len(parts) < 3 or not parts[2].isdigit():
        return None
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(spec, Stage.DRIFT_REPORT), storage_ids=[int(parts[2])]),
        limit=1,
    )
    materialization = found.records[0].asset_materialization if found.records else None
    return DriftVerdictMetadata.from_metadata(materialization.metadata) if materialization else None


def _drift_runs(instance: dg.DagsterInstance, spec: DatasetSpec, after: int) -> list[dg.RunRecord]:
    records = instance.get_run_records(
        dg.RunsFilter(job_name=retrain_job_name(spec), tags=DRIFT_TRIGGER_TAGS), limit=EVENTS_PER_TICK
    )
    return sorted((r for r in records if r.storage_id > after), key=lambda r: r.storage_id)


def drift_retraining_alerts(
    instance: dg.DagsterInstance, spec: DatasetSpec, after: int, dagster_url: str
) -> tuple[list[Alert], int]:
    alerts = []
    for record in _drift_runs(instance, spec, after):
        run = record.dagster_run
        verdict = _drift_verdict(instance, spec, run.tags.get(RUN_KEY_TAG, ""))
        partition = verdict.verdict_partition if verdict else None
        reason = verdict.reason if verdict else run.tags.get(DRIFT_REASON_TAG)
        facts = RunFacts(run.run_id, run.job_name, run.status.value)
        retry_of = run.tags.get(RETRY_OF_TAG)
        alerts.append(drift_retraining_alert(spec.name, facts, partition, reason, dagster_url, retry_of))
        after = max(after, record.storage_id)
    return alerts, after


def _scores(metadata: Mapping[str, Any]) -> str | None:
    metric = metadata.get("metric")
    if not metric:
        return None
    shown = []
    for role in ("challenger", "champion", "baseline"):
        value = metadata.get(f"{role}_{metric}")
        if isinstance(value, int | float) and math.isfinite(value):
            shown.append(f"{role} {value:.4g}")
    return f"{metric}: {', '.join(shown)}" if shown else None


def _asset_events(
    fetch: Callable[..., dg.EventRecordsResult], key: dg.AssetKey, after: int
) -> tuple[list[tuple[dg.EventLogRecord, dict[str, Any]]], int]:
    """The materializations or observations (`fetch`) of `key` since `after`, oldest first, each with
    its plain metadata, and the mark after them."""
    result = fetch(
        dg.AssetRecordsFilter(asset_key=key, after_storage_id=after or None),
        limit=EVENTS_PER_TICK,
        ascending=True,
    )
    events = []
    for record in result.records:
        after = max(after, record.storage_id)
        event = record.asset_materialization or record.asset_observation
        events.append((record, _plain(event.metadata) if event else {}))
    return events, after


def promotion_alerts(
    instance: dg.DagsterInstance, spec: DatasetSpec, after: int, dagster_url: str
) -> tuple[list[Alert], int]:
    events, after = _asset_events(instance.fetch_materializations, asset_key(spec, Stage.EVALUATION), after)
    alerts = []
    for record, metadata in events:
        if metadata.get(MaterializationKey.DECISION.value) != "promoted":
            continue
        change = ChampionChange(
            metadata.get(MaterializationKey.CHALLENGER_VERSION.value, "?"),
            metadata.get(MaterializationKey.PREVIOUS_CHAMPION_VERSION.value),
            metadata.get("reason"),
            record.event_log_entry.run_id,
            _scores(metadata),
        )
        model_path = asset_key(spec, Stage.MODEL).path
        alerts.append(promotion_alert(spec.name, change, model_path, dagster_url, record.storage_id))
    return alerts, after


def rollback_alerts(
    instance: dg.DagsterInstance, spec: DatasetSpec, after: int, dagster_url: str
) -> tuple[list[Alert], int]:
    key = asset_key(spec, Stage.MODEL)
    events, after = _asset_events(instance.fetch_observations, key, after)
    alerts = []
    for record, metadata in events:
        if metadata.get(MaterializationKey.CHAMPION_CHANGE.value) != ROLLBACK:
            continue
        observation = record.asset_observation
        change = ChampionChange(
            metadata.get(MaterializationKey.CHAMPION_VERSION.value, "?"),
            metadata.get(MaterializationKey.PREVIOUS_CHAMPION_VERSION.value),
            observation.description if observation else None,
        )
        alerts.append(rollback_alert(spec.name, change, key.path, dagster_url, record.storage_id))
    return alerts, after


def collect_alerts(
    instance: dg.DagsterInstance, spec: DatasetSpec, marks: Mapping[str, int], dagster_url: str
) -> tuple[list[Alert], dict[str, int], list[str]]:
    """The alerts of every kind since `marks`, the marks after them, and the kinds that could not be
    read (with why): such a kind keeps its mark and is read again at the next tick; the others go on."""
    readers: dict[str, Callable[[int], tuple[list[Alert], int]]] = {
        **{mark: partial(run_end_alerts, instance, spec, mark) for mark in RUN_ENDS},
        "drift": partial(drift_retraining_alerts, instance, spec),
        "evaluation": partial(promotion_alerts, instance, spec),
        "rollback": partial(rollback_alerts, instance, spec),
    }
    new_marks, alerts, errors = dict(marks), [], []
    for mark, read in readers.items():
        try:
            found, new_marks[mark] = read(marks.get(mark, 0), dagster_url)
        except Exception as error:  # one unreadable kind must not silence the others
            errors.append(f"{mark}: {type(error).__name__}: {error}")
            continue
        alerts += found
    return alerts, new_marks, errors


def latest_marks(instance: dg.DagsterInstance, spec: DatasetSpec) -> dict[str, int]:
    """The storage id of the newest event of each kind: where a sensor without a cursor starts."""
    marks = {}
    for mark, event_type in RUN_ENDS.items():
        records = instance.fetch_run_status_changes(event_type, limit=1).records
        marks[mark] = records[0].storage_id if records else 0
    drift = instance.get_run_records(
        dg.RunsFilter(job_name=retrain_job_name(spec), tags=DRIFT_TRIGGER_TAGS), limit=1
    )
    marks["drift"] = drift[0].storage_id if drift else 0
    evaluations = instance.fetch_materializations(asset_key(spec, Stage.EVALUATION), limit=1).records
    marks["evaluation"] = evaluations[0].storage_id if evaluations else 0
    observations = instance.fetch_observations(asset_key(spec, Stage.MODEL), limit=1).records
    marks["rollback"] = observations[0].storage_id if observations else 0
    return marks


def record_rollback(instance: dg.DagsterInstance, dataset: str, previous: int | None, current: int) -> None:
    """The event-log record of a rollback (MLflow holds the alias; this is what alerts and the UI see)."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey([dataset, str(Stage.MODEL)]),
            description=f"champion rolled back by `mlplatform rollback` from version {previous} to {current}",
            metadata={
                MaterializationKey.CHAMPION_CHANGE.value: ROLLBACK,
                MaterializationKey.CHAMPION_VERSION.value: current,
                MaterializationKey.PREVIOUS_CHAMPION_VERSION.value: previous
                if previous is not None
                else "none",
            },
        )
    )
