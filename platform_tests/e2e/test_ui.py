"""What a user sees: the real dagster-webserver, driven by headless Chromium and Dagster's GraphQL client."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlplatform.factory import build_definitions
from mlplatform.home import prepare_home
from mlplatform.runner import run_datasets
from mlplatform.settings import load_settings
from platform_tests.browser import artifacts_dir, chromium, dismiss_dialogs, wait_for_text
from platform_tests.conftest import REPO_ROOT, subprocess_env
from platform_tests.servers import free_port, running, wait_for_asset_keys

pytestmark = pytest.mark.e2e
IMMEDIATE_RUNS = """
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""


@dataclass(frozen=True)
class Webserver:
    home: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    """A platform home with bike sharing materialized, served by a real dagster-webserver."""
    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLATFORM_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home / "dagster"))
        patch.delenv("MLPLATFORM_SPECS", raising=False)
        prepare_home(load_settings())
        outcomes = run_datasets(build_definitions(), ["bike_sharing"], instance=dg.DagsterInstance.get())
        assert all(o.success for o in outcomes), outcomes
    # No daemon here (the automation tests run one): runs the UI submits start at once.
    (home / "dagster" / "dagster.yaml").write_text(IMMEDIATE_RUNS)
    port = free_port()
    log = root / "webserver.log"
    command = ["dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(command, subprocess_env(home), REPO_ROOT, log) as proc:
        wait_for_asset_keys(port, proc, log)
        yield Webserver(home, port)


def test_browser_shows_the_asset_graph_checks_and_metadata(webserver: Webserver, tmp_path: Path) -> None:
    shots = artifacts_dir(tmp_path / "screenshots")
    with chromium(tmp_path / "profile") as browser:
        browser.get(f"{webserver.url}/asset-groups")
        time.sleep(2)
        dismiss_dialogs(browser)
        wait_for_text(
            browser, "ingestion", "cleaning", "features", "training", "evaluation", "scoring", "monitoring"
        )

        lineage = "view=lineage&lineageScope=upstream&lineageDepth=10"
        browser.get(f"{webserver.url}/assets/bike_sharing/drift_report?{lineage}")
        dismiss_dialogs(browser)
        wait_for_text(
            browser, "raw", "clean", "features", "training_set", "model", "predictions", "reference_profile"
        )
        time.sleep(2)  # let the graph finish its layout before the picture
        browser.save_screenshot(str(shots / "asset_graph.png"))

        browser.get(f"{webserver.url}/assets/bike_sharing/clean")
        dismiss_dialogs(browser)
        wait_for_text(browser, "Rows of bike_sharing that pass", "Pandera", "DuckDB", "cleaning")
        browser.save_screenshot(str(shots / "asset_clean.png"))

        browser.get(f"{webserver.url}/assets/bike_sharing/clean?view=checks")
        dismiss_dialogs(browser)
        wait_for_text(browser, "row_accounting", "validity_rate", "unique_keys", "not_empty")
        browser.save_screenshot(str(shots / "asset_clean_checks.png"))

        browser.get(f"{webserver.url}/assets/bike_sharing/evaluation")
        dismiss_dialogs(browser)
        wait_for_text(browser, "decision", "promoted", "challenger_version", "mlflow_run", "report")
        browser.save_screenshot(str(shots / "evaluation.png"))

        browser.get(f"{webserver.url}/assets/bike_sharing/quarantine?view=events")
        dismiss_dialogs(browser)
        wait_for_text(browser, "quarantined_rows", "raw_rows")
        browser.save_screenshot(str(shots / "asset_quarantine_events.png"))
    assert (shots / "asset_graph.png").stat().st_size > 10_000


def test_graphql_client_launches_a_materialization(webserver: Webserver) -> None:
    client = DagsterGraphQLClient("127.0.0.1", port_number=webserver.port)
    run_id = client.submit_job_execution(
        "bike_sharing__all",
        asset_selection=[["bike_sharing", "raw"]],
        tags={"dagster/partition": "2011-01-02"},
    )
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        try:
            status = client.get_run_status(run_id).value
        except DagsterGraphQLClientError:
            status = None
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", f"run {run_id} ended {status}"


def test_mlflow_server_serves_the_registry_over_http(webserver: Webserver, tmp_path: Path) -> None:
    """`mlflow server` over the platform's own store, read with MlflowClient over HTTP."""
    port = free_port()
    log = tmp_path / "mlflow.log"
    store = f"sqlite:///{webserver.home / 'mlflow.db'}"
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with running(command, subprocess_env(webserver.home), REPO_ROOT, log) as proc:
        url = f"http://127.0.0.1:{port}"
        client = MlflowClient(tracking_uri=url, registry_uri=url)  # both over HTTP, not the store's file
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                models = client.search_registered_models()
                break
            except MlflowException:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        assert [m.name for m in models] == ["bike_sharing"]
        champion = client.get_model_version_by_alias("bike_sharing", "champion")
        challenger = client.get_model_version_by_alias("bike_sharing", "challenger")
        assert str(champion.version) == str(challenger.version) == "1"  # the store may give an int
        run = client.get_run(champion.run_id)
        assert run.info.status == "FINISHED" and "test_rmse" in run.data.metrics


def test_rollback_command_in_a_subprocess_says_what_is_wrong_in_one_line(webserver: Webserver) -> None:
    """The home has one champion and nothing to roll back to: the command says so, changes nothing."""
    for extra, expected in (([], "no earlier champion"), (["--to", "7"], "version 7")):
        done = subprocess.run(
            ["mlplatform", "rollback", "--dataset", "bike_sharing", *extra],
            env=subprocess_env(webserver.home),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlplatform: error: "), done.stderr
        assert expected in lines[0], lines[0]
