"""Ending runs whose process is gone: Dagster runs become FAILURE, MLflow runs KILLED.

Who calls it: every `mlplatform` command that prepares the home (cli.prepare_home; MLflow runs once the
tracking server answered, in `mlplatform run`) and the `mlplatform__recovery` sensor on each daemon tick.

Dagster's run monitoring (on in the dagster.yaml we write) cannot see these runs: the DefaultRunLauncher
has no worker health check (it only times out runs stuck STARTING or CANCELING), and `mlplatform run`
executes its runs in its own process, which no launcher knows. So each run records its owner process
(core/recovery.py): `mlplatform run` tags the runs it starts, a run worker the daemon launched tags its
run when the MLflow resource is set up (every platform job uses it), and every MLflow run the platform
opens carries the same tags.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from mlplatform.core.recovery import (
    OwnerProcess,
    ProcessProbe,
    gone_message,
    owner_from_tags,
    owner_is_gone,
    owner_tags,
)

RUN_OWNER_PREFIX = "mlplatform/"  # Dagster run tags: mlplatform/owner_host, ...
MLFLOW_OWNER_PREFIX = "mlplatform."  # MLflow run tags: mlplatform.owner_host, ...
IN_PROGRESS = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def this_host() -> str:
    """Hostname plus PID namespace: two containers may share a hostname, never a namespace and pids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()


@functools.cache
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def probe_process(pid: int) -> ProcessProbe:
    """Is `pid` a live process (zombies count as dead), and since when? From /proc where there is one."""
    if not Path("/proc/self/stat").exists():  # no procfs (e.g. macOS): liveness only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ProcessProbe(alive=False)
        except PermissionError:
            pass
        return ProcessProbe(alive=True)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ProcessProbe(alive=False)
    fields = stat.rsplit(")", 1)[1].split()  # after "(command)": field 3 (state) onwards
    if fields[0] in ("Z", "X"):
        return ProcessProbe(alive=False)
    boot = _boot_time()
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") if boot is not None else None
    return ProcessProbe(alive=True, started_at=started)


def current_owner() -> OwnerProcess:
    pid = os.getpid()
    return OwnerProcess(this_host(), pid, probe_process(pid).started_at)


def run_owner_tags() -> dict[str, str]:
    """Tags that name this process as the owner of a Dagster run."""
    return owner_tags(current_owner(), RUN_OWNER_PREFIX)


def mlflow_owner_tags() -> dict[str, str]:
    return owner_tags(current_owner(), MLFLOW_OWNER_PREFIX)


def _is_gone(owner: OwnerProcess | None, host: str) -> bool:
    return owner is not None and owner_is_gone(owner, host, probe_process(owner.pid))


def fail_dead_runs(instance: dg.DagsterInstance, marked_by: str) -> list[str]:
    """Mark in-progress runs whose owner process is gone FAILURE (CANCELING ones CANCELED)."""
    host = this_host()
    ended = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        owner = owner_from_tags(run.tags, RUN_OWNER_PREFIX)
        if owner is None or not _is_gone(owner, host):
            continue
        message = gone_message(owner, marked_by)
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message)
        else:
            instance.report_run_failed(run, message)
        ended.append(f"{run.job_name} run {run.run_id} ({owner.describe()})")
    return ended


def local_store_missing(tracking_uri: str) -> bool:
    """A SQLite or file store that does not exist yet holds no runs (and must not be created here)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        return not Path(path[1:] if path.startswith("//") else path).exists()
    if parsed.scheme in ("", "file"):
        return not Path(unquote(parsed.path) or tracking_uri).exists()
    return False


def kill_dead_mlflow_runs(client: MlflowClient, marked_by: str) -> list[str]:
    """End RUNNING MLflow runs of this host whose owner process is gone as KILLED."""
    host = this_host()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    quoted = host.replace("'", "\\'")
    runs = client.search_runs(
        experiments,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{MLFLOW_OWNER_PREFIX}owner_host` = '{quoted}'",
        max_results=1000,
    )
    ended = []
    for run in runs:
        owner = owner_from_tags(run.data.tags, MLFLOW_OWNER_PREFIX)
        if owner is None or not _is_gone(owner, host):
            continue
        client.set_tag(
            run.info.run_id, f"{MLFLOW_OWNER_PREFIX}ended_by", gone_message(owner, marked_by)[:5000]
        )
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        ended.append(f"MLflow run {run.info.run_id} ({run.info.run_name}, {owner.describe()})")
    return ended
