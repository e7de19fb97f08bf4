"""The platform side of the pipeline benchmark, in its own process: `mlplatform run` for one dataset.

Materializes the dataset's whole job (every asset and check, all partitions as one run) through the
real Dagster instance of a temp platform home, then reads per-step wall times from the run's event log.
Started by benchmarks.pipeline; prints the Dagster log to its own log file.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path
from typing import Any

CHILD_ENV = {
    "MLPLATFORM_AUTOMATION": "none",  # no daemon runs here; sensors would only be defined STOPPED
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def step_intervals(instance: Any, run_id: str, dataset: str) -> tuple[dict[str, tuple[float, float]], int]:
    """(start, end) timestamps of each step, keyed by stage, from the run's events; and their count."""
    import dagster as dg

    starts: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    records = instance.all_logs(run_id)
    for record in records:
        event = record.dagster_event
        if event is None or not record.step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[record.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            stage = record.step_key.removeprefix(f"{dataset}__")
            intervals[stage] = (starts.get(record.step_key, record.timestamp), record.timestamp)
    return intervals, len(records)


def run_bounds(instance: Any, run_id: str) -> tuple[float, float]:
    import dagster as dg

    times = {
        record.dagster_event.event_type: record.timestamp
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None
        and record.dagster_event.event_type
        in (dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE)
    }
    start = times.get(dg.DagsterEventType.RUN_START, float("nan"))
    end = times.get(dg.DagsterEventType.RUN_SUCCESS, times.get(dg.DagsterEventType.RUN_FAILURE, float("nan")))
    return start, end


def challenger_metrics(dataset: str) -> dict[str, float]:
    """Test metrics and best iteration of the model this run trained, as logged to MLflow."""
    from mlplatform.contracts import CHALLENGER_ALIAS
    from mlplatform.resources.mlflow import MlflowResource
    from mlplatform.settings import load_settings

    mlflow = MlflowResource.from_settings(load_settings())
    version = mlflow.get_alias_version(dataset, CHALLENGER_ALIAS)
    if version is None or not version.run_id:
        return {}
    logged = mlflow.client().get_run(version.run_id).data.metrics
    return {k: float(v) for k, v in logged.items() if k.startswith("test_") or k == "best_iteration"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--specs", required=True, type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args()
    os.environ.update(CHILD_ENV)
    os.environ["MLPLATFORM_HOME"] = str(args.home)
    os.environ["MLPLATFORM_SPECS"] = str(args.specs)
    os.environ["DAGSTER_HOME"] = str(args.home / "dagster")

    started = time.perf_counter()
    import dagster as dg

    from benchmarks.common import RssSampler, write_result
    from mlplatform.factory import build_definitions
    from mlplatform.home import prepare_home
    from mlplatform.runner import run_datasets, stage_counts
    from mlplatform.settings import load_settings

    prepare_home(load_settings())
    defs = build_definitions()
    loaded = time.perf_counter()
    with RssSampler() as sampler:
        (outcome,) = run_datasets(defs, [args.dataset], instance=dg.DagsterInstance.get(), progress=print)
    finished = time.perf_counter()

    instance = dg.DagsterInstance.get()
    intervals, events = step_intervals(instance, outcome.run_id, args.dataset)
    steps = {stage: end - start for stage, (start, end) in intervals.items()}
    step_rss = {stage: sampler.peak_between(start, end) for stage, (start, end) in intervals.items()}
    run_start, run_end = run_bounds(instance, outcome.run_id)
    write_result(
        args.result,
        {
            "success": outcome.success,
            "failed_steps": outcome.failed_steps,
            "partitions": outcome.partitions,
            "import_and_definitions_seconds": loaded - started,
            "run_seconds": finished - loaded,
            "run_event_span_seconds": run_end - run_start,
            "steps": steps,
            "step_peak_rss_bytes": step_rss,
            "events": events,
            "rows": stage_counts(load_settings(), args.dataset),
            "metrics": challenger_metrics(args.dataset),
            "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            # This process and its descendants summed (the Dask engine's workers): the memory the run held.
            "tree_peak_rss_bytes": max((rss for _, rss in sampler.samples), default=0),
            "engine": os.environ.get("MLPLATFORM_ENGINE", "local"),
        },
    )


if __name__ == "__main__":
    main()
