"""Stage 2, cleaning: `raw` -> `clean` (typed, valid) + `quarantine` (failing rows with reasons)."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import dagster as dg

from mlplatform.assets.common import (
    missing_table_fails_the_step,
    partition_bounds,
    spec_code_version,
    table_metadata,
    time_window,
)
from mlplatform.contracts import Stage, asset_key
from mlplatform.core.cleaning import clean_window, drop_rows_outside, reason_counts_markdown
from mlplatform.core.warehouse import window_column, window_predicate
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module


def _clean_specs(spec: DatasetSpec) -> list[dg.AssetSpec]:
    """The two assets the clean step writes: clean and quarantine."""
    common = {
        "deps": [asset_key(spec, Stage.RAW)],
        "owners": spec.owners,
        "tags": spec.tags,
        "code_version": spec_code_version(spec, "columns", "derived", "time_column"),
    }
    return [
        dg.AssetSpec(
            asset_key(spec, Stage.CLEAN),
            description=(
                f"Rows of {spec.name} that pass the spec's Pandera schema (types, nullability, ranges, "
                "allowed values, unique keys), typed, with their lineage columns."
            ),
            **common,
        ),
        dg.AssetSpec(
            asset_key(spec, Stage.QUARANTINE),
            description=(
                f"Rows of {spec.name} that fail validation or do not parse, with their original values and "
                "the failing checks and columns. raw = clean + quarantine, always."
            ),
            **common,
        ),
    ]


def build_clean_assets(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions = stage.spec, stage.partitions
    clean_key, quarantine_key = asset_key(spec, Stage.CLEAN), asset_key(spec, Stage.QUARANTINE)

    @dg.multi_asset(
        name=f"{spec.name}__{Stage.CLEAN}",
        pool=stage.pool,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        specs=_clean_specs(spec),
    )
    def clean(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> Iterator[dg.MaterializeResult]:
        start, end = time_window(context)
        bounds = partition_bounds(partitions)

        def window_of(stage: Stage) -> str:
            return window_predicate(window_column(stage, spec.time_column), start, end)

        with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
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
                conn, spec.name, Stage.CLEAN, result.clean_rows, window_of(Stage.CLEAN)
            )
            quarantine_meta = table_metadata(
                conn, spec.name, Stage.QUARANTINE, result.quarantined_rows, window_of(Stage.QUARANTINE)
            )
        shared = {
            "raw_rows": result.raw_rows,
            "quarantined_rows": result.quarantined_rows,
            "quarantine_reasons": dg.MetadataValue.md(reason_counts_markdown(result.reason_counts)),
            "rows_removed_outside_partitions": removed,
        }
        yield dg.MaterializeResult(asset_key=clean_key, metadata={**clean_meta, **shared})
        yield dg.MaterializeResult(asset_key=quarantine_key, metadata={**quarantine_meta, **shared})

    return clean
