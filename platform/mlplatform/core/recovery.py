"""Which runs were left behind by a process that no longer exists (pure: knows no Dagster, no MLflow).

A run records the process that executes it (its owner) as tags: the host (hostname, PID and time
namespaces, boot id), the pid, the process's start in clock ticks since boot and, for a Dagster run, the
run's id. A later command or sensor tick probes that pid on the same host: no such process, or a process
that started at another tick (the pid was reused), means the owner is gone, e.g. SIGKILLed, and nobody
will ever finish the run. Owners on other or unknown hosts are never judged, and neither are tags that
name another run: a re-executed or retried run inherits its parent's tags, hence its dead owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OWNER_HOST = "owner_host"
OWNER_PID = "owner_pid"
OWNER_START_TICKS = "owner_start_ticks"
OWNER_RUN_ID = "owner_run_id"


@dataclass(frozen=True)
class OwnerProcess:
    host: str
    pid: int
    start_ticks: int | None = None  # the process's start in clock ticks since boot, as the kernel tells

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class ProcessProbe:
    """What the host says about a pid now: alive (not a zombie) and, where known, its start tick."""

    alive: bool
    start_ticks: int | None = None


def owner_tags(owner: OwnerProcess, prefix: str, run_id: str | None = None) -> dict[str, str]:
    """Tags naming `owner`; with `run_id`, only valid on that run (a copy on another run is ignored)."""
    tags = {f"{prefix}{OWNER_HOST}": owner.host, f"{prefix}{OWNER_PID}": str(owner.pid)}
    if owner.start_ticks is not None:
        tags[f"{prefix}{OWNER_START_TICKS}"] = str(owner.start_ticks)
    if run_id is not None:
        tags[f"{prefix}{OWNER_RUN_ID}"] = run_id
    return tags


def owner_from_tags(tags: Mapping[str, str], prefix: str, run_id: str | None = None) -> OwnerProcess | None:
    """The owner recorded in `tags`, or None if unknown: none, garbled, or (with `run_id`) recorded for
    another run. None is never judged."""
    if run_id is not None and tags.get(f"{prefix}{OWNER_RUN_ID}") != run_id:
        return None
    host, pid = tags.get(f"{prefix}{OWNER_HOST}"), tags.get(f"{prefix}{OWNER_PID}")
    ticks = tags.get(f"{prefix}{OWNER_START_TICKS}")
    try:
        return OwnerProcess(host, int(pid), int(ticks) if ticks else None) if host and pid else None
    except ValueError:
        return None


def owner_is_gone(owner: OwnerProcess, this_host: str | None, probe: ProcessProbe) -> bool:
    """True only when certain: same known host, and the pid is free or names a process started at
    another tick (ticks since boot are exact and unmoved by wall-clock steps)."""
    if this_host is None or owner.host != this_host:
        return False
    if not probe.alive:
        return True
    return None not in (owner.start_ticks, probe.start_ticks) and probe.start_ticks != owner.start_ticks


def gone_message(owner: OwnerProcess, marked_by: str) -> str:
    return (
        f"The process that executed this run ({owner.describe()}) no longer exists (killed or crashed); "
        f"marked as ended by {marked_by} so that it blocks nothing (queued runs, the run slot)."
    )
