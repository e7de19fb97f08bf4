"""`mlplatform up`: the whole stack of one machine (MLflow server, Dagster daemon and webserver).

Pure helpers build the command lines and the children's environment from the Settings; the
processes are supervised by mlplatform.supervisor (process groups, SIGTERM then SIGKILL, no orphan).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from mlplatform.errors import UserError
from mlplatform.settings import (
    HOME_ENV,
    MLFLOW_PORT_ENV,
    Settings,
)
from mlplatform.stack_plan import (
    DAGSTER_PORT,
    DAGSTER_PORT_ENV,
    MLFLOW_PORT,
    Child,
    StackPlan,
    UpOptions,
    check_ports,
    effective_options,
    plan_stack,
)
from mlplatform.supervisor import Supervisor, answers

STARTUP_TIMEOUT_SECONDS = 300.0
STOP_GRACE_SECONDS = 15.0  # after SIGTERM, before SIGKILL
KILL_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.25
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal was closed
# The repository's workspace.yaml, written into the home so that `up` works from any folder and the
# code location keeps the name `dagster dev` gives it (sensor states are stored under that name).
WORKSPACE_YAML = """# Written by `mlplatform up`: the platform's code location, as in the repository's workspace.yaml.
load_from:
  - python_module:
      module_name: mlplatform.definitions
      location_name: mlplatform
"""


def _wait_until_ready(
    supervisor: Supervisor, children: Sequence[Child], stop: threading.Event, timeout: float
) -> str | None:
    """None once every child with a ready URL answers; else why not (a child exited, a timeout).
    Returns None at once if a stop is requested meanwhile (the caller checks `stop`)."""
    waiting = [child for child in children if child.ready_url]
    deadline = time.monotonic() + timeout
    while waiting and not stop.is_set():
        exited = supervisor.first_exited()
        if exited is not None:
            return f"{exited.name} exited with code {exited.process.returncode} while starting"
        waiting = [child for child in waiting if not answers(str(child.ready_url))]
        if waiting and time.monotonic() > deadline:
            return f"{waiting[0].name} did not answer at {waiting[0].ready_url} within {timeout:.0f} s"
        if waiting:
            stop.wait(1.0)
    return None


def _end_dead_mlflow_runs(tracking_url: str, report: Callable[[str], None]) -> None:
    """MLflow runs a killed process left RUNNING are ended as KILLED, as `mlplatform run` does."""
    from mlflow import MlflowClient

    from mlplatform.home import MARKED_BY
    from mlplatform.recovery import kill_dead_mlflow_runs

    try:
        ended = kill_dead_mlflow_runs(MlflowClient(tracking_uri=tracking_url), MARKED_BY)
    except Exception as error:  # the stack still serves; the next `mlplatform run` tries again
        report(f"mlplatform up: warning: could not end dead MLflow runs at {tracking_url}: {error}")
        return
    for line in ended:
        report(f"mlplatform up: ended {line} as KILLED: its process is gone")


def _start_tiers(
    plan: StackPlan, supervisor: Supervisor, stop: threading.Event, report: Callable[[str], None]
) -> str | None:
    """Start the tiers in order, each once the one before answers; None when all answer (or on a
    stop request), else what went wrong."""
    for tier in sorted({child.tier for child in plan.children}):
        children = [child for child in plan.children if child.tier == tier]
        for child in children:
            from_env = "".join(f" (and ${name}, which holds a password)" for name, _ in child.secret_env)
            report(f"mlplatform up: starting {child.name}: {shlex.join(child.command)}{from_env}")
            try:
                supervisor.start(child.name, child.command, tier, dict(child.secret_env))
            except OSError as error:  # e.g. the program is not installed
                return f"cannot start {child.name}: {error}"
        problem = _wait_until_ready(supervisor, children, stop, STARTUP_TIMEOUT_SECONDS)
        if problem or stop.is_set():
            return problem
    return None


def _start_and_watch(
    plan: StackPlan,
    supervisor: Supervisor,
    stop: threading.Event,
    report: Callable[[str], None],
    on_ready: Callable[[], None],
) -> int:
    """Start everything, print the URLs, then watch until a stop (0) or a child exits on its own (1)."""
    problem = _start_tiers(plan, supervisor, stop, report)
    if problem:
        report(f"mlplatform up: error: {problem}; stopping the others")
        return 1
    if stop.is_set():
        return 0
    on_ready()
    report(f"Dagster UI: {plan.dagster_url}")
    started = "" if plan.mlflow_started else " (not started by mlplatform up)"
    report(f"MLflow UI:  {plan.mlflow_url}{started}")
    report("mlplatform up: running; stop with Ctrl-C or SIGTERM")
    while not stop.wait(_POLL_SECONDS):
        exited = supervisor.first_exited()
        if exited is not None:
            code = exited.process.returncode
            report(
                f"mlplatform up: error: {exited.name} exited on its own (code {code}); stopping the others"
            )
            return 1
    return 0


def run_stack(
    plan: StackPlan,
    report: Callable[[str], None],
    on_ready: Callable[[], None] = lambda: None,
    grace_seconds: float = STOP_GRACE_SECONDS,
) -> int:
    """Run the plan's children until a signal (exit 0 once all stopped) or a failure (exit 1).
    `on_ready` runs once every child answers, before the URLs are printed."""
    stop = threading.Event()
    received: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    # A second Ctrl-C during the stop changes nothing: the handlers stay until every child is gone.
    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        with Supervisor(plan.env, grace_seconds, KILL_WAIT_SECONDS, report) as supervisor:
            try:
                code = _start_and_watch(plan, supervisor, stop, report, on_ready)
                if received:
                    report(f"mlplatform up: {received[0]} received: stopping")
            finally:
                all_stopped = supervisor.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    report("mlplatform up: stopped" if all_stopped else "mlplatform up: error: not every process stopped")
    return code if all_stopped else 1


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    options = UpOptions(
        host=args.host,
        dagster_port=args.dagster_port,
        mlflow_port=args.mlflow_port,
        mlflow_workers=args.mlflow_workers,
        workspace=Path(args.workspace).expanduser().resolve() if args.workspace else None,
    )
    options = effective_options(settings, options)
    plan = plan_stack(settings, os.environ, options)
    problems = check_ports(options, plan.mlflow_started)
    if problems:
        raise UserError("; ".join(problems))
    if options.workspace is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        (settings.home / "workspace.yaml").write_text(WORKSPACE_YAML)
    elif not options.workspace.is_file():
        raise UserError(f"workspace file {options.workspace} does not exist")
    from mlplatform.home import prepare_home  # after the checks: Dagster takes seconds to import

    # Once, before the daemon and the webserver start side by side (see home.prepare_home).
    for line in prepare_home(settings):
        print(f"mlplatform: marked {line} as failed: its process is gone", file=sys.stderr)
    report = partial(print, flush=True)
    return run_stack(plan, report, on_ready=partial(_end_dead_mlflow_runs, plan.mlflow_url, report))


def add_up_command(sub: argparse._SubParsersAction) -> None:
    """The `up` subcommand: MLflow server, Dagster daemon and webserver until Ctrl-C or SIGTERM."""
    parser = sub.add_parser(
        "up",
        help="start the Dagster webserver and daemon and an MLflow tracking server, until Ctrl-C",
        description=(
            "Start the whole stack of one machine: an MLflow tracking server over the platform's store "
            "(unless $MLFLOW_TRACKING_URI already names a server; with $MLPLATFORM_MLFLOW_BACKEND_STORE_URI "
            "set too, `up` serves that URL itself on its port), then dagster-daemon and "
            "dagster-webserver talking to it over HTTP. Prints the URLs; Ctrl-C or SIGTERM stops all "
            "of them. Exits non-zero if one of them exits on its own."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface the servers bind to (127.0.0.1)")
    # Defaults from the environment too: a deployment's env file (or a test) sets them for a bare `up`.
    dagster_port = int(os.environ.get(DAGSTER_PORT_ENV) or DAGSTER_PORT)
    mlflow_port = int(os.environ.get(MLFLOW_PORT_ENV) or MLFLOW_PORT)
    parser.add_argument(
        "--dagster-port",
        type=int,
        default=dagster_port,
        help=f"Dagster UI port (${DAGSTER_PORT_ENV} or 3000)",
    )
    parser.add_argument(
        "--mlflow-port",
        type=int,
        default=mlflow_port,
        help=f"MLflow server port (${MLFLOW_PORT_ENV} or 5000)",
    )
    parser.add_argument(
        "--mlflow-workers", type=int, help="MLflow server worker processes (1 on SQLite, else 4)"
    )
    parser.add_argument(
        "--workspace",
        metavar="FILE",
        help="a Dagster workspace.yaml to serve (default: the platform's code location, mlplatform)",
    )
    parser.add_argument("--home", help=f"platform home (default: ${HOME_ENV} or ./.mlplatform)")
    parser.set_defaults(func=cmd_up)
