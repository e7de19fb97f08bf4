"""`<ds>__new_data_sensor` and `<ds>__daily_ingest`: keep ingestion going without anyone clicking.

The sensor lists the spec's source path (a glob or a file) and compares each file's modification time
and size with its cursor; a new or changed file requests the partitions it covers, raw through
drift_report, as one ranged run. To know which partitions, it reads only the time range of the
changed files, in an in-memory DuckDB (never the warehouse, which belongs to the runs).

Before the first champion exists (no `reference_profile` materialized yet) the request goes to the
dataset's whole-graph job instead, so the first file also trains, evaluates and profiles a model.

A file that cannot be read (corrupt, truncated, not the spec's format) is skipped and reported (tick
log, skip reason, the run's `mlplatform/skipped_files` tag); the good files go on. The cursor holds each
listed file's signature and the errors of the bad ones, nothing else: removed files drop out, and a
bad file is read again only once it changes.

A postgres source is watched the same way through its table (max of the incremental column and row
count, mlplatform.sensors.new_rows) instead of a folder listing.

The daily schedule is the backstop: it requests the newest complete partition once, should a file
have been missed (e.g. it landed while the daemon was down and its mtime was older than the cursor).
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from mlplatform.contracts import Stage, asset_key
from mlplatform.core.database_source import landing_dir
from mlplatform.core.source import probe_source, source_files
from mlplatform.dagster_adapter import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    UnresolvedAssetJobDefinition,
)
from mlplatform.jobs.dataset_jobs import ingest_job_name
from mlplatform.sensors.common import schedule_status, sensor_interval, sensor_status
from mlplatform.sensors.new_rows import database_tick
from mlplatform.settings import Settings
from mlplatform.specs.model import DatasetSpec, KafkaSourceSpec, PostgresSourceSpec, SourceSpec
from mlplatform.stages import Job, job_stages

MAX_ERROR_CHARS = 300  # per bad file, in the cursor and the messages
SKIPPED_FILES_TAG = "mlplatform/skipped_files"


def file_signatures(spec: DatasetSpec) -> dict[str, list[int]]:
    """path -> [mtime_ns, size] of every source file (a directory listing, no file is read)."""
    signatures = {}
    for path in source_files(spec):
        try:
            stat = Path(path).stat()
        except FileNotFoundError:  # removed between the listing and now: the next tick sees it gone
            continue
        signatures[path] = [stat.st_mtime_ns, stat.st_size]
    return signatures


@dataclass
class Coverage:
    """What the changed files hold: their time range, and the files that could not be read, with why."""

    first: datetime | None = None
    last: datetime | None = None
    bad: dict[str, str] = field(default_factory=dict)

    def add(self, time_min: datetime | None, time_max: datetime | None) -> None:
        if time_min is not None and time_max is not None:
            self.first = time_min if self.first is None else min(self.first, time_min)
            self.last = time_max if self.last is None else max(self.last, time_max)


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def covered_window(spec: DatasetSpec, files: Sequence[str]) -> Coverage:
    """Time range of `files`, read one by one with an in-memory DuckDB; a file that fails is set aside."""
    coverage = Coverage()
    for path in files:
        one_file = spec.model_copy(update={"source": spec.source.model_copy(update={"path": path})})
        try:
            with duckdb.connect() as conn:  # a fresh one per file: a failed read leaves nothing behind
                probe = probe_source(conn, one_file)
        except (duckdb.Error, ValueError, OverflowError) as exc:  # SourceError is a ValueError
            coverage.bad[path] = _short(exc).replace(path, Path(path).name)  # the path is said once
            continue
        coverage.add(probe.time_min, probe.time_max)
    return coverage


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _widen(moment: datetime, delta: timedelta) -> datetime:
    """`moment + delta`, saturating at the ends of the datetime range (a row dated 9999-12-31)."""
    try:
        return moment + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if delta > timedelta(0) else datetime.min.replace(tzinfo=UTC)


def partition_keys_between(
    partitions: dg.TimeWindowPartitionsDefinition, first: datetime | None, last: datetime | None
) -> list[str]:
    """Existing partition keys whose window holds a timestamp in [first, last]; none without bounds
    (files whose rows hold no time)."""
    last_window = partitions.get_last_partition_window()
    if last_window is None or first is None or last is None:
        return []
    # Clamped to the partitions first: a row dated 9999-12-31 must not walk millions of windows.
    first, last = max(_utc(first), _utc(partitions.start)), min(_utc(last), _utc(last_window.end))
    if first > last:
        return []
    # Keys fully inside a widened window, then only those overlapping [first, last].
    margin = timedelta(days=31)
    candidates = partitions.get_partition_keys_in_time_window(
        dg.TimeWindow(_widen(first, -margin), _widen(last, margin))
    )
    keys = []
    for key in candidates:
        window = partitions.time_window_for_partition_key(key)
        if window.start <= last and window.end > first:
            keys.append(key)
    return keys


def read_cursor(text: str | None) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(signature of each file seen, error of each bad file) from a cursor; the older cursor format
    (a bare path -> signature mapping) reads as no bad files."""
    if not text:
        return {}, {}
    data = json.loads(text)
    if isinstance(data.get("files"), dict):  # a path is absolute, so no file is named "files"
        return data["files"], dict(data.get("bad") or {})
    return data, {}


def write_cursor(current: Mapping[str, list[int]], bad: Mapping[str, str]) -> str:
    """Only files still listed are kept: the cursor never outgrows the folder."""
    return json.dumps({"files": dict(current), "bad": {p: e for p, e in bad.items() if p in current}})


def _names(paths: Mapping[str, str] | Sequence[str], limit: int = 200) -> str:
    text = ", ".join(Path(path).name for path in paths)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_files_note(new_bad: Mapping[str, str], all_bad: Mapping[str, str]) -> str:
    """What the tick's skip reason or log says about unreadable files."""
    parts = [f"{Path(p).name}: {e}" for p, e in new_bad.items()]
    waiting = [p for p in all_bad if p not in new_bad]
    if waiting:
        parts.append(f"{len(waiting)} unreadable file(s) still waiting to change: {_names(waiting)}")
    return f" (skipped {'; '.join(parts)})" if parts else ""


def has_champion(instance: dg.DagsterInstance, spec: DatasetSpec) -> bool:
    """A reference profile is only ever built from a champion: its materialization proves one exists."""
    return instance.get_latest_materialization_event(asset_key(spec, Stage.REFERENCE_PROFILE)) is not None


def ingest_request(
    instance: dg.DagsterInstance,
    spec: DatasetSpec,
    keys: Sequence[str],
    run_key: str,
    bootstrap_job: str,
    extra_tags: Mapping[str, str] | None = None,
) -> dg.RunRequest:
    """A ranged run of the ingest job, or of the whole graph while there is no champion to score with."""
    tags = {
        ASSET_PARTITION_RANGE_START_TAG: keys[0],
        ASSET_PARTITION_RANGE_END_TAG: keys[-1],
        **(extra_tags or {}),
    }
    if has_champion(instance, spec):
        return dg.RunRequest(run_key=run_key, job_name=ingest_job_name(spec), tags=tags)
    return dg.RunRequest(
        run_key=run_key, job_name=bootstrap_job, tags={**tags, "mlplatform/trigger": "first data: bootstrap"}
    )


def _ingest_chain(spec: DatasetSpec) -> str:
    return f"{ingest_job_name(spec)} ({' -> '.join(job_stages(Job.INGEST))})"


def _new_data_sensor(
    spec: DatasetSpec, jobs: Sequence[UnresolvedAssetJobDefinition], settings: Settings, description: str
) -> Callable[[Callable[[dg.SensorEvaluationContext], dg.SensorResult]], dg.SensorDefinition]:
    """The `<ds>__new_data_sensor` decorator, whatever the source watched."""
    return dg.sensor(
        name=f"{spec.name}__new_data_sensor",
        jobs=list(jobs),
        minimum_interval_seconds=sensor_interval(settings),
        default_status=sensor_status(settings, spec.name),
        description=description,
    )


def build_new_data_sensor(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    ingest_job: UnresolvedAssetJobDefinition,
    bootstrap_job: UnresolvedAssetJobDefinition,
    settings: Settings,
) -> dg.SensorDefinition:
    raw_key = asset_key(spec, Stage.RAW)
    if isinstance(spec.source, PostgresSourceSpec):
        return _build_table_sensor(spec, partitions, ingest_job, bootstrap_job, settings)

    @_new_data_sensor(
        spec,
        (ingest_job, bootstrap_job),
        settings,
        f"Watches {spec.source_pattern}; a new or changed file requests {_ingest_chain(spec)} for the "
        f"partitions it covers, or {bootstrap_job.name} while no champion exists.",
    )
    def new_data_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen, bad = read_cursor(context.cursor)
        current = file_signatures(spec)
        changed = sorted(path for path, signature in current.items() if seen.get(path) != signature)
        if not context.cursor and changed:
            # First tick ever: files older than the last load were loaded already (e.g. by `mlplatform run`).
            loaded = context.instance.get_latest_materialization_event(raw_key)
            if loaded is not None:
                loaded_ns = int(loaded.timestamp * 1e9)
                changed = [path for path in changed if current[path][0] > loaded_ns]
        coverage = covered_window(spec, changed)
        # A bad file stays set aside until it changes; a changed one was just read again.
        bad = {path: error for path, error in bad.items() if path in current and path not in changed}
        bad |= coverage.bad
        cursor = write_cursor(current, bad)
        for path, error in coverage.bad.items():
            context.log.warning(f"skipped {path}: cannot read it ({error}); read again once it changes")
        good = [path for path in changed if path not in coverage.bad]
        note = _bad_files_note(coverage.bad, bad)
        if not good:
            message = "no new or changed files" if not changed else "no readable new or changed file"
            return dg.SensorResult(skip_reason=dg.SkipReason(message + note), cursor=cursor)
        keys = partition_keys_between(partitions, coverage.first, coverage.last)
        if not keys:
            message = f"{len(good)} changed file(s) hold no rows inside the partitions{note}"
            return dg.SensorResult(skip_reason=dg.SkipReason(message), cursor=cursor)
        digest = hashlib.sha256(json.dumps({p: current[p] for p in good}).encode()).hexdigest()[:16]
        skipped = {SKIPPED_FILES_TAG: _names(coverage.bad)} if coverage.bad else {}
        request = ingest_request(context.instance, spec, keys, f"files:{digest}", bootstrap_job.name, skipped)
        context.log.info(
            f"{len(good)} new/changed file(s) -> {request.job_name} {keys[0]} .. {keys[-1]}{note}"
        )
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return new_data_sensor


def _build_table_sensor(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    ingest_job: UnresolvedAssetJobDefinition,
    bootstrap_job: UnresolvedAssetJobDefinition,
    settings: Settings,
) -> dg.SensorDefinition:
    """A postgres source: the tick watches the table (mlplatform.sensors.new_rows)."""
    source = spec.source
    if not isinstance(source, PostgresSourceSpec):
        raise TypeError(f"{spec.name}: not a postgres source")
    landing = landing_dir(settings.home, spec.name)

    @_new_data_sensor(
        spec,
        (ingest_job, bootstrap_job),
        settings,
        f"Watches postgres {source.described} (max of {source.incremental_column!r} and row count); new "
        f"rows request {_ingest_chain(spec)} for the partitions they cover, or {bootstrap_job.name} while "
        "no champion exists.",
    )
    def new_data_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        def request_for(keys: Sequence[str], run_key: str) -> dg.RunRequest:
            return ingest_request(context.instance, spec, keys, run_key, bootstrap_job.name)

        return database_tick(context, spec, partitions, landing, partition_keys_between, request_for)

    return new_data_sensor


def build_daily_schedule(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    ingest_job: UnresolvedAssetJobDefinition,
    settings: Settings,
) -> dg.ScheduleDefinition:
    drift_key = asset_key(spec, Stage.DRIFT_REPORT)
    watcher = "kafka_sensor" if isinstance(spec.source, KafkaSourceSpec) else "new_data_sensor"

    @dg.schedule(
        name=f"{spec.name}__daily_ingest",
        cron_schedule="30 1 * * *",
        job=ingest_job,
        default_status=schedule_status(settings, spec.name),
        description=(
            f"Backstop for {spec.name}__{watcher}: once a day, the newest complete partition through "
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
        if isinstance(spec.source, SourceSpec) and not source_files(spec):
            return dg.SkipReason(f"no source files at {spec.source_pattern}")
        return ingest_request(context.instance, spec, [latest], f"daily:{latest}", ingest_job.name)

    return daily_ingest
