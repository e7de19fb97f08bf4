"""`<ds>__kafka_sensor`: a Kafka topic consumed into the dataset's landing folder, then ingested as files.

Each tick reads what arrived past its cursor (the next offset of each topic partition; partitions are
assigned and sought explicitly, nothing is ever committed to a consumer group), at most
`max_records_per_tick` records and `max_seconds_per_tick` seconds, and lands them as one Parquet batch
per partition, named by its offset range (mlplatform.core.kafka_batches). Only then does the tick
return its new cursor, with a request for the partitions the new batches cover, exactly as the file
sensor requests those a new file covers (the whole graph while no champion exists).

A tick that dies between writing a batch and saving its cursor leaves a file past the cursor: the next
tick consumes those offsets again, at least to that file's end (past the record bound if need be), and
lands them again under the same name, so the batch replaces itself and no record is lost or landed
twice. A
broker that cannot be reached or a topic that is gone fails the tick with one line naming the brokers
and the topic; the cursor stays where it was. A partition added to the topic is read from its start.

The lag (records behind the end of each partition after the tick) is in the tick's log or skip reason,
and in `kafka_lag.json` beside the batches, which the raw asset reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import dagster as dg

from mlplatform.core.database_landing import extraction_lock
from mlplatform.core.database_source import landed_spec, landing_dir
from mlplatform.core.kafka_batches import PartitionLanding, land_records, past_cursor
from mlplatform.core.kafka_consumer import consume, kafka_source
from mlplatform.core.kafka_cursor import decode_cursor, encode_cursor, measure_lag, write_lag
from mlplatform.core.source import SourceError
from mlplatform.dagster_adapter import UnresolvedAssetJobDefinition
from mlplatform.jobs.dataset_jobs import ingest_job_name
from mlplatform.sensors.common import sensor_interval, sensor_status
from mlplatform.sensors.new_data import covered_window, ingest_request, partition_keys_between
from mlplatform.settings import Settings
from mlplatform.specs.model import DatasetSpec


class KafkaTickError(Exception):
    """The topic cannot be read now: the tick fails with this one line and the cursor stays."""


def kafka_sensor_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__kafka_sensor"


def _landed(landings: Sequence[PartitionLanding]) -> tuple[list[str], int, str]:
    """The new batch files, their records and their offset ranges (`p0 0..4999, p1 0..4999`)."""
    batches = [batch for landing in landings for batch in landing.batches]
    ranges = ", ".join(f"p{b.range.partition} {b.range.first}..{b.range.last}" for b in batches)
    return [b.path for b in batches], sum(b.records or 0 for b in batches), ranges


def _log_recovery(context: dg.SensorEvaluationContext, landings: Sequence[PartitionLanding]) -> None:
    for landing in landings:
        again = [*landing.replaced, *landing.superseded]
        if again:
            context.log.warning(
                f"partition {landing.partition}: {', '.join(again)} had been landed past the cursor by a "
                "tick that did not finish: its offsets were consumed and landed again "
                f"({len(landing.replaced)} under the same name, {len(landing.superseded)} removed)"
            )
        if landing.already_landed:
            context.log.info(
                f"partition {landing.partition}: {landing.already_landed} records consumed again are "
                "already in a landed batch that starts before them; not landed twice"
            )


def _nothing_landed(described: str, read: int, landings: Sequence[PartitionLanding]) -> str:
    """Why a tick that read `read` records landed none, as it is."""
    held_back = sum(landing.held_back for landing in landings)
    if not read:
        return f"no new records in {described}"
    if held_back:
        return (
            f"{held_back} of the {read} records read reach into a batch a tick that died landed past the "
            "cursor, which this tick did not read to its end (out of time): the next tick reads them again"
        )
    return "every record read was landed already"


def kafka_tick(
    context: dg.SensorEvaluationContext,
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    settings: Settings,
    bootstrap_job: str,
) -> dg.SensorResult:
    """One tick: consume, land, then move the cursor and request the partitions covered."""
    source = kafka_source(spec)
    landing = landing_dir(settings.home, spec.name)
    landing.mkdir(parents=True, exist_ok=True)
    cursor = decode_cursor(context.cursor, source.topic)
    with extraction_lock(landing):  # one tick lands at a time, even from two processes
        try:  # at least to the end of any batch a tick that died landed past the cursor
            consumed = consume(spec, cursor, past_cursor(landing, source.topic, cursor.offsets))
        except SourceError as exc:
            raise KafkaTickError(f"{spec.name}: {exc}") from None
        landings = land_records(
            landing, consumed.records, spec.source_columns, spec.time_column, source.time_from
        )
        moved = cursor.advanced({landed.partition: landed.next_offset for landed in landings})
        lag = measure_lag(moved, consumed.partitions, consumed.high_watermarks)
        write_lag(landing, lag)
    _log_recovery(context, landings)
    new_cursor = encode_cursor(moved)
    files, records, ranges = _landed(landings)
    if not files:
        note = _nothing_landed(source.described, consumed.count, landings)
        return dg.SensorResult(skip_reason=dg.SkipReason(f"{note}; {lag.describe()}"), cursor=new_cursor)
    summary = (
        f"landed {records} records of {source.described} ({ranges}; stopped: {consumed.stopped_by}); "
        f"{lag.describe()}"
    )
    coverage = covered_window(landed_spec(spec, landing), files)
    keys = partition_keys_between(partitions, coverage.first, coverage.last)
    if not keys:
        message = f"{summary}: they hold no times inside the partitions (they wait for theirs)"
        return dg.SensorResult(skip_reason=dg.SkipReason(message), cursor=new_cursor)
    digest = hashlib.sha256(new_cursor.encode()).hexdigest()[:16]
    request = ingest_request(context.instance, spec, keys, f"kafka:{digest}", bootstrap_job)
    context.log.info(f"{summary} -> {request.job_name} {keys[0]} .. {keys[-1]}")
    return dg.SensorResult(run_requests=[request], cursor=new_cursor)


def build_kafka_sensor(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    ingest_job: UnresolvedAssetJobDefinition,
    bootstrap_job: UnresolvedAssetJobDefinition,
    settings: Settings,
) -> dg.SensorDefinition:
    source = kafka_source(spec)
    chain = (
        f"{ingest_job_name(spec)} for the partitions they cover, or {bootstrap_job.name} while no champion "
        "exists"
    )

    @dg.sensor(
        name=kafka_sensor_name(spec),
        jobs=[ingest_job, bootstrap_job],
        minimum_interval_seconds=sensor_interval(settings),
        default_status=sensor_status(settings, spec.name),
        description=(
            f"Consumes Kafka {source.described} by explicit offsets (the cursor), at most "
            f"{source.max_records_per_tick} records (more only to land again a batch of a tick that died) "
            f"or {source.max_seconds_per_tick:g} s a tick, lands them as Parquet batches named by offset "
            f"range, then requests {chain}."
        ),
    )
    def kafka_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return kafka_tick(context, spec, partitions, settings, bootstrap_job.name)

    return kafka_sensor
