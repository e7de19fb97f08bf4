"""The raw stage's side of landed sources: land the new rows, then load the landed files like any files.

See mlplatform.core.database_source: a postgres source's rows become Parquet batch files under the
platform home, so lineage (`_source_file` is the batch file), quarantine and accounting work unchanged.
A kafka source's batches are landed by its sensor (mlplatform.sensors.kafka); raw only loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from mlplatform.core.accounting import FileCount, count_source
from mlplatform.core.database_landing import extract_new_rows, landed_batches, landed_counts
from mlplatform.core.database_source import landed_spec, landing_dir, server_of, table_state
from mlplatform.core.kafka_batches import landed_counts as kafka_landed_counts
from mlplatform.core.kafka_batches import landing_summary
from mlplatform.core.source import SourceError
from mlplatform.specs.model import DatasetSpec, KafkaSourceSpec, PostgresSourceSpec
from mlplatform.specs.sources import LANDED_SOURCES

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild

Metadata = dict[str, dg.MetadataValue | int | str]


def landing_folder(stage: StageBuild) -> Path | None:
    """The folder a postgres or kafka source lands in (None for files)."""
    if not isinstance(stage.spec.source, LANDED_SOURCES):
        return None
    return landing_dir(stage.settings.home, stage.spec.name)


def files_spec(stage: StageBuild) -> DatasetSpec:
    """The spec the file chain reads: the spec itself, or its landed files for a landed source."""
    folder = landing_folder(stage)
    return stage.spec if folder is None else landed_spec(stage.spec, folder)


def source_label(spec: DatasetSpec) -> str:
    """The source as the UI describes it."""
    source = spec.source
    if isinstance(source, PostgresSourceSpec):
        return f"postgres {source.described} (DSN from ${source.dsn.env}), by {source.incremental_column!r}"
    if isinstance(source, KafkaSourceSpec):
        servers = source.bootstrap_servers
        shown = servers if isinstance(servers, str) else f"${servers.env}"
        return f"kafka {source.described} at {shown} (JSON values, time from {source.time_from})"
    return source.path


def source_counts(stage: StageBuild, files: list[str]) -> dict[str, FileCount]:
    """Each file's records: counted from the file, or for landed batches as the database counted them."""
    spec = stage.spec
    if isinstance(spec.source, PostgresSourceSpec):
        return landed_counts(landing_dir(stage.settings.home, spec.name))
    if isinstance(spec.source, KafkaSourceSpec):
        return kafka_landed_counts(landing_dir(stage.settings.home, spec.name))
    return {f: count_source(f, spec.source_format, spec.source.delimiter) for f in files}


def land_new_rows(context: dg.AssetExecutionContext, stage: StageBuild) -> Metadata:
    """Extract the rows past the watermark (nothing for files); a database error fails only this run."""
    folder = landing_folder(stage)
    source = stage.spec.source
    if folder is not None and isinstance(source, KafkaSourceSpec):  # landed by the sensor already
        return dict(landing_summary(folder, source.topic))
    if folder is None or not isinstance(source, PostgresSourceSpec):
        return {}
    try:
        batches = extract_new_rows(stage.spec, folder)
        state = table_state(stage.spec)
    except SourceError as exc:
        key, _, message = str(exc).partition(": ")
        raise dg.Failure(description=f"{stage.spec.name}: key '{key}': {message}") from None
    landed = landed_batches(folder)
    for batch in batches:
        context.log.info(
            f"{stage.spec.name}: landed {batch.landed_rows} rows of {batch.source} with "
            f"{batch.incremental_column} {'past ' + batch.after if batch.after else 'from the first row'} "
            f"through {batch.through} as {Path(batch.path).name}"
        )
    if state.rows_without_value:
        context.log.warning(
            f"{stage.spec.name}: {state.rows_without_value} rows of {source.described} have no "
            f"{source.incremental_column!r}: they are never extracted"
        )
    return {
        "source_database": server_of(stage.spec).shown,
        "source_relation": source.described,
        "incremental_column": source.incremental_column,
        "watermark": landed[-1].through if landed else "",
        "batches_landed_now": len(batches),
        "rows_landed_now": sum(b.landed_rows for b in batches),
        "database_rows_total": state.rows,
        "database_rows_without_incremental_value": state.rows_without_value,
    }
