"""Stage 3, features: `clean` -> `features` with DuckDB SQL, point-in-time correct."""

from typing import TYPE_CHECKING

import dagster as dg

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
from mlplatform.core.features import write_features_window
from mlplatform.resources.warehouse import WarehouseResource

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module


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
    def features(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        start, end = time_window(context)
        windows = partition_windows(partitions, context.partition_keys)
        with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
            written = write_features_window(conn, spec, start, end)
            tables = partitioned_table_metadata(conn, spec, Stage.FEATURES, windows)
        add_partition_metadata(context, asset_key(spec, Stage.FEATURES), tables.partitions, tables.run)
        return dg.MaterializeResult(
            metadata={**tables.table, "feature_columns": dg.MetadataValue.json(written.feature_columns)}
        )

    return features
