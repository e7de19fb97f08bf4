"""Running whole dataset graphs through the Dagster instance, and summarising what they produced."""

from __future__ import annotations

import logging
import os
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlplatform.contracts import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    SOURCE_ACCOUNTING_CHECK,
    MaterializationKey,
    MlflowMetric,
    MlflowTag,
    Stage,
)
from mlplatform.core.warehouse import count_rows
from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlplatform.errors import UserError
from mlplatform.factory import broken_specs
from mlplatform.home_config import stored_spec_folders
from mlplatform.jobs.dataset_jobs import WHOLE_GRAPH_SUFFIX
from mlplatform.recovery import run_owner_tags
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.run_report import (
    ConsoleNoise,
    check_descriptions,
    console_logger,
    failed_blocking_checks,
    gate_block,
    materialized_line,
    top_quarantine_reasons,
)
from mlplatform.settings import (
    ENGINE_DASK,
    SPECS_ENV,
    WAREHOUSE_ENV,
    Settings,
    default_warehouse,
    engine_environment,
    warehouse_file,
)
from mlplatform.stages import counted_stages, runnable_stages, step_stages

# The terminal shows the stages' own progress lines; every Dagster event is still in the run's log.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class RunOutcome:
    dataset: str
    run_id: str
    success: bool
    partitions: int
    failed_steps: list[str] = field(default_factory=list)
    source_accounting: str | None = None  # what the run's source_accounting check said, one line


def dataset_names(defs: dg.Definitions) -> list[str]:
    jobs = [job.name for job in defs.jobs or []]
    return sorted(name.removesuffix(WHOLE_GRAPH_SUFFIX) for name in jobs if name.endswith(WHOLE_GRAPH_SUFFIX))


def quiet_store_setup_logs() -> None:
    """Silence the schema set-up chatter of a new MLflow store (its warnings still show)."""
    for noisy in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_datasets(
    defs: dg.Definitions,
    names: list[str] | None,
    *,
    instance: dg.DagsterInstance,
    progress: Callable[[str], None] = lambda _: None,
    stages: list[str] | None = None,
    allow_shrink: bool = False,
    settings: Settings | None = None,
) -> list[RunOutcome]:
    """One run per dataset over all its partitions (a single-run backfill), recorded in `instance`.

    `stages` limits each run to those stages (and their checks), e.g. ["predictions"] to re-score with
    a rolled-back champion without retraining. `allow_shrink` lets raw remove rows whose source is gone.
    `settings` (the CLI's): a failed gate's block names the `mlplatform sql` command of its rows.
    """
    known = dataset_names(defs)
    unknown = [n for n in names or [] if n not in known]
    broken = {spec.name: spec.error for spec in broken_specs(defs)}
    if unknown and all(name in broken for name in unknown):  # asked for a dataset whose spec is broken
        raise UserError("; ".join(broken[name] for name in unknown))
    if unknown:
        raise UserError(f"unknown dataset {', '.join(unknown)} (known: {', '.join(known)})")
    runnable = runnable_stages()
    wrong = [s for s in stages or [] if s not in runnable]
    if wrong:
        raise UserError(f"unknown stage {', '.join(wrong)} (stages: {', '.join(runnable)})")
    if allow_shrink and stages and Stage.RAW not in stages:
        raise UserError("--allow-shrink applies to the raw stage: add --stage raw")
    quiet_store_setup_logs()
    noise = ConsoleNoise()
    # Dagster's console without the "Not executing" cascade of a failed gate (gate_block says it once).
    quiet = dg.Definitions.merge(defs, dg.Definitions(loggers={"console": console_logger(noise)}))
    outcomes = []
    for name in names or known:
        job = quiet.resolve_job_def(f"{name}{WHOLE_GRAPH_SUFFIX}")
        keys = job.partitions_def.get_partition_keys() if job.partitions_def else []
        what = f"{', '.join(stages)} of" if stages else "every asset of"
        progress(f"[{name}] materializing {what} {len(keys)} partitions ({keys[0]} .. {keys[-1]}) as one run")
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        run_id = str(uuid.uuid4())  # chosen here: the owner tags name the run they belong to
        tags |= run_owner_tags(run_id)  # the run executes in this process: a kill is detected by its absence
        noise.skipped.clear()
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            tags=tags,
            raise_on_error=False,
            asset_selection=stage_selection(name, stages),
            run_config={**QUIET_CONSOLE, **shrink_config(name, allow_shrink)},
        )
        failed = [e.step_key for e in result.all_events if e.is_step_failure and e.step_key]
        accounting = source_accounting_line(result)
        outcomes.append(RunOutcome(name, result.run_id, result.success, len(keys), failed, accounting))
        for line in run_status_lines(defs, name, result, keys, noise.skipped, settings):
            progress(line)
    return outcomes


def run_status_lines(
    defs: dg.Definitions,
    dataset: str,
    result: dg.ExecuteInProcessResult,
    keys: list[str],
    skipped: list[str],
    settings: Settings | None,
) -> list[str]:
    """The run's outcome: what it materialized, or why it failed (a failed gate as one block)."""
    head = f"[{dataset}] run {result.run_id}"
    if result.success:
        return [f"{head} succeeded: {materialized_line(result, keys)}"]
    gates = failed_blocking_checks(result, check_descriptions(defs))
    failed = [e.step_key for e in result.all_events if e.is_step_failure and e.step_key]
    if not gates:
        return [f"{head} FAILED in {', '.join(failed) or 'a check'}: {failure_reason(result)}"]
    # A step that failed on its own (not the check step of a gate) is said too, after the block.
    others = [step for step in failed if not any(step.endswith(f"_{gate.name}") for gate in gates)]
    also = (
        [f"[{dataset}] also FAILED in {', '.join(others)}: {failure_reason(result, steps_of=others)}"]
        if others
        else []
    )
    warehouse = defs.resources["warehouse"].database if defs.resources else ""
    file = warehouse_file(settings.warehouse_path if settings else warehouse, dataset)
    command = sql_command(settings, dataset) if settings else None
    window = run_window(defs, dataset, keys)
    block = gate_block(
        dataset, gates, skipped, lambda: top_quarantine_reasons(file, dataset, window), command
    )
    return [f"{head} FAILED: {materialized_line(result, keys)}", *block, *also]


def run_window(defs: dg.Definitions, dataset: str, keys: list[str]) -> tuple[datetime, datetime]:
    """[start, end) of the run's partitions, as naive UTC datetimes like the tables."""
    partitions = defs.resolve_job_def(f"{dataset}{WHOLE_GRAPH_SUFFIX}").partitions_def
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    first, last = (partitions.time_window_for_partition_key(key) for key in (keys[0], keys[-1]))
    return first.start.replace(tzinfo=None), last.end.replace(tzinfo=None)


def stage_selection(dataset: str, stages: list[str] | None) -> list[dg.AssetKey] | None:
    """The asset keys a run limited to `stages` materializes (None: all), e.g. clean also quarantine."""
    if not stages:
        return None
    # str(): Dagster's serdes refuses a StrEnum member (a `Stage`) in a key's path.
    return [dg.AssetKey([dataset, str(key)]) for stage in stages for key in step_stages(stage)]


def shrink_config(dataset: str, allow_shrink: bool) -> dict[str, Any]:
    """Run config of the raw asset's `allow_shrink` (see mlplatform.assets.ingestion.RawConfig)."""
    return {"ops": {f"{dataset}__{Stage.RAW}": {"config": {"allow_shrink": True}}}} if allow_shrink else {}


def source_accounting_line(result: dg.ExecuteInProcessResult) -> str | None:
    """The run's `source_accounting` check in one line: the source's records against what landed."""
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name != SOURCE_ACCOUNTING_CHECK:
            continue
        meta = {key: value.value for key, value in evaluation.metadata.items()}
        if evaluation.passed:
            pending = _raw_metadata(result).get(MaterializationKey.ROWS_PENDING_PARTITION, 0)
            waiting = f", {pending:,} waiting for a partition that does not exist yet" if pending else ""
            placed = "each one in clean or quarantine" if not pending else "the others in clean or quarantine"
            return (
                f"{meta.get('source_rows', 0):,} records in {meta.get('files', 0)} file(s){waiting}, {placed}"
            )
        return f"NOT RECONCILED: {evaluation.description or 'see the source_accounting check'}"
    return None


def _raw_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The metadata of the run's `raw` materialization (empty when the run did not load raw)."""
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key is not None and materialization.asset_key.path[-1] == Stage.RAW:
            return {key: value.value for key, value in materialization.metadata.items()}
    return {}


def failure_reason(
    result: dg.ExecuteInProcessResult, limit: int = 600, steps_of: list[str] | None = None
) -> str:
    """One line: the error of the first failed step (of `steps_of`, if given), else of the run (e.g. a
    resource that failed)."""
    steps = [
        e for e in result.all_events if e.is_step_failure and (steps_of is None or e.step_key in steps_of)
    ]
    others = [e for e in result.all_events if e.is_resource_init_failure or e.is_run_failure]
    for event in steps + others:
        error = getattr(event.event_specific_data, "error", None)
        # Dagster wraps the user's exception (e.g. DagsterResourceFunctionError): show the user's.
        while error is not None and error.cls_name.startswith("Dagster") and error.cause is not None:
            error = error.cause
        if error is not None:
            return _first_line(error.message, limit)
    return _first_line(others[0].message or "", limit) if others else "see the run's log"


def _first_line(text: str, limit: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:limit]


def stage_counts(settings: Settings, dataset: str) -> dict[str, int]:
    """Rows of each counted stage's table (mlplatform.stages), read from the dataset's warehouse file
    (none yet: a run that failed before writing it)."""
    database = settings.warehouse_for(dataset)
    if "://" not in database and not database.startswith("md:") and not Path(database).exists():
        return dict.fromkeys(counted_stages(), 0)
    with duckdb.connect(database, read_only=True) as conn:
        return {stage: count_rows(conn, dataset, stage) for stage in counted_stages()}


def model_summary(resource: MlflowResource, dataset: str) -> list[str]:
    """Champion, its test metrics beside the baseline's, and the latest evaluation, read from MLflow."""
    try:
        champion = resource.get_alias_version(dataset, CHAMPION_ALIAS)
        challenger = resource.get_alias_version(dataset, CHALLENGER_ALIAS)
    except MlflowException as error:
        return [f"  models: cannot read MLflow ({error.message.splitlines()[0]})"]
    lines: list[str] = []
    client = resource.client()
    if champion is None:
        lines.append("  champion: none yet")
    else:
        run = client.get_run(champion.run_id) if champion.run_id else None
        logged = run.data.metrics if run else {}
        tags = run.data.tags if run else {}
        lines.append(f"  champion: version {champion.version} (MLflow run {champion.run_id})")
        test_prefix = MlflowMetric.test("")
        names = [key.removeprefix(test_prefix) for key in logged if key.startswith(test_prefix)]
        baseline = tags.get(MlflowTag.EVALUATION_BASELINE, "baseline")
        lines.append(f"    {'test metric':<12} {'model':>12} {baseline:>20}")
        for metric in sorted(names):
            base = logged.get(MlflowMetric.baseline_test(metric))
            base_text = f"{base:>20.4g}" if base is not None else f"{'–':>20}"
            lines.append(f"    {metric:<12} {logged[MlflowMetric.test(metric)]:>12.4g} {base_text}")
    if challenger is not None:
        lines += _latest_model_lines(challenger, champion)
    return lines


def _latest_model_lines(challenger: ModelVersion, champion: ModelVersion | None) -> list[str]:
    """The newest model's promotion decision (when it is not the champion) and its evaluation report."""
    tags = challenger.tags or {}
    lines = []
    if champion is None or challenger.version != champion.version:
        decision = tags.get(MlflowTag.PROMOTION_DECISION.on_model_version, "not evaluated")
        reason = tags.get(MlflowTag.PROMOTION_REASON.on_model_version, "")
        lines.append(f"  latest model: version {challenger.version}, {decision}: {reason}")
    report = tags.get(MlflowTag.EVALUATION_REPORT.on_model_version)
    if report is not None:
        lines.append(f"  evaluation report: {report}")
    return lines


def _mlflow_ui_command(resource: MlflowResource) -> str:
    if resource.tracking_uri.startswith(("http://", "https://")):
        return f"open {resource.tracking_uri}"
    separate = resource.effective_registry_uri != resource.tracking_uri
    registry = f" --registry-store-uri {resource.registry_uri}" if separate else ""
    return f"mlflow ui --backend-store-uri {resource.tracking_uri}{registry}   # then {resource.browser_url}"


def _specs_setting(settings: Settings) -> str:
    """` MLPLATFORM_SPECS=...` for the spec folders the environment gave (without it the UI would not
    show their datasets); the folders stored in the home (`mlplatform specs add`) need nothing. With
    the Dask engine, its settings too: a UI or daemon on the local engine could not write the lake."""
    stored = stored_spec_folders(settings.home)
    from_env = [str(folder) for folder in settings.extra_spec_dirs if folder not in stored]
    specs = f" {SPECS_ENV}={shlex.quote(os.pathsep.join(from_env))}" if from_env else ""
    return specs + "".join(
        f" {name}={shlex.quote(value)}" for name, value in engine_environment(settings).items()
    )


def sql_command(settings: Settings, dataset: str | None) -> str:
    """`mlplatform sql` on these settings' warehouse, as a user types it: the quarantined rows of
    `dataset`, or (None) the list of datasets and tables."""
    words = ["mlplatform", "sql", "--home", str(settings.home)]
    if dataset is not None:
        words.append(f"SELECT * FROM {dataset}.{Stage.QUARANTINE} LIMIT 10")
    custom = settings.warehouse_path != default_warehouse(settings.home)
    setting = f"{WAREHOUSE_ENV}={shlex.quote(settings.warehouse_path)} " if custom else ""
    return setting + shlex.join(words)


def up_command(settings: Settings) -> str:
    """`mlplatform up` on these settings, as a user types it (the spec folders too, or the UI and the
    daemon would not load the user's datasets)."""
    return (
        f"{_specs_setting(settings).strip()} mlplatform up --home {shlex.quote(str(settings.home))}".strip()
    )


def print_summary(settings: Settings, defs: dg.Definitions, outcomes: list[RunOutcome]) -> None:
    resource = MlflowResource.from_settings(settings)
    dagster_home = settings.dagster_home
    print("\n== mlplatform summary ==")
    mlflow_answers = True
    for outcome in outcomes:
        counts = stage_counts(settings, outcome.dataset)
        print(f"{outcome.dataset}: {'OK' if outcome.success else 'FAILED'} (run {outcome.run_id})")
        print("  rows: " + ", ".join(f"{stage} {counts[stage]:,}" for stage in counts))
        print(f"  warehouse: {settings.warehouse_for(outcome.dataset)}")
        print(f"  quarantined: {counts[Stage.QUARANTINE]:,} of {counts[Stage.RAW]:,} raw rows")
        if outcome.source_accounting:
            print(f"  source: {outcome.source_accounting}")
        lines = model_summary(resource, outcome.dataset) if mlflow_answers else ["  models: MLflow not read"]
        mlflow_answers = mlflow_answers and "cannot read MLflow" not in lines[0]  # ask an absent server once
        for line in lines:
            print(line)
    for broken in broken_specs(defs):
        print(f"{broken.name}: NOT LOADED ({broken.path}): {broken.error}")
    print(f"\nwarehouse (DuckDB): {settings.warehouse_path}")
    if settings.engine == ENGINE_DASK:
        print(
            f"lake (Parquet):     {settings.lake}   # the Dask engine's stage tables, views in the warehouse"
        )
    print(f"Dagster instance:   {dagster_home}")
    print(f"MLflow tracking:    {resource.tracking_uri}")
    print(
        f"Dagster UI:         MLPLATFORM_HOME={shlex.quote(str(settings.home))} "
        f"DAGSTER_HOME={shlex.quote(str(dagster_home))}{_specs_setting(settings)} "
        "dagster dev -m mlplatform.definitions"
    )
    print(f"MLflow UI:          {_mlflow_ui_command(resource)}")
    print(f"both UIs + sensors: {up_command(settings)}")
    print(f"query the tables:   {sql_command(settings, outcomes[0].dataset if outcomes else None)}")
