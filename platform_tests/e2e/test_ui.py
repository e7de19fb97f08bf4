"""What a user sees: the real dagster-webserver, driven by headless Chromium and Dagster's GraphQL client."""

from __future__ import annotations

import subprocess
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from mlflow import MlflowClient
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from mlplatform.factory import build_definitions
from mlplatform.home import prepare_home
from mlplatform.runner import run_datasets
from mlplatform.settings import MLFLOW_UI_URL_ENV, load_settings
from platform_tests.browser import artifacts_dir, chromium, click, dismiss_dialogs, wait_for_text
from platform_tests.conftest import REPO_ROOT, subprocess_env
from platform_tests.servers import free_port, http_get, poll, running, wait_for_asset_keys

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
    mlflow_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def mlflow_server_command(home: Path, port: int) -> list[str]:
    """`mlflow server` over the platform's own store (its artifacts are files of the home it reads)."""
    store = f"sqlite:///{home / 'mlflow.db'}"
    address = ["--host", "127.0.0.1", "--port", str(port)]
    return ["mlflow", "server", "--backend-store-uri", store, *address, "--workers", "1"]


def wait_for_mlflow(url: str, proc: subprocess.Popen, log: Path) -> None:
    poll(
        f"the MLflow server at {url}",
        lambda: _answers(f"{url}/health"),
        timeout=120,
        check=lambda: _check_alive(proc, log),
    )


def _answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _check_alive(proc: subprocess.Popen, log: Path) -> None:
    assert proc.poll() is None, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    """A platform home with bike sharing materialized, served by a real dagster-webserver, and an MLflow
    server over its store that the materializations' plot links point at ($MLPLATFORM_MLFLOW_UI_URL)."""
    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    mlflow_port = free_port()
    ui_url = {MLFLOW_UI_URL_ENV: f"http://127.0.0.1:{mlflow_port}"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLATFORM_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home / "dagster"))
        patch.delenv("MLPLATFORM_SPECS", raising=False)
        patch.setenv(MLFLOW_UI_URL_ENV, ui_url[MLFLOW_UI_URL_ENV])
        prepare_home(load_settings())
        outcomes = run_datasets(build_definitions(), ["bike_sharing"], instance=dg.DagsterInstance.get())
        assert all(o.success for o in outcomes), outcomes
    # No daemon here (the automation tests run one): runs the UI submits start at once.
    (home / "dagster" / "dagster.yaml").write_text(IMMEDIATE_RUNS)
    port = free_port()
    log, mlflow_log = root / "webserver.log", root / "mlflow.log"
    command = ["dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with (
        running(
            mlflow_server_command(home, mlflow_port), subprocess_env(home), REPO_ROOT, mlflow_log
        ) as mlflow,
        running(command, subprocess_env(home, **ui_url), REPO_ROOT, log) as proc,
    ):
        wait_for_asset_keys(port, proc, log)
        wait_for_mlflow(ui_url[MLFLOW_UI_URL_ENV], mlflow, mlflow_log)
        yield Webserver(home, port, mlflow_port)


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


def test_mlflow_server_serves_the_registry_over_http(webserver: Webserver) -> None:
    """`mlflow server` over the platform's own store, read with MlflowClient over HTTP."""
    url = webserver.mlflow_url
    client = MlflowClient(tracking_uri=url, registry_uri=url)  # both over HTTP, not the store's file
    models = client.search_registered_models()
    assert [m.name for m in models] == ["bike_sharing"]
    champion = client.get_model_version_by_alias("bike_sharing", "champion")
    challenger = client.get_model_version_by_alias("bike_sharing", "challenger")
    assert str(champion.version) == str(challenger.version) == "1"  # the store may give an int
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and "test_rmse" in run.data.metrics


# Images of the page served by `origin` that loaded: (alt text, natural width).
LOADED_IMAGES = """
return Array.from(document.images)
  .filter(image => image.src.startsWith(arguments[0]) && image.complete && image.naturalWidth > 0)
  .map(image => [image.alt, image.naturalWidth]);
"""


def loaded_images(browser: WebDriver, origin: str, *alts: str) -> dict[str, int]:
    """Wait until images with each of `alts` from `origin` have loaded on the page, as it first shows."""
    found: dict[str, int] = {}

    def all_loaded(driver: WebDriver) -> bool:
        found.update(dict(driver.execute_script(LOADED_IMAGES, origin)))
        return set(alts) <= set(found)

    try:
        WebDriverWait(browser, 60).until(all_loaded)
    except TimeoutException:
        raise AssertionError(f"{sorted(set(alts) - set(found))} not shown from {origin}") from None
    return found


def test_plots_show_inline_and_the_html_report_renders_in_mlflow(
    webserver: Webserver, tmp_path: Path
) -> None:
    """Drift and evaluation plots are images on the asset pages, loaded from the MLflow server without
    opening "[Show Markdown]"; the evaluation's HTML report renders with its plots in MLflow's viewer."""
    shots = artifacts_dir(tmp_path / "screenshots")
    origin = f"{webserver.mlflow_url}/get-artifact?"
    pages = {
        "drift_report": ("per-column drift", "drift over partitions"),
        "evaluation": ("predicted vs actual", "residuals over time", "feature importance"),
    }
    client = MlflowClient(tracking_uri=webserver.mlflow_url)
    run_id = client.get_model_version("bike_sharing", "1").run_id
    with chromium(tmp_path / "profile") as browser:
        for asset, alts in pages.items():
            browser.get(f"{webserver.url}/assets/bike_sharing/{asset}")
            dismiss_dialogs(browser)
            loaded = loaded_images(browser, origin, *alts)
            assert all(width >= 300 for width in loaded.values()), loaded
            dismiss_dialogs(browser)
            first = browser.find_element(By.CSS_SELECTOR, f"img[alt='{alts[0]}']")
            browser.execute_script("arguments[0].scrollIntoView()", first)
            browser.save_screenshot(str(shots / f"{asset}_plots.png"))

        status, report = http_get(f"{origin}path=evaluation/report.html&run_uuid={run_id}")
        assert status == 200 and report.count(b'<img src="data:image/png;base64,') == 3
        experiment = client.get_run(run_id).info.experiment_id
        browser.get(
            f"{webserver.mlflow_url}/#/experiments/{experiment}/runs/{run_id}/artifacts/evaluation/report.html"
        )
        frame = WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "iframe.mlflow-html-iframe")
        )
        browser.switch_to.frame(frame)
        widths = WebDriverWait(browser, 30).until(
            lambda d: [w for w in d.execute_script(LOADED_IMAGES, "data:image/png") if w] or None
        )
        assert len(widths) == 3, widths
        browser.switch_to.default_content()
        browser.save_screenshot(str(shots / "mlflow_html_report.png"))


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


def _metadata_value(browser: WebDriver, label: str) -> str:
    """The value shown next to metadata key `label` in the page's metadata table."""
    cells = browser.find_elements(By.XPATH, f"//tr[td[1][normalize-space()='{label}']]/td[2]")
    assert cells, f"metadata key {label!r} not shown on {browser.current_url}"
    return cells[0].text.strip()


def test_a_partitions_page_shows_its_own_metadata_and_the_plots_show_series(
    webserver: Webserver, tmp_path: Path
) -> None:
    """A week of `clean` shows that week's rows, and a drifted week of `drift_report` that week's verdict,
    as the warehouse holds them (not the whole run's); the metadata plots draw series over the events."""
    week, end = "2011-01-09", "2011-01-16"  # not 2011-01-02: another test of this module reloads that week
    warehouse = load_settings({"MLPLATFORM_HOME": str(webserver.home)}).warehouse_for("bike_sharing")
    with duckdb.connect(warehouse, read_only=True) as conn:
        counted = {
            label: conn.execute(
                f"SELECT count(*) FROM bike_sharing.{table} WHERE {column} >= ? AND {column} < ?", [week, end]
            ).fetchall()[0][0]
            for label, table, column in (
                ("raw_rows", "raw", "_partition_ts"),
                ("clean_rows", "clean", "ts"),
                ("quarantined_rows", "quarantine", "_partition_ts"),
            )
        }
        drifted_week, status, n_drifted = conn.execute(
            "SELECT strftime(partition_start, '%Y-%m-%d'), status, n_drifted FROM bike_sharing.drift_verdict "
            "WHERE drifted ORDER BY partition_start LIMIT 1"
        ).fetchall()[0]
        all_raw = conn.execute("SELECT count(*) FROM bike_sharing.raw").fetchall()[0][0]
    assert 0 < counted["raw_rows"] < all_raw
    shots = artifacts_dir(tmp_path / "screenshots")
    with chromium(tmp_path / "profile") as browser:
        assets = f"{webserver.url}/assets/bike_sharing"
        browser.get(f"{assets}/clean?view=partitions&partition={week}")
        dismiss_dialogs(browser)
        wait_for_text(browser, "Latest materialization", "raw_rows", "quarantine_share")
        browser.save_screenshot(str(shots / "clean_partition.png"))
        shown = {label: int(_metadata_value(browser, label)) for label in counted}
        assert shown == counted
        assert int(_metadata_value(browser, "dagster/row_count")) == counted["clean_rows"]

        browser.get(f"{assets}/drift_report?view=partitions&partition={drifted_week}")
        dismiss_dialogs(browser)
        wait_for_text(browser, "Latest materialization", "verdict_partition", "drifted_share")
        browser.save_screenshot(str(shots / "drift_report_partition.png"))
        assert _metadata_value(browser, "verdict_partition") == drifted_week
        assert (_metadata_value(browser, "status"), int(_metadata_value(browser, "n_drifted"))) == (
            status,
            n_drifted,
        )
        assert _metadata_value(browser, "drifted").lower() == "true"

        # The asset's metadata plots, over its events (one per partition of the run).
        browser.get(f"{assets}/clean")
        dismiss_dialogs(browser)
        wait_for_text(browser, "Metadata", "Plots")
        click(browser, browser.find_element(By.XPATH, "//button[normalize-space()='Plots']"))
        events = browser.find_element(By.XPATH, "//button[normalize-space()='Events']")
        browser.execute_script("arguments[0].scrollIntoView()", events)
        click(browser, events)
        # One chart (a canvas under its key) per numeric key: the row counts and the quarantine share.
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.TAG_NAME, "canvas")) >= 4)
        titles = {e.text for e in browser.find_elements(By.XPATH, "//div[following-sibling::div//canvas]")}
        assert {"raw_rows", "quarantine_share", "dagster/row_count"} <= titles, titles
        browser.save_screenshot(str(shots / "clean_plots.png"))
        assert "Asset plots are automatically generated" not in browser.find_element(By.TAG_NAME, "body").text
