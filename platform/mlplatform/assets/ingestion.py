"""Stage 1, ingestion: source files -> `<dataset>.raw`, one time window at a time."""

from dataclasses import replace
from datetime import UTC, date, datetime, time

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlplatform.assets.common import (
    asset_key,
    partition_bounds,
    spec_code_version,
    table_metadata,
    time_window,
)
from mlplatform.core.accounting import (
    FileCount,
    accounts_markdown,
    count_source,
    record_accounting,
    recorded_files,
    rows_per_file,
    shrink_problem,
)
from mlplatform.core.placement import PartitionBounds, pending_predicate
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.warehouse import replace_window, table_exists, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec


class RawConfig(dg.Config):
    allow_shrink: bool = Field(
        default=False,
        description=(
            "Let a re-run remove rows on purpose: empty a partition whose source files no longer yield "
            "rows for it, or drop every row of a file that is gone."
        ),
    )


def _bounds(spec: DatasetSpec, partitions: dg.PartitionsDefinition) -> PartitionBounds | None:
    """The partitions that exist now, and `partitions.end` when the spec sets one (rows past it are
    kept in the last partition; other later rows wait for their own partition)."""
    bounds = partition_bounds(partitions)
    end = spec.partitions.end
    if bounds is None or not isinstance(end, date):
        return bounds
    return replace(bounds, spec_end=datetime.combine(end, time()))


def _shrink_refusal(
    spec: DatasetSpec, before: dict[str, int], after: dict[str, int], known: set[str], keys: str
) -> dg.Failure | None:
    problem = shrink_problem(before, after, known)
    if problem is None:
        return None
    op = f"{spec.name}__raw"
    return dg.Failure(
        description=(
            f"{spec.name}.raw for {keys}: {problem}. Nothing was changed. If the source rows were removed "
            f"on purpose, re-run with `mlplatform run --dataset {spec.name} --allow-shrink` (in the "
            f"launchpad: run config `ops: {{{op}: {{config: {{allow_shrink: true}}}}}}`); otherwise "
            "restore the files."
        ),
        metadata={"rows_before": sum(before.values()), "rows_after": sum(after.values())},
    )


def _note_pending(
    conn: duckdb.DuckDBPyConnection, staged: str, bounds: PartitionBounds | None, notes: dict[str, str]
) -> int:
    """Note, per file, the rows that wait for a partition that does not exist yet; returns how many."""
    if bounds is None:
        return 0
    pending = rows_per_file(conn, staged, pending_predicate(bounds))
    for path, n in pending.items():
        note = (
            f"{n} rows wait for their partition (after {bounds.last_start:%Y-%m-%d}): loaded when it exists"
        )
        notes[path] = f"{notes[path]}; {note}" if path in notes else note
    return sum(pending.values())


def _write_window(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    staged: str,
    window: tuple[datetime, datetime],
    counts: dict[str, FileCount],
    notes: dict[str, str],
    in_window_per_file: dict[str, int],
) -> dict[str, dg.MetadataValue | int | str]:
    """Replace the window's raw rows by the staged ones and record the source accounting."""
    in_window = window_predicate("_partition_ts", *window)
    rows = replace_window(
        conn, spec.name, "raw", f"SELECT * FROM {staged} WHERE {in_window}", "_partition_ts", *window
    )
    read = rows_per_file(conn, staged)
    accounts = record_accounting(conn, spec.name, counts, read, in_window_per_file, window, notes)
    parse_errors = conn.execute(
        f"SELECT count(*) FROM {staged} WHERE {in_window} AND _parse_error IS NOT NULL"
    ).fetchall()[0][0]
    return {
        **table_metadata(conn, spec.name, "raw", rows, preview_where=in_window),
        "source_rows": sum(a.source_rows for a in accounts),
        "source_rows_read": sum(a.read_rows for a in accounts),
        "files_not_read_in_full": sum(1 for a in accounts if not a.read_in_full),
        "source_accounting": dg.MetadataValue.md(accounts_markdown(accounts, with_landed=False)),
        "malformed_lines": int(parse_errors),
    }


def build_raw_asset(spec: DatasetSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(spec, "raw"),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="ingestion",
        kinds={"duckdb"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "source", "derived", "time_column"),
        description=(
            f"Rows of {spec.source.path} loaded as they are (text for CSV), with `derived` columns and lineage "
            "(source file, source row, load time, parse error). Re-running a partition replaces exactly it, "
            "but never empties it silently (asset config `allow_shrink`). Each file's records are counted "
            "independently (`source_accounting`). " + (spec.description or "")
        ),
        metadata={"source": spec.source_pattern, "format": spec.source_format},
    )
    def raw(
        context: dg.AssetExecutionContext, config: RawConfig, warehouse: DuckDBResource
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        files = source_files(spec)
        context.log.info(f"loading {start} .. {end} of {spec.name} from {len(files)} file(s)")
        counts = {f: count_source(f, spec.source_format, spec.source.delimiter) for f in files}
        notes: dict[str, str] = {}
        refusal = None
        bounds = _bounds(spec, partitions)
        with warehouse.get_connection() as conn:
            loaded_at = datetime.now(UTC).replace(tzinfo=None)
            staged = stage_source(conn, spec, files, loaded_at, bounds, notes)
            in_window = window_predicate("_partition_ts", start, end)
            after = rows_per_file(conn, staged, in_window)
            if not config.allow_shrink and table_exists(conn, spec.name, "raw"):
                before = rows_per_file(conn, table_name(spec.name, "raw"), in_window)
                keys = f"{context.partition_keys[0]} .. {context.partition_keys[-1]}"
                refusal = _shrink_refusal(spec, before, after, recorded_files(conn, spec.name), keys)
            if refusal is None:
                pending = _note_pending(conn, staged, bounds, notes)
                metadata = {**_write_window(conn, spec, staged, (start, end), counts, notes, after)}
                metadata["rows_pending_partition"] = pending
            conn.execute(f"DROP TABLE {staged}")
        if refusal is not None:  # raised outside the `with`: the resource closes its connection only then
            raise refusal
        for path, note in notes.items():
            context.log.warning(f"{spec.name}: {path}: {note}")
        return dg.MaterializeResult(metadata={**metadata, "source_files": len(files)})

    return raw
