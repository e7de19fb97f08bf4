"""Plots where people look, on the tiny dataset through Dagster's testing API: drift and evaluation
plots inline in the materializations' metadata (short links to MLflow artifacts, every run size), and
the evaluation's HTML report with its plots embedded."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.contracts import Stage
from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlplatform.plot_links import INLINE_MARKDOWN_LIMIT
from mlplatform.resources.mlflow import MlflowPlotsResource, MlflowResource
from platform_tests.assets.tiny import MONTHS, TinyDataset, make_tiny_dataset, metadata_of
from platform_tests.servers import free_port

JANUARY, FEBRUARY, MARCH = MONTHS
DATA_STAGES = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)
RANGE = {ASSET_PARTITION_RANGE_START_TAG: FEBRUARY, ASSET_PARTITION_RANGE_END_TAG: MARCH}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """Trained on January and February, March loaded."""
    tiny = make_tiny_dataset(tmp_path_factory.mktemp("tiny_plots"))
    for partition in MONTHS:
        tiny.materialize(DATA_STAGES, partition_key=partition)
    return tiny


@pytest.fixture(scope="module")
def evaluation(home: TinyDataset) -> dg.ExecuteInProcessResult:
    home.materialize([Stage.TRAINING_SET, Stage.MODEL])
    return home.materialize([Stage.EVALUATION])


@pytest.fixture(scope="module")
def drift_run(home: TinyDataset, evaluation: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    """One run over February..March (predictions first), as a backfill runs it."""
    home.materialize([Stage.REFERENCE_PROFILE])
    run = {"resources": home.resources(), "instance": home.instance, "tags": RANGE}
    dg.materialize(home.assets, selection=[home.key(Stage.PREDICTIONS)], **run)
    return dg.materialize(home.assets, selection=[home.key(Stage.DRIFT_REPORT)], **run)


def _linked_artifact(markdown: str) -> tuple[str, str]:
    """(run id, artifact path) of an inline plot `![caption](<ui>/get-artifact?path=...&run_uuid=...)`."""
    assert len(markdown) < INLINE_MARKDOWN_LIMIT and markdown.startswith("![")
    url = markdown[markdown.index("](") + 2 : markdown.index(")")]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return query["run_uuid"][0], query["path"][0]


def _artifact_bytes(home: TinyDataset, run_id: str, path: str, folder: Path) -> bytes:
    client = home.resources()["mlflow"].client()
    return Path(client.download_artifacts(run_id, path, str(folder))).read_bytes()


def test_drift_plots_of_a_multi_partition_run_are_inline_on_its_newest_partition(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult, tmp_path: Path
) -> None:
    """The newest partition's event (the asset's latest) shows both plots as short links to PNGs of an
    MLflow run of their own; the older partition's event carries none (no copies in a backfill)."""
    events = {
        e.partition: e.materialization.metadata
        for e in drift_run.get_asset_materialization_events()
        if e.asset_key == home.key(Stage.DRIFT_REPORT)
    }
    assert list(events) == [FEBRUARY, MARCH]
    assert not {"feature_drift", "drift_over_partitions"} & set(events[FEBRUARY])
    client = home.resources()["mlflow"].client()
    for name in ("feature_drift", "drift_over_partitions"):
        run_id, path = _linked_artifact(events[MARCH][name].value)
        assert path == f"plots/{name}.png"
        assert _artifact_bytes(home, run_id, path, tmp_path)[:8] == b"\x89PNG\r\n\x1a\n"
        run = client.get_run(run_id)
        assert run.data.tags["mlplatform.partition"] == MARCH
        assert client.get_experiment(run.info.experiment_id).name == "tiny.drift_report"
        # The tiny home names no MLflow UI: the image itself is kept too, behind "[Show Markdown]".
        assert events[MARCH][f"{name}_embedded"].value.startswith("![")


def test_an_mlflow_outage_costs_the_drift_plots_links_not_the_verdict(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult
) -> None:
    """MLflow stops answering: drift_report still succeeds with its verdict (what the drift sensor
    reads), its plots only embedded, and a warning saying why."""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    resources = {
        **home.resources(),
        "mlflow": MlflowResource(tracking_uri=down),
        "mlflow_plots": MlflowPlotsResource(tracking_uri=down),
    }
    result = dg.materialize(
        home.assets,
        selection=[home.key(Stage.DRIFT_REPORT)],
        partition_key=MARCH,
        resources=resources,
        instance=home.instance,
    )
    assert result.success
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["drifted"].value is True  # March is shifted
    assert not {"feature_drift", "drift_over_partitions"} & set(metadata)
    for name in ("feature_drift", "drift_over_partitions"):
        assert metadata[f"{name}_embedded"].value.startswith("![")
    warnings = [
        e.user_message for e in home.instance.all_logs(result.run_id) if "could not log" in e.user_message
    ]
    assert len(warnings) == 1 and down in warnings[0] and "embedded" in warnings[0]


def test_evaluation_plots_are_inline_and_its_html_report_embeds_them(
    home: TinyDataset, evaluation: dg.ExecuteInProcessResult, tmp_path: Path
) -> None:
    metadata = metadata_of(evaluation, home.key(Stage.EVALUATION))
    run_id = home.resources()["mlflow"].client().get_model_version("tiny", "1").run_id
    for name in ("predicted_vs_actual", "residuals_over_time", "feature_importance"):
        linked_run, path = _linked_artifact(metadata[name])
        assert (linked_run, path) == (run_id, f"evaluation/{name}.png")
        assert (
            _artifact_bytes(home, run_id, path, tmp_path / name)
            == (Path(metadata["report_path"]).parent / f"{name}.png").read_bytes()
        )
    assert metadata["html_report"].endswith(f"/runs/{run_id}/artifacts/evaluation/report.html")
    html = _artifact_bytes(home, run_id, "evaluation/report.html", tmp_path / "html").decode()
    assert html.count('<img src="data:image/png;base64,') == 3 and "<table>" in html
