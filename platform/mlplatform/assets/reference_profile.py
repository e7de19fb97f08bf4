"""Stage 6a, `reference_profile`: what the champion learned from.

It profiles the champion's training rows (inputs, target, the champion's own predictions on them) and
records its test error; it is rebuilt whenever evaluation (promotion) runs, declared with an
AutomationCondition so a champion changed from the UI also refreshes it.
"""

from datetime import UTC, datetime

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import asset_key, spec_code_version
from mlplatform.core.drift_reference import (
    build_reference,
    model_outputs,
    monitored_columns,
    nan_to_none,
    primary_error,
)
from mlplatform.core.sql import quote_ident
from mlplatform.core.warehouse import read_frame, table_exists, table_name
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.specs.model import DatasetSpec


def champion_training_rows(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, windows: dict[str, tuple[str, str]] | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, test rows) the champion was trained and tested on.

    With the champion's recorded windows (first and last timestamp of each split) the rows come from
    `features`, which is right even after a rollback to an older champion; without them from
    `training_set`, which holds the split of the latest training."""
    if windows and "train" in windows and "test" in windows:
        features, t = table_name(spec.name, "features"), quote_ident(spec.time_column)
        labelled = f"{quote_ident(spec.target.column)} IS NOT NULL"

        def rows(first: str, last: str) -> pd.DataFrame:
            return read_frame(
                conn,
                f"SELECT * FROM {features} WHERE {t} BETWEEN ?::TIMESTAMP AND ?::TIMESTAMP AND {labelled} "
                f"ORDER BY {t}",
                [first, last],
            )

        return rows(*windows["train"]), rows(*windows["test"])
    if not table_exists(conn, spec.name, "training_set"):
        raise dg.Failure(f"{spec.name}.training_set does not exist: train a model first")
    frame = conn.sql(
        f"SELECT * FROM {table_name(spec.name, 'training_set')} WHERE split IN ('train', 'test')"
    ).df()
    return frame[frame["split"] == "train"], frame[frame["split"] == "test"]


def _recorded_windows(mlflow: MlflowResource, run_id: str | None) -> dict[str, tuple[str, str]] | None:
    """Train/test windows the training run logged as params `window_<split>` = "first .. last"."""
    if not run_id:
        return None
    params = mlflow.client().get_run(run_id).data.params
    found = {}
    for split in ("train", "test"):
        first, separator, last = params.get(f"window_{split}", "").partition(" .. ")
        if separator and first not in ("", "NaT") and last not in ("", "NaT"):
            found[split] = (first, last)
    return found or None


def build_reference_profile_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(spec, "reference_profile"),
        deps=[asset_key(spec, "training_set"), asset_key(spec, "evaluation")],
        group_name="monitoring",
        kinds={"duckdb", "mlflow"},
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
        context: dg.AssetExecutionContext, warehouse: DuckDBResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        from mlplatform.models.registry import CHAMPION, load_version

        champion = mlflow.get_alias_version(spec.name, CHAMPION)
        if champion is None:
            raise dg.Failure(f"{spec.name} has no champion model yet: nothing to profile")
        model = load_version(mlflow, spec.name, champion.version)
        with warehouse.get_connection() as conn:
            train, test = champion_training_rows(conn, spec, _recorded_windows(mlflow, champion.run_id))
        if train.empty:
            raise dg.Failure(f"no training rows found for {spec.name} champion version {champion.version}")
        train = pd.concat([train, model_outputs(model, train)], axis=1)
        columns = monitored_columns(spec, list(train.columns))
        performance = None
        if not test.empty:
            performance = primary_error(
                spec.target.task, test[spec.target.column], model_outputs(model, test), model.classes
            )
        frame = build_reference(train, columns, performance, spec)
        frame["model_version"] = int(champion.version)
        frame["built_at"] = datetime.now(UTC).replace(tzinfo=None)
        with warehouse.get_connection() as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.name)}")
            conn.register("_reference_rows", frame)
            conn.execute(
                f"CREATE OR REPLACE TABLE {table_name(spec.name, 'reference_profile')} AS "
                "SELECT * FROM _reference_rows"
            )
            conn.unregister("_reference_rows")
        context.log.info(
            f"reference of {spec.name} champion v{champion.version}: {len(train)} training rows, "
            f"{len(columns.all)} columns, test error {performance}"
        )
        return dg.MaterializeResult(
            metadata={
                "champion_version": int(champion.version),
                "training_rows": len(train),
                "test_rows": len(test),
                "profiled_columns": dg.MetadataValue.json(columns.roles),
                "reference_metric": performance[0] if performance else "none",
                "reference_error": nan_to_none(performance[1]) if performance else None,
                "dagster/row_count": len(frame),
                "dagster/table_name": f"{spec.name}.reference_profile",
            }
        )

    return reference_profile
