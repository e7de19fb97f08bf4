"""Stage 6, scoring: each partition of `features` scored by the current champion -> `predictions`."""

from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
import duckdb
import pandas as pd

from mlplatform.assets.common import (
    add_partition_metadata,
    partition_windows,
    partitioned_table_metadata,
    spec_code_version,
    time_window,
)
from mlplatform.contracts import CHAMPION_ALIAS, Stage, asset_key
from mlplatform.core import warehouse as warehouse_sql
from mlplatform.core.row_identity import ACTUAL_COLUMN, prediction_keys
from mlplatform.core.scoring import INPUTS_HASH_COLUMN, inputs_hash_sql, score_frame
from mlplatform.core.scoring_dask import score_window_dask
from mlplatform.core.training import TrainedModel
from mlplatform.core.training_data import scoring_feature_names
from mlplatform.core.warehouse import read_frame, replace_window, table_exists, table_name, window_predicate
from mlplatform.models.registry import load_version
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

_FRAME_VIEW = "predictions_frame"
_Champion = tuple[int, TrainedModel]  # (version, model)


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


def _champion(spec: DatasetSpec, mlflow: MlflowResource) -> _Champion:
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


def _scoring_inputs(
    context: dg.AssetExecutionContext, conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, champion: _Champion
) -> None:
    """Fail if the champion reads a feature the table lacks; warn of newer ones it does not use. Its
    own feature list decides whether the entity key is an input (not today's training set)."""
    version, model = champion
    defined = set(scoring_feature_names(conn, spec, model.feature_names))
    _check_features(spec, model, defined, version)
    unused = sorted(defined - set(model.feature_names))
    if unused:
        context.log.warning(f"champion version {version} does not use the newer feature(s) {unused}")


def _score_window(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, champion: _Champion, start: datetime, end: datetime
) -> int:
    """Score the window's features rows and replace its predictions; returns the rows written."""
    version, model = champion
    in_window = window_predicate(spec.time_column, start, end)
    features, hashed = table_name(spec.name, Stage.FEATURES), inputs_hash_sql(model.feature_names)
    frame = read_frame(conn, f"SELECT *, {hashed} FROM {features} WHERE {in_window}")
    try:
        scored = score_frame(spec, model, frame, version)
    except (TypeError, ValueError) as error:
        raise dg.Failure(
            f"champion version {version} of {spec.name} cannot score {spec.name}.features: {error}"
        ) from error
    return _write_predictions(conn, spec, scored, start, end)


def _score_on_engine(
    conn: duckdb.DuckDBPyConnection,
    dask: DaskResource,
    spec: DatasetSpec,
    champion: _Champion,
    start: datetime,
    end: datetime,
) -> int:
    """Score the window in the warehouse, or partition by partition on the Dask cluster (a window
    with no features files there has nothing to distribute and is scored the local way)."""
    if not dask.enabled:
        return _score_window(conn, spec, champion, start, end)
    lake = warehouse_sql.lake_of(conn)
    if lake is None:
        raise dg.Failure(f"{spec.name}: the Dask engine needs the warehouse in lake mode (MLPLATFORM_LAKE)")
    rows = score_window_dask(conn, dask.get_client(), spec, champion, start, end, lake[0])
    return _score_window(conn, spec, champion, start, end) if rows is None else rows


def _description(spec: DatasetSpec) -> str:
    return (
        f"Each partition of {spec.name}.features scored by the `{CHAMPION_ALIAS}` version of model "
        f"`{spec.name}`: `{spec.time_column}`"
        + "".join(f", `{key}`" for key in prediction_keys(spec)[1:])
        + ", `prediction`"
        + {"binary": ", `probability`", "multiclass": ", `probability_<class>`"}.get(spec.target.task, "")
        + f", `model_version`, `{INPUTS_HASH_COLUMN}` (of the row's model inputs: the reference profile "
        "reuses a prediction whose inputs are unchanged) and "
        f"`{ACTUAL_COLUMN}` (the target once known, null until then)."
    )


def build_predictions_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions = stage.spec, stage.partitions

    @dg.asset(
        key=asset_key(spec, Stage.PREDICTIONS),
        pool=stage.pool,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[asset_key(spec, Stage.FEATURES), asset_key(spec, Stage.EVALUATION)],
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "target", "entity_key", "time_column"),
        description=_description(spec),
    )
    def predictions(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        mlflow: MlflowResource,
        dask: DaskResource,
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        champion = _champion(spec, mlflow)
        version = champion[0]
        with warehouse.get_connection(spec.name) as conn:
            if not table_exists(conn, spec.name, Stage.FEATURES):
                raise dg.Failure(
                    f"{spec.name}.{Stage.FEATURES} does not exist: materialize {spec.name}/{Stage.FEATURES} first"
                )
            _scoring_inputs(context, conn, spec, champion)
            rows = _score_on_engine(conn, dask, spec, champion, start, end)
            tables = partitioned_table_metadata(
                conn, spec, Stage.PREDICTIONS, partition_windows(partitions, context.partition_keys)
            )
        context.log.info(f"{spec.name}: scored {rows:,} rows of {start} .. {end} with version {version}")
        add_partition_metadata(context, asset_key(spec, Stage.PREDICTIONS), tables.partitions, tables.run)
        return dg.MaterializeResult(
            metadata={
                **tables.table,
                "model_version": version,
                "model_uri": f"models:/{spec.name}/{version}",
                "model_version_link": dg.MetadataValue.url(mlflow.model_version_url(spec.name, version)),
                **dask.dashboard_metadata(),
            }
        )

    return predictions
