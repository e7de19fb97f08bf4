"""Running whole dataset graphs through the Dagster instance, and summarising what they produced."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import duckdb
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlplatform.core.warehouse import count_rows
from mlplatform.settings import load_settings

STAGES = ("raw", "clean", "quarantine", "features")


@dataclass
class RunOutcome:
    dataset: str
    run_id: str
    success: bool
    partitions: int
    failed_steps: list[str] = field(default_factory=list)


def dataset_names(defs: dg.Definitions) -> list[str]:
    return sorted(job.name.removesuffix("__all") for job in defs.jobs or [] if job.name.endswith("__all"))


def run_datasets(
    defs: dg.Definitions, names: list[str] | None, progress: Callable[[str], None] = lambda _: None
) -> list[RunOutcome]:
    """One run per dataset over all its partitions (a single-run backfill), in the current instance."""
    from mlplatform.cli import UserError

    known = dataset_names(defs)
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise UserError(f"unknown dataset {', '.join(unknown)} (known: {', '.join(known)})")
    instance = dg.DagsterInstance.get()
    outcomes = []
    for name in names or known:
        job = defs.resolve_job_def(f"{name}__all")
        keys = job.partitions_def.get_partition_keys() if job.partitions_def else []
        progress(f"[{name}] materializing {len(keys)} partitions ({keys[0]} .. {keys[-1]}) as one run")
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        failed = [e.step_key for e in result.all_events if e.is_step_failure and e.step_key]
        outcomes.append(RunOutcome(name, result.run_id, result.success, len(keys), failed))
        status = "succeeded" if result.success else f"FAILED in {', '.join(failed) or 'a check'}"
        progress(f"[{name}] run {result.run_id} {status}")
    return outcomes


def stage_counts(dataset: str) -> dict[str, int]:
    settings = load_settings()
    with duckdb.connect(settings.warehouse_path, read_only=True) as conn:
        return {stage: count_rows(conn, dataset, stage) for stage in STAGES}


def print_summary(defs: dg.Definitions, outcomes: list[RunOutcome]) -> None:
    import os

    settings = load_settings()
    print("\n== mlplatform summary ==")
    for outcome in outcomes:
        counts = stage_counts(outcome.dataset)
        print(f"{outcome.dataset}: {'OK' if outcome.success else 'FAILED'} (run {outcome.run_id})")
        print("  rows: " + ", ".join(f"{stage} {counts[stage]:,}" for stage in STAGES))
        print(f"  quarantined: {counts['quarantine']:,} of {counts['raw']:,} raw rows")
    print(f"\nwarehouse (DuckDB): {settings.warehouse_path}")
    print(f"Dagster instance:   {os.environ.get('DAGSTER_HOME', settings.dagster_home)}")
    print(
        f"see the runs:       DAGSTER_HOME={os.environ.get('DAGSTER_HOME', settings.dagster_home)} dagster dev"
    )
    print(f"query the tables:   duckdb -readonly {settings.warehouse_path}")
