"""Stage 6, scoring: each partition of `features` scored by the current champion -> `predictions`."""

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import asset_key, spec_code_version, table_metadata, time_window
from mlplatform.assets.training import model_feature_names
from mlplatform.core.sql import column_types
from mlplatform.core.training import TrainedModel, predict
from mlplatform.core.warehouse import read_frame, replace_window, table_exists, table_name, window_predicate
from mlplatform.models.registry import CHAMPION, load_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.specs.model import DatasetSpec

PREDICTIONS = "predictions"
_FRAME_VIEW = "predictions_frame"


def probability_columns(model: TrainedModel) -> list[str]:
    if model.task == "binary":
        return ["probability"]
    if model.task == "multiclass":
        return [f"probability_{label}" for label in model.classes or []]
    return []


def score_frame(spec: DatasetSpec, model: TrainedModel, features: pd.DataFrame, version: int) -> pd.DataFrame:
    """The predictions table rows of `features`: time, entity key, prediction, probabilities, version."""
    keys = spec.row_keys
    out = features[keys].reset_index(drop=True)
    if features.empty:
        width = len(model.classes or []) if model.task == "multiclass" else 0
        scores = np.empty((0, width)) if width else np.empty(0)
    else:
        scores = predict(model, features)
    if model.task == "regression":
        out["prediction"] = scores
    else:
        codes = (scores >= 0.5).astype(np.int64) if model.task == "binary" else np.argmax(scores, axis=1)
        out["prediction"] = pd.Series(np.asarray(model.classes, dtype=object)[codes]).infer_objects()
        columns = probability_columns(model)
        matrix = scores.reshape(-1, 1) if model.task == "binary" else scores
        for position, column in enumerate(columns):
            out[column] = matrix[:, position]
    out["model_version"] = np.int64(version)
    return out


def _check_features(spec: DatasetSpec, model: TrainedModel, available: set[str], version: int) -> None:
    """The model's inputs must be features the spec still defines (a dropped one would score as NaN)."""
    missing = [name for name in model.feature_names if name not in available]
    if missing:
        raise dg.Failure(
            f"champion version {version} of {spec.name} expects feature(s) {missing} that "
            f"{spec.name}.features does not have (the spec's features changed since it was trained). "
            f"Retrain ({spec.name}/model, then {spec.name}/evaluation) or roll back: "
            f"mlplatform rollback --dataset {spec.name} --to VERSION"
        )


def build_predictions_asset(spec: DatasetSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    features_table = table_name(spec.name, "features")

    @dg.asset(
        key=asset_key(spec, PREDICTIONS),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[asset_key(spec, "features"), asset_key(spec, "evaluation")],
        group_name="scoring",
        kinds={"duckdb", "lightgbm"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "target", "entity_key", "time_column"),
        description=(
            f"Each partition of {spec.name}.features scored by the `{CHAMPION}` version of model "
            f"`{spec.name}`: `{spec.time_column}`"
            + (f", `{spec.entity_key}`" if spec.entity_key else "")
            + ", `prediction`"
            + {"binary": ", `probability`", "multiclass": ", `probability_<class>`"}.get(spec.target.task, "")
            + " and `model_version`."
        ),
    )
    def predictions(
        context: dg.AssetExecutionContext, warehouse: DuckDBResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        champion = mlflow.get_alias_version(spec.name, CHAMPION)
        if champion is None:
            raise dg.Failure(
                f"model {spec.name} has no `{CHAMPION}` version in MLflow ({mlflow.effective_registry_uri}): "
                f"materialize {spec.name}/model and {spec.name}/evaluation first; evaluation promotes the "
                "first model that beats the baseline"
            )
        version = int(champion.version)
        model = load_version(mlflow, spec.name, version)
        in_window = window_predicate(spec.time_column, start, end)
        with warehouse.get_connection() as conn:
            if not table_exists(conn, spec.name, "features"):
                raise dg.Failure(
                    f"{spec.name}.features does not exist: materialize {spec.name}/features first"
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
            conn.register(_FRAME_VIEW, scored)
            try:
                rows = replace_window(
                    conn, spec.name, PREDICTIONS, f"SELECT * FROM {_FRAME_VIEW}", spec.time_column, start, end
                )
            finally:
                conn.unregister(_FRAME_VIEW)
            metadata = table_metadata(conn, spec.name, PREDICTIONS, rows, in_window)
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
