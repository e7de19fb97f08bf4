"""Stage 3, features: `clean` -> `features` with DuckDB SQL, point-in-time correct."""

from typing import TYPE_CHECKING

import dagster as dg

from mlplatform.assets.common import (
    lookback_partitions,
    missing_table_fails_the_step,
    spec_code_version,
    table_metadata,
    time_window,
)
from mlplatform.contracts import Stage, asset_key
from mlplatform.core.features import write_features_window
from mlplatform.core.warehouse import window_column, window_predicate
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
        in_window = window_predicate(window_column(Stage.FEATURES, spec.time_column), start, end)
        with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
            written = write_features_window(conn, spec, start, end)
            metadata = table_metadata(conn, spec.name, Stage.FEATURES, written.rows, in_window)
        return dg.MaterializeResult(
            metadata={**metadata, "feature_columns": dg.MetadataValue.json(written.feature_columns)}
        )

    return features
