"""Plots where people look: PNGs logged as MLflow artifacts and shown inline in Dagster's UI.

Dagster's UI renders a Markdown metadata value inline only when it is shorter than 1000 characters
(longer ones hide behind "[Show Markdown]"), so an embedded PNG can never be inline. A plot's entry is
therefore a short `![caption](url)` of the MLflow server's `get-artifact` route
(MlflowResource.artifact_url).
When no server is known to answer there (no $MLPLATFORM_MLFLOW_UI_URL and a local store: the link
works once `mlplatform up` runs), each plot also gets `<name>_embedded`, the PNG itself as a data URI.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow

from mlplatform.contracts import MlflowTag
from mlplatform.resources.mlflow import MlflowResource

INLINE_MARKDOWN_LIMIT = 1000  # Dagster's UI: `mdStr.length < 1e3` renders inline
EMBEDDED_SUFFIX = "_embedded"
DRIFT_PLOTS_FOLDER = "plots"
# Tags of the MLflow runs that only hold drift plots, in an experiment of their own (drift_experiment),
# so that nothing looking for training runs in the dataset's experiment ever meets them.
RUN_KIND_TAG = "mlplatform.kind"
DRIFT_RUN_KIND = "drift_report"
PARTITION_TAG = "mlplatform.partition"


@dataclass(frozen=True)
class Plot:
    name: str  # the metadata key and the file's stem
    caption: str
    png: bytes

    @property
    def file_name(self) -> str:
        return f"{self.name}.png"


def drift_experiment(dataset: str) -> str:
    """The MLflow experiment of `dataset`'s drift plots (one run per drift_report materialization)."""
    return f"{dataset}.drift_report"


def image_markdown(caption: str, url: str, note: str = "") -> str:
    """`![caption](url)` (plus a note), checked to stay short enough for Dagster to render inline."""
    text = f"![{caption}]({url})" + (f"\n\n{note}" if note else "")
    if len(text) >= INLINE_MARKDOWN_LIMIT:
        raise ValueError(
            f"plot {caption!r}: {len(text)} characters of Markdown, Dagster shows only shorter than "
            f"{INLINE_MARKDOWN_LIMIT} inline: {text[:200]}"
        )
    return text


def embedded_markdown(plot: Plot) -> str:
    return f"![{plot.caption}](data:image/png;base64,{base64.b64encode(plot.png).decode()})"


def embedded_metadata(plots: Sequence[Plot]) -> dict[str, dg.MetadataValue]:
    """Only the PNGs themselves, `<name>_embedded` each: for plots that could not be logged to MLflow."""
    return {plot.name + EMBEDDED_SUFFIX: dg.MetadataValue.md(embedded_markdown(plot)) for plot in plots}


def plot_metadata(
    resource: MlflowResource, run_id: str, folder: str, plots: Sequence[Plot]
) -> dict[str, dg.MetadataValue]:
    """An inline image per plot, of the artifact `folder/<file>` of MLflow run `run_id`; with no
    server known to answer, also the PNG itself under `<name>_embedded` (behind "[Show Markdown]")."""
    served = resource.ui_is_served
    metadata: dict[str, dg.MetadataValue] = {}
    for plot in plots:
        url = resource.artifact_url(run_id, f"{folder}/{plot.file_name}")
        note = (
            ""
            if served
            else f"(the MLflow UI at {resource.browser_url} serves this image, e.g. under `mlplatform up`; "
            f"the image itself: `{plot.name}{EMBEDDED_SUFFIX}`)"
        )
        metadata[plot.name] = dg.MetadataValue.md(image_markdown(plot.caption, url, note))
    return metadata | ({} if served else embedded_metadata(plots))


def log_drift_plots(
    resource: MlflowResource, dataset: str, dagster_run_id: str, partition_key: str, plots: Sequence[Plot]
) -> str:
    """A finished MLflow run in drift_experiment(dataset) holding the plots under DRIFT_PLOTS_FOLDER;
    returns its id."""
    tags: Mapping[str, str] = {
        RUN_KIND_TAG: DRIFT_RUN_KIND,
        MlflowTag.DAGSTER_RUN_ID.value: dagster_run_id,
        PARTITION_TAG: partition_key,
    }
    run_name = f"drift {partition_key}"
    with (
        resource.start_run(drift_experiment(dataset), run_name, tags) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for plot in plots:
            (Path(tmp) / plot.file_name).write_bytes(plot.png)
        mlflow.log_artifacts(tmp, DRIFT_PLOTS_FOLDER)
        return run.info.run_id
