"""Stage 1, ingestion: source files -> `<dataset>.raw`, one time window at a time."""

from datetime import UTC, datetime

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import asset_key, spec_code_version, table_metadata, time_window
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.warehouse import replace_window, window_predicate
from mlplatform.specs.model import DatasetSpec


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
            "(source file, source row, load time, parse error). Re-running a partition replaces exactly it. "
            + (spec.description or "")
        ),
        metadata={"source": spec.source_pattern, "format": spec.source_format},
    )
    def raw(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
        start, end = time_window(context)
        files = source_files(spec)
        context.log.info(f"loading {start} .. {end} of {spec.name} from {len(files)} file(s)")
        with warehouse.get_connection() as conn:
            staged = stage_source(conn, spec, files, datetime.now(UTC).replace(tzinfo=None))
            in_window = window_predicate("_partition_ts", start, end)
            rows = replace_window(
                conn,
                spec.name,
                "raw",
                f"SELECT * FROM {staged} WHERE {in_window}",
                "_partition_ts",
                start,
                end,
            )
            parse_errors = conn.execute(
                f"SELECT count(*) FROM {staged} WHERE {in_window} AND _parse_error IS NOT NULL"
            ).fetchall()[0][0]
            metadata = table_metadata(conn, spec.name, "raw", rows, preview_where=in_window)
            conn.execute(f"DROP TABLE {staged}")
        return dg.MaterializeResult(
            metadata={**metadata, "source_files": len(files), "malformed_lines": int(parse_errors)}
        )

    return raw
