"""Stage 2, cleaning: `raw` -> `clean` (typed, valid) + `quarantine` (failing rows with reasons)."""

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
import duckdb

from mlplatform.assets.common import (
    Metadata,
    add_partition_metadata,
    missing_table_fails_the_step,
    partition_bounds,
    partition_windows,
    partitioned_table_metadata,
    spec_code_version,
    time_window,
)
from mlplatform.contracts import Stage, asset_key
from mlplatform.core.cleaning import (
    CleanResult,
    PartitionOutcome,
    clean_window,
    drop_rows_outside,
    partition_outcomes,
    reason_counts_markdown,
)
from mlplatform.core.cleaning_dask import clean_window_dask
from mlplatform.core.warehouse import lake_of
from mlplatform.resources.dask import DaskResource
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


def _outcome_metadata(outcome: PartitionOutcome) -> Metadata:
    """One partition's split, on both its clean and its quarantine event."""
    return {
        "raw_rows": outcome.raw_rows,
        "clean_rows": outcome.clean_rows,
        "quarantined_rows": outcome.quarantined_rows,
        "quarantine_share": outcome.quarantine_share,
        "quarantine_reasons": dg.MetadataValue.md(reason_counts_markdown(outcome.reason_counts)),
    }


def _run_metadata(result: CleanResult) -> Metadata:
    """The run's split (`run_*`), with the checks counted per failing column."""
    return {
        "run_raw_rows": result.raw_rows,
        "run_clean_rows": result.clean_rows,
        "run_quarantined_rows": result.quarantined_rows,
        "run_quarantine_reasons": dg.MetadataValue.md(reason_counts_markdown(result.reason_counts)),
    }


def _clean(
    conn: duckdb.DuckDBPyConnection, dask: DaskResource, spec: DatasetSpec, start: datetime, end: datetime
) -> CleanResult:
    """The window validated in the warehouse, or per partition in parallel on the Dask cluster."""
    if not dask.enabled:
        return clean_window(conn, spec, start, end)
    lake = lake_of(conn)
    if lake is None:
        raise dg.Failure(f"{spec.name}: the Dask engine needs the warehouse in lake mode (MLPLATFORM_LAKE)")
    return clean_window_dask(conn, dask.get_client(), spec, start, end, lake[0])


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
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, dask: DaskResource
    ) -> Iterator[dg.MaterializeResult]:
        start, end = time_window(context)
        bounds = partition_bounds(partitions)
        windows = partition_windows(partitions, context.partition_keys)
        with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
            # First: a row of a partition that no longer exists must not make a new row a duplicate.
            removed = drop_rows_outside(conn, spec, bounds.first_start, bounds.end) if bounds else 0
            if removed:
                context.log.warning(
                    f"{spec.name}: {removed} clean + quarantine rows removed: their partitions are gone"
                )
            result = _clean(conn, dask, spec, start, end)
            context.log.info(
                f"{spec.name} {start} .. {end}: {result.raw_rows} raw = {result.clean_rows} clean "
                f"+ {result.quarantined_rows} quarantined"
            )
            outcomes = partition_outcomes(conn, spec, windows)
            tables = {
                s: partitioned_table_metadata(conn, spec, s, windows) for s in (Stage.CLEAN, Stage.QUARANTINE)
            }
        run = _run_metadata(result)
        for stage, key in ((Stage.CLEAN, clean_key), (Stage.QUARANTINE, quarantine_key)):
            own = {p: {**m, **_outcome_metadata(outcomes[p])} for p, m in tables[stage].partitions.items()}
            add_partition_metadata(context, key, own, {**tables[stage].run, **run})
            metadata = {
                **tables[stage].table,
                "rows_removed_outside_partitions": removed,
                **dask.dashboard_metadata(),
            }
            yield dg.MaterializeResult(asset_key=key, metadata=metadata)

    return clean
