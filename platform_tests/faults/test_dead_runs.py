"""A killed run never blocks anything: runs of dead processes are ended (mlplatform.recovery).

The fast tests kill a real process that holds a STARTED Dagster run and a RUNNING MLflow run; the e2e
test SIGKILLs `mlplatform run` during ingestion, promotion and training, then lets the daemon go on.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlplatform import recovery
from mlplatform.core.recovery import OwnerProcess, ProcessProbe, owner_from_tags, owner_is_gone, owner_tags
from mlplatform.datasets.synthetic import generate_transactions, write_daily_parquet
from mlplatform.home import DAGSTER_YAML, RUN_MONITORING_YAML, prepare_home
from mlplatform.recovery import (
    RUN_OWNER_PREFIX,
    current_owner,
    existing_mlflow_client,
    fail_dead_runs,
    kill_dead_mlflow_runs,
    probe_process,
    run_owner_tags,
    this_host,
)
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.sensors.recovery import build_recovery_sensor
from mlplatform.settings import load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR
from platform_tests.conftest import subprocess_env
from platform_tests.servers import running

HOST = "box pid:[1]"


def test_owner_is_gone_only_when_certain() -> None:
    owner = OwnerProcess(HOST, 4242, start_ticks=1000)
    assert owner_is_gone(owner, HOST, ProcessProbe(alive=False))
    assert owner_is_gone(owner, HOST, ProcessProbe(alive=True, start_ticks=1001)), "pid reused: other tick"
    assert not owner_is_gone(owner, HOST, ProcessProbe(alive=True, start_ticks=1000)), "same process"
    assert not owner_is_gone(owner, "other pid:[1]", ProcessProbe(alive=False)), "never judge other hosts"
    assert not owner_is_gone(owner, None, ProcessProbe(alive=False)), "never judge on an unknown host"
    assert not owner_is_gone(owner, HOST, ProcessProbe(alive=True, start_ticks=None)), "cannot tell"
    assert not owner_is_gone(OwnerProcess(HOST, 4242), HOST, ProcessProbe(alive=True, start_ticks=5))


def test_owner_tags_round_trip_and_garbled_or_foreign_tags_are_never_judged() -> None:
    owner = OwnerProcess(HOST, 7, start_ticks=12345)
    assert owner_from_tags(owner_tags(owner, "p/"), "p/") == owner
    assert owner_from_tags(owner_tags(owner, "p/", run_id="r1"), "p/", run_id="r1") == owner
    assert owner_from_tags(owner_tags(owner, "p/", run_id="r1"), "p/", run_id="r2") is None, "copied tags"
    assert owner_from_tags(owner_tags(owner, "p/"), "p/", run_id="r1") is None, "names no run"
    assert owner_from_tags({"p/owner_host": HOST, "p/owner_pid": "seven"}, "p/") is None
    assert owner_from_tags({"p/owner_pid": "7"}, "p/") is None


def test_this_process_is_alive_and_a_reaped_child_is_gone() -> None:
    me = current_owner()
    assert me is not None and me.host == this_host() and me.pid == os.getpid()
    assert not owner_is_gone(me, this_host(), probe_process(me.pid))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_is_gone(
        OwnerProcess(this_host(), child.pid, me.start_ticks), this_host(), probe_process(child.pid)
    )


def test_process_identity_is_the_boot_id_and_the_kernels_start_tick() -> None:
    # Machines with one hostname share the initial PID namespace on bare metal: only the boot id differs.
    assert Path("/proc/sys/kernel/random/boot_id").read_text().strip() in (this_host() or "")
    # Ticks since boot (field 22 of /proc/<pid>/stat), exact: a wall-clock step cannot shift them.
    stat = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    assert probe_process(os.getpid()) == ProcessProbe(alive=True, start_ticks=int(stat[19]))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@dg.op
def noop() -> None:
    pass


@dg.job
def owned() -> None:
    noop()


def _job_run(instance: dg.DagsterInstance, tags: dict[str, str], run_id: str | None = None) -> dg.DagsterRun:
    status = dg.DagsterRunStatus.STARTING  # launched, its worker not set up yet
    return instance.create_run_for_job(owned, run_id=run_id, tags=tags, status=status)


def test_a_run_with_its_parents_tags_is_never_failed_for_the_dead_parent(tmp_path: Path) -> None:
    dead = OwnerProcess(this_host(), _dead_pid())
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        parent_id = str(uuid.uuid4())
        parent_tags = owner_tags(dead, RUN_OWNER_PREFIX, run_id=parent_id)
        parent = _job_run(instance, parent_tags, run_id=parent_id)
        retry = _job_run(instance, parent_tags)  # auto-retry and re-execution copy the parent's tags
        assert fail_dead_runs(instance, "test") == [f"owned run {parent_id} ({dead.describe()})"]
        assert instance.get_run_by_id(parent.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(retry.run_id).status == dg.DagsterRunStatus.STARTING


def test_without_a_boot_id_the_host_is_unknown_and_nothing_is_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = OwnerProcess(this_host(), _dead_pid())
    monkeypatch.setattr(recovery, "BOOT_ID", tmp_path / "no_boot_id")
    assert this_host() is None and current_owner() is None and run_owner_tags("r") == {}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        run_id = str(uuid.uuid4())
        run = _job_run(instance, owner_tags(dead, RUN_OWNER_PREFIX, run_id=run_id), run_id=run_id)
        assert fail_dead_runs(instance, "test") == []
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTING


@dg.op
def sweep_during_the_run(mlflow: MlflowResource) -> list[str]:
    return fail_dead_runs(dg.DagsterInstance.get(), "test")  # as a sensor tick while the run executes


def test_the_mlflow_resource_names_this_process_owner_over_copied_tags(platform_home: Path) -> None:
    dead = OwnerProcess(this_host(), _dead_pid())
    copied = owner_tags(dead, RUN_OWNER_PREFIX, run_id=str(uuid.uuid4()))  # the parent's

    @dg.job(resource_defs={"mlflow": MlflowResource.from_settings(load_settings())})
    def retried() -> None:
        sweep_during_the_run()

    instance = dg.DagsterInstance.get()
    result = retried.execute_in_process(instance=instance, tags=copied)
    assert result.success, "the live run was failed for its parent's dead process"
    assert result.output_for_node("sweep_during_the_run") == []
    tags = instance.get_run_by_id(result.run_id).tags
    assert owner_from_tags(tags, RUN_OWNER_PREFIX, result.run_id) == current_owner()


def test_the_sweeps_share_one_mlflow_client_that_never_creates_a_store(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = platform_home / "not-yet.db"  # prepare_home created the home's own store (mlflow_store.py)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    assert (
        not store.exists() and existing_mlflow_client(MlflowResource.from_settings(load_settings())) is None
    )
    assert not store.exists(), "a sweep must not create the store"
    MlflowClient(tracking_uri=f"sqlite:///{store}").search_experiments()  # the store now exists
    client = existing_mlflow_client(MlflowResource.from_settings(load_settings()))
    assert client is not None and client.search_experiments()[0].name == "Default"


# A job whose only op opens an MLflow run and hangs: the process is then killed with SIGKILL.
HANGING_JOB = """
import sys, time, uuid
import dagster as dg
from mlplatform.recovery import run_owner_tags
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.settings import load_settings

@dg.op
def hang(mlflow: MlflowResource) -> None:
    with mlflow.start_run("faults", run_name="hang"):
        print("inside", flush=True)
        time.sleep(600)

@dg.job(resource_defs={"mlflow": MlflowResource.from_settings(load_settings())})
def stuck() -> None:
    hang()

# As `mlplatform run` does (owner tags up front), or as a daemon's run worker (the resource tags it).
run_id = str(uuid.uuid4())
tags = run_owner_tags(run_id) if sys.argv[1] == "cli" else {}
stuck.execute_in_process(instance=dg.DagsterInstance.get(), run_id=run_id, tags=tags)
"""


def _wait_for_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the hanging job did not start within {timeout} s"
    return proc.stdout.readline().strip()


@pytest.mark.e2e  # starts a process that runs a job, then kills it
@pytest.mark.parametrize("started_by", ["cli", "daemon worker"])
def test_killed_process_run_is_failed_by_the_next_command_and_its_mlflow_run_killed(
    platform_home: Path, started_by: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_JOB, started_by.split()[0]],
        env=subprocess_env(platform_home),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for_line(proc, 120) == "inside"
        instance = dg.DagsterInstance.get()
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        assert run.tags[f"{RUN_OWNER_PREFIX}owner_pid"] == str(proc.pid)
        assert fail_dead_runs(instance, "test") == [], "a live owner's run is left alone"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    client = MlflowClient(tracking_uri=f"sqlite:///{platform_home / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert mlflow_run.info.status == "RUNNING"

    if started_by == "cli":
        prepare_home(load_settings())  # what every `mlplatform` command does first (MLflow: once it answered)
        assert len(kill_dead_mlflow_runs(client, "test")) == 1
    else:
        sensor = build_recovery_sensor(load_settings())
        tick = sensor(dg.build_sensor_context(instance=instance))  # one daemon tick
        assert isinstance(tick, dg.SensorResult) and tick.skip_reason is not None
        assert tick.skip_reason.skip_message == "ended 2 run(s) of dead processes"
    failed = instance.get_run_by_id(run.run_id)
    assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"pid {proc.pid}" in (failure[-1].dagster_event.message or "")
    ended = client.get_run(mlflow_run.info.run_id)
    assert ended.info.status == "KILLED" and ended.info.end_time is not None
    assert f"pid {proc.pid}" in ended.data.tags["mlplatform.ended_by"]
    assert kill_dead_mlflow_runs(client, "test") == [], "ended once"


def test_an_old_instance_config_gets_run_monitoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    config = home / "dagster" / "dagster.yaml"
    config.parent.mkdir(parents=True)
    old = DAGSTER_YAML.replace(RUN_MONITORING_YAML, "")
    config.write_text(old + "# my own note\n")
    for name in ("MLPLATFORM_SPECS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(config.parent))
    prepare_home(load_settings())
    text = config.read_text()
    assert text.startswith(old + "# my own note\n") and text.count("run_monitoring:") == 1
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_poll_interval_seconds == 30
    prepare_home(load_settings())
    assert config.read_text() == text, "migrated once"


# ---- end to end: SIGKILL `mlplatform run` at three points, then the daemon must go on by itself ----

NAME = "e2e_kills"
HISTORY_DAYS = 21
SLOW_MODEL = {
    "num_boost_round": 100_000,
    "early_stopping_rounds": 100_000,
    "params": {"learning_rate": 0.001},
}


def _write_spec(folder: Path, landing: Path, start: date, slow: bool) -> None:
    raw = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
    raw.update(name=NAME, source={"path": f"{landing}/*.parquet", "format": "parquet"})
    raw["partitions"] = {"start": start, "end": "open"}
    raw["drift"] = {"cooldown": "1d"}
    if slow:  # training lasts long enough to be caught with its MLflow run open
        raw["model"] = SLOW_MODEL
    (folder / f"{NAME}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _poll(what: str, condition: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _run_and_kill(
    env: dict[str, str], cwd: Path, log: Path, point: str, reached: Callable[[], object]
) -> dg.DagsterRun:
    """Start `mlplatform run`, SIGKILL it (its whole group) once `reached()`; returns its run, still open."""
    instance = dg.DagsterInstance.get()
    before = {run.run_id for run in instance.get_runs()}
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["mlplatform", "run", "--dataset", NAME],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _poll(f"the kill point '{point}'", lambda: proc.poll() is not None or reached(), 300)
        assert proc.poll() is None, f"`mlplatform run` ended before {point}:\n{log.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (run,) = [run for run in instance.get_runs() if run.run_id not in before]
    assert run.status == dg.DagsterRunStatus.STARTED, f"killed during {point}, the run stays open"
    return run


def _step_started(step: str) -> Callable[[], bool]:
    instance = dg.DagsterInstance.get()

    def started() -> bool:
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=1)
        events = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_START) if runs else []
        return any(event.step_key == f"{NAME}__{step}" for event in events)

    return started


@pytest.mark.e2e
def test_runs_killed_at_three_points_never_block_the_daemon(platform_home: Path, tmp_path: Path) -> None:
    landing, specs, logs = tmp_path / "landing", tmp_path / "specs", tmp_path / "logs"
    for folder in (landing, specs, logs):
        folder.mkdir()
    start = datetime.now(UTC).date() - timedelta(days=HISTORY_DAYS + 1)
    frame = generate_transactions(HISTORY_DAYS + 1, customers=80, start=start, seed=5)
    files = write_daily_parquet(frame, tmp_path / "staged")
    for path in files[:-1]:
        shutil.copy2(path, landing / path.name)
    env = subprocess_env(
        platform_home, MLPLATFORM_SPECS=str(specs), MLPLATFORM_SENSOR_INTERVAL="3", MLPLATFORM_AUTOMATION=NAME
    )
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{platform_home / 'mlflow.db'}")

    def training_run_open() -> list:
        experiment = mlflow.get_experiment_by_name(NAME) if (platform_home / "mlflow.db").exists() else None
        query = "attributes.status = 'RUNNING' and tags.`mlplatform.stage` = 'training'"
        return mlflow.search_runs([experiment.experiment_id], query) if experiment else []

    _write_spec(specs, landing, start, slow=False)
    ingestion = _run_and_kill(env, tmp_path, logs / "ingestion.log", "ingestion", _step_started("raw"))
    # The next command marks the dead run failed before it starts its own.
    promotion = _run_and_kill(env, tmp_path, logs / "promotion.log", "promotion", _step_started("evaluation"))
    _write_spec(specs, landing, start, slow=True)
    training = _run_and_kill(env, tmp_path, logs / "training.log", "training", training_run_open)
    (open_mlflow_run,) = training_run_open()
    instance = dg.DagsterInstance.get()
    for run in (ingestion, promotion):
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE

    # Now only the daemon: its recovery sensor must free the slot the dead training run holds.
    _write_spec(specs, landing, start, slow=False)
    shutil.copy(files[-1], landing / files[-1].name)  # new data (mtime now): the new-data sensor runs
    command = ["dagster-daemon", "run", "-m", "mlplatform.definitions"]
    with running(command, env, tmp_path, logs / "daemon.log") as daemon:

        def status(run_id: str) -> dg.DagsterRunStatus:
            assert daemon.poll() is None, f"the daemon died:\n{(logs / 'daemon.log').read_text()[-3000:]}"
            return instance.get_run_by_id(run_id).status

        started = time.monotonic()
        _poll("the dead training run to be failed", lambda: status(training.run_id).name == "FAILURE", 120, 1)
        print(f"the dead run was failed {time.monotonic() - started:.0f} s after the daemon started")

        def sensor_run_succeeded() -> bool:
            sensor = {"dagster/sensor_name": f"{NAME}__new_data_sensor"}
            runs = instance.get_runs(filters=dg.RunsFilter(tags=sensor))
            failed = [r.run_id for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            assert not failed, f"the sensor's run {failed} failed"
            return any(r.is_success for r in runs)

        _poll("the new-data sensor's run to succeed", sensor_run_succeeded, 300, 2)
        print(f"the sensor's run succeeded {time.monotonic() - started:.0f} s after the daemon started")
    assert mlflow.get_run(open_mlflow_run.info.run_id).info.status == "KILLED"
    failure = instance.all_logs(training.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
    assert "mlplatform__recovery" in (failure.dagster_event.message or "")
