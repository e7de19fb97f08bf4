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

import argparse
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

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


def _period_error(spec: Any, start: datetime, end: datetime) -> tuple[str, float, int, int | None]:
    """Primary metric of the stored predictions on the period's labelled rows, and the scoring version."""
    import duckdb

    from mlplatform.assets.drift_report import window_rows
    from mlplatform.core.drift_reference import primary_error
    from mlplatform.settings import load_settings

    with duckdb.connect(load_settings().warehouse_path, read_only=True) as conn:
        rows = window_rows(conn, spec, start, end)
    versions = rows["model_version"].dropna() if "model_version" in rows else pd.Series(dtype=float)
    version = int(versions.mode().iloc[0]) if len(versions) else None
    metric, value = primary_error(spec.target.task, rows[spec.target.column], rows)
    return metric, value, len(rows), version


def _champion_version(spec: Any) -> int | None:
    from mlplatform.factory import mlflow_resource
    from mlplatform.models.registry import CHAMPION
    from mlplatform.settings import load_settings

    found = mlflow_resource(load_settings()).get_alias_version(spec.name, CHAMPION)
    return int(found.version) if found else None


def run_policy(config: ReplayConfig, policy: str) -> list[dict[str, Any]]:
    """Replay one policy in its own home; runs in a fresh process (the home is process-wide state)."""
    import os

    from mlplatform.cli import prepare_home
    from mlplatform.settings import MLFLOW_REGISTRY_ENV, MLFLOW_TRACKING_ENV, WAREHOUSE_ENV

    home = config.output / "_homes" / policy
    shutil.rmtree(home, ignore_errors=True)
    # Everything in the policy's own home, whatever the caller's environment points at.
    for name in (WAREHOUSE_ENV, MLFLOW_TRACKING_ENV, MLFLOW_REGISTRY_ENV, "MLPLATFORM_MLFLOW_ARTIFACTS"):
        os.environ.pop(name, None)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    prepare_home(str(home))
    import dagster as dg

    from mlplatform.dagster_adapter import RUN_KEY_TAG, SENSOR_NAME_TAG
    from mlplatform.factory import build_definitions, job_name
    from mlplatform.jobs.dataset_jobs import ingest_job_name, retrain_job_name
    from mlplatform.sensors.drift import build_drift_sensor
    from mlplatform.settings import load_settings
    from mlplatform.specs.loader import check_source, read_specs

    specs, _ = read_specs(load_settings().extra_spec_dirs)  # another dataset's broken spec does not matter
    spec = next(s for s in specs if s.name == config.dataset)
    defs = build_definitions(specs=[spec])
    # In-memory instance: the replay's runs and events are thrown away with its home anyway, and SQLite
    # event storage would spend most of the replay syncing events to disk.
    instance = dg.DagsterInstance.ephemeral()
    whole, ingest, retrain = (
        defs.resolve_job_def(n(spec)) for n in (job_name, ingest_job_name, retrain_job_name)
    )
    partitions = ingest.partitions_def
    last_time = check_source(spec).time_max
    keys = [
        k
        for k in partitions.get_partition_keys()
        if partitions.time_window_for_partition_key(k).start.replace(tzinfo=None) <= last_time
    ]
    n_initial = max(1, round(len(keys) * config.initial_fraction))
    grain_days = max(
        1,
        round(
            (
                partitions.time_window_for_partition_key(keys[0]).end
                - partitions.time_window_for_partition_key(keys[0]).start
            ).days
        ),
    )
    periods = _chunks(keys[n_initial:], max(1, config.period_days // grain_days))[: config.max_periods]

    def execute(job: Any, tags: dict[str, str]) -> float:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        if not result.success:
            failed = [e.step_key for e in result.all_events if e.is_step_failure]
            print(f"[{policy}] run {job.name} failed in {failed}", flush=True)
        return time.perf_counter() - started

    execute(whole, _range_tags(keys[:n_initial]))
    if _champion_version(spec) is None:
        raise RuntimeError(
            f"[{policy}] the bootstrap over {keys[0]} .. {keys[n_initial - 1]} produced no champion (the first "
            "model did not beat the naive baseline): replay with a larger --initial-fraction"
        )
    clock = {"now": datetime.now(UTC)}
    sensor = build_drift_sensor(spec, retrain, clock=lambda: clock["now"])
    cursor: str | None = None
    last_training = partitions.time_window_for_partition_key(keys[n_initial - 1]).end
    rows = []
    for index, period in enumerate(periods):
        start = partitions.time_window_for_partition_key(period[0]).start
        end = partitions.time_window_for_partition_key(period[-1]).end
        execute(ingest, _range_tags(period))
        metric, error, n_rows, version = _period_error(
            spec, start.replace(tzinfo=None), end.replace(tzinfo=None)
        )
        tags: dict[str, str] | None = None
        note = ""
        if policy == "scheduled" and end - last_training >= timedelta(days=config.retrain_every_days):
            tags, note = {"mlplatform/trigger": "schedule"}, f"every {config.retrain_every_days} days"
        elif policy == "drift":
            clock["now"] = end
            result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
            cursor = result.cursor
            note = result.skip_reason.skip_message if result.skip_reason else ""
            if result.run_requests:
                request = result.run_requests[0]
                tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor.name}
                note = request.tags.get("mlplatform/drift_reason", "")
        seconds = execute(retrain, tags) if tags is not None else 0.0
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
                "champion_after": _champion_version(spec),
                "train_seconds": round(seconds, 2),
                "note": note[:200],
            }
        )
        print(
            f"[{policy}] {index + 1}/{len(periods)} {period[0]} {metric}={error:.4g} retrained={tags is not None}",
            flush=True,
        )
    return rows


def _run_policy_star(args: tuple[ReplayConfig, str]) -> list[dict[str, Any]]:
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


def replay(config: ReplayConfig, progress: Any = print) -> pd.DataFrame:
    """Run every policy (in parallel processes), write the three outputs, return the summary."""
    from mlplatform.core.drift_plots import replay_errors

    config.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    workers = max(1, min(config.processes, len(config.policies)))
    # Spawned, not forked: each policy sets its own process-wide home before anything is imported.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_run_policy_star, [(config, policy) for policy in config.policies]))
    frame = pd.DataFrame([row for rows in results for row in rows])
    frame.to_csv(config.output / "replay.csv", index=False)
    summary = summarise(frame)
    summary.to_csv(config.output / "replay_summary.csv", index=False)
    metric = str(frame["metric"].iloc[0]) if len(frame) else "error"
    (config.output / "replay.png").write_bytes(replay_errors(frame, metric))
    if not config.keep_homes:
        shutil.rmtree(config.output / "_homes", ignore_errors=True)
    progress(
        f"replay of {config.dataset} done in {time.perf_counter() - started:.0f} s ({metric}, lower is "
        f"{'worse' if metric in ('roc_auc',) else 'better'})"
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


def cmd_replay(args: Any) -> int:
    from mlplatform.cli import UserError

    config = ReplayConfig(
        dataset=args.dataset,
        output=Path(args.output).expanduser().resolve(),
        period_days=args.period_days,
        initial_fraction=args.initial_fraction,
        retrain_every_days=args.retrain_every_days,
        policies=tuple(args.policy or POLICIES),
        processes=args.processes,
        max_periods=args.max_periods,
        keep_homes=args.keep_homes,
    )
    try:
        check_config(config)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    from mlplatform.settings import load_settings
    from mlplatform.specs.loader import read_specs

    specs, broken = read_specs(load_settings().extra_spec_dirs)
    known = [s.name for s in specs]
    if config.dataset in {b.name for b in broken}:
        raise UserError(next(b.error for b in broken if b.name == config.dataset))
    if config.dataset not in known:
        raise UserError(f"unknown dataset {config.dataset} (known: {', '.join(known)})")
    replay(config)
    print(f"wrote {config.output / 'replay.csv'}, replay_summary.csv and replay.png")
    return 0


def add_replay_command(sub: Any) -> None:
    """The `replay` subcommand, added to mlplatform's parser by cli.build_parser."""
    parser = sub.add_parser(
        "replay",
        help="replay a dataset's history under static, scheduled and drift-triggered retraining",
        description=(
            "Replays the history of a dataset period by period through the real jobs and the real drift "
            "sensor, each policy in its own temporary platform home, and writes replay.csv, "
            "replay_summary.csv and replay.png to --output."
        ),
    )
    parser.add_argument("--dataset", required=True, metavar="NAME")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--period-days", type=int, default=7, help="days per replayed period (default 7)")
    parser.add_argument(
        "--initial-fraction", type=float, default=0.25, help="share of the history to bootstrap on (0.25)"
    )
    parser.add_argument(
        "--retrain-every-days", type=int, default=28, help="schedule of the scheduled policy (28)"
    )
    parser.add_argument(
        "--policy", action="append", choices=POLICIES, help="only these policies (repeatable)"
    )
    parser.add_argument("--processes", type=int, default=2, help="policies replayed in parallel (2)")
    parser.add_argument("--max-periods", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep-homes", action="store_true", help="keep each policy's platform home under DIR/_homes"
    )
    parser.set_defaults(func=cmd_replay)
