"""Starting and stopping real Dagster processes in tests (127.0.0.1 only, free ports, always stopped)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(command: Sequence[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group; on exit stop the whole group (dev servers fork)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def failure_messages(instance: Any, run_id: str) -> str:
    """A failed run's status, the error of every failed step and of the run, and its last events."""
    run = instance.get_run_by_id(run_id)
    lines = [f"run {run_id}: {run.status.value if run else 'not found'}"]
    records = instance.all_logs(run_id)
    for record in records:
        event = record.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if error is not None:
            lines.append(f"{event.event_type_value} {event.step_key or ''}: {error.to_string()}")
    lines += [
        f"  {r.dagster_event_type or ''} {r.step_key or ''} {r.user_message[:300]}" for r in records[-12:]
    ]
    return "\n".join(lines)


def poll(
    what: str, condition: Callable[[], T], timeout: float, check: Callable[[], None], every: float = 1.0
) -> T:
    """`condition()` once it is truthy, polled every `every` s; `check` raises early if something already
    went wrong; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def graphql(
    port: int, query: str, variables: dict[str, Any] | None = None, timeout: float = 10
) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_asset_keys(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> list[str]:
    """Poll the webserver until its code location has loaded assets; returns their keys."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
            if nodes:
                return sorted("/".join(n["assetKey"]["path"]) for n in nodes)
        except (urllib.error.URLError, ConnectionError, KeyError, TypeError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"no assets after {timeout} s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            if state != "Z":
                parents[int(entry.name)] = int(ppid)
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def is_running(pid: int) -> bool:
    """`pid` exists and is not a zombie (an exited process nobody has reaped yet is gone for us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def http_post_json(url: str, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
