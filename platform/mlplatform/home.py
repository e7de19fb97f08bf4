"""The platform home on disk: its Dagster instance config and storage, made ready before any run.

Nothing here reads or writes environment variables: the locations come from the `Settings` passed in.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from mlplatform.mlflow_store import create_local_store
from mlplatform.recovery import fail_dead_runs
from mlplatform.settings import Settings

RUN_MONITORING_YAML = """# Added by mlplatform: the daemon fails runs stuck starting or canceling (their worker is gone), so a
# dead run never holds the run slot. Runs of killed processes: see mlplatform.recovery.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
"""
MAX_CONCURRENT_RUNS = 4
CONCURRENCY_YAML = f"""# Runs the daemon launches (sensors, schedules, the UI) queue. Every asset of a dataset is in the
# dataset's pool (one DuckDB file, one writer): one run per pool at a time, datasets side by side.
concurrency:
  runs:
    max_concurrent_runs: {MAX_CONCURRENT_RUNS}
  pools:
    granularity: run
    default_limit: 1
"""
DAGSTER_YAML = (
    """# Written by mlplatform on first use. The Dagster instance of this platform home.
telemetry:
  enabled: false
"""
    + CONCURRENCY_YAML
    + RUN_MONITORING_YAML
)
# What homes made before per-dataset warehouse files have instead of CONCURRENCY_YAML.
LEGACY_RUN_QUEUE_YAML = """# One DuckDB file has one writer: runs the daemon launches (sensors, schedules) queue, one at a time.
run_queue:
  max_concurrent_runs: 1
"""
MARKED_BY = "the `mlplatform` command"


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The Dagster instance of `settings.dagster_home` (what `DagsterInstance.get()` opens for
    DAGSTER_HOME, without reading the environment). Dispose of it, or use it as a context manager."""
    return dg.DagsterInstance.from_config(str(settings.dagster_home))


def prepare_home(settings: Settings) -> list[str]:
    """Create the Dagster instance of the home (config and storage) and fail the runs of dead processes.

    Returns one line per run it marked failed (its process is gone), for the caller to report.
    """
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    write_instance_config(settings.dagster_home / "dagster.yaml")
    # Opening the instance creates (or migrates) its storage, once, in this process: a `dagster-daemon`
    # and a `dagster-webserver` started side by side on a fresh SQLite home would both create its
    # tables and one of them would die on the race (a duplicate `alembic_version` row).
    create_local_store(settings.mlflow_tracking_uri)  # the same race for MLflow's SQLite store
    with open_instance(settings) as instance:
        set_up_pools(instance, dataset_pools(settings))
        return fail_dead_runs(instance, MARKED_BY)


def dataset_pools(settings: Settings) -> set[str]:
    """The pools of the datasets the spec files define."""
    from mlplatform.specs.loader import SpecError, read_specs

    try:
        specs, _ = read_specs(settings.extra_spec_dirs)
    except SpecError:  # a spec folder that does not exist: the command that loads the specs says so
        return set()
    return {settings.warehouse_pool(spec.name) for spec in specs}


def set_up_pools(instance: dg.DagsterInstance, pools: set[str]) -> None:
    """Give each pool that has no limit yet the default limit of the instance (1 in the home's config).

    The run queue sets a pool's limit the first time it sees the pool, but only after it chose what to
    launch in that pass: the first runs of a new dataset queued together would all start at once
    (seen with Dagster 1.13: three runs of two datasets, all launched in one pass). A limit the owner
    set (`dagster instance concurrency set`) is kept.
    """
    storage = instance.event_log_storage
    if instance.global_op_concurrency_default_limit is None or not storage.supports_global_concurrency_limits:
        return
    existing = {limit.name for limit in storage.get_pool_limits()}
    for pool in sorted(pools - existing):
        storage.initialize_concurrency_limit_to_default(pool)


def write_instance_config(config: Path) -> None:
    """Write dagster.yaml on first use; a home made by an older version gets what it lacks: run
    monitoring, and the pools in place of its global limit of one run (`upgraded_concurrency`)."""
    if not config.exists():
        config.write_text(DAGSTER_YAML)
        return
    text = config.read_text()
    upgraded = upgraded_concurrency(text)
    if "run_monitoring" not in (yaml.safe_load(upgraded) or {}):
        upgraded = upgraded.rstrip("\n") + "\n" + RUN_MONITORING_YAML
    if upgraded != text:
        config.write_text(upgraded)


def upgraded_concurrency(text: str) -> str:
    """dagster.yaml `text` with the pools of CONCURRENCY_YAML in place of the `run_queue` block older
    versions wrote (added when the file sets no run limits at all); a file whose run queue or
    coordinator its owner configured is theirs and stays as it is."""
    added = "# Added by mlplatform (datasets run side by side, each one's runs one at a time).\n"
    if LEGACY_RUN_QUEUE_YAML in text:
        return text.replace(LEGACY_RUN_QUEUE_YAML, added + CONCURRENCY_YAML)
    config = yaml.safe_load(text) or {}
    if any(key in config for key in ("concurrency", "run_queue", "run_coordinator")):
        return text
    return text.rstrip("\n") + "\n" + added + CONCURRENCY_YAML
