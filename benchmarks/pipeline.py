"""Pipeline benchmark: the whole platform graph, on each engine, vs the bare baseline on the same files.

    python -m benchmarks.pipeline --rows 1000000 --repeats 3
    python -m benchmarks.pipeline --rows 10000000 --repeats 3 --sides local,dask,bare
    python -m benchmarks.pipeline --rows 100000000 --repeats 1 --sides dask --dask-memory-limit 6GiB

Generates about `--rows` synthetic transactions (one Parquet file per day) into a temp landing folder,
writes a copy of the bundled `transactions` spec (named `transactions_bench`) pointing at it, and then,
`--repeats` times, runs each of `--sides` back to back:
* local: `mlplatform run` for that dataset in a fresh temp platform home (a real Dagster instance on
  SQLite, DuckDB warehouse, MLflow store), i.e. every asset and check of the dataset, all partitions
  as one run; per-stage times come from the run's step events (benchmarks.platform_child);
* dask: the same with MLPLATFORM_ENGINE=dask: a LocalCluster of `--dask-workers` worker processes the
  platform starts, stage tables in a Parquet lake;
* bare: the same work as a plain script (benchmarks.bare).
Each side runs in a fresh process; wall time is the whole process (imports included). Peak RSS is the
largest sum over the process and all its descendants (the Dask workers), sampled every 0.25 s. Medians
over the repeats; ratios (local / bare, dask / local) are taken per repeat, between runs made back to back,
and their medians reported.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_DATASET,
    DEFAULT_DAYS,
    ChildResult,
    generate_landing,
    gib,
    machine_info,
    median,
    parquet_rows,
    print_machine,
    print_table,
    run_child,
    write_bench_spec,
    write_result,
)

STAGES = (
    "raw",
    "clean",
    "features",
    "training_set",
    "model",
    "evaluation",
    "predictions",
    "reference_profile",
    "drift_report",
)
CHECKS = "asset checks"
OUTSIDE = "outside steps (start-up, imports, definitions, events)"


SIDES = ("local", "dask", "bare")


def platform_stages(result: ChildResult) -> dict[str, float]:
    """Seconds per stage; check steps summed; whatever the steps do not cover is `OUTSIDE`."""
    steps: dict[str, float] = result.payload["steps"]
    stages = {stage: steps.get(stage, 0.0) for stage in STAGES}
    stages[CHECKS] = sum(seconds for step, seconds in steps.items() if step not in STAGES)
    stages[OUTSIDE] = result.wall_seconds - sum(steps.values())
    return stages


def bare_stages(result: ChildResult) -> dict[str, float]:
    stages = {stage: result.payload["stages"].get(stage, 0.0) for stage in STAGES}
    stages[CHECKS] = 0.0
    stages[OUTSIDE] = result.wall_seconds - sum(result.payload["stages"].values())
    return stages


def _stage_seconds(side: str, result: ChildResult) -> dict[str, float]:
    return bare_stages(result) if side == "bare" else platform_stages(result)


def _stage_rss(side: str, result: ChildResult) -> dict[str, int]:
    return result.payload["stage_peak_rss_bytes" if side == "bare" else "step_peak_rss_bytes"]


def _peak_rss(result: ChildResult) -> int:
    """The run's peak over all its processes where sampled (platform), else the process's own (bare)."""
    return max(result.peak_rss_bytes, result.payload.get("tree_peak_rss_bytes", 0))


def run_side(side: str, work: Path, spec_dir: Path, repeat: int, dask: dict[str, str]) -> ChildResult:
    if side == "bare":
        bare = run_child(
            "benchmarks.bare",
            ["--spec", str(spec_dir / f"{BENCH_DATASET}.yaml"), "--db", str(work / "bare.duckdb")],
            work / f"bare_{repeat}.json",
            work / f"bare_{repeat}.log",
        )
        (work / "bare.duckdb").unlink(missing_ok=True)
        return bare
    home = work / f"home_{side}_{repeat}"
    shutil.rmtree(home, ignore_errors=True)
    result = run_child(
        "benchmarks.platform_child",
        ["--home", str(home), "--specs", str(spec_dir), "--dataset", BENCH_DATASET],
        work / f"{side}_{repeat}.json",
        work / f"{side}_{repeat}.log",
        env={"MLPLATFORM_ENGINE": side, **(dask if side == "dask" else {})},
    )
    if not result.payload["success"]:
        raise RuntimeError(f"{side} run failed in {result.payload['failed_steps']}; see {work}")
    shutil.rmtree(home, ignore_errors=True)  # disk: a 10M-row home is several GiB
    return result


def summarise(runs: list[dict[str, ChildResult]], sides: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"sides": sides, "ratios": {}}
    for side in sides:
        results = [run[side] for run in runs]
        summary[side] = {
            "seconds": median([r.wall_seconds for r in results]),
            "peak_rss_bytes": max(_peak_rss(r) for r in results),
            "stages": {
                stage: median([_stage_seconds(side, r)[stage] for r in results])
                for stage in (*STAGES, CHECKS, OUTSIDE)
            },
            "stage_rss": {stage: max(_stage_rss(side, r).get(stage, 0) for r in results) for stage in STAGES},
            "metrics": results[-1].payload["metrics"],
            "rows": results[-1].payload.get("rows"),
        }
    for top, bottom in (("local", "bare"), ("dask", "local"), ("dask", "bare")):
        if top in sides and bottom in sides:
            ratios = [run[top].wall_seconds / run[bottom].wall_seconds for run in runs]
            summary["ratios"][f"{top} / {bottom}"] = {"median": median(ratios), "per_run": ratios}
    return summary


def report(summary: dict[str, Any], rows: int, repeats: int) -> None:
    sides = summary["sides"]
    print(f"\n== pipeline benchmark: {rows:,} rows, median of {repeats} run(s) ==")

    def rss(side: str, stage: str) -> str:
        peak = summary[side]["stage_rss"].get(stage, 0)
        return gib(peak) if peak else ""

    stage_rows = [
        (
            stage,
            *(f"{summary[side]['stages'][stage]:.1f}" for side in sides),
            *(rss(side, stage) for side in sides),
        )
        for stage in (*STAGES, CHECKS, OUTSIDE)
    ]
    stage_rows.append(
        (
            "**total (process wall time)**",
            *(f"**{summary[side]['seconds']:.1f}**" for side in sides),
            *(gib(summary[side]["peak_rss_bytes"]) for side in sides),
        )
    )
    print_table(("stage", *(f"{s} s" for s in sides), *(f"{s} peak RSS" for s in sides)), stage_rows)
    for name, ratio in summary["ratios"].items():
        per_run = ", ".join(f"{r:.2f}" for r in ratio["per_run"])
        print(f"ratio {name}: {ratio['median']:.2f} (median; per run: {per_run})")
    for side in sides:
        metrics = summary[side]["metrics"]
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k in ("test_roc_auc", "test_pr_auc")
        )
        print(f"{side} model: best iteration {metrics.get('best_iteration')}, {shown}")
        if summary[side]["rows"]:
            print(f"{side} rows per stage: {summary[side]['rows']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="about this many rows (default 1M)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of data = daily partitions")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument(
        "--sides", default="local,bare", help=f"comma-separated, run in order: {', '.join(SIDES)}"
    )
    parser.add_argument("--dask-workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--dask-threads", type=int, default=1, help="threads per Dask worker")
    parser.add_argument("--dask-memory-limit", default="auto", help="per Dask worker, e.g. 6GiB")
    args = parser.parse_args(argv)
    sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    if unknown := [side for side in sides if side not in SIDES]:
        parser.error(f"unknown side(s) {unknown}: choose from {', '.join(SIDES)}")
    dask = {
        "MLPLATFORM_DASK_WORKERS": str(args.dask_workers),
        "MLPLATFORM_DASK_THREADS": str(args.dask_threads),
        "MLPLATFORM_DASK_MEMORY_LIMIT": args.dask_memory_limit,
    }

    info = machine_info()
    print_machine(info)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mlplatform-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        landing = work / "landing"
        files, generation_seconds = generate_landing(landing, args.rows, args.days, args.seed)
        rows = parquet_rows(files)
        print(
            f"generated {rows:,} rows in {len(files)} daily files in {generation_seconds:.1f} s ({landing})"
        )
        spec_dir = work / "specs"
        write_bench_spec(spec_dir, landing)
        runs = []
        for repeat in range(args.repeats):
            run = {side: run_side(side, work, spec_dir, repeat, dask) for side in sides}
            shown = ", ".join(f"{s} {r.wall_seconds:.1f} s ({gib(_peak_rss(r))})" for s, r in run.items())
            print(f"run {repeat + 1}/{args.repeats}: {shown}", flush=True)
            runs.append(run)
        summary = summarise(runs, sides) | {"rows": rows, "repeats": args.repeats, "machine": info}
        report(summary, rows, args.repeats)
        if args.json:
            write_result(args.json, summary)
        return summary
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
