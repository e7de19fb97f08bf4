"""Stage 1, ingestion: source files -> `<dataset>.raw`, one time window at a time."""

from typing import TYPE_CHECKING

import dagster as dg
import duckdb
from pydantic import Field

from mlplatform.assets.common import (
    Metadata,
    TableMetadata,
    add_partition_metadata,
    partition_bounds,
    partition_windows,
    partitioned_table_metadata,
    spec_code_version,
    time_window,
)
from mlplatform.assets.landing import files_spec, land_new_rows, source_counts, source_label
from mlplatform.contracts import MaterializationKey, Stage, asset_key
from mlplatform.core.accounting import accounts_markdown
from mlplatform.core.ingestion import (
    RawLoad,
    ShrinkRefusal,
    Stager,
    load_raw_window,
    stage_in_warehouse,
    with_spec_end,
)
from mlplatform.core.ingestion_dask import cluster_stager
from mlplatform.core.partition_counts import rows_per_partition
from mlplatform.core.source import source_files
from mlplatform.core.warehouse import PARTITION_TIME, lake_of, table_name
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.warehouse import WarehouseResource

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module


class RawConfig(dg.Config):
    allow_shrink: bool = Field(
        default=False,
        description=(
            "Let a re-run remove rows on purpose: empty a partition whose source files no longer yield "
            "rows for it, or drop every row of a file that is gone."
        ),
    )


def _raw_metadata(load: RawLoad, table: Metadata) -> Metadata:
    """What every partition's event carries: the table and the source files (named as theirs, not the
    partition's: `source_*`, `files_*`, rows pending or removed from the table)."""
    accounts = load.accounts
    return {
        **table,
        "source_rows": sum(a.source_rows for a in accounts),
        "source_rows_read": sum(a.read_rows for a in accounts),
        "files_not_read_in_full": sum(1 for a in accounts if not a.read_in_full),
        "source_accounting": dg.MetadataValue.md(accounts_markdown(accounts, with_landed=False)),
        MaterializationKey.ROWS_PENDING_PARTITION.value: load.rows_pending_partition,
        "rows_removed_outside_partitions": sum(load.removed_outside.values()),
    }


def _partition_metadata(tables: TableMetadata, malformed: dict[str, int]) -> dict[str, Metadata]:
    """Each partition's rows and preview, and its lines that did not read or place as they are."""
    return {key: {**own, "malformed_lines": malformed[key]} for key, own in tables.partitions.items()}


def _stager(conn: duckdb.DuckDBPyConnection, dask: DaskResource) -> Stager:
    """The Dask engine stages the source files on its workers (per file group, in parallel)."""
    lake = lake_of(conn)
    if not dask.enabled or lake is None:
        return stage_in_warehouse
    return cluster_stager(dask.get_client(), lake[0])


def build_raw_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions = stage.spec, stage.partitions
    read_spec = files_spec(stage)  # a postgres source's landed files, read like any files

    @dg.asset(
        key=asset_key(spec, Stage.RAW),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=stage.pool,
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "source", "derived", "time_column"),
        description=(
            f"Rows of {source_label(spec)} loaded as they are (text for CSV), with `derived` columns and lineage "
            "(source file, source row, load time, parse error). Re-running a partition replaces exactly it, "
            "but never empties it silently (asset config `allow_shrink`). Each file's records are counted "
            "independently (`source_accounting`). " + (spec.description or "")
        ),
        metadata={"source": read_spec.source_pattern, "format": spec.source_format},
    )
    def raw(
        context: dg.AssetExecutionContext, config: RawConfig, warehouse: WarehouseResource, dask: DaskResource
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        landed = land_new_rows(context, stage)
        files = source_files(read_spec)
        context.log.info(f"loading {start} .. {end} of {spec.name} from {len(files)} file(s)")
        counts = source_counts(stage, files)
        bounds = with_spec_end(spec, partition_bounds(partitions))
        keys = f"{context.partition_keys[0]} .. {context.partition_keys[-1]}"
        windows = partition_windows(partitions, context.partition_keys)
        with warehouse.get_connection(spec.name) as conn:
            stager = _stager(conn, dask)
            load = load_raw_window(
                conn, read_spec, counts, (start, end), bounds, config.allow_shrink, keys, stager
            )
            if not isinstance(load, ShrinkRefusal):
                tables = partitioned_table_metadata(conn, spec, Stage.RAW, windows)
                raw = table_name(spec.name, Stage.RAW)
                malformed = rows_per_partition(conn, raw, PARTITION_TIME, windows, "_parse_error IS NOT NULL")
        # Raised outside the `with`: the resource closes its connection only then.
        if isinstance(load, ShrinkRefusal):
            raise dg.Failure(description=load.description, metadata=load.metadata())
        for path, n in load.removed_outside.items():
            context.log.warning(
                f"{spec.name}: {path}: {n} rows removed from raw: their partitions no longer exist"
            )
        for path, note in load.notes.items():
            context.log.warning(f"{spec.name}: {path}: {note}")
        run = {**tables.run, "run_malformed_lines": load.malformed_lines}
        add_partition_metadata(
            context, asset_key(spec, Stage.RAW), _partition_metadata(tables, malformed), run
        )
        metadata = {**_raw_metadata(load, tables.table), "source_files": len(files), **landed}
        metadata.update(dask.dashboard_metadata())
        return dg.MaterializeResult(metadata=metadata)

    return raw
