"""Stage 6a, `reference_profile`: what the champion learned from.

It profiles the champion's training rows (inputs, target, the champion's own predictions on them) and
records its test error; it is rebuilt whenever evaluation (promotion) runs, declared with an
AutomationCondition so a champion changed from the UI also refreshes it.
"""

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from mlplatform.assets.common import missing_table_fails_the_step, spec_code_version
from mlplatform.contracts import CHAMPION_ALIAS, Stage, asset_key
from mlplatform.core.drift_reference import (
    build_reference,
    model_outputs,
    monitored_columns,
    nan_to_none,
    primary_error,
)
from mlplatform.core.scoring import MODEL_VERSION_COLUMN
from mlplatform.core.sql import quote_ident
from mlplatform.core.training import TrainedModel
from mlplatform.core.training_data import champion_training_rows, recorded_windows
from mlplatform.core.warehouse import table_name
from mlplatform.models.registry import load_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

_FRAME_VIEW = "_reference_rows"


def _champion_rows(
    spec: DatasetSpec, warehouse: WarehouseResource, mlflow: MlflowResource
) -> tuple[int, TrainedModel, pd.DataFrame, pd.DataFrame]:
    """(champion version, its model, its training rows with its outputs on them, its test rows)."""
    champion = mlflow.get_alias_version(spec.name, CHAMPION_ALIAS)
    if champion is None:
        raise dg.Failure(f"{spec.name} has no champion model yet: nothing to profile")
    model = load_version(mlflow, spec.name, champion.version)
    windows = (
        recorded_windows(mlflow.client().get_run(champion.run_id).data.params) if champion.run_id else None
    )
    with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
        train, test = champion_training_rows(conn, spec, windows)
    if train.empty:
        raise dg.Failure(f"no training rows found for {spec.name} champion version {champion.version}")
    return int(champion.version), model, pd.concat([train, model_outputs(model, train)], axis=1), test


def _store(warehouse: WarehouseResource, spec: DatasetSpec, frame: pd.DataFrame) -> None:
    with warehouse.get_connection(spec.name) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.name)}")
        conn.register(_FRAME_VIEW, frame)
        conn.execute(
            f"CREATE OR REPLACE TABLE {table_name(spec.name, Stage.REFERENCE_PROFILE)} AS "
            f"SELECT * FROM {_FRAME_VIEW}"
        )
        conn.unregister(_FRAME_VIEW)


def build_reference_profile_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec = stage.spec

    @dg.asset(
        key=asset_key(spec, Stage.REFERENCE_PROFILE),
        pool=stage.pool,
        deps=[asset_key(spec, Stage.TRAINING_SET), asset_key(spec, Stage.EVALUATION)],
        owners=spec.owners,
        tags=spec.tags,
        # Eager: whenever evaluation (and so possibly the champion) changes, the reference follows.
        automation_condition=dg.AutomationCondition.eager(),
        code_version=spec_code_version(spec, "drift", "features", "columns", "target", "drop"),
        description=(
            f"Distribution profile of the {spec.name} champion's training rows: decile bins, quantiles and "
            "moments of numeric columns, category shares of categorical ones, for the model inputs, the "
            "target and the champion's predictions; plus the champion's test error. Long table "
            f"`{spec.name}.reference_profile` (feature, kind, key, value) that drift reports compare with."
        ),
    )
    def reference_profile(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        version, model, train, test = _champion_rows(spec, warehouse, mlflow)
        columns = monitored_columns(spec, list(train.columns))
        performance = None
        if not test.empty:
            performance = primary_error(
                spec.target.task, test[spec.target.column], model_outputs(model, test), model.classes
            )
        frame = build_reference(train, columns, performance, spec)
        frame[MODEL_VERSION_COLUMN] = version
        frame["built_at"] = datetime.now(UTC).replace(tzinfo=None)
        _store(warehouse, spec, frame)
        context.log.info(
            f"reference of {spec.name} champion v{version}: {len(train)} training rows, "
            f"{len(columns.all)} columns, test error {performance}"
        )
        return dg.MaterializeResult(
            metadata={
                "champion_version": version,
                "training_rows": len(train),
                "test_rows": len(test),
                "profiled_columns": dg.MetadataValue.json(columns.roles),
                "reference_metric": performance[0] if performance else "none",
                "reference_error": nan_to_none(performance[1]) if performance else None,
                "dagster/row_count": len(frame),
                "dagster/table_name": f"{spec.name}.{Stage.REFERENCE_PROFILE}",
            }
        )

    return reference_profile
