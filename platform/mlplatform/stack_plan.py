"""What `mlplatform up` starts, as plain data: the children's command lines, their environment and the
ports they need, all from the Settings (mlplatform.stack runs them)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mlplatform.settings import (
    DAGSTER_URL_ENV,
    DEFAULT_MLFLOW_PORT,
    HOME_ENV,
    MLFLOW_ARTIFACTS_ENV,
    MLFLOW_REGISTRY_ENV,
    MLFLOW_TRACKING_ENV,
    Settings,
)
from mlplatform.supervisor import port_problem

DAGSTER_PORT = 3000
MLFLOW_PORT = DEFAULT_MLFLOW_PORT
DAGSTER_PORT_ENV = "MLPLATFORM_DAGSTER_PORT"
MLFLOW_JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class Child:
    name: str  # as the messages name it, e.g. "the MLflow server"
    command: tuple[str, ...]
    ready_url: str | None  # answers HTTP 200 once the child serves; None: running is enough
    tier: int  # started in increasing tiers (MLflow before Dagster), stopped in decreasing ones
    # Variables of this child only: store URIs that hold a password go here, not on its command line
    # (which `up` prints and `ps` shows to every user).
    secret_env: tuple[tuple[str, str], ...] = ()


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
    command = ["mlflow", "server"]
    for option, uri in (
        ("--backend-store-uri", backend_store_uri),
        ("--registry-store-uri", registry_store_uri),
    ):
        if uri and not has_password(uri):
            command += [option, uri]
    command += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    command += ["--host", host, "--port", str(port)]
    if workers is None and backend_store_uri.startswith("sqlite:"):
        workers = 1  # SQLite has one writer: more workers only wait on its lock
    if workers is not None:
        command += ["--workers", str(workers)]
    return tuple(command)


# mlflow server reads its stores from these when the options are absent (click's envvar).
STORE_URI_ENVS = {"backend": "MLFLOW_BACKEND_STORE_URI", "registry": "MLFLOW_REGISTRY_STORE_URI"}


def has_password(uri: str) -> bool:
    try:
        return urllib.parse.urlsplit(uri).password is not None
    except ValueError:
        return False


def store_secrets(backend_store_uri: str, registry_store_uri: str | None) -> tuple[tuple[str, str], ...]:
    """The store URIs that hold a password, as the MLflow server's variables (see mlflow_server_command)."""
    uris = {"backend": backend_store_uri, "registry": registry_store_uri}
    return tuple((STORE_URI_ENVS[k], uri) for k, uri in uris.items() if uri and has_password(uri))


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


def serves_tracking_url(settings: Settings) -> bool:
    """$MLFLOW_TRACKING_URI is the server `up` itself starts over $MLPLATFORM_MLFLOW_BACKEND_STORE_URI:
    with both set, every shell that shares the deployment's environment (`mlplatform rollback`) reaches
    the same server over HTTP, never a store of its own by default."""
    return is_http(settings.mlflow_tracking_uri) and settings.mlflow_server_backend_store_uri is not None


def effective_options(settings: Settings, options: UpOptions) -> UpOptions:
    """The options with the MLflow port of $MLFLOW_TRACKING_URI when `up` serves that URL."""
    if not serves_tracking_url(settings):
        return options
    port = urllib.parse.urlsplit(settings.mlflow_tracking_uri).port
    return replace(
        options, mlflow_port=port or (443 if settings.mlflow_tracking_uri.startswith("https") else 80)
    )


def plan_stack(settings: Settings, environ: Mapping[str, str], options: UpOptions) -> StackPlan:
    """What `up` starts: an MLflow server unless $MLFLOW_TRACKING_URI is already one (run elsewhere),
    then Dagster."""
    options = effective_options(settings, options)
    host = url_host(options.host)
    children: list[Child] = []
    external = is_http(settings.mlflow_tracking_uri) and not serves_tracking_url(settings)
    if external or serves_tracking_url(settings):
        mlflow_url = settings.mlflow_tracking_uri.rstrip("/")
    else:
        mlflow_url = f"http://{host}:{options.mlflow_port}"
    if not external:
        backend, artifacts, registry = mlflow_server_stores(settings)
        command = mlflow_server_command(
            backend, artifacts, options.host, options.mlflow_port, registry, options.mlflow_workers
        )
        secrets = store_secrets(backend, registry)
        children.append(
            Child("the MLflow server", command, f"{mlflow_url}/health", tier=0, secret_env=secrets)
        )
    workspace = options.workspace or settings.home / "workspace.yaml"
    webserver, daemon = dagster_commands(workspace, options.host, options.dagster_port)
    dagster_url = f"http://{host}:{options.dagster_port}"
    children.append(Child("the Dagster daemon", daemon, None, tier=1))
    children.append(Child("the Dagster webserver", webserver, f"{dagster_url}/server_info", tier=1))
    env = child_environment(environ, settings, mlflow_url, dagster_url)
    return StackPlan(tuple(children), env, dagster_url, mlflow_url, mlflow_started=not external)


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
