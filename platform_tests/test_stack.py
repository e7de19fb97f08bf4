"""`mlplatform up` without Dagster or MLflow: its command lines and environments, its port check, and
its supervision of real (small) processes: stop, kill, strays, a child that exits on its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from mlplatform.resources.mlflow import MlflowResource
from mlplatform.settings import load_settings
from mlplatform.stack import WORKSPACE_YAML, _start_tiers, run_stack
from mlplatform.stack_plan import Child, StackPlan, UpOptions, check_ports, effective_options, plan_stack
from mlplatform.supervisor import Supervisor
from platform_tests.conftest import REPO_ROOT, subprocess_env
from platform_tests.servers import descendants, free_port, is_running


def environ_for(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "MLPLATFORM_HOME": str(home), **extra}


def test_the_stack_of_a_home_serves_its_store_over_http(tmp_path: Path) -> None:
    home = tmp_path / "home"
    environ = environ_for(home, MLPLATFORM_SPECS=str(tmp_path / "specs"), MLFLOW_REGISTRY_URI="")
    plan = plan_stack(load_settings(environ), environ, UpOptions(dagster_port=3001, mlflow_port=5001))
    mlflow, daemon, webserver = plan.children
    assert mlflow.command == (
        "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", "5001", "--workers", "1",
    )  # fmt: skip
    workspace = str(home / "workspace.yaml")
    assert daemon.command == ("dagster-daemon", "run", "-w", workspace)
    assert webserver.command == ("dagster-webserver", "-w", workspace, "-h", "127.0.0.1", "-p", "3001")
    assert (mlflow.tier, daemon.tier, webserver.tier) == (0, 1, 1)  # MLflow answers before Dagster starts
    assert (mlflow.ready_url, webserver.ready_url) == (
        "http://127.0.0.1:5001/health",
        "http://127.0.0.1:3001/server_info",
    )
    assert (plan.dagster_url, plan.mlflow_url, plan.mlflow_started) == (
        "http://127.0.0.1:3001",
        "http://127.0.0.1:5001",
        True,
    )
    env = plan.env
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"
    assert "MLFLOW_REGISTRY_URI" not in env  # the registry is the server's too
    assert (env["MLPLATFORM_HOME"], env["DAGSTER_HOME"]) == (str(home), str(home / "dagster"))
    assert env["MLPLATFORM_SPECS"] == str(tmp_path / "specs")  # the user's datasets appear
    assert env["MLPLATFORM_DAGSTER_URL"] == "http://127.0.0.1:3001"  # alerts link to this UI
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_experiments_made_under_up_work_without_it_on_the_homes_store(tmp_path: Path) -> None:
    """Serving the home's own store, the children (which read their environment) keep creating
    experiments in the home's folder: `mlplatform run` opens that store without a server, and an
    mlflow-artifacts:/ location would only resolve through one."""
    home = tmp_path / "home"
    plan = plan_stack(load_settings(environ_for(home)), environ_for(home), UpOptions())
    child = load_settings(plan.env)
    assert child.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert child.mlflow_artifact_location == (home / "mlartifacts").as_uri()
    assert load_settings(environ_for(home)).mlflow_artifact_location == (home / "mlartifacts").as_uri()


def test_another_store_or_server_gives_new_experiments_the_served_artifacts(tmp_path: Path) -> None:
    """A tracking server decides where artifacts go (None: its served artifacts, over HTTP)."""
    production = environ_for(tmp_path, MLPLATFORM_MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db/mlflow")
    served = load_settings(plan_stack(load_settings(production), production, UpOptions()).env)
    assert (served.mlflow_tracking_uri, served.mlflow_artifact_location) == ("http://127.0.0.1:5000", None)
    assert MlflowResource.from_settings(served).artifact_location is None
    existing = environ_for(tmp_path, MLFLOW_TRACKING_URI="http://mlflow.internal:5000")
    assert load_settings(existing).mlflow_artifact_location is None
    # A location the user chose is kept in every case.
    chosen = {**production, "MLPLATFORM_MLFLOW_ARTIFACTS": "s3://bucket/mlflow"}
    env = plan_stack(load_settings(chosen), chosen, UpOptions()).env
    assert load_settings(env).mlflow_artifact_location == "s3://bucket/mlflow"


def test_an_mlflow_server_already_named_is_used_not_started(tmp_path: Path) -> None:
    environ = environ_for(tmp_path, MLFLOW_TRACKING_URI="https://mlflow.internal/")
    plan = plan_stack(load_settings(environ), environ, UpOptions())
    assert [child.name for child in plan.children] == ["the Dagster daemon", "the Dagster webserver"]
    assert (plan.mlflow_url, plan.mlflow_started) == ("https://mlflow.internal", False)
    assert plan.env["MLFLOW_TRACKING_URI"] == "https://mlflow.internal"


def test_a_tracking_url_with_a_backend_store_is_served_by_up_itself_on_its_port(tmp_path: Path) -> None:
    """The deployment's environment names both: `up` serves the URL every other shell uses."""
    environ = environ_for(
        tmp_path,
        MLFLOW_TRACKING_URI="http://127.0.0.1:5123/",
        MLPLATFORM_MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db/mlflow",
    )
    settings = load_settings(environ)
    plan = plan_stack(settings, environ, UpOptions())
    assert plan.mlflow_started and plan.mlflow_url == "http://127.0.0.1:5123"
    server = plan.children[0].command
    assert server[server.index("--backend-store-uri") + 1] == "postgresql://mlflow@db/mlflow"
    assert server[server.index("--port") + 1] == "5123"
    assert plan.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5123"
    assert effective_options(settings, UpOptions()).mlflow_port == 5123  # the port `up` checks is free
    assert load_settings(plan.env).mlflow_artifact_location is None  # the server's served artifacts


def test_a_store_password_reaches_the_mlflow_server_by_its_environment_not_its_command_line(
    tmp_path: Path,
) -> None:
    secret = "postgresql+psycopg2://mlflow:s3cret@db/mlflow"
    environ = environ_for(tmp_path, MLPLATFORM_MLFLOW_BACKEND_STORE_URI=secret)
    [server, *_] = plan_stack(load_settings(environ), environ, UpOptions()).children
    assert "s3cret" not in " ".join(server.command) and "--backend-store-uri" not in server.command
    assert server.secret_env == (("MLFLOW_BACKEND_STORE_URI", secret),)
    printed: list[str] = []
    stop = threading.Event()
    stop.set()  # start the tier, then stop at once
    with Supervisor({"PATH": os.environ["PATH"]}, grace_seconds=5, kill_wait_seconds=5) as supervisor:
        seen = tmp_path / "seen"
        writes = f'printf %s "$MLFLOW_BACKEND_STORE_URI" > {seen}'
        echo = Child("the MLflow server", ("sh", "-c", writes), None, 0)
        plan = StackPlan((replace(echo, secret_env=server.secret_env),), {}, "", "", True)
        _start_tiers(plan, supervisor, stop, printed.append)
        [started] = supervisor.started
        assert started.process.wait(10) == 0
    assert seen.read_text() == secret  # the child had the URI in its environment
    assert printed and all("s3cret" not in line for line in printed), printed


def test_production_stores_and_a_separate_registry_go_to_the_server(tmp_path: Path) -> None:
    environ = environ_for(
        tmp_path,
        MLPLATFORM_MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db/mlflow",
        MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION="s3://bucket/mlflow",
        MLFLOW_REGISTRY_URI="sqlite:////srv/registry.db",
    )
    plan = plan_stack(load_settings(environ), environ, UpOptions(host="0.0.0.0", mlflow_workers=3))
    command = plan.children[0].command
    assert command == (
        "mlflow", "server", "--backend-store-uri", "postgresql://mlflow@db/mlflow",
        "--registry-store-uri", "sqlite:////srv/registry.db",
        "--artifacts-destination", "s3://bucket/mlflow", "--serve-artifacts",
        "--host", "0.0.0.0", "--port", "5000", "--workers", "3",
    )  # fmt: skip
    assert "MLFLOW_REGISTRY_URI" not in plan.env  # served by the tracking server now
    # Bound to every interface, reached on loopback.
    assert (plan.dagster_url, plan.env["MLFLOW_TRACKING_URI"]) == (
        "http://127.0.0.1:3000",
        "http://127.0.0.1:5000",
    )
    remote = environ_for(tmp_path, MLFLOW_REGISTRY_URI="http://registry.internal")
    assert plan_stack(load_settings(remote), remote, UpOptions()).env["MLFLOW_REGISTRY_URI"] == (
        "http://registry.internal"
    )


def test_a_port_in_use_is_refused_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_port()
        assert check_ports(UpOptions(dagster_port=port, mlflow_port=other), mlflow_started=True) == [
            f"port {port} on 127.0.0.1 is already in use (another program listens there): "
            "choose another with --dagster-port"
        ]
        assert "--mlflow-port" in check_ports(UpOptions(dagster_port=other, mlflow_port=port), True)[0]
        assert check_ports(UpOptions(dagster_port=other, mlflow_port=port), mlflow_started=False) == []
    assert check_ports(UpOptions(dagster_port=other, mlflow_port=other), True) == [
        f"--dagster-port and --mlflow-port are both {other}"
    ]


def test_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            ["mlplatform", "up", "--dagster-port", str(free_port()), "--mlflow-port", str(port)],
            cwd=tmp_path,
            env=subprocess_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"mlplatform: error: port {port} on 127.0.0.1 is already in use (another program listens there): "
        "choose another with --mlflow-port"
    )
    assert done.stdout == "" and not (home / "workspace.yaml").exists()


def test_the_workspace_written_is_the_repositorys() -> None:
    assert WORKSPACE_YAML.split("\n", 1)[1] == (REPO_ROOT / "workspace.yaml").read_text().split("\n", 1)[1]


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


# Forks a grandchild that leaves the process group (a new session) and one that ignores SIGTERM; each
# touches a file once it is set up.
ESCAPING = """
import subprocess, sys, time
ready = sys.argv[1]
subprocess.Popen([sys.executable, "-c", STRAY, ready + ".stray"], start_new_session=True)
subprocess.Popen([sys.executable, "-c", STUBBORN, ready + ".stubborn"])
time.sleep(300)
"""
STRAY = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(300)"
STUBBORN = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(300)"
)


def test_stop_leaves_no_process_behind_even_strays_and_stubborn_ones(tmp_path: Path) -> None:
    lines: list[str] = []
    ready = tmp_path / "ready"
    code = f"STRAY, STUBBORN = {STRAY!r}, {STUBBORN!r}\n{ESCAPING}"
    with Supervisor(
        dict(os.environ), grace_seconds=2, kill_wait_seconds=5, report=lines.append
    ) as supervisor:
        supervisor.start("the escaper", (sys.executable, "-c", code, str(ready)), tier=1)
        supervisor.start("the sleeper", python("import time; time.sleep(300)"), tier=0)
        marks = [Path(f"{ready}.stray"), Path(f"{ready}.stubborn")]
        deadline = time.monotonic() + 60
        while not all(mark.exists() for mark in marks) and time.monotonic() < deadline:
            time.sleep(0.1)
        spawned = descendants(os.getpid())
        assert len(spawned) == 4, spawned
        started = time.monotonic()
        assert supervisor.stop()
        elapsed = time.monotonic() - started
    assert [pid for pid in spawned if is_running(pid)] == []
    assert lines == ["mlplatform up: the escaper did not stop within 2 s: killed"]
    assert elapsed < 10  # the escaper's grace, then SIGKILL; the stray stops on its SIGTERM


def test_a_child_that_exits_on_its_own_stops_the_others_with_its_name(tmp_path: Path) -> None:
    port = free_port()
    serve = f"import http.server as h; h.test(h.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')"
    server = Child("the web server", python(serve), f"http://127.0.0.1:{port}/", tier=0)
    quitter = Child("the quitter", python("import time, sys; time.sleep(2); sys.exit(5)"), None, tier=1)
    plan = StackPlan((server, quitter), {**os.environ}, "http://d", "http://m", mlflow_started=True)
    lines: list[str] = []
    before = descendants(os.getpid())
    assert run_stack(plan, lines.append, grace_seconds=5) == 1
    assert "mlplatform up: error: the quitter exited on its own (code 5); stopping the others" in lines
    assert lines[-1] == "mlplatform up: stopped"
    assert descendants(os.getpid()) <= before


def test_sigterm_stops_everything_and_exits_0() -> None:
    plan = StackPlan(
        (Child("the sleeper", python("import time; time.sleep(300)"), None, tier=0),),
        {**os.environ},
        "http://d",
        "http://m",
        mlflow_started=True,
    )
    lines: list[str] = []
    before, handler = descendants(os.getpid()), signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(2, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = run_stack(plan, lines.append, grace_seconds=5)
    finally:
        timer.cancel()
    assert code == 0
    assert lines == [
        f"mlplatform up: starting the sleeper: {sys.executable} -c 'import time; time.sleep(300)'",
        "Dagster UI: http://d",
        "MLflow UI:  http://m",
        "mlplatform up: running; stop with Ctrl-C or SIGTERM",
        "mlplatform up: SIGTERM received: stopping",
        "mlplatform up: stopped",
    ]
    assert descendants(os.getpid()) <= before
    assert signal.getsignal(signal.SIGTERM) is handler  # put back


def test_the_children_stop_even_when_up_itself_is_killed() -> None:
    """SIGKILL leaves no chance to stop anything: the children get SIGTERM from the kernel instead."""
    code = (
        "import os, sys, time\n"
        "from mlplatform.supervisor import Supervisor\n"
        "with Supervisor(dict(os.environ), 5, 5) as supervisor:\n"
        "    child = supervisor.start('the sleeper', [sys.executable, '-c', 'import time; time.sleep(300)'], 0)\n"
        "    print(child.pid, flush=True)\n"
        "    time.sleep(300)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(owner.stdout.readline())
        assert is_running(child)
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while is_running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not is_running(child)
    finally:
        owner.kill()
        owner.wait()
