"""Stage 5, evaluation and promotion: challenger vs champion vs baseline on one test window.

Promotion is part of this asset rather than a separate one: the decision needs exactly the scores this
step computes, and the report shows the decision. Keeping both in one step means the alias can only
move on the scores in the report, never on stale or recomputed ones.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlplatform.assets.common import asset_key, spec_code_version
from mlplatform.assets.training import (
    RUN_ID_TAG,
    SPLIT_COLUMN,
    TRAINING_SET,
    MaterializedVersion,
    read_training_set,
    table_data_version,
    version_materialized,
)
from mlplatform.core.metrics import PRIMARY_METRIC, baseline_predictions, best_baseline, compute_metrics
from mlplatform.core.promotion import PromotionDecision, decide_promotion
from mlplatform.core.report import render_markdown_report, write_evaluation_plots
from mlplatform.core.training import TrainedModel, feature_importance, predict
from mlplatform.core.warehouse import verify_tables
from mlplatform.models.registry import CHAMPION, load_version, promote, tag_value
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.specs.loader import SpecError
from mlplatform.specs.model import DatasetSpec

TASK_METRICS = {
    "regression": ("mae", "rmse", "r2", "mape"),
    "binary": ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1"),
    "multiclass": ("log_loss", "macro_f1", "accuracy"),
}
REPORT_FILE = "report.md"


def promotion_metric(spec: DatasetSpec) -> str:
    """The metric promotion compares: spec `promotion.metric`, else the task's primary metric."""
    metric = spec.promotion.metric or PRIMARY_METRIC[spec.target.task]
    known = TASK_METRICS[spec.target.task]
    if metric not in known:
        raise SpecError(
            f"spec file {spec.spec_path}: key 'promotion.metric': {metric!r} is not a {spec.target.task} "
            f"metric (one of: {', '.join(known)})"
        )
    return metric


@dataclass
class Evaluation:
    metric: str
    challenger_version: int
    challenger_run_id: str
    challenger: dict[str, float]
    baseline_name: str
    baseline: dict[str, float]
    decision: PromotionDecision
    champion_version: int | None = None
    champion: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)


def _score(model: TrainedModel, test: pd.DataFrame, target: str) -> tuple[np.ndarray, dict[str, float]]:
    scores = predict(model, test)
    return scores, compute_metrics(model.task, test[target], scores, model.classes)


def evaluate(
    spec: DatasetSpec, frame: pd.DataFrame, resource: MlflowResource, version: int
) -> tuple[Evaluation, TrainedModel, np.ndarray]:
    """Score model `version` (the challenger), the champion and the baseline on the test split and
    decide (without acting on it)."""
    name, target, task = spec.name, spec.target.column, spec.target.task
    metric = promotion_metric(spec)
    challenger_version = registered_version(resource, name, version)
    # Only the training labels, not a copy of every training row (8M rows of 10M at scale).
    test, train_target = (
        frame[frame[SPLIT_COLUMN] == "test"],
        frame.loc[frame[SPLIT_COLUMN] == "train", target],
    )
    challenger = load_version(resource, name, challenger_version.version)
    challenger_scores, challenger_metrics = _score(challenger, test, target)

    baselines = baseline_predictions(
        task, train_target, test, spec.time_column, target, frame, spec.entity_key, challenger.classes
    )
    baseline_name, baseline_metrics = best_baseline(task, test[target], baselines, challenger.classes)
    result = Evaluation(
        metric,
        int(challenger_version.version),
        challenger_version.run_id or "",
        challenger_metrics,
        baseline_name,
        baseline_metrics,
        PromotionDecision(False, "not decided"),
    )
    champion_version = resource.get_alias_version(name, CHAMPION)
    if champion_version is not None:
        result.champion_version = int(champion_version.version)
    if result.champion_version == result.challenger_version:
        result.decision = PromotionDecision(
            False, f"version {result.challenger_version} is already the champion"
        )
        result.champion = challenger_metrics
        return result, challenger, challenger_scores
    if champion_version is not None:
        try:
            champion = load_version(resource, name, champion_version.version)
            result.champion = _score(champion, test, target)[1]
        except (ValueError, TypeError) as error:
            # The champion cannot read today's features (a spec change): it could not serve them either.
            result.notes.append(
                f"champion version {result.champion_version} cannot score the test window: {error}"
            )

    champion_value = None if result.champion is None else result.champion.get(metric, math.nan)
    result.decision = decide_promotion(
        metric,
        challenger_metrics.get(metric, math.nan),  # a metric undefined here (e.g. MAPE) never wins
        champion_value,
        baseline_metrics.get(metric, math.nan),
        spec.promotion.min_improvement,
    )
    if result.notes:
        result.decision = PromotionDecision(
            result.decision.promote, f"{result.notes[0]}; {result.decision.reason}"
        )
    return result, challenger, challenger_scores


def _write_report(
    spec: DatasetSpec,
    result: Evaluation,
    model: TrainedModel,
    test: pd.DataFrame,
    scores: np.ndarray,
    folder: Path,
    details: dict[str, str],
) -> tuple[Path, str]:
    """Plots and report.md into `folder`; returns the report's path and a variant for Dagster's UI."""
    plots = write_evaluation_plots(
        spec.target.task,
        folder,
        test[spec.target.column],
        scores,
        times=test[spec.time_column],
        importance=feature_importance(model),
        classes=model.classes,
    )
    arguments = {
        "title": f"{spec.name}: evaluation of model version {result.challenger_version}",
        "task": spec.target.task,
        "metric": result.metric,
        "challenger_metrics": result.challenger,
        "baseline_metrics": result.baseline,
        "decision": result.decision,
        "champion_metrics": None if result.champion_version == result.challenger_version else result.champion,
        "baseline_name": result.baseline_name,
        "details": details,
    }
    report_path = folder / REPORT_FILE
    report_path.write_text(render_markdown_report(**arguments, images=plots))
    # Dagster's UI cannot load the PNGs next to the file; it gets the text and where the plots are.
    for_ui = render_markdown_report(**arguments) + f"\nPlots: `{folder}`\n"
    return report_path, for_ui


def build_evaluation_asset(spec: DatasetSpec, reports_dir: Path) -> dg.AssetsDefinition:
    metric = promotion_metric(spec)  # fails at load time, naming the spec, if the metric is unknown

    @dg.asset(
        key=asset_key(spec, "evaluation"),
        deps=[asset_key(spec, "model"), asset_key(spec, TRAINING_SET)],
        group_name="evaluation",
        kinds={"mlflow"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "promotion", "target"),
        description=(
            f"Challenger vs champion vs a naive baseline on the test window of {spec.name}, with plots and a "
            "Markdown report (as MLflow artifacts, and under $MLPLATFORM_REPORTS: see `report_path`). "
            f"Promotes the challenger to `champion` when the rule holds: {metric} not worse than the "
            f"champion by more than promotion.min_improvement={spec.promotion.min_improvement}, and better "
            "than the baseline when there is no champion. Never promotes a worse model."
        ),
    )
    def evaluation(
        context: dg.AssetExecutionContext, warehouse: DuckDBResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        trained = _version_to_evaluate(context, spec, mlflow)
        with warehouse.get_connection() as conn:
            if not trained.same_run:  # the model step of this run verified the warehouse already
                verify_tables(conn, spec.name)
            frame = read_training_set(conn, spec)
            data_version = table_data_version(conn, spec.name, TRAINING_SET)
        result, challenger, scores = evaluate(spec, frame, mlflow, trained.version)
        test = frame[frame[SPLIT_COLUMN] == "test"]
        times = pd.to_datetime(test[spec.time_column])
        recheck = result.champion_version == result.challenger_version
        folder = reports_dir / spec.name / f"version_{result.challenger_version}"
        # Re-evaluating the champion (no new model since) must not overwrite its promotion record.
        folder = folder / "recheck" if recheck else folder
        details = {
            "Challenger": f"{trained.source} (MLflow run {result.challenger_run_id})",
            "Champion before": f"version {result.champion_version}" if result.champion_version else "none",
            "Test window": f"{times.min()} .. {times.max()} ({len(test):,} rows)",
            "Training set data version": data_version,
            "Dagster run": context.run.run_id,
        }
        report_path, for_ui = _write_report(spec, result, challenger, test, scores, folder, details)

        change = None
        if result.decision.promote:
            # Against the champion it was compared with: a concurrent promotion makes this one fail.
            change = promote(mlflow, spec.name, result.challenger_version, result.champion_version)
        verdict = "promoted" if change else "already champion" if recheck else "not promoted"
        context.log.info(
            f"{spec.name}: version {result.challenger_version} {verdict}: {result.decision.reason}"
        )
        if not recheck:
            _record(mlflow, spec.name, result, verdict, report_path, folder)

        champion_now = change.current if change else result.champion_version
        return dg.MaterializeResult(
            metadata={
                "decision": verdict,
                "reason": result.decision.reason,
                "challenger_version": result.challenger_version,
                "challenger_source": trained.source,
                "champion_version": champion_now if champion_now is not None else "none",
                "previous_champion_version": result.champion_version or "none",
                "metric": metric,
                f"challenger_{metric}": result.challenger.get(metric, math.nan),
                f"baseline_{metric}": result.baseline.get(metric, math.nan),
                **({f"champion_{metric}": result.champion.get(metric, math.nan)} if result.champion else {}),
                "baseline": result.baseline_name,
                "metrics": dg.MetadataValue.json(
                    {
                        "challenger": result.challenger,
                        "champion": result.champion,
                        "baseline": result.baseline,
                    }
                ),
                "report_path": dg.MetadataValue.path(str(report_path)),
                "report": dg.MetadataValue.md(for_ui),
                "mlflow_run": dg.MetadataValue.url(
                    mlflow.run_url(_experiment_id(mlflow, result), result.challenger_run_id)
                ),
            }
        )

    return evaluation


def registered_version(resource: MlflowResource, model_name: str, version: int) -> ModelVersion:
    try:
        return resource.client().get_model_version(model_name, str(version))
    except MlflowException as error:
        raise dg.Failure(
            f"version {version} of model {model_name} is not in the MLflow registry at "
            f"{resource.effective_registry_uri} ({error.message}); materialize {model_name}/model again"
        ) from error


def _version_to_evaluate(
    context: dg.AssetExecutionContext, spec: DatasetSpec, resource: MlflowResource
) -> MaterializedVersion:
    """The version this run's model step registered, else the latest model materialization's; it must
    be the version that materialization's run registered (not one of a replaced MLflow store)."""
    model_key = asset_key(spec, "model")
    found = version_materialized(context.instance, model_key, context.run.run_id)
    if found is None:
        raise dg.Failure(
            f"no materialization of {model_key.to_user_string()} records a model version: "
            f"materialize {spec.name}/model first"
        )
    registered_by = registered_version(resource, spec.name, found.version).tags.get(RUN_ID_TAG)
    if registered_by != found.dagster_run_id:
        raise dg.Failure(
            f"version {found.version} of model {spec.name} in {resource.effective_registry_uri} was "
            f"registered by Dagster run {registered_by}, not by run {found.dagster_run_id} that "
            f"materialized {model_key.to_user_string()} (was the MLflow store replaced?); materialize "
            f"{spec.name}/model again"
        )
    return found


def _experiment_id(resource: MlflowResource, result: Evaluation) -> str:
    return resource.client().get_run(result.challenger_run_id).info.experiment_id


def _record(
    resource: MlflowResource,
    model_name: str,
    result: Evaluation,
    verdict: str,
    report_path: Path,
    folder: Path,
) -> None:
    """The evaluation goes onto the challenger's training run and model version (no extra MLflow run)."""
    client, run_id, version = resource.client(), result.challenger_run_id, str(result.challenger_version)
    client.log_artifacts(run_id, str(folder), "evaluation")
    finite = {key: value for key, value in result.baseline.items() if math.isfinite(value)}
    for key, value in finite.items():
        client.log_metric(run_id, f"baseline_test_{key}", value)
    for key, value in (result.champion or {}).items():
        if math.isfinite(value) and result.champion_version != result.challenger_version:
            client.log_metric(run_id, f"champion_test_{key}", value)
    tags = {
        "promotion.decision": verdict,
        "promotion.reason": result.decision.reason,
        "promotion.metric": result.metric,
        "promotion.champion_before": result.champion_version or "none",
        "evaluation.baseline": result.baseline_name,
        "evaluation.report": report_path,
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, tag_value(value))
        client.set_model_version_tag(model_name, version, key.replace(".", "_"), tag_value(value))
