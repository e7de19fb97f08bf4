"""Stage 1, ingestion: source files -> `<dataset>.raw`, one time window at a time."""

from dataclasses import replace
from datetime import UTC, date, datetime, time
from pathlib import Path

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


def _outside_partitions(bounds: PartitionBounds) -> str:
    """SQL over raw: true for rows outside the partitions that exist (the range shrank: the source no
    longer holds data that far). Rows waiting for a later partition are never in raw."""
    return f"NOT ({window_predicate('_partition_ts', bounds.first_start, bounds.end)})"


def _rows_outside(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, bounds: PartitionBounds | None
) -> dict[str, int]:
    """Per file, the raw rows in partitions that no longer exist: no run can replace them any more."""
    if bounds is None or not table_exists(conn, spec.name, "raw"):
        return {}
    return rows_per_file(conn, table_name(spec.name, "raw"), _outside_partitions(bounds))


def _remove_outside(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    bounds: PartitionBounds | None,
    outside: dict[str, int],
) -> None:
    """With `allow_shrink`: the rows of `_rows_outside` go (cleaning then drops theirs from clean and
    quarantine). Its own statement: `replace_window` runs its own transaction right after."""
    if bounds is not None and outside:
        conn.execute(f"DELETE FROM {table_name(spec.name, 'raw')} WHERE {_outside_partitions(bounds)}")


def _outside_problem(outside: dict[str, int], bounds: PartitionBounds | None) -> str | None:
    if not outside or bounds is None:
        return None
    files = sorted(outside)
    names = ", ".join(f"{Path(f).name} ({outside[f]} rows)" for f in files[:5])
    more = f" and {len(files) - 5} more file(s)" if len(files) > 5 else ""
    return (
        f"{sum(outside.values())} rows of {names}{more} are in partitions that no longer exist (outside "
        f"{bounds.first_start:%Y-%m-%d} .. {bounds.last_start:%Y-%m-%d}: the source no longer holds data "
        "that far), and would be erased"
    )


def _shrink_refusal(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    window: str,
    after: dict[str, int],
    outside: dict[str, int],
    bounds: PartitionBounds | None,
    keys: str,
) -> dg.Failure | None:
    """The refusal to erase rows without `allow_shrink`: a window emptied or a file gone (its rows
    counted over the whole raw table), or rows in partitions that no longer exist."""
    raw = table_name(spec.name, "raw")
    before = rows_per_file(conn, raw, window)
    stored = rows_per_file(conn, raw)
    problems = [
        shrink_problem(before, after, recorded_files(conn, spec.name), stored),
        _outside_problem(outside, bounds),
    ]
    problem = "; ".join(p for p in problems if p)
    if not problem:
        return None
    op = f"{spec.name}__raw"
    return dg.Failure(
        description=(
            f"{spec.name}.raw for {keys}: {problem}. Nothing was changed. If the source rows were removed "
            f"on purpose, re-run with `mlplatform run --dataset {spec.name} --allow-shrink` (in the "
            f"launchpad: run config `ops: {{{op}: {{config: {{allow_shrink: true}}}}}}`); otherwise "
            "restore the files."
        ),
        metadata={
            "rows_before": sum(before.values()),
            "rows_after": sum(after.values()),
            "rows_outside_partitions": sum(outside.values()),
        },
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
            outside = _rows_outside(conn, spec, bounds)
            if not config.allow_shrink and table_exists(conn, spec.name, "raw"):
                keys = f"{context.partition_keys[0]} .. {context.partition_keys[-1]}"
                refusal = _shrink_refusal(conn, spec, in_window, after, outside, bounds, keys)
            if refusal is None:
                _remove_outside(conn, spec, bounds, outside)
                pending = _note_pending(conn, staged, bounds, notes)
                metadata = {**_write_window(conn, spec, staged, (start, end), counts, notes, after)}
                metadata["rows_pending_partition"] = pending
                metadata["rows_removed_outside_partitions"] = sum(outside.values())
            conn.execute(f"DROP TABLE {staged}")
        if refusal is not None:  # raised outside the `with`: the resource closes its connection only then
            raise refusal
        for path, n in outside.items():
            context.log.warning(
                f"{spec.name}: {path}: {n} rows removed from raw: their partitions no longer exist"
            )
        for path, note in notes.items():
            context.log.warning(f"{spec.name}: {path}: {note}")
        return dg.MaterializeResult(metadata={**metadata, "source_files": len(files)})

    return raw
