"""The HTML evaluation report carries its plots (data URIs): it renders in MLflow's sandboxed artifact
viewer and from disk, where relative links resolve to nothing."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mlplatform.core.html_report import render_html_report
from mlplatform.core.promotion import PromotionDecision
from mlplatform.core.report import render_markdown_report, write_evaluation_plots


class Page(HTMLParser):
    """The tags and text of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def report(images: dict[str, Path]) -> str:
    return render_markdown_report(
        title="bike: evaluation of model version 3",
        task="regression",
        metric="rmse",
        challenger_metrics={"rmse": 40.5, "mae": 30.1},
        champion_metrics={"rmse": 41.0, "mae": 31.0},
        baseline_metrics={"rmse": 90.0, "mae": 70.0},
        baseline_name="same_hour_last_week",
        decision=PromotionDecision(True, "challenger rmse 40.5 vs champion 41"),
        images=images,
    )


def test_html_report_embeds_every_plot_and_renders_the_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(10, 2, 200)
    plots = write_evaluation_plots(
        "regression", tmp_path, y, y + rng.normal(0, 1, 200), importance={"a": 2.0}
    )
    markdown = report(plots)
    page = Page(render_html_report(markdown, {p.name: p for p in plots.values()}, "bike <v3>"))

    assert len(page.images) == len(plots) == 2
    for image, path in zip(page.images, plots.values(), strict=True):
        source = str(image["src"])
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]) == path.read_bytes()  # the very PNG, embedded
        assert image["alt"] == path.stem.replace("_", " ")
    assert {"table", "th", "td", "h1", "h2"} <= set(page.tags)
    text = "".join(page.text)
    assert "same_hour_last_week" in text and "PROMOTE" in text and "bike <v3>" in text
    assert "![" not in text and "| metric |" not in text  # no Markdown left as text


def test_a_linked_image_that_is_missing_is_named(tmp_path: Path) -> None:
    markdown = report({"roc_curve": tmp_path / "roc_curve.png"})
    with pytest.raises(ValueError, match=r"roc_curve\.png"):
        render_html_report(markdown, {}, "bike")
