"""End to end with real processes: dagster-daemon + dagster-webserver drive ingestion, drift and retraining.

A synthetic payments dataset (mlplatform.datasets.synthetic) lands in a temp folder watched by a spec
with open-ended partitions. Dropping the history bootstraps the first champion through the
new-data sensor alone; dropping days whose amounts and countries are shifted must make the drift
sensor request a retraining that succeeds, registers a new MLflow version and records its promotion
decision. The processes are always stopped.
"""

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.tags import SENSOR_NAME_TAG
from mlflow.tracking import MlflowClient

from mlplatform.datasets.synthetic import DriftInjection, generate_transactions, write_daily_parquet
from mlplatform.specs.loader import BUNDLED_SPECS_DIR
from platform_tests.conftest import subprocess_env
from platform_tests.servers import free_port, poll

pytestmark = pytest.mark.e2e

NAME = "e2e_payments"
HISTORY_DAYS, SHIFTED_DAYS = 28, 10
DAGSTER_YAML = """telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1  # one DuckDB writer at a time
"""


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


@pytest.fixture
def staged_days(tmp_path: Path) -> tuple[list[Path], list[Path], date]:
    """Daily files: HISTORY_DAYS as usual, then SHIFTED_DAYS with 4x amounts and a new country mix."""
    start = datetime.now(UTC).date() - timedelta(days=HISTORY_DAYS + SHIFTED_DAYS)
    shift = start + timedelta(days=HISTORY_DAYS)
    drift = DriftInjection(covariate_from=shift, amount_scale=4.0, country_mix_shift=0.7)
    frame = generate_transactions(
        HISTORY_DAYS + SHIFTED_DAYS, customers=120, start=start, seed=11, drift=drift
    )
    files = write_daily_parquet(frame, tmp_path / "staged")
    return files[:HISTORY_DAYS], files[HISTORY_DAYS:], shift


@dataclass
class Services:
    url: str
    processes: dict[str, subprocess.Popen]

    def assert_running(self) -> None:
        """Fail at once, not at a timeout, when the daemon or the webserver has died (its log is printed)."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with code {process.returncode}")


@pytest.fixture
def daemon_and_webserver(
    platform_home: Path, landing: Path, staged_days: tuple, write_spec: Callable[..., Path], tmp_path: Path
) -> Iterator[Services]:
    raw = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
    raw.update(name=NAME, source={"path": f"{landing}/*.parquet", "format": "parquet"})
    raw["partitions"] = {"start": staged_days[2] - timedelta(days=HISTORY_DAYS), "end": "open"}
    raw["drift"] = {"cooldown": "1d"}
    spec_path = write_spec(raw, f"{NAME}.yaml")
    (platform_home / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML)
    env = subprocess_env(
        platform_home,
        MLPLATFORM_SPECS=str(spec_path.parent),
        MLPLATFORM_SENSOR_INTERVAL="3",
        MLPLATFORM_AUTOMATION=NAME,  # the bundled datasets' sensors stay off
    )
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    commands = {
        "daemon": ["dagster-daemon", "run", "-m", "mlplatform.definitions"],
        "webserver": [
            "dagster-webserver",
            "-m",
            "mlplatform.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
    }
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            with (logs / f"{name}.log").open("w") as log:
                processes[name] = subprocess.Popen(
                    command,
                    env=env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        yield Services(f"http://127.0.0.1:{port}", processes)
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name} (tail) ---\n" + "\n".join(log.read_text().splitlines()[-40:]))


def test_drift_triggers_retraining_through_the_daemon(
    platform_home: Path, landing: Path, staged_days: tuple, daemon_and_webserver: Services
) -> None:
    history, shifted, shift = staged_days
    instance = dg.DagsterInstance.get()
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{platform_home / 'mlflow.db'}")
    started = time.monotonic()

    def no_failed_runs() -> None:
        daemon_and_webserver.assert_running()
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        if failed:
            errors = [
                str(e.dagster_event.step_failure_data.error.to_string())[-1500:]
                for e in instance.all_logs(failed[0].run_id)
                if e.dagster_event and e.dagster_event.is_step_failure
            ]
            raise AssertionError(f"run {failed[0].job_name} failed: {errors}")

    def successful_runs(job: str) -> list[dg.DagsterRun]:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS]))
        return list(runs)

    def versions() -> list[int]:
        try:
            return sorted(int(v.version) for v in mlflow.search_model_versions(f"name = '{NAME}'"))
        except Exception:  # the MLflow store does not exist before the first training
            return []

    for path in history:
        shutil.copy2(path, landing / path.name)
    poll("the bootstrap run", lambda: successful_runs(f"{NAME}__all"), 150, no_failed_runs, every=2)
    assert int(mlflow.get_model_version_by_alias(NAME, "champion").version) == 1
    with urllib.request.urlopen(f"{daemon_and_webserver.url}/server_info", timeout=10) as response:
        assert response.status == 200
    print(f"bootstrap done after {time.monotonic() - started:.0f} s")

    for path in shifted:
        shutil.copy2(path, landing / path.name)

    def drift_retraining() -> list[dg.DagsterRun]:
        runs = successful_runs(f"{NAME}__retrain")
        # Triggered by the drift sensor on a verdict of a shifted day (not a leftover of the history).
        return [
            r
            for r in runs
            if r.tags.get(SENSOR_NAME_TAG) == f"{NAME}__drift_sensor"
            and r.tags.get("mlplatform/drift_reason", "").removeprefix("drift at ")[:10] >= shift.isoformat()
        ]

    retraining = poll("a drift-triggered retraining", drift_retraining, 180, no_failed_runs, every=2)
    print(f"drift retraining done after {time.monotonic() - started:.0f} s: {retraining[0].tags}")
    assert successful_runs(f"{NAME}__ingest"), "the shifted files went through the ingest job"
    newest = max(versions())
    assert newest >= 2
    decision = mlflow.get_model_version(NAME, str(newest)).tags.get("promotion_decision")
    assert decision in ("promoted", "not promoted")
    evaluation = instance.get_latest_materialization_event(dg.AssetKey([NAME, "evaluation"]))
    assert evaluation.asset_materialization.metadata["decision"].value == decision
    verdict = instance.get_latest_materialization_event(dg.AssetKey([NAME, "drift_report"]))
    assert verdict is not None
