"""`mlplatform up` in a subprocess, as a user runs it: the MLflow server, the Dagster daemon and the
webserver answer on the URLs it prints, over the user's home and specs; SIGTERM stops every process it
started (exit 0); a child that dies makes it stop the others and exit non-zero, naming the child."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.core.training import TrainedModel, lightgbm_params, predict, train_lightgbm
from mlplatform.models.registry import load_version, log_lightgbm_model, register_version
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.runner import up_command
from mlplatform.settings import load_settings
from platform_tests.conftest import BIKE_CSV, bike_spec_dict, subprocess_env
from platform_tests.servers import (
    descendants,
    free_port,
    graphql,
    http_get,
    http_post_json,
    is_running,
    wait_for_asset_keys,
)

pytestmark = pytest.mark.e2e
STARTUP_SECONDS = 400
LOCATION_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on RepositoryLocation { repositories { name } }
  ... on PythonError { message } } } } } }"""
DAEMONS_QUERY = "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"


@dataclass
class Up:
    process: subprocess.Popen
    out: Path
    err: Path

    def stdout_lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def logs(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr (tail):\n{self.err.read_text()[-4000:]}"

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.stdout_lines() if line.startswith(prefix)]
            if found:
                return found[0]
            assert self.process.poll() is None, f"up exited with {self.process.returncode}\n{self.logs()}"
            time.sleep(1)
        raise AssertionError(f"no line {prefix!r} after {timeout} s\n{self.logs()}")

    def child(self, program: str) -> int:
        """The pid of the child of `up` whose command line runs `program`, e.g. "mlflow server"."""
        for pid in descendants(self.process.pid):
            try:
                ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            except OSError:
                continue
            if int(ppid) == self.process.pid and program in " ".join(Path(word).name for word in argv):
                return pid
        raise AssertionError(f"no child {program!r} of up\n{self.logs()}")


@contextmanager
def mlplatform_up(home: Path, tmp_path: Path, *args: str, **env: str) -> Iterator[Up]:
    """`mlplatform ARGS` in a subprocess; afterwards nothing it started is left, whatever happened."""
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            ["mlplatform", *args],
            cwd=tmp_path,
            env=subprocess_env(home, **env),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    up = Up(process, out, err)
    try:
        yield up
    finally:
        left = descendants(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in left:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


def printed_urls(up: Up) -> tuple[str, str]:
    dagster = re.fullmatch(r"Dagster UI: (\S+)", up.wait_for_line("Dagster UI: ", 10))
    mlflow = re.fullmatch(r"MLflow UI:  (\S+)", up.wait_for_line("MLflow UI: ", 10))
    assert dagster and mlflow, up.stdout_lines()
    return dagster.group(1), mlflow.group(1)


def child_environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def tiny_model() -> tuple[TrainedModel, pd.DataFrame]:
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x": rng.normal(size=200), "colour": rng.choice(["red", "blue"], size=200)})
    target = 2 * data["x"] + (data["colour"] == "red")
    params = lightgbm_params("regression", None, {})
    return train_lightgbm("regression", data, target, None, None, params, 5, 5), data.head(3)


def log_and_register(resource: MlflowResource, name: str, work: Path) -> int:
    """A run of experiment `name` with a text artifact and a LightGBM model, registered as model `name`."""
    model, example = tiny_model()
    with resource.start_run(name) as run:
        mlflow.log_text(f"logged to {resource.tracking_uri}", "notes/where.txt")
        info = log_lightgbm_model(model, example, work)
        return int(register_version(resource, name, info, run.info.run_id, {}).version)


def check_models_load(resource: MlflowResource, versions: dict[str, list[int]]) -> None:
    model, example = tiny_model()
    for name, numbers in versions.items():
        for number in numbers:
            loaded = load_version(resource, name, number)
            assert np.allclose(predict(loaded, example), predict(model, example)), (name, number)


def user_spec_folder(tmp_path: Path) -> Path:
    spec = bike_spec_dict()
    spec.update(name="up_bikes", source={"path": str(BIKE_CSV), "format": "csv"})
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "up_bikes.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def wait_for_daemons(port: int, up: Up) -> list[dict]:
    """The daemon's heartbeats in the instance, as the webserver reads them: every required one healthy."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert up.process.poll() is None, up.logs()
        statuses = graphql(port, DAEMONS_QUERY)["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
        required = [s for s in statuses if s["required"]]
        if required and all(s["healthy"] for s in required):
            return required
        time.sleep(2)
    raise AssertionError(f"daemons not healthy: {statuses}\n{up.logs()}")


def check_served(dagster_port: int, mlflow_url: str, up: Up) -> None:
    """The three endpoints answer; the platform's code location (with the user's dataset) is loaded."""
    status, body = http_get(f"http://127.0.0.1:{dagster_port}/server_info")
    assert status == 200 and b"dagster_webserver_version" in body
    assert http_get(f"{mlflow_url}/health") == (200, b"OK")
    found = http_post_json(f"{mlflow_url}/api/2.0/mlflow/experiments/search", {"max_results": 100})
    assert "legacy" in {e["name"] for e in found["experiments"]}  # the home's store, served
    [entry] = graphql(dagster_port, LOCATION_QUERY)["data"]["workspaceOrError"]["locationEntries"]
    assert (entry["name"], entry["loadStatus"]) == ("mlplatform", "LOADED"), entry
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    keys = wait_for_asset_keys(dagster_port, up.process, up.err)
    assert {key.split("/")[0] for key in keys} >= {"bike_sharing", "transactions", "up_bikes"}
    assert {s["daemonType"] for s in wait_for_daemons(dagster_port, up)} >= {"SENSOR", "SCHEDULER"}


def test_up_serves_the_home_on_the_printed_urls_and_sigterm_stops_every_process(
    platform_home: Path, tmp_path: Path
) -> None:
    legacy = MlflowResource.from_settings(load_settings(subprocess_env(platform_home)))  # SQLite, file://
    versions = {"legacy": [log_and_register(legacy, "legacy", tmp_path / "work0")]}
    dagster_port, mlflow_port = free_port(), free_port()
    specs = user_spec_folder(tmp_path)
    # The command as `mlplatform run`'s summary prints it (the README's `mlplatform up` plus the home
    # and the user's spec folder), on free ports through their variables.
    printed = shlex.split(
        up_command(load_settings(subprocess_env(platform_home, MLPLATFORM_SPECS=str(specs))))
    )
    at = printed.index("mlplatform")
    env = dict(assignment.split("=", 1) for assignment in printed[:at])
    assert env == {"MLPLATFORM_SPECS": str(specs)}
    env |= {"MLPLATFORM_AUTOMATION": "none"}  # no sensor runs the graph
    env |= {"MLPLATFORM_DAGSTER_PORT": str(dagster_port), "MLPLATFORM_MLFLOW_PORT": str(mlflow_port)}
    with mlplatform_up(platform_home, tmp_path, *printed[at + 1 :], **env) as up:
        up.wait_for_line("mlplatform up: running", STARTUP_SECONDS)
        dagster_url, mlflow_url = printed_urls(up)
        assert (dagster_url, mlflow_url) == (
            f"http://127.0.0.1:{dagster_port}",
            f"http://127.0.0.1:{mlflow_port}",
        )
        check_served(dagster_port, mlflow_url, up)

        # The daemon's own environment: MLflow only over HTTP, the user's home and specs.
        daemon_env = child_environment(up.child("dagster-daemon"))
        assert daemon_env["MLFLOW_TRACKING_URI"] == mlflow_url
        assert (daemon_env["MLPLATFORM_HOME"], daemon_env["MLPLATFORM_SPECS"]) == (
            str(platform_home),
            str(specs),
        )
        assert daemon_env["DAGSTER_HOME"] == str(platform_home / "dagster")
        assert child_environment(up.child("dagster-webserver"))["MLFLOW_TRACKING_URI"] == mlflow_url

        # As the daemon's runs use MLflow, over HTTP: the experiment made before and a new one.
        over_http = MlflowResource.from_settings(load_settings(daemon_env))
        versions["legacy"].append(log_and_register(over_http, "legacy", tmp_path / "work1"))
        versions["fresh"] = [log_and_register(over_http, "fresh", tmp_path / "work2")]
        check_models_load(over_http, versions)
        client = over_http.client()
        for name in versions:
            experiment = client.get_experiment_by_name(name)
            assert experiment.artifact_location == (platform_home / "mlartifacts" / name).as_uri()
            [run] = client.search_runs([experiment.experiment_id], max_results=1)
            listed = http_get(f"{mlflow_url}/api/2.0/mlflow/artifacts/list?run_id={run.info.run_id}")[1]
            assert b'"notes"' in listed  # what the MLflow UI shows of the run's artifacts

        started = descendants(up.process.pid)
        assert len(started) >= 5, started  # 3 children, uvicorn, the code servers
        up.process.send_signal(signal.SIGTERM)
        code = up.process.wait(timeout=120)
        assert code == 0, up.logs()
        assert [pid for pid in started if is_running(pid)] == [], up.logs()
        assert up.stdout_lines()[-2:] == [
            "mlplatform up: SIGTERM received: stopping",
            "mlplatform up: stopped",
        ]
    check_models_load(legacy, versions)  # with `up` gone, what it made is read from the home's store


def test_another_store_gets_served_artifacts_and_a_dead_child_stops_the_rest(
    platform_home: Path, tmp_path: Path
) -> None:
    """A separate backend store (as Postgres in production): new experiments put their artifacts in the
    server's destination, through it. Then the MLflow server is killed: `up` names it, stops the rest."""
    destination = tmp_path / "served-artifacts"
    store = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    args = ("up", "--dagster-port", str(free_port()), "--mlflow-port", str(free_port()))
    env = {
        "MLPLATFORM_MLFLOW_BACKEND_STORE_URI": store,
        "MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION": str(destination),
    }
    with mlplatform_up(platform_home, tmp_path, *args, MLPLATFORM_AUTOMATION="none", **env) as up:
        up.wait_for_line("mlplatform up: running", STARTUP_SECONDS)
        mlflow_server = up.child("mlflow server")
        assert f"--backend-store-uri {store} " in " ".join(
            Path(f"/proc/{mlflow_server}/cmdline").read_text().split("\0")
        )
        over_http = MlflowResource.from_settings(load_settings(child_environment(up.child("dagster-daemon"))))
        versions = {"served": [log_and_register(over_http, "served", tmp_path / "work")]}
        location = over_http.client().get_experiment_by_name("served").artifact_location
        assert location.startswith("mlflow-artifacts:/"), location
        assert [p.read_text() for p in destination.rglob("where.txt")] == [
            f"logged to {over_http.tracking_uri}"
        ]
        check_models_load(over_http, versions)

        started = descendants(up.process.pid)
        os.kill(mlflow_server, signal.SIGKILL)
        code = up.process.wait(timeout=120)
        assert code == 1, up.logs()
        lines = up.stdout_lines()
        message = "mlplatform up: error: the MLflow server exited on its own (code -9); stopping the others"
        assert message in lines, up.logs()
        assert lines[-1] == "mlplatform up: stopped"
        assert [pid for pid in started if is_running(pid)] == [], up.logs()
