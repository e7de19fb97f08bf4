"""MLflow unreachable or read-only: runs fail within 60 s, before any data stage, naming the tracking URI.

The "black hole" accepts TCP connections on 127.0.0.1 and never answers (a hung server or a dropped
route); the closed port refuses them; the read-only store is an immutable SQLite file (`chattr +i`,
which binds root too, unlike file modes).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from mlplatform.factory import build_definitions
from mlplatform.runner import failure_reason
from mlplatform.sensors.recovery import build_recovery_sensor
from mlplatform.settings import load_settings
from platform_tests.conftest import subprocess_env
from platform_tests.servers import free_port


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A listening socket that is never accepted from: connects succeed, requests never get an answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _mlplatform_run(home: Path, tracking_uri: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        ["mlplatform", "run", "--dataset", "transactions"],
        cwd=home.parent,
        env=subprocess_env(home, MLFLOW_TRACKING_URI=tracking_uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, time.monotonic() - started


def _assert_nothing_ran(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == [], "no run may start while MLflow is down"
    assert not list(home.rglob("*.duckdb")), "no data stage ran (no warehouse file)"


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["black hole", "closed port"])
def test_run_fails_within_a_minute_naming_the_tracking_uri(
    tmp_path: Path, black_hole: str, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = black_hole if server == "black hole" else f"http://127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    result, seconds = _mlplatform_run(home, uri)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert seconds < 60, f"took {seconds:.0f} s"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"mlplatform: error: cannot reach MLflow at {uri}:") and "nothing was run" in line
    _assert_nothing_ran(home, monkeypatch)


def test_a_daemon_launched_run_fails_at_resource_setup_before_any_step(
    platform_home: Path, black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's own MLflow HTTP settings win over the platform's defaults (here: 2 s, no retry)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", black_hole)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    job = build_definitions().resolve_job_def("transactions__ingest")
    started = time.monotonic()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        partition_key=job.partitions_def.get_last_partition_key(),
        raise_on_error=False,
    )
    seconds = time.monotonic() - started
    assert not result.success and seconds < 15, f"took {seconds:.0f} s"
    assert not [e for e in result.all_events if e.is_step_start], "no step may start"
    reason = failure_reason(result)
    assert f"MlflowUnavailable: cannot reach MLflow at {black_hole}: ReadTimeoutError" in reason, reason
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT=2" in reason


@pytest.mark.e2e
def test_read_only_store_fails_before_any_data_stage_and_the_champion_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = home / "mlflow.db"
    uri = f"sqlite:///{store}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("transactions")
    (tmp_path / "model").mkdir()
    for _ in range(2):
        version = client.create_model_version("transactions", source=str(tmp_path / "model"))
    client.set_registered_model_alias("transactions", "champion", "1")
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here (needs root on ext4/xfs): no read-only store to test")
    try:
        result, seconds = _mlplatform_run(home, uri)
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    assert result.returncode == 2 and seconds < 60, result.stderr[-2000:]
    assert f"cannot write to MLflow at {uri}:" in result.stderr
    _assert_nothing_ran(home, monkeypatch)
    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "transactions", "champion"
    )
    assert str(champion.version) == "1" and str(version.version) == "2"


def test_a_failed_step_explains_itself_in_one_line() -> None:
    @dg.asset
    def broken() -> None:
        raise ValueError("column amount holds inf in 3 rows\nmore detail on the next line")

    result = dg.materialize([broken], raise_on_error=False)
    assert failure_reason(result) == "ValueError: column amount holds inf in 3 rows"


def test_recovery_sensor_goes_on_without_mlflow_and_asks_it_again_later(
    platform_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sensor, instance = build_recovery_sensor(load_settings()), dg.DagsterInstance.get()
    first = sensor(dg.build_sensor_context(instance=instance))
    assert (
        first.skip_reason is not None
        and "MLflow not checked: API request to" in first.skip_reason.skip_message
    )
    assert float(first.cursor) > time.time() + 500, "MLflow is asked again in 10 minutes"
    started = time.monotonic()
    second = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert time.monotonic() - started < 2 and second.cursor == first.cursor
    assert second.skip_reason.skip_message == (
        "no dead runs; MLflow not checked: it was unreachable at the last check"
    )
