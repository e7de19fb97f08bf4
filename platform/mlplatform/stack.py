"""`mlplatform up`: the whole stack of one machine (MLflow server, Dagster daemon and webserver).

Pure helpers build the command lines and the children's environment from the Settings; the
processes are supervised by mlplatform.supervisor (process groups, SIGTERM then SIGKILL, no orphan).
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mlplatform.errors import UserError
from mlplatform.settings import (
    DAGSTER_URL_ENV,
    HOME_ENV,
    MLFLOW_ARTIFACTS_ENV,
    MLFLOW_REGISTRY_ENV,
    MLFLOW_TRACKING_ENV,
    Settings,
)
from mlplatform.supervisor import Supervisor

DAGSTER_PORT = 3000
MLFLOW_PORT = 5000
STARTUP_TIMEOUT_SECONDS = 300.0
STOP_GRACE_SECONDS = 15.0  # after SIGTERM, before SIGKILL
KILL_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.25
MLFLOW_JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal was closed
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
# The repository's workspace.yaml, written into the home so that `up` works from any folder and the
# code location keeps the name `dagster dev` gives it (sensor states are stored under that name).
WORKSPACE_YAML = """# Written by `mlplatform up`: the platform's code location, as in the repository's workspace.yaml.
load_from:
  - python_module:
      module_name: mlplatform.definitions
      location_name: mlplatform
"""


@dataclass(frozen=True)
class Child:
    name: str  # as the messages name it, e.g. "the MLflow server"
    command: tuple[str, ...]
    ready_url: str | None  # answers HTTP 200 once the child serves; None: running is enough
    tier: int  # started in increasing tiers (MLflow before Dagster), stopped in decreasing ones


@dataclass(frozen=True)
class StackPlan:
    children: tuple[Child, ...]
    env: dict[str, str]
    dagster_url: str
    mlflow_url: str
    mlflow_started: bool  # False: an existing tracking server ($MLFLOW_TRACKING_URI) is used


@dataclass(frozen=True)
class UpOptions:
    host: str = "127.0.0.1"
    dagster_port: int = DAGSTER_PORT
    mlflow_port: int = MLFLOW_PORT
    mlflow_workers: int | None = None  # None: 1 on a SQLite store (one writer), else MLflow's 4
    workspace: Path | None = None  # None: the platform's code location (WORKSPACE_YAML in the home)


def is_http(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(("http://", "https://"))


def url_host(host: str) -> str:
    """The host part of a URL reaching a server bound to `host` (a wildcard is reached on loopback)."""
    host = _WILDCARD_HOSTS.get(host, host)
    return f"[{host}]" if ":" in host else host


def mlflow_server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    registry_store_uri: str | None = None,
    workers: int | None = None,
) -> tuple[str, ...]:
    """`mlflow server` over the store, serving the artifacts (clients upload and download through it)."""
    command = ["mlflow", "server", "--backend-store-uri", backend_store_uri]
    if registry_store_uri:
        command += ["--registry-store-uri", registry_store_uri]
    command += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    command += ["--host", host, "--port", str(port)]
    if workers is None and backend_store_uri.startswith("sqlite:"):
        workers = 1  # SQLite has one writer: more workers only wait on its lock
    if workers is not None:
        command += ["--workers", str(workers)]
    return tuple(command)


def dagster_commands(workspace: Path, host: str, port: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The webserver's and the daemon's command lines over one workspace file."""
    webserver = ("dagster-webserver", "-w", str(workspace), "-h", host, "-p", str(port))
    daemon = ("dagster-daemon", "run", "-w", str(workspace))
    return webserver, daemon


def mlflow_server_stores(settings: Settings) -> tuple[str, str, str | None]:
    """(backend store, artifacts destination, registry store) of the MLflow server `up` starts.

    The backend is $MLPLATFORM_MLFLOW_BACKEND_STORE_URI (e.g. postgresql://...) or else the store the
    platform would use directly ($MLFLOW_TRACKING_URI, default the home's SQLite file). A registry kept
    in another store ($MLFLOW_REGISTRY_URI, not http) is served by the same server.
    """
    backend = settings.mlflow_server_backend_store_uri or settings.mlflow_tracking_uri
    artifacts = settings.mlflow_server_artifacts_destination or str(settings.home / "mlartifacts")
    registry = settings.mlflow_registry_uri
    return backend, artifacts, None if is_http(registry) else registry


def served_artifact_location(settings: Settings) -> str | None:
    """The artifact location of the experiments the children create.

    Serving the platform's own store (the one `mlplatform run` opens directly), new experiments keep the
    home's folder (file://): an experiment first made under `up` must work without it, and an
    mlflow-artifacts:/ location resolves only through an HTTP tracking server. Serving another store
    ($MLPLATFORM_MLFLOW_BACKEND_STORE_URI) or using an existing server, the server's served artifacts
    (None), unless $MLPLATFORM_MLFLOW_ARTIFACTS says otherwise.
    """
    own_store = not is_http(settings.mlflow_tracking_uri) and settings.mlflow_server_backend_store_uri in (
        None,
        settings.mlflow_tracking_uri,
    )
    return settings.mlflow_artifact_location if own_store else None


def child_environment(
    environ: Mapping[str, str], settings: Settings, tracking_url: str, dagster_url: str
) -> dict[str, str]:
    """The environment of every child: the user's, with the home's locations made explicit (so a
    `--home` reaches them), MLflow reached only over HTTP at `tracking_url` and alerts linking to
    this Dagster UI unless set."""
    env = dict(environ)
    env[HOME_ENV] = str(settings.home)
    env["DAGSTER_HOME"] = str(settings.dagster_home)
    env[MLFLOW_TRACKING_ENV] = tracking_url
    artifacts = served_artifact_location(settings)
    if artifacts:
        env[MLFLOW_ARTIFACTS_ENV] = artifacts
    env.setdefault(DAGSTER_URL_ENV, dagster_url)
    # MLflow's job runner (GenAI scorers and trace roll-ups: seven worker processes) is unused here.
    env.setdefault(MLFLOW_JOBS_ENV, "false")
    if not is_http(settings.mlflow_registry_uri):
        env.pop(MLFLOW_REGISTRY_ENV, None)  # the registry is served by the tracking server
    return env


def plan_stack(settings: Settings, environ: Mapping[str, str], options: UpOptions) -> StackPlan:
    """What `up` starts: an MLflow server unless $MLFLOW_TRACKING_URI is already one, then Dagster."""
    host = url_host(options.host)
    children: list[Child] = []
    external = is_http(settings.mlflow_tracking_uri)
    if external:
        mlflow_url = settings.mlflow_tracking_uri.rstrip("/")
    else:
        mlflow_url = f"http://{host}:{options.mlflow_port}"
        backend, artifacts, registry = mlflow_server_stores(settings)
        command = mlflow_server_command(
            backend, artifacts, options.host, options.mlflow_port, registry, options.mlflow_workers
        )
        children.append(Child("the MLflow server", command, f"{mlflow_url}/health", tier=0))
    workspace = options.workspace or settings.home / "workspace.yaml"
    webserver, daemon = dagster_commands(workspace, options.host, options.dagster_port)
    dagster_url = f"http://{host}:{options.dagster_port}"
    children.append(Child("the Dagster daemon", daemon, None, tier=1))
    children.append(Child("the Dagster webserver", webserver, f"{dagster_url}/server_info", tier=1))
    env = child_environment(environ, settings, mlflow_url, dagster_url)
    return StackPlan(tuple(children), env, dagster_url, mlflow_url, mlflow_started=not external)


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


def check_ports(options: UpOptions, mlflow_started: bool) -> list[str]:
    """One message per port `up` cannot use, naming the option that changes it."""
    wanted = [("--dagster-port", options.dagster_port)]
    if mlflow_started:
        wanted.append(("--mlflow-port", options.mlflow_port))
    if mlflow_started and options.dagster_port == options.mlflow_port:
        return [f"--dagster-port and --mlflow-port are both {options.dagster_port}"]
    problems = []
    for flag, port in wanted:
        problem = port_problem(options.host, port)
        if problem:
            problems.append(f"{problem} (another program listens there): choose another with {flag}")
    return problems


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


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
            report(f"mlplatform up: starting {child.name}: {shlex.join(child.command)}")
            try:
                supervisor.start(child.name, child.command, tier)
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
            "(unless $MLFLOW_TRACKING_URI already names a server), then dagster-daemon and "
            "dagster-webserver talking to it over HTTP. Prints the URLs; Ctrl-C or SIGTERM stops all "
            "of them. Exits non-zero if one of them exits on its own."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface the servers bind to (127.0.0.1)")
    parser.add_argument("--dagster-port", type=int, default=DAGSTER_PORT, help="Dagster UI port (3000)")
    parser.add_argument("--mlflow-port", type=int, default=MLFLOW_PORT, help="MLflow server port (5000)")
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
