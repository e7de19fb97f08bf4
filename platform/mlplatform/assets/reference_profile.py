"""Stage 6a, `reference_profile`: what the champion learned from.

It profiles the champion's training rows (inputs, target, the champion's own predictions on them,
taken from the predictions table for rows it scored from the same inputs: core.champion_outputs) and
records its test error, its feature importance (gain share per input: drift verdicts weight each
column by it) and, for a classifier, a probability calibration fitted on its validation window with
the estimated (label-free, CBPE) metric on its test window, the like-for-like reference of the
estimates drift reports make (core.drift_performance). It is rebuilt whenever evaluation (promotion)
runs, declared with an AutomationCondition so a champion changed from the UI also refreshes it.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

from mlplatform.assets.common import missing_table_fails_the_step, spec_code_version
from mlplatform.contracts import CHAMPION_ALIAS, Stage, asset_key
from mlplatform.core.champion_outputs import champion_outputs
from mlplatform.core.drift_performance import ChampionFacts, champion_facts
from mlplatform.core.drift_reference import build_reference, monitored_columns, nan_to_none, primary_error
from mlplatform.core.scoring import INPUTS_HASH_COLUMN, MODEL_VERSION_COLUMN
from mlplatform.core.sql import quote_ident
from mlplatform.core.training import TrainedModel, feature_importance
from mlplatform.core.training_data import champion_split_rows, recorded_windows
from mlplatform.core.warehouse import table_name
from mlplatform.models.registry import load_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

_FRAME_VIEW = "_reference_rows"


@dataclass(frozen=True)
class _ChampionRows:
    version: int
    model: TrainedModel
    splits: dict[str, pd.DataFrame]  # train, validation, test; train with the outputs beside its rows
    outputs: dict[str, pd.DataFrame]  # the champion's outputs on each split that has rows
    reused: int  # rows whose outputs came from the predictions table, not scored again


def _champion_rows(spec: DatasetSpec, warehouse: WarehouseResource, mlflow: MlflowResource) -> _ChampionRows:
    champion = mlflow.get_alias_version(spec.name, CHAMPION_ALIAS)
    if champion is None:
        raise dg.Failure(f"{spec.name} has no champion model yet: nothing to profile")
    version = int(champion.version)
    model = load_version(mlflow, spec.name, version)
    windows = (
        recorded_windows(mlflow.client().get_run(champion.run_id).data.params) if champion.run_id else None
    )
    with warehouse.get_connection(spec.name) as conn, missing_table_fails_the_step():
        splits = champion_split_rows(conn, spec, windows, hashed_inputs=model.feature_names)
        if splits["train"].empty:
            raise dg.Failure(f"no training rows found for {spec.name} champion version {version}")
        found = {
            name: champion_outputs(conn, spec, model, version, rows)
            for name, rows in splits.items()
            if len(rows)
        }
    outputs = {name: result.frame for name, result in found.items()}
    for rows in splits.values():  # in place: a copy of 8M rows would cost seconds
        if INPUTS_HASH_COLUMN in rows:
            del rows[INPUTS_HASH_COLUMN]
    for column in outputs["train"].columns:  # beside the rows, in place (a concat copies all of them)
        splits["train"][column] = outputs["train"][column]
    return _ChampionRows(version, model, splits, outputs, sum(result.reused for result in found.values()))


def _facts(spec: DatasetSpec, rows: _ChampionRows) -> tuple[ChampionFacts, str | None]:
    """Importance, calibration (validation window) and estimated test metric of the champion."""
    validation = rows.splits["validation"]
    labelled = (validation[spec.target.column], rows.outputs["validation"]) if len(validation) else None
    return champion_facts(
        spec.target.task,
        feature_importance(rows.model).to_dict(),
        labelled,
        rows.outputs.get("test"),
        rows.model.classes,
        pd.to_datetime(rows.splits["train"][spec.time_column]).max(),
    )


def _store(warehouse: WarehouseResource, spec: DatasetSpec, frame: pd.DataFrame) -> None:
    with warehouse.get_connection(spec.name) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.name)}")
        conn.register(_FRAME_VIEW, frame)
        conn.execute(
            f"CREATE OR REPLACE TABLE {table_name(spec.name, Stage.REFERENCE_PROFILE)} AS "
            f"SELECT * FROM {_FRAME_VIEW}"
        )
        conn.unregister(_FRAME_VIEW)


def _metadata(
    spec: DatasetSpec,
    rows: _ChampionRows,
    roles: dict[str, str],
    performance: tuple[str, float] | None,
    facts: ChampionFacts,
    frame: pd.DataFrame,
) -> dict[str, Any]:
    estimated, splits = facts.estimated_reference, rows.splits
    return {
        "champion_version": rows.version,
        "training_rows": len(splits["train"]),
        "validation_rows": len(splits["validation"]),
        "test_rows": len(splits["test"]),
        "outputs_from_predictions": rows.reused,
        "profiled_columns": dg.MetadataValue.json(roles),
        "reference_metric": performance[0] if performance else "none",
        "reference_error": nan_to_none(performance[1]) if performance else None,
        "estimated_reference_error": nan_to_none(estimated[1]) if estimated else None,
        "calibrated_on_validation_rows": facts.calibration_rows,
        "importance_gain_share": dg.MetadataValue.json(
            {name: round(share, 4) for name, share in facts.importance.items()}
        ),
        "dagster/row_count": len(frame),
        "dagster/table_name": f"{spec.name}.{Stage.REFERENCE_PROFILE}",
    }


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
            "target and the champion's predictions; plus the champion's test error, its feature importance "
            "(gain share) and, for a classifier, its probability calibration (validation window) and "
            "estimated test error. Long table "
            f"`{spec.name}.reference_profile` (feature, kind, key, value) that drift reports compare with."
        ),
    )
    def reference_profile(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        rows = _champion_rows(spec, warehouse, mlflow)
        version, train, test = rows.version, rows.splits["train"], rows.splits["test"]
        columns = monitored_columns(spec, list(train.columns))
        performance = None
        if not test.empty:  # the test error and, in _facts, the estimate on the test window
            performance = primary_error(
                spec.target.task, test[spec.target.column], rows.outputs["test"], rows.model.classes
            )
        facts, no_calibration = _facts(spec, rows)
        if no_calibration:
            context.log.warning(f"{spec.name} champion v{version}: {no_calibration}")
        frame = build_reference(train, columns, performance, spec, facts)
        frame[MODEL_VERSION_COLUMN] = version
        frame["built_at"] = datetime.now(UTC).replace(tzinfo=None)
        _store(warehouse, spec, frame)
        estimated = facts.estimated_reference
        context.log.info(
            f"reference of {spec.name} champion v{version}: {len(train)} training rows, "
            f"{len(columns.all)} columns, test error {performance}, estimated test error {estimated}; "
            f"outputs of {rows.reused} of {sum(map(len, rows.splits.values()))} rows from the predictions table"
        )
        return dg.MaterializeResult(metadata=_metadata(spec, rows, columns.roles, performance, facts, frame))

    return reference_profile
