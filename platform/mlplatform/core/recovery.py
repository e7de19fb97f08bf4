"""Which runs were left behind by a process that no longer exists (pure: knows no Dagster, no MLflow).

A run records the process that executes it (its owner) as tags: the host (hostname and PID namespace),
the pid and the process's start time. A later command or sensor tick probes that pid on the same host:
no such process, or a process that started at another time (the pid was reused), means the owner is
gone, e.g. SIGKILLed, and nobody will ever finish the run. Owners on other hosts are never judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OWNER_HOST = "owner_host"
OWNER_PID = "owner_pid"
OWNER_STARTED_AT = "owner_started_at"
# Clock ticks and the kernel's boot time are read with whole-second precision; a reused pid belongs to a
# process started after the owner died, which for a run is always seconds later.
START_TOLERANCE_SECONDS = 2.0


@dataclass(frozen=True)
class OwnerProcess:
    host: str
    pid: int
    started_at: float | None = None  # exact start (epoch s), when the owner recorded itself
    started_by: float | None = None  # latest possible start, e.g. the time of an event the owner logged

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class ProcessProbe:
    """What the host says about a pid now: alive (not a zombie) and, where known, its start time."""

    alive: bool
    started_at: float | None = None


def owner_tags(owner: OwnerProcess, prefix: str) -> dict[str, str]:
    tags = {f"{prefix}{OWNER_HOST}": owner.host, f"{prefix}{OWNER_PID}": str(owner.pid)}
    if owner.started_at is not None:
        tags[f"{prefix}{OWNER_STARTED_AT}"] = f"{owner.started_at:.2f}"
    return tags


def owner_from_tags(tags: Mapping[str, str], prefix: str) -> OwnerProcess | None:
    """The owner recorded in `tags`, or None if there is none (or it is garbled: then we never judge)."""
    host, pid = tags.get(f"{prefix}{OWNER_HOST}"), tags.get(f"{prefix}{OWNER_PID}")
    started = tags.get(f"{prefix}{OWNER_STARTED_AT}")
    try:
        return OwnerProcess(host, int(pid), float(started) if started else None) if host and pid else None
    except ValueError:
        return None


def owner_is_gone(owner: OwnerProcess, this_host: str, probe: ProcessProbe) -> bool:
    """True only when certain: same host, and the pid is free or now names a process started later."""
    if owner.host != this_host:
        return False
    if not probe.alive:
        return True
    if probe.started_at is None:
        return False  # a live pid whose start time the system does not tell: assume it is the owner
    if owner.started_at is not None and abs(probe.started_at - owner.started_at) > START_TOLERANCE_SECONDS:
        return True
    return owner.started_by is not None and probe.started_at > owner.started_by + START_TOLERANCE_SECONDS


def gone_message(owner: OwnerProcess, marked_by: str) -> str:
    return (
        f"The process that executed this run ({owner.describe()}) no longer exists (killed or crashed); "
        f"marked as ended by {marked_by} so that it blocks nothing (queued runs, the run slot)."
    )
