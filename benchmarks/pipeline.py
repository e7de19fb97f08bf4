"""Pipeline benchmark: the whole platform graph vs the bare baseline on the same generated files.

    python -m benchmarks.pipeline --rows 1000000 --repeats 3
    python -m benchmarks.pipeline --rows 10000000 --repeats 3

Generates about `--rows` synthetic transactions (one Parquet file per day) into a temp landing folder,
writes a copy of the bundled `transactions` spec (named `transactions_bench`) pointing at it, and then,
`--repeats` times, alternately:
* platform: `mlplatform run` for that dataset in a fresh temp platform home (a real Dagster instance on
  SQLite, DuckDB warehouse, MLflow store), i.e. every asset and check of the dataset, all partitions
  as one run; per-stage times come from the run's step events (benchmarks.platform_child);
* bare: the same work as a plain script (benchmarks.bare).
Each side runs in a fresh process; wall time is the whole process (imports included) and peak RSS is
the process's own (os.wait4). Medians over the repeats; the ratio platform / bare is taken per repeat
(both measured back to back) and its median is reported.
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


def run_once(work: Path, spec_dir: Path, repeat: int) -> tuple[ChildResult, ChildResult]:
    home = work / f"home_{repeat}"
    shutil.rmtree(home, ignore_errors=True)
    platform = run_child(
        "benchmarks.platform_child",
        ["--home", str(home), "--specs", str(spec_dir), "--dataset", BENCH_DATASET],
        work / f"platform_{repeat}.json",
        work / f"platform_{repeat}.log",
    )
    if not platform.payload["success"]:
        raise RuntimeError(f"platform run failed in {platform.payload['failed_steps']}; see {work}")
    shutil.rmtree(home, ignore_errors=True)  # disk: a 10M-row home is several GiB
    bare = run_child(
        "benchmarks.bare",
        ["--spec", str(spec_dir / f"{BENCH_DATASET}.yaml"), "--db", str(work / "bare.duckdb")],
        work / f"bare_{repeat}.json",
        work / f"bare_{repeat}.log",
    )
    (work / "bare.duckdb").unlink(missing_ok=True)
    return platform, bare


def summarise(runs: list[tuple[ChildResult, ChildResult]]) -> dict[str, Any]:
    platform_walls = [p.wall_seconds for p, _ in runs]
    bare_walls = [b.wall_seconds for _, b in runs]
    return {
        "platform_seconds": median(platform_walls),
        "bare_seconds": median(bare_walls),
        "ratio": median([p.wall_seconds / b.wall_seconds for p, b in runs]),
        "ratios": [p.wall_seconds / b.wall_seconds for p, b in runs],
        "platform_peak_rss_bytes": max(p.peak_rss_bytes for p, _ in runs),
        "bare_peak_rss_bytes": max(b.peak_rss_bytes for _, b in runs),
        "platform_stages": {
            stage: median([platform_stages(p)[stage] for p, _ in runs])
            for stage in (*STAGES, CHECKS, OUTSIDE)
        },
        "bare_stages": {
            stage: median([bare_stages(b)[stage] for _, b in runs]) for stage in (*STAGES, CHECKS, OUTSIDE)
        },
        "platform_stage_rss": {
            stage: max(p.payload["step_peak_rss_bytes"].get(stage, 0) for p, _ in runs) for stage in STAGES
        },
        "bare_stage_rss": {
            stage: max(b.payload["stage_peak_rss_bytes"].get(stage, 0) for _, b in runs) for stage in STAGES
        },
        "platform_events": runs[-1][0].payload["events"],
        "platform_rows": runs[-1][0].payload["rows"],
        "platform_metrics": runs[-1][0].payload["metrics"],
        "bare_metrics": runs[-1][1].payload["metrics"],
    }


def report(summary: dict[str, Any], rows: int, repeats: int) -> None:
    print(f"\n== pipeline benchmark: {rows:,} rows, median of {repeats} run(s) ==")

    def rss(side: str, stage: str) -> str:
        peak = summary[f"{side}_stage_rss"].get(stage, 0)
        return gib(peak) if peak else ""

    stage_rows = [
        (
            stage,
            f"{summary['platform_stages'][stage]:.1f}",
            f"{summary['bare_stages'][stage]:.1f}",
            rss("platform", stage),
            rss("bare", stage),
        )
        for stage in (*STAGES, CHECKS, OUTSIDE)
    ]
    stage_rows.append(
        (
            "**total (process wall time)**",
            f"**{summary['platform_seconds']:.1f}**",
            f"**{summary['bare_seconds']:.1f}**",
            gib(summary["platform_peak_rss_bytes"]),
            gib(summary["bare_peak_rss_bytes"]),
        )
    )
    print_table(("stage", "platform s", "bare s", "platform peak RSS", "bare peak RSS"), stage_rows)
    ratios = ", ".join(f"{r:.2f}" for r in summary["ratios"])
    print(f"\nratio platform / bare: {summary['ratio']:.2f} (median; per run: {ratios})")
    print(f"platform run events: {summary['platform_events']}; rows per stage: {summary['platform_rows']}")
    for side in ("platform", "bare"):
        metrics = summary[f"{side}_metrics"]
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k in ("test_roc_auc", "test_pr_auc")
        )
        print(f"{side} model: best iteration {metrics.get('best_iteration')}, {shown}")


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
    args = parser.parse_args(argv)

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
            platform, bare = run_once(work, spec_dir, repeat)
            print(
                f"run {repeat + 1}/{args.repeats}: platform {platform.wall_seconds:.1f} s "
                f"({gib(platform.peak_rss_bytes)}), bare {bare.wall_seconds:.1f} s ({gib(bare.peak_rss_bytes)}), "
                f"ratio {platform.wall_seconds / bare.wall_seconds:.2f}",
                flush=True,
            )
            runs.append((platform, bare))
        summary = summarise(runs) | {"rows": rows, "repeats": args.repeats, "machine": info}
        report(summary, rows, args.repeats)
        if args.json:
            write_result(args.json, summary)
        return summary
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
