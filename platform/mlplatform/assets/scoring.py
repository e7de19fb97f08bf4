"""Stage 6, scoring: each partition of `features` scored by the current champion -> `predictions`."""

from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
import duckdb
import pandas as pd

from mlplatform.assets.common import spec_code_version, table_metadata, time_window
from mlplatform.contracts import CHAMPION_ALIAS, Stage, asset_key
from mlplatform.core.scoring import score_frame
from mlplatform.core.sql import column_types
from mlplatform.core.training import TrainedModel
from mlplatform.core.training_data import model_feature_names
from mlplatform.core.warehouse import read_frame, replace_window, table_exists, table_name, window_predicate
from mlplatform.models.registry import load_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

_FRAME_VIEW = "predictions_frame"


def _check_features(spec: DatasetSpec, model: TrainedModel, available: set[str], version: int) -> None:
    """The model's inputs must be features the spec still defines (a dropped one would score as NaN)."""
    missing = [name for name in model.feature_names if name not in available]
    if missing:
        raise dg.Failure(
            f"champion version {version} of {spec.name} expects feature(s) {missing} that "
            f"{spec.name}.features does not have (the spec's features changed since it was trained). "
            f"Retrain ({spec.name}/{Stage.MODEL}, then {spec.name}/{Stage.EVALUATION}) or roll back: "
            f"mlplatform rollback --dataset {spec.name} --to VERSION"
        )


def _champion(spec: DatasetSpec, mlflow: MlflowResource) -> tuple[int, TrainedModel]:
    found = mlflow.get_alias_version(spec.name, CHAMPION_ALIAS)
    if found is None:
        raise dg.Failure(
            f"model {spec.name} has no `{CHAMPION_ALIAS}` version in MLflow ({mlflow.effective_registry_uri}): "
            f"materialize {spec.name}/{Stage.MODEL} and {spec.name}/{Stage.EVALUATION} first; evaluation "
            "promotes the first model that beats the baseline"
        )
    version = int(found.version)
    return version, load_version(mlflow, spec.name, version)


def _write_predictions(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, scored: pd.DataFrame, start: datetime, end: datetime
) -> int:
    """Replace the window's rows of the predictions table with `scored`; returns the rows written."""
    conn.register(_FRAME_VIEW, scored)
    try:
        return replace_window(
            conn, spec.name, Stage.PREDICTIONS, f"SELECT * FROM {_FRAME_VIEW}", spec.time_column, start, end
        )
    finally:
        conn.unregister(_FRAME_VIEW)


def build_predictions_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions = stage.spec, stage.partitions
    features_table = table_name(spec.name, Stage.FEATURES)

    @dg.asset(
        key=asset_key(spec, Stage.PREDICTIONS),
        pool=stage.pool,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[asset_key(spec, Stage.FEATURES), asset_key(spec, Stage.EVALUATION)],
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "target", "entity_key", "time_column"),
        description=(
            f"Each partition of {spec.name}.features scored by the `{CHAMPION_ALIAS}` version of model "
            f"`{spec.name}`: `{spec.time_column}`"
            + (f", `{spec.entity_key}`" if spec.entity_key else "")
            + ", `prediction`"
            + {"binary": ", `probability`", "multiclass": ", `probability_<class>`"}.get(spec.target.task, "")
            + " and `model_version`."
        ),
    )
    def predictions(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        version, model = _champion(spec, mlflow)
        in_window = window_predicate(spec.time_column, start, end)
        with warehouse.get_connection(spec.name) as conn:
            if not table_exists(conn, spec.name, Stage.FEATURES):
                raise dg.Failure(
                    f"{spec.name}.{Stage.FEATURES} does not exist: materialize {spec.name}/{Stage.FEATURES} first"
                )
            defined = set(model_feature_names(conn, spec)) & set(column_types(conn, features_table))
            _check_features(spec, model, defined, version)
            unused = sorted(defined - set(model.feature_names))
            if unused:
                context.log.warning(f"champion version {version} does not use the newer feature(s) {unused}")
            frame = read_frame(conn, f"SELECT * FROM {features_table} WHERE {in_window}")
            try:
                scored = score_frame(spec, model, frame, version)
            except (TypeError, ValueError) as error:
                raise dg.Failure(
                    f"champion version {version} of {spec.name} cannot score {spec.name}.features: {error}"
                ) from error
            rows = _write_predictions(conn, spec, scored, start, end)
            metadata = table_metadata(conn, spec.name, Stage.PREDICTIONS, rows, in_window)
        context.log.info(f"{spec.name}: scored {rows:,} rows of {start} .. {end} with version {version}")
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "model_version": version,
                "model_uri": f"models:/{spec.name}/{version}",
                "model_version_link": dg.MetadataValue.url(mlflow.model_version_url(spec.name, version)),
            }
        )

    return predictions
