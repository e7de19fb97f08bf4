"""Asset checks of the model half: does the model earn its keep, and are its predictions usable?

Like the data checks they read small summaries (metrics in MLflow, one aggregate query in DuckDB),
so they are cheap to re-run from the UI.
"""

import math

import dagster as dg

from mlplatform.checks.data_quality import not_empty_checks
from mlplatform.contracts import MaterializationKey, MlflowMetric, Stage, asset_key
from mlplatform.core.evaluation import promotion_metric
from mlplatform.core.metrics import improvement
from mlplatform.core.sql import column_types, quote_ident
from mlplatform.core.warehouse import count_rows, table_exists, table_name
from mlplatform.materializations import version_materialized
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec


def build_model_checks(spec: DatasetSpec, pool: str | None = None) -> list[dg.AssetChecksDefinition]:
    """`pool`: the dataset's Dagster pool (StageBuild.pool), which its assets have too."""
    return [
        _beats_baseline_check(spec, pool),
        _finite_predictions_check(spec, pool),
        *not_empty_checks(spec, (Stage.TRAINING_SET, Stage.PREDICTIONS), pool),
    ]


def _beats_baseline_check(spec: DatasetSpec, pool: str | None) -> dg.AssetChecksDefinition:
    metric = promotion_metric(spec)

    @dg.asset_check(
        asset=asset_key(spec, Stage.EVALUATION),
        pool=pool,
        name="model_beats_baseline",
        # Not blocking: predictions use the champion, which a weak challenger does not replace.
        blocking=False,
        description=(
            "The model version the evaluation scored (in the same run, else the latest evaluation) is "
            f"better than the best naive baseline on the test window by {metric}. Reads the metrics the "
            "training and the evaluation logged to its MLflow run."
        ),
    )
    def model_beats_baseline(
        context: dg.AssetCheckExecutionContext, mlflow: MlflowResource
    ) -> dg.AssetCheckResult:
        evaluated = version_materialized(
            context.instance,
            asset_key(spec, Stage.EVALUATION),
            context.run.run_id,
            MaterializationKey.CHALLENGER_VERSION,
        )
        if evaluated is None:
            return dg.AssetCheckResult(passed=False, description=f"no evaluated version of {spec.name} yet")
        version = mlflow.client().get_model_version(spec.name, str(evaluated.version))
        logged = mlflow.client().get_run(version.run_id).data.metrics
        model_value = logged.get(MlflowMetric.test(metric), math.nan)
        baseline_value = logged.get(MlflowMetric.baseline_test(metric))
        metadata = {
            "model_version": int(version.version),
            "model_version_source": evaluated.source,
            "metric": metric,
            f"model_test_{metric}": model_value,
        }
        if baseline_value is None:
            return dg.AssetCheckResult(
                passed=False,
                description=f"version {version.version} has not been evaluated yet",
                metadata=metadata,
            )
        gain = improvement(metric, model_value, baseline_value)
        return dg.AssetCheckResult(
            passed=math.isfinite(model_value) and gain > 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={**metadata, MlflowMetric.baseline_test(metric): baseline_value, "improvement": gain},
        )

    return model_beats_baseline


def _finite_predictions_check(spec: DatasetSpec, pool: str | None) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key(spec, Stage.PREDICTIONS),
        pool=pool,
        name="finite_predictions",
        blocking=True,
        description="Every prediction and probability is a finite number (no NULL, NaN or infinity).",
    )
    def finite_predictions(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        bad: dict[str, int] = {}
        with warehouse.get_connection(spec.name) as conn:
            if not table_exists(conn, spec.name, Stage.PREDICTIONS):
                return dg.AssetCheckResult(passed=False, description="no predictions table yet")
            table = table_name(spec.name, Stage.PREDICTIONS)
            numeric = [
                name
                for name, sql_type in column_types(conn, table).items()
                if (name == "prediction" or name.startswith("probability"))
                and sql_type in ("DOUBLE", "FLOAT")
            ]
            if numeric:
                counts = ", ".join(
                    f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL OR NOT isfinite({quote_ident(c)}))"
                    for c in numeric
                )
                row = conn.execute(f"SELECT {counts} FROM {table}").fetchall()[0]
                bad = {name: int(n) for name, n in zip(numeric, row, strict=True)}
            rows = count_rows(conn, spec.name, Stage.PREDICTIONS)
        return dg.AssetCheckResult(
            passed=rows > 0 and not any(bad.values()),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows": rows, "non_finite": dg.MetadataValue.json(bad)},
        )

    return finite_predictions
