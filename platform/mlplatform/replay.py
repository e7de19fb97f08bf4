"""`mlplatform replay`: is drift-triggered retraining worth it? Replay a dataset's history under four policies.

Each policy gets its own temporary platform home (warehouse, MLflow store, Dagster instance) and
walks the same history with the real jobs, in a spawned worker process (policies run in parallel):

1. bootstrap: the whole graph over the first `initial_fraction` of the partitions, which trains,
   evaluates and promotes the first champion and profiles it;
2. then period by period (default 7 days): `<ds>__ingest` over the period's partitions (raw ->
   features -> predictions by the current champion -> drift_report). The period's metric is the
   champion's primary metric on those rows, scored before anything else happens: a prospective error;
3. after the period, the policy decides whether to run `<ds>__retrain`:
   * static: never;
   * scheduled: when `retrain_every_days` of data have passed since the last training;
   * drift: whatever the real `<ds>__drift_sensor` requests, evaluated on the instance's events with
     the replay clock (data time) so its cool-down counts data days, not seconds of replay;
   * every_period: after every period, the ceiling: the most any retraining policy can gain (with the
     same training rules), at the most retrains.

`label_delay` overrides the spec's `labels.delay`: the drift reports (hence the drift policy) judge
performance only on labels that would have arrived; the period metric is always on every label.

Outputs in DIR: replay.csv (one row per policy and period: the metric on the period, whether a
retraining ran after it, the drift verdict's label-free estimate next to the realized metric of the
same window), replay_summary.csv (`summarise`) and replay.png.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlplatform.settings import Settings

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd

    from mlplatform.specs.model import DatasetSpec

# Pandas, Dagster and MLflow are imported where they are used: `mlplatform --help` reads POLICIES.
POLICIES = ("static", "scheduled", "drift", "every_period")
# Most retrains first: started first in the pool, the longest policy does not run alone at the end.
_SLOWEST_FIRST = ("every_period", "scheduled", "drift", "static")


@dataclass(frozen=True)
class ReplayConfig:
    dataset: str
    output: Path
    period_days: int = 7
    initial_fraction: float = 0.3
    retrain_every_days: int = 28
    policies: tuple[str, ...] = POLICIES
    processes: int = 2
    max_periods: int | None = None  # replay only the first N periods (smoke tests)
    keep_homes: bool = False  # keep each policy's home (warehouse, MLflow, Dagster) for inspection
    label_delay: str | None = None  # replaces the spec's labels.delay (None: the spec's own)


def _chunks(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _range_tags(keys: list[str]) -> dict[str, str]:
    from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


def _window_error(
    settings: Settings, spec: DatasetSpec, start: datetime, end: datetime
) -> tuple[str, float, int, int | None]:
    """Primary metric of the stored predictions on the labelled rows of [start, end) (every label: the
    replay knows them all, whatever delay the drift reports simulate), and the scoring version."""
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


def _estimate_and_realized(
    settings: Settings, spec: DatasetSpec, partition_start: datetime
) -> tuple[float, float]:
    """The label-free estimate (`estimated_error`) of the drift verdict of the partition starting at
    `partition_start`, and the realized metric of that verdict's own window on every label. (NaN, NaN)
    when the verdict table has no estimate (regression champions, or drift reports without one)."""
    import duckdb

    from mlplatform.contracts import Table
    from mlplatform.core.warehouse import table_exists, table_name

    nothing = (math.nan, math.nan)
    with duckdb.connect(settings.warehouse_for(spec.name), read_only=True) as conn:
        if not table_exists(conn, spec.name, Table.DRIFT_VERDICT):
            return nothing
        verdicts = table_name(spec.name, Table.DRIFT_VERDICT)
        if "estimated_error" not in conn.sql(f"SELECT * FROM {verdicts} LIMIT 0").columns:
            return nothing
        found = conn.execute(
            f"SELECT estimated_error, window_start, window_end FROM {verdicts} WHERE partition_start = ?",
            [partition_start],
        ).fetchone()
    if found is None or found[0] is None or math.isnan(float(found[0])):
        return nothing
    _, realized, _, _ = _window_error(settings, spec, found[1], found[2])
    return float(found[0]), realized


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


def _workers(config: ReplayConfig) -> int:
    return max(1, min(config.processes, len(config.policies)))


# LightGBM's spellings of its thread count (as core.training reads them): a spec that sets one keeps it.
_THREAD_PARAMS = {"num_threads", "num_thread", "nthread", "nthreads", "n_jobs"}


def replayed_spec(spec: DatasetSpec, config: ReplayConfig) -> DatasetSpec:
    """The spec as the replay runs it: the replay's label delay, and LightGBM limited to this policy's
    share of the CPUs. Policies train at the same time; with more OpenMP threads than free cores, one
    small training took 17 s instead of 0.6 s (threads spinning at barriers for a descheduled peer)."""
    from mlplatform.core.training import available_cpus
    from mlplatform.specs.monitoring import LabelsSpec

    if config.label_delay is not None:
        spec = spec.model_copy(update={"labels": LabelsSpec(delay=config.label_delay)})
    if not _THREAD_PARAMS & set(spec.model.params):
        threads = max(1, available_cpus() // _workers(config))
        model = spec.model.model_copy(update={"params": {**spec.model.params, "num_threads": threads}})
        spec = spec.model_copy(update={"model": model})
    return spec


def _policy_jobs(settings: Settings, config: ReplayConfig) -> tuple[DatasetSpec, Any, Any, Any]:
    """The dataset's spec as replayed and its whole-graph, ingest and retrain jobs, built for the
    policy's home."""
    from mlplatform.factory import build_definitions, job_name
    from mlplatform.jobs.dataset_jobs import ingest_job_name, retrain_job_name
    from mlplatform.specs.loader import read_specs

    specs, _ = read_specs(settings.extra_spec_dirs)  # another dataset's broken spec does not matter
    spec = replayed_spec(next(s for s in specs if s.name == config.dataset), config)
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


@dataclass
class _DataClock:
    """The drift sensor's clock: data time (the end of the replayed period), so its cool-down counts
    data days, not seconds of replay."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class _PolicyState:
    """What a policy's decision reads between periods: the drift sensor, its cursor and the data clock."""

    sensor: dg.SensorDefinition
    instance: dg.DagsterInstance
    clock: _DataClock
    last_training: datetime
    cursor: str | None = None


def _retrain_request(
    policy: str, config: ReplayConfig, state: _PolicyState, end: datetime
) -> tuple[dict[str, str] | None, str]:
    """The tags of the retraining the policy asks for after a period ending at `end` (None: none), a note."""
    if policy == "every_period":
        return {"mlplatform/trigger": "every_period"}, "after every period"
    if policy == "scheduled" and end - state.last_training >= timedelta(days=config.retrain_every_days):
        return {"mlplatform/trigger": "schedule"}, f"every {config.retrain_every_days} days"
    if policy == "drift":
        state.clock.now = end
        tags, note, state.cursor = _drift_sensor_tick(state.sensor, state.instance, state.cursor)
        return tags, note
    return None, ""


def _bootstrap(
    config: ReplayConfig, policy: str, settings: Settings
) -> tuple[DatasetSpec, Any, Any, list[list[str]], _PolicyState]:
    """The first champion (the whole graph over the bootstrap partitions) and what the period loop needs."""
    import dagster as dg

    from mlplatform.sensors.drift import build_drift_sensor

    spec, whole, ingest, retrain = _policy_jobs(settings, config)
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
    last_training = partitions.time_window_for_partition_key(keys[n_initial - 1]).end
    clock = _DataClock(last_training)
    sensor = build_drift_sensor(spec, retrain, settings, clock=clock)
    return spec, ingest, retrain, periods, _PolicyState(sensor, instance, clock, last_training)


def run_policy(config: ReplayConfig, policy: str, settings: Settings) -> list[dict[str, Any]]:
    """Replay one policy in its own home, in a spawned worker process (no state inherited from the
    caller). A worker may replay another policy after this one: each has its own home, Dagster
    instance and MLflow store, and MlflowResource points MLflow at the policy's store for every call."""
    started = time.perf_counter()
    settings = _policy_home(config, policy, settings)
    spec, ingest, retrain, periods, state = _bootstrap(config, policy, settings)
    print(f"[{policy}] bootstrap done after {time.perf_counter() - started:.0f} s", flush=True)
    partitions = ingest.partitions_def
    rows = []
    for index, period in enumerate(periods):
        start = partitions.time_window_for_partition_key(period[0]).start
        last = partitions.time_window_for_partition_key(period[-1])
        _execute(ingest, state.instance, _range_tags(period), policy)
        # Scored before any retraining: the error of the champion in service (prospective).
        metric, value, n_rows, version = _window_error(
            settings, spec, start.replace(tzinfo=None), last.end.replace(tzinfo=None)
        )
        estimated, realized = _estimate_and_realized(settings, spec, last.start.replace(tzinfo=None))
        tags, note = _retrain_request(policy, config, state, last.end)
        seconds = _execute(retrain, state.instance, tags, policy) if tags is not None else 0.0
        if tags is not None:
            state.last_training = last.end
        rows.append(
            {
                "policy": policy,
                "period": period[0],
                "metric_value": value,
                "retrained": tags is not None,
                "metric": metric,
                "rows": n_rows,
                "scored_by_version": version,
                "champion_after": _champion_version(settings, spec),
                "train_seconds": round(seconds, 2),
                "estimated_error": estimated,
                "realized_on_estimate_window": realized,
                "note": note[:200],
            }
        )
        print(
            f"[{policy}] {index + 1}/{len(periods)} {period[0]} {metric}={value:.4g} retrained={tags is not None} "
            f"({time.perf_counter() - started:.0f} s)",
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


def _replay_policies(config: ReplayConfig, settings: Settings) -> list[dict[str, Any]]:
    """Every policy's rows, each policy in its own process, the slowest started first; rows come back
    in the order of `config.policies`."""
    workers = _workers(config)
    ordered = sorted(config.policies, key=_SLOWEST_FIRST.index)
    # Spawned, not forked: a fresh interpreter per policy, with no MLflow or Dagster state inherited.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = pool.map(_run_policy_star, [(config, policy, settings) for policy in ordered])
        by_policy = dict(zip(ordered, rows, strict=True))
    return [row for policy in config.policies for row in by_policy[policy]]


def replay(config: ReplayConfig, settings: Settings, progress: Any = print) -> pd.DataFrame:
    """Run every policy (in parallel processes), write the three outputs, return the summary.

    `settings` gives the spec folders (and sensor settings); each policy's state goes to its own home.
    """
    import pandas as pd

    from mlplatform.core.drift_plots import replay_errors
    from mlplatform.core.replay_summary import summarise

    config.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frame = pd.DataFrame(_replay_policies(config, settings))
    frame.to_csv(config.output / "replay.csv", index=False)
    summary = summarise(frame)
    summary.to_csv(config.output / "replay_summary.csv", index=False)
    if len(frame):
        (config.output / "replay.png").write_bytes(replay_errors(frame, str(frame["metric"].iloc[0])))
    if not config.keep_homes:
        shutil.rmtree(config.output / "_homes", ignore_errors=True)
    direction = f" ({summary['metric'].iloc[0]}, {summary['direction'].iloc[0]})" if len(summary) else ""
    progress(f"replay of {config.dataset} done in {time.perf_counter() - started:.0f} s{direction}")
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
    if config.label_delay is not None:
        from mlplatform.specs.durations import parse_duration

        try:
            parse_duration(config.label_delay)
        except ValueError as exc:
            raise ValueError(f"--label-delay: {exc}") from None
