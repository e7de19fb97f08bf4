"""Ending runs whose process is gone: Dagster runs become FAILURE, MLflow runs KILLED.

Who calls it: every `mlplatform` command that prepares the home (home.prepare_home; MLflow runs once the
tracking server answered, in `mlplatform run`) and the `mlplatform__recovery` sensor on each daemon tick.

Dagster's run monitoring (on in the dagster.yaml we write) cannot see these runs: the DefaultRunLauncher
has no worker health check (it only times out runs stuck STARTING or CANCELING), and `mlplatform run`
executes its runs in its own process, which no launcher knows. So each run records its owner process
(core/recovery.py): `mlplatform run` tags the runs it starts, the process executing a run (re)writes
them when the MLflow resource is set up (every platform job uses it; a re-executed or retried run arrives
with its parent's tags, which name the parent's run id and so are never judged), and every MLflow run
the platform opens carries the same tags.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING
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

if TYPE_CHECKING:  # for the annotation only: the resource imports this module for the owner tags
    from mlplatform.resources.mlflow import MlflowResource

RUN_OWNER_PREFIX = "mlplatform/"  # Dagster run tags: mlplatform/owner_host, ...
MLFLOW_OWNER_PREFIX = "mlplatform."  # MLflow run tags: mlplatform.owner_host, ...
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
IN_PROGRESS = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def this_host() -> str | None:
    """Hostname, PID and time namespaces and boot id; None (unknown: nothing is judged) if not readable.

    Bare-metal machines all share the initial PID namespace and may share a hostname: the boot id tells
    them apart. The time namespace is there because it shifts the start ticks a process reads in /proc.
    """
    try:
        boot_id = BOOT_ID.read_text().strip()
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    try:
        time_namespace = os.readlink("/proc/self/ns/time")
    except OSError:  # kernels before 5.6 have no time namespaces: every process reads the same ticks
        time_namespace = ""
    return " ".join(part for part in (socket.gethostname(), pid_namespace, time_namespace, boot_id) if part)


def probe_process(pid: int) -> ProcessProbe:
    """Is `pid` a live process (zombies count as dead), and since which clock tick after boot (field 22
    of /proc/<pid>/stat)? Without procfs there is no host identity either, so nothing is judged."""
    if not Path("/proc/self/stat").exists():
        return ProcessProbe(alive=True)  # cannot tell: assume the owner lives
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ProcessProbe(alive=False)
    fields = stat.rsplit(")", 1)[1].split()  # after "(command)": field 3 (state) onwards
    if fields[0] in ("Z", "X"):
        return ProcessProbe(alive=False)
    return ProcessProbe(alive=True, start_ticks=int(fields[19]))


def current_owner() -> OwnerProcess | None:
    """This process as an owner, or None on a host without an identity (its runs are never judged)."""
    host, pid = this_host(), os.getpid()
    return OwnerProcess(host, pid, probe_process(pid).start_ticks) if host is not None else None


def run_owner_tags(run_id: str) -> dict[str, str]:
    """Tags that name this process as the owner of Dagster run `run_id` (none on an unknown host)."""
    owner = current_owner()
    return owner_tags(owner, RUN_OWNER_PREFIX, run_id) if owner is not None else {}


def mlflow_owner_tags() -> dict[str, str]:
    owner = current_owner()
    return owner_tags(owner, MLFLOW_OWNER_PREFIX) if owner is not None else {}


def _is_gone(owner: OwnerProcess | None, host: str | None) -> bool:
    return owner is not None and owner_is_gone(owner, host, probe_process(owner.pid))


def fail_dead_runs(instance: dg.DagsterInstance, marked_by: str) -> list[str]:
    """Mark in-progress runs whose owner process is gone FAILURE (CANCELING ones CANCELED)."""
    host = this_host()
    if host is None:
        return []
    ended = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        # Tags copied from a parent run (re-execution, retry) name another run: its owner is not ours.
        owner = owner_from_tags(run.tags, RUN_OWNER_PREFIX, run.run_id)
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


def existing_mlflow_client(resource: MlflowResource) -> MlflowClient | None:
    """The client of the resource's store, or None while a local store does not exist yet (nothing to end)."""
    return None if local_store_missing(resource.tracking_uri) else resource.client()


def kill_dead_mlflow_runs(client: MlflowClient, marked_by: str) -> list[str]:
    """End RUNNING MLflow runs of this host whose owner process is gone as KILLED."""
    host = this_host()
    if host is None:
        return []
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
