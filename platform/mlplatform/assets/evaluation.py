"""Stage 5, evaluation and promotion: challenger vs champion vs baseline on one test window.

Promotion is part of this asset rather than a separate one: the decision needs exactly the scores this
step computes, and the report shows the decision. Keeping both in one step means the alias can only
move on the scores in the report, never on stale or recomputed ones. The scoring and the decision are
`core.evaluation`; this module loads the models, writes the report and records the outcome.
"""

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlplatform.assets.common import read_training_step_input, spec_code_version
from mlplatform.contracts import CHAMPION_ALIAS, MaterializationKey, MlflowMetric, MlflowTag, Stage, asset_key
from mlplatform.core.evaluation import (
    Challenger,
    Champion,
    Evaluation,
    evaluate,
    promotion_metric,
    split_rows,
)
from mlplatform.core.html_report import render_html_report
from mlplatform.core.report import render_markdown_report, write_evaluation_plots
from mlplatform.core.training import TrainedModel, feature_importance
from mlplatform.materializations import MaterializedVersion, version_materialized
from mlplatform.models.registry import ChampionChange, load_version, promote, tag_value
from mlplatform.plot_links import Plot, plot_metadata
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"  # the report with its plots embedded: renders in MLflow's artifact viewer
ARTIFACT_FOLDER = "evaluation"  # of the challenger's training run
RECHECK_FOLDER = "recheck"  # a re-evaluated champion's report, beside its promotion report


def _write_report(
    spec: DatasetSpec,
    result: Evaluation,
    model: TrainedModel,
    test: pd.DataFrame,
    scores: np.ndarray,
    folder: Path,
    details: dict[str, str],
) -> tuple[Path, str, dict[str, Path]]:
    """Plots, report.md and report.html into `folder`; returns report.md's path, a variant for Dagster's
    UI (without the plots: they are metadata entries of their own) and the plots by name."""
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
        "champion_metrics": None if result.is_recheck else result.champion,
        "baseline_name": result.baseline_name,
        "details": details,
    }
    report_path = folder / REPORT_FILE
    markdown = render_markdown_report(**arguments, images=plots)
    report_path.write_text(markdown)
    images = {path.name: path for path in plots.values()}
    (folder / HTML_REPORT_FILE).write_text(render_html_report(markdown, images, arguments["title"]))
    return report_path, render_markdown_report(**arguments), plots


def _load_challenger(resource: MlflowResource, spec: DatasetSpec, version: int) -> Challenger:
    registered = registered_version(resource, spec.name, version)
    model = load_version(resource, spec.name, registered.version)
    return Challenger(int(registered.version), registered.run_id or "", model)


def _load_champion(resource: MlflowResource, spec: DatasetSpec, challenger: Challenger) -> Champion | None:
    """The champion, loaded unless it is the challenger; one that cannot be loaded says why."""
    found = resource.get_alias_version(spec.name, CHAMPION_ALIAS)
    if found is None:
        return None
    version = int(found.version)
    if version == challenger.version:
        return Champion(version, challenger.model)
    try:
        return Champion(version, load_version(resource, spec.name, found.version))
    except (ValueError, TypeError) as error:
        return Champion(version, None, unusable=str(error))


def build_evaluation_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, reports_dir = stage.spec, stage.settings.reports_dir
    metric = promotion_metric(spec)  # fails at load time, naming the spec, if the metric is unknown

    @dg.asset(
        key=asset_key(spec, Stage.EVALUATION),
        pool=stage.pool,
        deps=[asset_key(spec, Stage.MODEL), asset_key(spec, Stage.TRAINING_SET)],
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "promotion", "target"),
        description=(
            f"Challenger vs champion vs a naive baseline on the test window of {spec.name}, with plots (inline "
            "here: served by the MLflow UI) and a report, Markdown and self-contained HTML (MLflow artifacts "
            "of the challenger's run, and under $MLPLATFORM_REPORTS: see `report_path`). "
            f"Promotes the challenger to `{CHAMPION_ALIAS}` when the rule holds: {metric} not worse than the "
            f"champion by more than promotion.min_improvement={spec.promotion.min_improvement}, and better "
            "than the baseline when there is no champion. Never promotes a worse model."
        ),
    )
    def evaluation(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        trained = _version_to_evaluate(context, spec, mlflow)
        # The model step of the same run verified the warehouse already.
        read = read_training_step_input(spec, warehouse, verify=not trained.same_run)
        frame, data_version = read.frame, read.data_version
        challenger = _load_challenger(mlflow, spec, trained.version)
        result, scores = evaluate(spec, frame, challenger, _load_champion(mlflow, spec, challenger))
        test = split_rows(frame, "test")
        folder = reports_dir / spec.name / f"version_{result.challenger_version}"
        # Re-evaluating the champion (no new model since) must not overwrite its promotion record.
        folder = folder / RECHECK_FOLDER if result.is_recheck else folder
        details = _details(spec, trained, result, test, data_version, context.run.run_id)
        report_path, for_ui, plots = _write_report(
            spec, result, challenger.model, test, scores, folder, details
        )

        change = None
        if result.decision.promote:
            # Against the champion it was compared with: a concurrent promotion makes this one fail.
            change = promote(mlflow, spec.name, result.challenger_version, result.champion_version)
        verdict = "promoted" if change else "already champion" if result.is_recheck else "not promoted"
        context.log.info(
            f"{spec.name}: version {result.challenger_version} {verdict}: {result.decision.reason}"
        )
        artifacts = f"{ARTIFACT_FOLDER}/{RECHECK_FOLDER}" if result.is_recheck else ARTIFACT_FOLDER
        mlflow.client().log_artifacts(result.challenger_run_id, str(folder), artifacts)
        if not result.is_recheck:
            _record(mlflow, spec.name, result, verdict, report_path)
        return dg.MaterializeResult(
            metadata={
                **_metadata(result, verdict, change, trained),
                "report_path": dg.MetadataValue.path(str(report_path)),
                "report": dg.MetadataValue.md(for_ui),
                **_report_links(mlflow, result, artifacts, plots),
            }
        )

    return evaluation


def _details(
    spec: DatasetSpec,
    trained: MaterializedVersion,
    result: Evaluation,
    test: pd.DataFrame,
    data_version: str,
    dagster_run_id: str,
) -> dict[str, str]:
    """The report's "details" lines: which versions, which rows, which run."""
    times = pd.to_datetime(test[spec.time_column])
    return {
        "Challenger": f"{trained.source} (MLflow run {result.challenger_run_id})",
        "Champion before": f"version {result.champion_version}" if result.champion_version else "none",
        "Test window": f"{times.min()} .. {times.max()} ({len(test):,} rows)",
        "Training set data version": data_version,
        "Dagster run": dagster_run_id,
    }


def _metadata(
    result: Evaluation, verdict: str, change: ChampionChange | None, trained: MaterializedVersion
) -> dict[str, Any]:
    """The materialization's decision and scores (the model checks read `challenger_version`)."""
    metric = result.metric
    champion_now = change.current if change else result.champion_version
    return {
        MaterializationKey.DECISION.value: verdict,
        "reason": result.decision.reason,
        MaterializationKey.CHALLENGER_VERSION.value: result.challenger_version,
        "challenger_source": trained.source,
        MaterializationKey.CHAMPION_VERSION.value: champion_now if champion_now is not None else "none",
        MaterializationKey.PREVIOUS_CHAMPION_VERSION.value: result.champion_version or "none",
        "metric": metric,
        f"challenger_{metric}": result.challenger.get(metric, math.nan),
        f"baseline_{metric}": result.baseline.get(metric, math.nan),
        **({f"champion_{metric}": result.champion.get(metric, math.nan)} if result.champion else {}),
        "baseline": result.baseline_name,
        "metrics": dg.MetadataValue.json(
            {"challenger": result.challenger, "champion": result.champion, "baseline": result.baseline}
        ),
    }


def registered_version(resource: MlflowResource, model_name: str, version: int) -> ModelVersion:
    try:
        return resource.client().get_model_version(model_name, str(version))
    except MlflowException as error:
        raise dg.Failure(
            f"version {version} of model {model_name} is not in the MLflow registry at "
            f"{resource.effective_registry_uri} ({error.message}); materialize {model_name}/{Stage.MODEL} again"
        ) from error


def _version_to_evaluate(
    context: dg.AssetExecutionContext, spec: DatasetSpec, resource: MlflowResource
) -> MaterializedVersion:
    """The version this run's model step registered, else the latest model materialization's; it must
    be the version that materialization's run registered (not one of a replaced MLflow store)."""
    model_key = asset_key(spec, Stage.MODEL)
    found = version_materialized(context.instance, model_key, context.run.run_id)
    if found is None:
        raise dg.Failure(
            f"no materialization of {model_key.to_user_string()} records a model version: "
            f"materialize {spec.name}/{Stage.MODEL} first"
        )
    registered_by = registered_version(resource, spec.name, found.version).tags.get(MlflowTag.DAGSTER_RUN_ID)
    if registered_by != found.dagster_run_id:
        raise dg.Failure(
            f"version {found.version} of model {spec.name} in {resource.effective_registry_uri} was "
            f"registered by Dagster run {registered_by}, not by run {found.dagster_run_id} that "
            f"materialized {model_key.to_user_string()} (was the MLflow store replaced?); materialize "
            f"{spec.name}/{Stage.MODEL} again"
        )
    return found


def _experiment_id(resource: MlflowResource, result: Evaluation) -> str:
    return resource.client().get_run(result.challenger_run_id).info.experiment_id


def _report_links(
    resource: MlflowResource, result: Evaluation, artifacts: str, plots: dict[str, Path]
) -> dict[str, dg.MetadataValue]:
    """The MLflow run, its HTML report in MLflow's artifact viewer and each plot inline (plot_links)."""
    run_id = result.challenger_run_id
    run_url = resource.run_url(_experiment_id(resource, result), run_id)
    shown = [Plot(name, name.replace("_", " "), path.read_bytes()) for name, path in plots.items()]
    return {
        "mlflow_run": dg.MetadataValue.url(run_url),
        "html_report": dg.MetadataValue.url(f"{run_url}/artifacts/{artifacts}/{HTML_REPORT_FILE}"),
        **plot_metadata(resource, run_id, artifacts, shown),
    }


def _record(
    resource: MlflowResource, model_name: str, result: Evaluation, verdict: str, report_path: Path
) -> None:
    """The evaluation goes onto the challenger's training run and model version (no extra MLflow run);
    its report and plots are the run's artifacts already."""
    client, run_id, version = resource.client(), result.challenger_run_id, str(result.challenger_version)
    finite = {key: value for key, value in result.baseline.items() if math.isfinite(value)}
    for key, value in finite.items():
        client.log_metric(run_id, MlflowMetric.baseline_test(key), value)
    for key, value in (result.champion or {}).items():
        if math.isfinite(value) and not result.is_recheck:
            client.log_metric(run_id, MlflowMetric.champion_test(key), value)
    tags = {
        MlflowTag.PROMOTION_DECISION: verdict,
        MlflowTag.PROMOTION_REASON: result.decision.reason,
        MlflowTag.PROMOTION_METRIC: result.metric,
        MlflowTag.PROMOTION_CHAMPION_BEFORE: result.champion_version or "none",
        MlflowTag.EVALUATION_BASELINE: result.baseline_name,
        MlflowTag.EVALUATION_REPORT: report_path,
    }
    for key, value in tags.items():
        client.set_tag(run_id, key.value, tag_value(value))
        client.set_model_version_tag(model_name, version, key.on_model_version, tag_value(value))
