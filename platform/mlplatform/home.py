"""The platform home on disk: its Dagster instance config and storage, made ready before any run.

Nothing here reads or writes environment variables: the locations come from the `Settings` passed in.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

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
DAGSTER_YAML = (
    """# Written by mlplatform on first use. The Dagster instance of this platform home.
telemetry:
  enabled: false
# One DuckDB file has one writer: runs the daemon launches (sensors, schedules) queue, one at a time.
run_queue:
  max_concurrent_runs: 1
"""
    + RUN_MONITORING_YAML
)
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
    with open_instance(settings) as instance:
        return fail_dead_runs(instance, MARKED_BY)


def write_instance_config(config: Path) -> None:
    """Write dagster.yaml on first use; a home made by an older version gets run monitoring appended."""
    if not config.exists():
        config.write_text(DAGSTER_YAML)
        return
    text = config.read_text()
    if "run_monitoring" not in (yaml.safe_load(text) or {}):
        config.write_text(text.rstrip("\n") + "\n" + RUN_MONITORING_YAML)
