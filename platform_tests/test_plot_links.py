"""Plot links: where a browser reaches the MLflow UI comes from the settings, each inline plot is short
enough for Dagster to render it inline, and drift plots live in MLflow runs of their own."""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path

import mlflow.server
import pytest

from mlplatform.contracts import MlflowTag
from mlplatform.plot_links import (
    DRIFT_PLOTS_FOLDER,
    DRIFT_RUN_KIND,
    EMBEDDED_SUFFIX,
    INLINE_MARKDOWN_LIMIT,
    RUN_KIND_TAG,
    Plot,
    drift_experiment,
    image_markdown,
    log_drift_plots,
    plot_metadata,
)
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.settings import load_settings

RUN_ID = "0123456789abcdef0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # ~10 kB: far over Dagster's inline limit as a data URI


def resource_from(tmp_path: Path, **env: str) -> MlflowResource:
    return MlflowResource.from_settings(load_settings({"MLPLATFORM_HOME": str(tmp_path), **env}))


@pytest.mark.parametrize(
    ("env", "url", "served"),
    [
        ({}, "http://127.0.0.1:5000", False),
        ({"MLPLATFORM_MLFLOW_PORT": "5123"}, "http://127.0.0.1:5123", False),
        ({"MLFLOW_TRACKING_URI": "http://mlflow.internal:8080/"}, "http://mlflow.internal:8080", True),
        (
            {
                "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000",
                "MLPLATFORM_MLFLOW_UI_URL": "https://ml.example/",
            },
            "https://ml.example",
            True,
        ),
    ],
)
def test_the_mlflow_ui_url_comes_from_the_settings(
    tmp_path: Path, env: dict[str, str], url: str, served: bool
) -> None:
    resource = resource_from(tmp_path, **env)
    assert (resource.browser_url, resource.ui_is_served) == (url, served)
    assert resource.run_url("7", RUN_ID) == f"{url}/#/experiments/7/runs/{RUN_ID}"
    assert resource.model_version_url("bike", 2) == f"{url}/#/models/bike/versions/2"


def test_artifact_urls_use_the_mlflow_servers_get_artifact_route(tmp_path: Path) -> None:
    link = resource_from(tmp_path, MLPLATFORM_MLFLOW_UI_URL="http://ui:9").artifact_url(
        RUN_ID, "plots/a b.png"
    )
    parts = urllib.parse.urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "ui:9", "/get-artifact")
    assert urllib.parse.parse_qs(parts.query) == {"path": ["plots/a b.png"], "run_uuid": [RUN_ID]}
    routes = {rule.rule for rule in mlflow.server.app.url_map.iter_rules()}
    assert parts.path in routes  # the installed server serves it


def test_served_plots_are_short_inline_images_only(tmp_path: Path) -> None:
    resource = resource_from(tmp_path, MLPLATFORM_MLFLOW_UI_URL="http://127.0.0.1:5999")
    plots = [Plot("feature_drift", "per-column drift", PNG), Plot("drift_over_partitions", "drift", PNG)]
    metadata = plot_metadata(resource, RUN_ID, DRIFT_PLOTS_FOLDER, plots)
    assert set(metadata) == {"feature_drift", "drift_over_partitions"}
    text = metadata["feature_drift"].value
    assert len(text) < INLINE_MARKDOWN_LIMIT
    expected = f"http://127.0.0.1:5999/get-artifact?path=plots%2Ffeature_drift.png&run_uuid={RUN_ID}"
    assert text == f"![per-column drift]({expected})"


def test_without_a_known_server_the_image_itself_is_kept_too(tmp_path: Path) -> None:
    resource = resource_from(tmp_path)  # a local store, no UI URL: nothing is known to serve the links
    metadata = plot_metadata(resource, RUN_ID, "evaluation", [Plot("roc_curve", "roc curve", PNG)])
    inline = metadata["roc_curve"].value
    assert len(inline) < INLINE_MARKDOWN_LIMIT
    assert "http://127.0.0.1:5000/get-artifact?" in inline and f"roc_curve{EMBEDDED_SUFFIX}" in inline
    embedded = metadata[f"roc_curve{EMBEDDED_SUFFIX}"].value
    prefix = "![roc curve](data:image/png;base64,"
    assert embedded.startswith(prefix) and base64.b64decode(embedded[len(prefix) : -1]) == PNG


def test_markdown_too_long_to_show_inline_is_refused() -> None:
    with pytest.raises(ValueError, match="1000"):
        image_markdown("plot", "http://x/" + "a" * INLINE_MARKDOWN_LIMIT)


def test_drift_plots_go_to_a_finished_run_of_their_own_experiment(tmp_path: Path) -> None:
    resource = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "art").as_uri()
    )
    plots = [Plot("feature_drift", "per-column drift", PNG)]
    run_id = log_drift_plots(resource, "bike", "dagster-run-1", "2011-01-02", plots)

    client = resource.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == drift_experiment("bike") != "bike"
    assert client.get_experiment_by_name("bike") is None  # the training runs' experiment is untouched
    assert run.data.tags[RUN_KIND_TAG] == DRIFT_RUN_KIND
    assert run.data.tags[MlflowTag.DAGSTER_RUN_ID.value] == "dagster-run-1"
    [artifact] = client.list_artifacts(run_id, DRIFT_PLOTS_FOLDER)
    assert artifact.path == f"{DRIFT_PLOTS_FOLDER}/feature_drift.png"
    downloaded = client.download_artifacts(run_id, artifact.path, str(tmp_path / "down"))
    assert Path(downloaded).read_bytes() == PNG
