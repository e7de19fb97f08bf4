"""Child processes in process groups of their own, stopped so that none of their processes is left.

Each child is started in a new session (its own process group), so a stop reaches what it forked
(Dagster's code servers and run workers, uvicorn's workers): SIGTERM to every group, then SIGKILL to
the groups still there after a grace period. On Linux the supervisor is the subreaper of its
descendants: a process whose parent is gone is handed to it (not to init, which in a container may
never reap it), so it is reaped, and one that left its group (a new session) is still found and
stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Started:
    name: str
    process: subprocess.Popen
    tier: int  # stopped in decreasing tiers: what depends on another tier stops first


# Loaded before any fork: the child only calls into it between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _prctl(option: int, value: int) -> bool:
    return _LIBC is not None and _LIBC.prctl(option, value, 0, 0, 0) == 0


def set_subreaper(on: bool) -> bool:
    """Orphaned descendants are re-parented to this process (Linux) while on; False if not supported."""
    return _prctl(PR_SET_CHILD_SUBREAPER, int(on))


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc (empty without procfs)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except FileNotFoundError:
        return []
    for entry in filter(str.isdigit, entries):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # the name, in parentheses, may hold spaces
        if int(ppid) == pid and state != "Z":
            found.append(int(entry))
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_is_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Supervisor:
    """Starts children and stops all of them (and whatever they started) on `stop()`.

    Use it as a context manager: this process is the subreaper of its descendants inside the block,
    and reaps every exited child that it did not start, so nothing else in the process may start any.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        grace_seconds: float,
        kill_wait_seconds: float,
        report: Callable[[str], None] = print,
    ) -> None:
        self.env = dict(env)
        self.grace_seconds = grace_seconds
        self.kill_wait_seconds = kill_wait_seconds
        self.report = report
        self.started: list[Started] = []
        self.subreaper = False

    def __enter__(self) -> Supervisor:
        self.subreaper = set_subreaper(True)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.subreaper:
            set_subreaper(False)
            self.subreaper = False

    def start(
        self, name: str, command: Sequence[str], tier: int, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """Start `command` in a new session (with `extra_env` added to the environment); its output goes
        to this process's stderr."""
        process = subprocess.Popen(
            list(command),
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=2,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,  # no other thread of `up` forks meanwhile
        )
        self.started.append(Started(name, process, tier))
        return process

    def first_exited(self) -> Started | None:
        """The first child that has exited, if any (orphans handed to us are reaped on the way)."""
        exited = next((child for child in self.started if child.process.poll() is not None), None)
        self.reap_orphans()
        return exited

    def reap_orphans(self) -> None:
        """Reap exited processes re-parented to us; never a child we started (Popen reaps those)."""
        leaders = {child.process.pid for child in self.started}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in leaders:
                return
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return

    def stop(self) -> bool:
        """Stop every child, highest tier first, then any stray descendant; True if all are gone."""
        stopped = True
        for tier in sorted({child.tier for child in self.started}, reverse=True):
            stopped &= self._stop_groups([child for child in self.started if child.tier == tier])
        return self._stop_strays() and stopped

    def _is_gone(self, child: Started) -> bool:
        self.reap_orphans()
        return child.process.poll() is not None and _group_is_empty(child.process.pid)

    def _wait_until_gone(self, children: Sequence[Started], seconds: float) -> list[Started]:
        deadline = time.monotonic() + seconds
        left = [child for child in children if not self._is_gone(child)]
        while left and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            left = [child for child in left if not self._is_gone(child)]
        return left

    def _stop_groups(self, children: Sequence[Started]) -> bool:
        for child in children:
            _signal_group(child.process.pid, signal.SIGTERM)
        stubborn = self._wait_until_gone(children, self.grace_seconds)
        for child in stubborn:
            self.report(f"mlplatform up: {child.name} did not stop within {self.grace_seconds:.0f} s: killed")
            _signal_group(child.process.pid, signal.SIGKILL)
        left = self._wait_until_gone(stubborn, self.kill_wait_seconds)
        for child in left:
            self.report(f"mlplatform up: error: processes of {child.name} (group {child.process.pid}) remain")
        return not left

    def _stop_strays(self) -> bool:
        """Descendants that left their group, handed to us when their parents exited: stopped too."""
        if not self.subreaper:
            return True
        own_group = os.getpgrp()
        for sig, wait in ((signal.SIGTERM, self.grace_seconds), (signal.SIGKILL, self.kill_wait_seconds)):
            strays = children_of(os.getpid())
            if not strays:
                return True
            for pid in strays:
                try:
                    group = os.getpgid(pid)
                    os.kill(pid, sig)
                    if group != own_group:
                        _signal_group(group, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + wait
            while children_of(os.getpid()) and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
                self.reap_orphans()
        self.reap_orphans()
        left = children_of(os.getpid())
        if left:
            self.report(f"mlplatform up: error: processes {left} did not stop")
        return not left


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port, or None if it can (bound and released at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot listen on {host}:{port}: {error.strerror}"
    return None


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
