"""`<ds>__new_data_sensor` and `<ds>__daily_ingest`: keep ingestion going without anyone clicking.

The sensor lists the spec's source path (a glob or a file) and compares each file's modification time
and size with its cursor; a new or changed file requests the partitions it covers, raw through
drift_report, as one ranged run. To know which partitions, it reads only the time range of the
changed files, in an in-memory DuckDB (never the warehouse, which belongs to the runs).

Before the first champion exists (no `reference_profile` materialized yet) the request goes to the
dataset's whole-graph job instead, so the first file also trains, evaluates and profiles a model.

The daily schedule is the backstop: it requests the newest complete partition once, should a file
have been missed (e.g. it landed while the daemon was down and its mtime was older than the cursor).
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlplatform.core.source import probe_source, source_files
from mlplatform.jobs.monitoring import INGEST_STAGES, ingest_job_name
from mlplatform.sensors.common import schedule_status, sensor_interval, sensor_status
from mlplatform.specs.model import DatasetSpec


def file_signatures(spec: DatasetSpec) -> dict[str, list[int]]:
    """path -> [mtime_ns, size] of every source file (a directory listing, no file is read)."""
    signatures = {}
    for path in source_files(spec):
        stat = Path(path).stat()
        signatures[path] = [stat.st_mtime_ns, stat.st_size]
    return signatures


def covered_window(spec: DatasetSpec, files: Sequence[str]) -> tuple[datetime, datetime] | None:
    """First and last timestamp in `files`, read with an in-memory DuckDB (time column only)."""
    first: datetime | None = None
    last: datetime | None = None
    with duckdb.connect() as conn:
        for path in files:
            one_file = spec.model_copy(update={"source": spec.source.model_copy(update={"path": path})})
            probe = probe_source(conn, one_file)
            if probe.time_min is None or probe.time_max is None:
                continue
            first = probe.time_min if first is None else min(first, probe.time_min)
            last = probe.time_max if last is None else max(last, probe.time_max)
    return (first, last) if first is not None and last is not None else None


def partition_keys_between(
    partitions: dg.TimeWindowPartitionsDefinition, first: datetime, last: datetime
) -> list[str]:
    """Existing partition keys whose window holds a timestamp in [first, last]."""
    first, last = first.replace(tzinfo=UTC), last.replace(tzinfo=UTC)
    # Keys fully inside a widened window, then only those overlapping [first, last].
    margin = timedelta(days=31)
    candidates = partitions.get_partition_keys_in_time_window(dg.TimeWindow(first - margin, last + margin))
    keys = []
    for key in candidates:
        window = partitions.time_window_for_partition_key(key)
        if window.start <= last and window.end > first:
            keys.append(key)
    return keys


def has_champion(instance: dg.DagsterInstance, spec: DatasetSpec) -> bool:
    """A reference profile is only ever built from a champion: its materialization proves one exists."""
    key = dg.AssetKey([spec.name, "reference_profile"])
    return instance.get_latest_materialization_event(key) is not None


def ingest_request(
    instance: dg.DagsterInstance, spec: DatasetSpec, keys: Sequence[str], run_key: str, bootstrap_job: str
) -> dg.RunRequest:
    """A ranged run of the ingest job, or of the whole graph while there is no champion to score with."""
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    if has_champion(instance, spec):
        return dg.RunRequest(run_key=run_key, job_name=ingest_job_name(spec), tags=tags)
    return dg.RunRequest(
        run_key=run_key, job_name=bootstrap_job, tags={**tags, "mlplatform/trigger": "first data: bootstrap"}
    )


def build_new_data_sensor(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    ingest_job: UnresolvedAssetJobDefinition,
    bootstrap_job: UnresolvedAssetJobDefinition,
) -> dg.SensorDefinition:
    raw_key = dg.AssetKey([spec.name, "raw"])

    @dg.sensor(
        name=f"{spec.name}__new_data_sensor",
        jobs=[ingest_job, bootstrap_job],
        minimum_interval_seconds=sensor_interval(),
        default_status=sensor_status(spec.name),
        description=(
            f"Watches {spec.source_pattern}; a new or changed file requests {ingest_job_name(spec)} "
            f"({' -> '.join(INGEST_STAGES)}) for the partitions it covers, or {bootstrap_job.name} while "
            "no champion exists."
        ),
    )
    def new_data_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
        current = file_signatures(spec)
        changed = sorted(path for path, signature in current.items() if seen.get(path) != signature)
        if not context.cursor and changed:
            # First tick ever: files older than the last load were loaded already (e.g. by `mlplatform run`).
            loaded = context.instance.get_latest_materialization_event(raw_key)
            if loaded is not None:
                loaded_ns = int(loaded.timestamp * 1e9)
                changed = [path for path in changed if current[path][0] > loaded_ns]
        if not changed:
            return dg.SensorResult(
                skip_reason=dg.SkipReason("no new or changed files"), cursor=json.dumps(current)
            )
        window = covered_window(spec, changed)
        keys = partition_keys_between(partitions, *window) if window else []
        if not keys:
            message = f"{len(changed)} changed file(s) hold no rows inside the partitions"
            return dg.SensorResult(skip_reason=dg.SkipReason(message), cursor=json.dumps(current))
        digest = hashlib.sha256(json.dumps({p: current[p] for p in changed}).encode()).hexdigest()[:16]
        request = ingest_request(context.instance, spec, keys, f"files:{digest}", bootstrap_job.name)
        context.log.info(f"{len(changed)} new/changed file(s) -> {request.job_name} {keys[0]} .. {keys[-1]}")
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(current))

    return new_data_sensor


def build_daily_schedule(
    spec: DatasetSpec, partitions: dg.TimeWindowPartitionsDefinition, ingest_job: UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    drift_key = dg.AssetKey([spec.name, "drift_report"])

    @dg.schedule(
        name=f"{spec.name}__daily_ingest",
        cron_schedule="30 1 * * *",
        job=ingest_job,
        default_status=schedule_status(spec.name),
        description=(
            f"Backstop for {spec.name}__new_data_sensor: once a day, the newest complete partition through "
            "raw -> ... -> drift_report, unless its drift report exists already."
        ),
    )
    def daily_ingest(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        latest = partitions.get_last_partition_key()
        if latest is None:
            return dg.SkipReason("no complete partition yet")
        if not has_champion(context.instance, spec):
            return dg.SkipReason("no champion yet: the new-data sensor trains the first one")
        if latest in context.instance.get_materialized_partitions(drift_key):
            return dg.SkipReason(f"partition {latest} is already reported")
        if not source_files(spec):
            return dg.SkipReason(f"no source files at {spec.source_pattern}")
        return ingest_request(context.instance, spec, [latest], f"daily:{latest}", ingest_job.name)

    return daily_ingest
