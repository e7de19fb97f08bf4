"""Stage 3, features: `clean` -> `features` with DuckDB SQL, point-in-time correct."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import (
    asset_key,
    lookback_partitions,
    spec_code_version,
    table_metadata,
    time_window,
)
from mlplatform.core.features import feature_names, features_sql
from mlplatform.core.sql import column_types
from mlplatform.core.warehouse import replace_window, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec


def build_features_asset(spec: DatasetSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    history = lookback_partitions(spec)

    @dg.asset(
        key=asset_key(spec, "features"),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(
                asset_key(spec, "clean"),
                partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-history) if history else None,
            )
        ],
        group_name="features",
        kinds={"duckdb"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "features", "columns", "drop", "target", "entity_key"),
        description=(
            f"Model inputs of {spec.name}: calendar parts of `{spec.time_column}`, kept columns, and lags and "
            f"rolling windows over past time only (looking back {spec.lookback}); plus the target "
            f"`{spec.target.column}`."
        ),
    )
    def features(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
        start, end = time_window(context)
        clean = table_name(spec.name, "clean")
        with warehouse.get_connection() as conn:
            time_type = column_types(conn, clean)[spec.time_column]
            sql = features_sql(spec, clean, start, end, time_type)
            rows = replace_window(conn, spec.name, "features", sql, spec.time_column, start, end)
            metadata = table_metadata(
                conn, spec.name, "features", rows, window_predicate(spec.time_column, start, end)
            )
        return dg.MaterializeResult(
            metadata={**metadata, "feature_columns": dg.MetadataValue.json(feature_names(spec, time_type))}
        )

    return features
