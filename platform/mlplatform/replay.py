"""`mlplatform replay`: is drift-triggered retraining worth it? Replay a dataset's history under three policies.

Each policy gets its own temporary platform home (warehouse, MLflow store, Dagster instance) and
walks the same history with the real jobs, in a fresh process:

1. bootstrap: the whole graph over the first `initial_fraction` of the partitions, which trains,
   evaluates and promotes the first champion and profiles it;
2. then period by period (default 7 days): `<ds>__ingest` over the period's partitions (raw ->
   features -> predictions by the current champion -> drift_report). The period's error is the
   champion's primary metric on those rows, scored before anything else happens: a prospective error;
3. after the period, the policy decides whether to run `<ds>__retrain`:
   * static: never;
   * scheduled: when `retrain_every_days` of data have passed since the last training;
   * drift: whatever the real `<ds>__drift_sensor` requests, evaluated on the instance's events with
     the replay clock (data time) so its cool-down counts data days, not seconds of replay.

Outputs in DIR: replay.csv (policy, period, error, retrained, ...), replay_summary.csv (policy,
retrains, mean_error, train_seconds) and replay.png.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlplatform.settings import Settings

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd

    from mlplatform.specs.model import DatasetSpec

# Pandas, Dagster and MLflow are imported where they are used: `mlplatform --help` reads POLICIES.
POLICIES = ("static", "scheduled", "drift")


@dataclass(frozen=True)
class ReplayConfig:
    dataset: str
    output: Path
    period_days: int = 7
    initial_fraction: float = 0.25
    retrain_every_days: int = 28
    policies: tuple[str, ...] = POLICIES
    processes: int = 2
    max_periods: int | None = None  # replay only the first N periods (smoke tests)
    keep_homes: bool = False  # keep each policy's home (warehouse, MLflow, Dagster) for inspection


def _chunks(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _range_tags(keys: list[str]) -> dict[str, str]:
    from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


def _period_error(
    settings: Settings, spec: DatasetSpec, start: datetime, end: datetime
) -> tuple[str, float, int, int | None]:
    """Primary metric of the stored predictions on the period's labelled rows, and the scoring version."""
    import duckdb
    import pandas as pd

    from mlplatform.core.drift_reference import primary_error
    from mlplatform.core.drift_windows import window_rows
    from mlplatform.core.scoring import MODEL_VERSION_COLUMN

    with duckdb.connect(settings.warehouse_for(spec.name), read_only=True) as conn:
        rows = window_rows(conn, spec, start, end)
    has_versions = MODEL_VERSION_COLUMN in rows
    versions = rows[MODEL_VERSION_COLUMN].dropna() if has_versions else pd.Series(dtype=float)
    version = int(versions.mode().iloc[0]) if len(versions) else None
    metric, value = primary_error(spec.target.task, rows[spec.target.column], rows)
    return metric, value, len(rows), version


def _champion_version(settings: Settings, spec: DatasetSpec) -> int | None:
    from mlplatform.contracts import CHAMPION_ALIAS
    from mlplatform.resources.mlflow import MlflowResource

    found = MlflowResource.from_settings(settings).get_alias_version(spec.name, CHAMPION_ALIAS)
    return int(found.version) if found else None


def _policy_home(config: ReplayConfig, policy: str, settings: Settings) -> Settings:
    """A fresh platform home for the policy: every location in it, whatever the caller's point at."""
    from mlplatform.home import prepare_home

    home = config.output / "_homes" / policy
    shutil.rmtree(home, ignore_errors=True)
    policy_settings = settings.in_home(home)
    prepare_home(policy_settings)
    return policy_settings


def _replayed_partitions(
    spec: DatasetSpec, partitions: Any, config: ReplayConfig
) -> tuple[list[str], int, list[list[str]]]:
    """The partitions up to the source's last record, how many bootstrap, and the replayed periods."""
    from mlplatform.specs.loader import check_source

    last_time = check_source(spec).time_max
    keys = [
        k
        for k in partitions.get_partition_keys()
        if partitions.time_window_for_partition_key(k).start.replace(tzinfo=None) <= last_time
    ]
    n_initial = max(1, round(len(keys) * config.initial_fraction))
    first = partitions.time_window_for_partition_key(keys[0])
    grain_days = max(1, round((first.end - first.start).days))
    periods = _chunks(keys[n_initial:], max(1, config.period_days // grain_days))[: config.max_periods]
    return keys, n_initial, periods


def _policy_jobs(settings: Settings, dataset: str) -> tuple[DatasetSpec, Any, Any, Any]:
    """The dataset's spec and its whole-graph, ingest and retrain jobs, built for the policy's home."""
    from mlplatform.factory import build_definitions, job_name
    from mlplatform.jobs.dataset_jobs import ingest_job_name, retrain_job_name
    from mlplatform.specs.loader import read_specs

    specs, _ = read_specs(settings.extra_spec_dirs)  # another dataset's broken spec does not matter
    spec = next(s for s in specs if s.name == dataset)
    defs = build_definitions(settings=settings, specs=[spec])
    whole, ingest, retrain = (
        defs.resolve_job_def(n(spec)) for n in (job_name, ingest_job_name, retrain_job_name)
    )
    return spec, whole, ingest, retrain


def _execute(job: Any, instance: dg.DagsterInstance, tags: dict[str, str], policy: str) -> float:
    """Run `job` in process; its seconds. A failed run is reported and the replay goes on."""
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        print(f"[{policy}] run {job.name} failed in {failed}", flush=True)
    return time.perf_counter() - started


def run_policy(config: ReplayConfig, policy: str, settings: Settings) -> list[dict[str, Any]]:
    """Replay one policy in its own home (a fresh process each: MLflow's fluent API is process-wide)."""
    import dagster as dg

    from mlplatform.sensors.drift import build_drift_sensor

    settings = _policy_home(config, policy, settings)
    spec, whole, ingest, retrain = _policy_jobs(settings, config.dataset)
    # In-memory instance: the replay's runs and events are thrown away with its home anyway, and SQLite
    # event storage would spend most of the replay syncing events to disk.
    instance = dg.DagsterInstance.ephemeral()
    partitions = ingest.partitions_def
    keys, n_initial, periods = _replayed_partitions(spec, partitions, config)
    _execute(whole, instance, _range_tags(keys[:n_initial]), policy)
    if _champion_version(settings, spec) is None:
        raise RuntimeError(
            f"[{policy}] the bootstrap over {keys[0]} .. {keys[n_initial - 1]} produced no champion (the first "
            "model did not beat the naive baseline): replay with a larger --initial-fraction"
        )
    clock = {"now": datetime.now(UTC)}
    sensor = build_drift_sensor(spec, retrain, settings, clock=lambda: clock["now"])
    cursor: str | None = None
    last_training = partitions.time_window_for_partition_key(keys[n_initial - 1]).end
    rows = []
    for index, period in enumerate(periods):
        start = partitions.time_window_for_partition_key(period[0]).start
        end = partitions.time_window_for_partition_key(period[-1]).end
        _execute(ingest, instance, _range_tags(period), policy)
        metric, error, n_rows, version = _period_error(
            settings, spec, start.replace(tzinfo=None), end.replace(tzinfo=None)
        )
        tags: dict[str, str] | None = None
        note = ""
        if policy == "scheduled" and end - last_training >= timedelta(days=config.retrain_every_days):
            tags, note = {"mlplatform/trigger": "schedule"}, f"every {config.retrain_every_days} days"
        elif policy == "drift":
            clock["now"] = end
            tags, note, cursor = _drift_sensor_tick(sensor, instance, cursor)
        seconds = _execute(retrain, instance, tags, policy) if tags is not None else 0.0
        if tags is not None:
            last_training = end
        rows.append(
            {
                "policy": policy,
                "period": period[0],
                "error": error,
                "retrained": tags is not None,
                "metric": metric,
                "rows": n_rows,
                "scored_by_version": version,
                "champion_after": _champion_version(settings, spec),
                "train_seconds": round(seconds, 2),
                "note": note[:200],
            }
        )
        print(
            f"[{policy}] {index + 1}/{len(periods)} {period[0]} {metric}={error:.4g} retrained={tags is not None}",
            flush=True,
        )
    return rows


def _drift_sensor_tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[dict[str, str] | None, str, str | None]:
    """One evaluation of the real drift sensor: the retrain run's tags (None: no run), a note, the cursor."""
    import dagster as dg

    from mlplatform.dagster_adapter import RUN_KEY_TAG, SENSOR_NAME_TAG

    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    note = result.skip_reason.skip_message if result.skip_reason else ""
    if not result.run_requests:
        return None, note, result.cursor
    request = result.run_requests[0]
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor.name}
    return tags, request.tags.get("mlplatform/drift_reason", ""), result.cursor


def _run_policy_star(args: tuple[ReplayConfig, str, Settings]) -> list[dict[str, Any]]:
    return run_policy(*args)


def summarise(replay: pd.DataFrame) -> pd.DataFrame:
    summary = replay.groupby("policy", sort=False).agg(
        retrains=("retrained", "sum"),
        mean_error=("error", "mean"),
        train_seconds=("train_seconds", "sum"),
    )
    summary["retrains"] = summary["retrains"].astype(int)
    summary["train_seconds"] = summary["train_seconds"].round(1)
    return summary.reset_index()


def replay(config: ReplayConfig, settings: Settings, progress: Any = print) -> pd.DataFrame:
    """Run every policy (in parallel processes), write the three outputs, return the summary.

    `settings` gives the spec folders (and sensor settings); each policy's state goes to its own home.
    """
    import pandas as pd

    from mlplatform.core.drift_plots import replay_errors
    from mlplatform.core.metrics import PRIMARY_METRIC, higher_is_better

    config.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    workers = max(1, min(config.processes, len(config.policies)))
    # Spawned, not forked: a fresh interpreter per policy, with no MLflow or Dagster state inherited.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [(config, policy, settings) for policy in config.policies]
        results = list(pool.map(_run_policy_star, jobs))
    frame = pd.DataFrame([row for rows in results for row in rows])
    frame.to_csv(config.output / "replay.csv", index=False)
    summary = summarise(frame)
    summary.to_csv(config.output / "replay_summary.csv", index=False)
    metric = str(frame["metric"].iloc[0]) if len(frame) else "error"
    (config.output / "replay.png").write_bytes(replay_errors(frame, metric))
    if not config.keep_homes:
        shutil.rmtree(config.output / "_homes", ignore_errors=True)
    lower_is_worse = metric in PRIMARY_METRIC.values() and higher_is_better(metric)
    progress(
        f"replay of {config.dataset} done in {time.perf_counter() - started:.0f} s ({metric}, lower is "
        f"{'worse' if lower_is_worse else 'better'})"
    )
    progress(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return summary


def check_config(config: ReplayConfig) -> None:
    if config.period_days < 1 or config.retrain_every_days < 1:
        raise ValueError("--period-days and --retrain-every-days must be at least 1")
    if not 0 < config.initial_fraction < 1 or math.isnan(config.initial_fraction):
        raise ValueError("--initial-fraction must be between 0 and 1")
    unknown = [p for p in config.policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
