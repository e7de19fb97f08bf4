"""Stage 1, ingestion: source files -> `<dataset>.raw`, one time window at a time."""

from datetime import UTC, datetime

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlplatform.assets.common import (
    asset_key,
    partition_bounds,
    spec_code_version,
    table_metadata,
    time_window,
)
from mlplatform.core.accounting import ACCOUNTING_TABLE, FileCount, count_source, shrink_problem
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


def _per_file(conn: duckdb.DuckDBPyConnection, relation: str, where: str | None = None) -> dict[str, int]:
    clause = f" WHERE {where}" if where else ""
    rows = conn.execute(f"SELECT _source_file, count(*) FROM {relation}{clause} GROUP BY 1").fetchall()
    return {str(f): int(n) for f, n in rows}


def _shrink_refusal(
    spec: DatasetSpec, before: dict[str, int], after: dict[str, int], keys: str
) -> dg.Failure | None:
    problem = shrink_problem(before, after)
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


def _record_accounting(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    counts: dict[str, FileCount],
    read: dict[str, int],
    in_window: dict[str, int],
    window: tuple[datetime, datetime],
    notes: dict[str, str],
) -> pd.DataFrame:
    """One row per source file of this run, kept in `<ds>._source_accounting` for the checks."""
    files = sorted(set(counts) | set(read))
    frame = pd.DataFrame(
        {
            "source_file": files,
            "source_rows": [counts[f].rows if f in counts else 0 for f in files],
            "read_rows": [read.get(f, 0) for f in files],
            "window_rows": [in_window.get(f, 0) for f in files],
            "window_start": [window[0]] * len(files),
            "window_end": [window[1]] * len(files),
            "note": [notes.get(f) or (counts[f].problem if f in counts else None) for f in files],
        }
    ).astype({"source_rows": "int64", "read_rows": "int64", "window_rows": "int64", "note": "object"})
    conn.register("_accounting_df", frame)
    conn.execute(
        f"CREATE OR REPLACE TABLE {table_name(spec.name, ACCOUNTING_TABLE)} AS "
        "SELECT source_file::VARCHAR AS source_file, source_rows, read_rows, window_rows, "
        "window_start::TIMESTAMP AS window_start, window_end::TIMESTAMP AS window_end, note::VARCHAR AS note "
        "FROM _accounting_df"
    )
    conn.unregister("_accounting_df")
    return frame


def _accounting_metadata(frame: pd.DataFrame) -> dict[str, dg.MetadataValue | int]:
    unread = frame[frame.source_rows != frame.read_rows]
    noted = frame[frame.note.notna() & (frame.source_rows == frame.read_rows)]
    shown = pd.concat([unread, noted, frame]).drop_duplicates("source_file").head(20)
    shown = shown.assign(source_file=shown.source_file.map(lambda f: f.rsplit("/", 1)[-1]))
    columns = ["source_file", "source_rows", "read_rows", "window_rows", "note"]
    return {
        "source_rows": int(frame.source_rows.sum()),
        "source_rows_read": int(frame.read_rows.sum()),
        "files_not_read_in_full": len(unread),
        "source_accounting": dg.MetadataValue.md(
            shown[columns].fillna("").to_markdown(index=False) if len(shown) else "_no files_"
        ),
    }


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
    accounting = _record_accounting(
        conn, spec, counts, _per_file(conn, staged), in_window_per_file, window, notes
    )
    parse_errors = conn.execute(
        f"SELECT count(*) FROM {staged} WHERE {in_window} AND _parse_error IS NOT NULL"
    ).fetchall()[0][0]
    return {
        **table_metadata(conn, spec.name, "raw", rows, preview_where=in_window),
        **_accounting_metadata(accounting),
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
        with warehouse.get_connection() as conn:
            loaded_at = datetime.now(UTC).replace(tzinfo=None)
            staged = stage_source(conn, spec, files, loaded_at, partition_bounds(partitions), notes)
            in_window = window_predicate("_partition_ts", start, end)
            after = _per_file(conn, staged, in_window)
            if not config.allow_shrink and table_exists(conn, spec.name, "raw"):
                before = _per_file(conn, table_name(spec.name, "raw"), in_window)
                keys = f"{context.partition_keys[0]} .. {context.partition_keys[-1]}"
                refusal = _shrink_refusal(spec, before, after, keys)
            if refusal is None:
                metadata = _write_window(conn, spec, staged, (start, end), counts, notes, after)
            conn.execute(f"DROP TABLE {staged}")
        if refusal is not None:  # raised outside the `with`: the resource closes its connection only then
            raise refusal
        for path, note in notes.items():
            context.log.warning(f"{spec.name}: {path}: {note}")
        return dg.MaterializeResult(metadata={**metadata, "source_files": len(files)})

    return raw
