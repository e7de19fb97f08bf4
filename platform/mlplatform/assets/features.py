"""Stage 3, features: `clean` -> `features` with DuckDB SQL, point-in-time correct."""

from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
import duckdb

from mlplatform.assets.common import (
    add_partition_metadata,
    lookback_partitions,
    missing_table_fails_the_step,
    partition_windows,
    partitioned_table_metadata,
    spec_code_version,
    time_window,
)
from mlplatform.contracts import Stage, asset_key
from mlplatform.core import warehouse as warehouse_sql
from mlplatform.core.features import FeaturesWrite, write_features_window
from mlplatform.core.features_dask import write_features_window_dask
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module


def _write_window(
    conn: duckdb.DuckDBPyConnection, dask: DaskResource, spec: DatasetSpec, start: datetime, end: datetime
) -> FeaturesWrite:
    """The local engine's SQL in the warehouse, or the same SQL per shard on the Dask cluster."""
    if not dask.enabled:
        return write_features_window(conn, spec, start, end)
    lake = warehouse_sql.lake_of(conn)
    if lake is None:
        raise dg.Failure(f"{spec.name}: the Dask engine needs the warehouse in lake mode (MLPLATFORM_LAKE)")
    return write_features_window_dask(conn, dask.get_client(), spec, start, end, lake[0])


def build_features_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions = stage.spec, stage.partitions
    history = lookback_partitions(spec)

    @dg.asset(
        key=asset_key(spec, Stage.FEATURES),
        pool=stage.pool,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(
                asset_key(spec, Stage.CLEAN),
                partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-history) if history else None,
            )
        ],
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "features", "columns", "drop", "target", "entity_key"),
        description=(
            f"Model inputs of {spec.name}: calendar parts of `{spec.time_column}`, kept columns, and lags and "
            f"rolling windows over past time only (looking back {spec.lookback}); plus the target "
            f"`{spec.target.column}`."
        ),
    )
    def features(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, dask: DaskResource
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        windows = partition_windows(partitions, context.partition_keys)
        with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
            written = _write_window(conn, dask, spec, start, end)
            tables = partitioned_table_metadata(conn, spec, Stage.FEATURES, windows)
        add_partition_metadata(context, asset_key(spec, Stage.FEATURES), tables.partitions, tables.run)
        return dg.MaterializeResult(
            metadata={
                **tables.table,
                "feature_columns": dg.MetadataValue.json(written.feature_columns),
                **dask.dashboard_metadata(),
            }
        )

    return features
