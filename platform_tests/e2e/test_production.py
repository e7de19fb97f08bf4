"""End to end on real servers, as platform/deploy/production sets them up (its dagster.yaml, and its
env.example's variables): a Postgres cluster holds the Dagster instance and the MLflow backend store;
`mlplatform up` starts the MLflow tracking server (served artifacts), dagster-daemon and
dagster-webserver, whose only way to MLflow is HTTP (no MLflow file store is made in the home).

Two synthetic payment datasets bootstrap through their new-data sensors and retrain side by side (runs
of different datasets overlap, read from the run records); the champions and promotion records are read
back through the MLflow server's REST API; a run worker SIGKILLed mid-run is marked failed and the next
sensor run of its dataset succeeds. Prints the wall time of two retrainings together and one after the
other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from mlplatform.datasets.synthetic import generate_transactions, write_daily_parquet
from mlplatform.specs.loader import BUNDLED_SPECS_DIR
from platform_tests.conftest import REPO_ROOT
from platform_tests.postgres import PostgresCluster, postgres_cluster_running
from platform_tests.servers import free_port, graphql, poll, running, wait_for_asset_keys

pytestmark = pytest.mark.e2e

PRODUCTION = REPO_ROOT / "platform" / "deploy" / "production"
DATASETS = ("prod_a", "prod_b")
HISTORY_DAYS = 21
# The test's instance: the production file with run monitoring polling every few seconds (its start
# timeout stays: on a busy machine a run worker can take over a minute to import and report in).
SHORT_MONITORING = {"poll_interval_seconds": 5, "free_slots_after_run_end_seconds": 5}


@dataclass
class Stack:
    cluster: PostgresCluster
    tmp: Path
    env: dict[str, str]
    mlflow_url: str
    artifacts: Path
    webserver_port: int
    dagster_db: str
    mlflow_db: str
    staged: dict[str, list[Path]]
    landing: dict[str, Path]
    assert_running: Callable[[], None]

    @property
    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])


def wait_http(url: str, timeout: float, check: Callable[[], None]) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    poll(url, answers, timeout, check)


def _write_specs(tmp: Path, start: date) -> tuple[Path, dict[str, list[Path]], dict[str, Path]]:
    """Two copies of the transactions spec on their own landing folders; the daily files staged apart."""
    specs = tmp / "specs"
    specs.mkdir()
    staged, landing = {}, {}
    for seed, name in enumerate(DATASETS, start=21):
        landing[name] = tmp / "landing" / name
        landing[name].mkdir(parents=True)
        frame = generate_transactions(HISTORY_DAYS + 2, customers=60, start=start, seed=seed)
        staged[name] = write_daily_parquet(frame, tmp / "staged" / name)
        raw = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
        raw.update(name=name, source={"path": f"{landing[name]}/*.parquet", "format": "parquet"})
        raw["partitions"] = {"start": start, "end": "open"}
        (specs / f"{name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return specs, staged, landing


def instance_config() -> str:
    """platform/deploy/production/dagster.yaml as a user copies it, with shorter monitoring timeouts."""
    config = yaml.safe_load((PRODUCTION / "dagster.yaml").read_text())
    config["run_monitoring"].update(SHORT_MONITORING)
    return yaml.safe_dump(config, sort_keys=False)


def example_environment(values: dict[str, str]) -> dict[str, str]:
    """The variables of platform/deploy/production/env.example with the test's values (every one of them
    must have one: a variable the file names that no test sets would be untested advice)."""
    names = [
        line.split("=", 1)[0]
        for line in (PRODUCTION / "env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert sorted(names) == sorted(values), "env.example and the test's values name other variables"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPLATFORM_", "MLFLOW_", "DAGSTER_"))}
    return {**env, **values}


def wait_for_line(log: Path, line: str, timeout: float, check: Callable[[], None]) -> None:
    poll(f"{line!r} in {log.name}", lambda: line in log.read_text().splitlines(), timeout, check)


@pytest.fixture
def stack(
    postgres_cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    """`mlplatform up` on the production settings: its MLflow server on Postgres, Dagster on Postgres."""
    dagster_db, mlflow_db = (postgres_cluster.create_database(n) for n in ("dagster", "mlflow"))
    dagster_store, mlflow_store = (postgres_cluster.sqlalchemy_url(url) for url in (dagster_db, mlflow_db))
    start = datetime.now(UTC).date() - timedelta(days=HISTORY_DAYS + 2)
    specs, staged, landing = _write_specs(tmp_path, start)
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text(instance_config())
    log, artifacts = tmp_path / "up.log", tmp_path / "mlflow-artifacts"
    ports = {"mlflow": free_port(), "dagster": free_port()}
    env = example_environment(
        {
            "MLPLATFORM_HOME": str(tmp_path / "home"),
            "DAGSTER_HOME": str(tmp_path / "dagster"),
            "MLPLATFORM_DAGSTER_PG_URL": dagster_store,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "MLPLATFORM_MLFLOW_BACKEND_STORE_URI": mlflow_store,
            "MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
            "MLPLATFORM_SPECS": str(specs),
            "MLPLATFORM_SENSOR_INTERVAL": "3",
            "MLPLATFORM_AUTOMATION": ",".join(DATASETS),
            "MLPLATFORM_DAGSTER_URL": f"http://127.0.0.1:{ports['dagster']}",
        }
    )
    monkeypatch.setenv("MLPLATFORM_DAGSTER_PG_URL", dagster_store)  # the test reads the same instance
    command = ["mlplatform", "up", "--dagster-port", str(ports["dagster"])]  # MLflow's: the tracking URL
    with running([*command, "--mlflow-workers", "1"], env, tmp_path, log) as up:

        def assert_running() -> None:
            if up.poll() is not None:
                raise AssertionError(f"mlplatform up exited with {up.returncode}:\n{log.read_text()[-3000:]}")

        try:
            wait_for_line(log, "mlplatform up: running; stop with Ctrl-C or SIGTERM", 300, assert_running)
            wait_for_asset_keys(ports["dagster"], up, log, 240)
            yield Stack(
                postgres_cluster,
                tmp_path,
                env,
                f"http://127.0.0.1:{ports['mlflow']}",
                artifacts,
                ports["dagster"],
                dagster_db,
                mlflow_db,
                staged,
                landing,
                assert_running,
            )
        finally:
            print("--- mlplatform up (tail) ---\n" + "\n".join(log.read_text().splitlines()[-60:]))


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""
REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"


def launch(stack: Stack, job: str) -> str:
    """Submit `job` through the webserver's GraphQL API (as the UI's Launch button does): it is QUEUED and
    the daemon's run queue starts it."""
    (repository,) = graphql(stack.webserver_port, REPOSITORIES)["data"]["repositoriesOrError"]["nodes"]
    selector = {
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": repository["name"],
        "jobName": job,
    }
    answer = graphql(stack.webserver_port, LAUNCH, {"params": {"selector": selector, "runConfigData": {}}})
    result = answer["data"]["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", answer
    return result["run"]["runId"]


def records(instance: dg.DagsterInstance, run_ids: list[str]) -> list[dg.RunRecord]:
    return list(instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids)))


def wait_success(stack: Stack, instance: dg.DagsterInstance, run_ids: list[str], timeout: float):
    def done() -> list[dg.RunRecord] | None:
        found = records(instance, run_ids)
        failed = [r.dagster_run.run_id for r in found if r.dagster_run.status == dg.DagsterRunStatus.FAILURE]
        assert not failed, f"run(s) {failed} failed: {_errors(instance, failed[0])}"
        finished = [r for r in found if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
        return finished if len(finished) == len(run_ids) else None

    return poll(f"runs {run_ids} to succeed", done, timeout, stack.assert_running, 2)


def _errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What the run's failure events and engine events say (the step errors' traces included)."""
    kinds = {
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.RUN_FAILURE,
        dg.DagsterEventType.ENGINE_EVENT,
    }
    events = [e.dagster_event for e in instance.all_logs(run_id, of_type=kinds) if e.dagster_event]
    traces = [
        e.step_failure_data.error.to_string()
        for e in events
        if e.event_type == dg.DagsterEventType.STEP_FAILURE and e.step_failure_data.error
    ]
    return [f"{e.event_type_value}: {e.message}"[-1500:] for e in events] + [t[-1500:] for t in traces]


def overlap_seconds(found: list[dg.RunRecord]) -> float:
    return min(r.end_time for r in found) - max(r.start_time for r in found)


def sensor_runs(instance: dg.DagsterInstance, dataset: str) -> list[dg.DagsterRun]:
    tags = {"dagster/sensor_name": f"{dataset}__new_data_sensor"}
    return list(instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def mlflow_get(stack: Stack, endpoint: str, **params: str) -> dict:
    url = f"{stack.mlflow_url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_production_stack_runs_datasets_side_by_side_over_http_and_fails_killed_runs(stack: Stack) -> None:
    instance = stack.instance
    for name in DATASETS:  # both datasets' history lands at once: both new-data sensors bootstrap
        for path in stack.staged[name][:HISTORY_DAYS]:
            shutil.copy2(path, stack.landing[name] / path.name)
    bootstrap = poll(
        "both bootstrap runs",
        lambda: all(sensor_runs(instance, n) for n in DATASETS),
        120,
        stack.assert_running,
    )
    assert bootstrap
    first_runs = [sensor_runs(instance, n)[-1].run_id for n in DATASETS]
    found = wait_success(stack, instance, first_runs, 600)
    print(f"bootstrap runs overlapped {overlap_seconds(found):.1f} s")
    assert overlap_seconds(found) > 0, "the two datasets' bootstrap runs ran one after the other"

    _retrain_side_by_side(stack, instance)
    _assert_registry_over_http(stack)
    _assert_killed_run_is_failed_and_the_next_sensor_run_succeeds(stack, instance)
    _assert_state_lives_in_the_servers(stack, instance)


def _retrain_side_by_side(stack: Stack, instance: dg.DagsterInstance) -> None:
    """Both datasets' retrainings launched at once over GraphQL run at the same time."""
    jobs = [f"{name}__retrain" for name in DATASETS]
    started = time.monotonic()
    found = wait_success(stack, instance, [launch(stack, job) for job in jobs], 600)
    assert overlap_seconds(found) > 0, "the two datasets' retraining runs ran one after the other"
    durations = ", ".join(f"{r.dagster_run.job_name} {r.end_time - r.start_time:.1f} s" for r in found)
    print(f"two retrainings together: {time.monotonic() - started:.1f} s wall ({durations})")


def _assert_registry_over_http(stack: Stack) -> None:
    for name in DATASETS:
        alias = mlflow_get(stack, "registered-models/alias", name=name, alias="champion")["model_version"]
        model = mlflow_get(stack, "registered-models/get", name=name)["registered_model"]
        tags = {t["key"]: t["value"] for t in model.get("tags", [])}
        history = [int(v) for v in tags["mlplatform.champion_history"].split(",")]
        assert history and history[-1] == int(alias["version"]), (tags, alias)
        version = mlflow_get(stack, "model-versions/get", name=name, version=alias["version"])[
            "model_version"
        ]
        version_tags = {t["key"]: t["value"] for t in version.get("tags", [])}
        assert {"promoted_at", "previous_champion"} <= set(version_tags), version_tags
        assert not alias["source"].startswith(("file:", "/")), f"a local artifact path: {alias['source']}"
        versions = mlflow_get(stack, "model-versions/search", filter=f"name = '{name}'")["model_versions"]
        decisions = [
            {t["key"]: t["value"] for t in v.get("tags", [])}.get("promotion_decision") for v in versions
        ]
        assert len(versions) >= 2 and all(d in ("promoted", "not promoted") for d in decisions), decisions


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process executing `run_id` (steps run in it), from its events, once a step started."""
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return starts[0].dagster_event.pid if starts and starts[0].dagster_event else None


def _assert_killed_run_is_failed_and_the_next_sensor_run_succeeds(
    stack: Stack, instance: dg.DagsterInstance
) -> None:
    name = DATASETS[0]
    victim = launch(stack, f"{name}__retrain")
    pid = poll(
        "a step of the run to start", lambda: _worker_pid(instance, victim), 300, stack.assert_running, 0.1
    )
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def failed() -> bool:
        status = instance.get_run_by_id(victim).status
        assert status != dg.DagsterRunStatus.SUCCESS, "the run ended before it was killed"
        return status == dg.DagsterRunStatus.FAILURE

    poll("the killed run to be marked failed", failed, 180, stack.assert_running)
    messages = _errors(instance, victim)
    print(f"the killed run was marked failed {time.monotonic() - killed_at:.0f} s after SIGKILL: {messages}")
    # Whichever sees it first: Dagster's code server (its child died of a signal) or the platform's
    # mlplatform__recovery sensor (the run's owner process is gone).
    by_dagster = any("was terminated by signal 9" in m for m in messages)
    by_recovery = any(f"(pid {pid} " in m and "no longer exists" in m for m in messages)
    assert by_dagster or by_recovery, messages

    before = {r.run_id for r in sensor_runs(instance, name)}
    new_day = stack.staged[name][HISTORY_DAYS]
    shutil.copy2(new_day, stack.landing[name] / new_day.name)
    fresh = poll(
        "the new-data sensor's next run",
        lambda: [r.run_id for r in sensor_runs(instance, name) if r.run_id not in before],
        120,
        stack.assert_running,
    )
    wait_success(stack, instance, fresh, 600)


def _assert_state_lives_in_the_servers(stack: Stack, instance: dg.DagsterInstance) -> None:
    home = Path(stack.env["MLPLATFORM_HOME"])
    local_mlflow = [p for p in home.rglob("*") if p.name in ("mlflow.db", "mlartifacts", "mlruns")]
    assert not local_mlflow, f"the platform wrote an MLflow store of its own: {local_mlflow}"
    dagster_home = Path(stack.env["DAGSTER_HOME"])
    assert (dagster_home / "dagster.yaml").read_text() == instance_config(), "the user's file is left alone"
    assert not list(dagster_home.rglob("*.db")), "no SQLite storage next to dagster.yaml"
    assert any(p.name == "MLmodel" for p in stack.artifacts.rglob("*")), "models went to the served artifacts"
    cluster_runs = stack.cluster.execute(stack.dagster_db, "SELECT count(*) FROM runs")[0][0]
    assert cluster_runs == len(instance.get_runs())
    versions = stack.cluster.execute(stack.mlflow_db, "SELECT count(*) FROM model_versions")[0][0]
    assert versions >= 4  # 2 per dataset before the killed run


def test_the_throwaway_cluster_listens_on_loopback_only_and_is_removed_afterwards() -> None:
    with postgres_cluster_running() as cluster:
        first, second = cluster.create_database("source"), cluster.create_database("source")
        assert first != second, "each call gives a fresh database"
        cluster.execute(first, "CREATE TABLE t (x int)")
        cluster.execute(first, "INSERT INTO t VALUES (1), (2)")
        assert cluster.execute(first, "SELECT count(*) FROM t") == [(2,)]
        assert cluster.execute(second, "SELECT count(*) FROM pg_tables WHERE tablename = 't'") == [(0,)]
        settings = dict(
            cluster.execute(
                first,
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('listen_addresses', 'unix_socket_directories')",
            )
        )
        assert settings == {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(cluster.root / "socket"),
        }
        root, url = cluster.root, first
    assert not root.exists(), "the cluster's folder is removed"
    with pytest.raises(psycopg2.OperationalError, match=r"Connection refused|could not connect"):
        cluster.execute(url, "SELECT 1")
