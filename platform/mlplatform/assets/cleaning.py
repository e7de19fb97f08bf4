"""Stage 2, cleaning: `raw` -> `clean` (typed, valid) + `quarantine` (failing rows with reasons)."""

from collections.abc import Iterator

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import (
    asset_key,
    partition_bounds,
    spec_code_version,
    table_metadata,
    time_window,
)
from mlplatform.core.cleaning import clean_window, drop_rows_outside
from mlplatform.core.warehouse import window_predicate
from mlplatform.specs.model import DatasetSpec


def build_clean_assets(spec: DatasetSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    common = {
        "deps": [asset_key(spec, "raw")],
        "group_name": "cleaning",
        "owners": spec.owners,
        "tags": spec.tags,
        "code_version": spec_code_version(spec, "columns", "derived", "time_column"),
    }
    clean_key, quarantine_key = asset_key(spec, "clean"), asset_key(spec, "quarantine")

    @dg.multi_asset(
        name=f"{spec.name}__clean",
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        specs=[
            dg.AssetSpec(
                clean_key,
                kinds={"duckdb", "pandera", "pandas"},
                description=(
                    f"Rows of {spec.name} that pass the spec's Pandera schema (types, nullability, ranges, "
                    "allowed values, unique keys), typed, with their lineage columns."
                ),
                **common,
            ),
            dg.AssetSpec(
                quarantine_key,
                kinds={"duckdb", "pandera"},
                description=(
                    f"Rows of {spec.name} that fail validation or do not parse, with their original values and "
                    "the failing checks and columns. raw = clean + quarantine, always."
                ),
                **common,
            ),
        ],
    )
    def clean(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> Iterator[dg.MaterializeResult]:
        start, end = time_window(context)
        bounds = partition_bounds(partitions)
        with warehouse.get_connection() as conn:
            # First: a row of a partition that no longer exists must not make a new row a duplicate.
            removed = drop_rows_outside(conn, spec, bounds.first_start, bounds.end) if bounds else 0
            if removed:
                context.log.warning(
                    f"{spec.name}: {removed} clean + quarantine rows removed: their partitions are gone"
                )
            result = clean_window(conn, spec, start, end)
            context.log.info(
                f"{spec.name} {start} .. {end}: {result.raw_rows} raw = {result.clean_rows} clean "
                f"+ {result.quarantined_rows} quarantined"
            )
            clean_meta = table_metadata(
                conn, spec.name, "clean", result.clean_rows, window_predicate(spec.time_column, start, end)
            )
            quarantine_meta = table_metadata(
                conn,
                spec.name,
                "quarantine",
                result.quarantined_rows,
                window_predicate("_partition_ts", start, end),
            )
        reasons = dg.MetadataValue.md(
            "\n".join(f"- `{reason}`: {count} rows" for reason, count in result.reason_counts.items())
            or "_none_"
        )
        shared = {
            "raw_rows": result.raw_rows,
            "quarantined_rows": result.quarantined_rows,
            "quarantine_reasons": reasons,
            "rows_removed_outside_partitions": removed,
        }
        yield dg.MaterializeResult(asset_key=clean_key, metadata={**clean_meta, **shared})
        yield dg.MaterializeResult(asset_key=quarantine_key, metadata={**quarantine_meta, **shared})

    return clean
