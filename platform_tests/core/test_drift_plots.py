"""The drift bars draw, for each column, the PSI threshold its verdict applied (not one global line)."""

from __future__ import annotations

import pandas as pd
from matplotlib.lines import Line2D

from mlplatform.core.drift_plots import PSI_THRESHOLD_LABEL, feature_drift_bars, feature_drift_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def columns() -> pd.DataFrame:
    """Three columns; `hour` has a raised (calibrated) threshold, as drift_reference.column_thresholds
    gives a column whose reference windows vary naturally."""
    return pd.DataFrame(
        {
            "feature": ["hour", "temp", "prediction"],
            "role": ["feature", "feature", "prediction"],
            "psi": [0.5, 0.3, float("nan")],
            "psi_threshold": [0.9, 0.2, 0.25],
            "drifted": [False, True, False],
        }
    )


def test_each_bar_gets_the_threshold_of_its_own_column() -> None:
    figure = feature_drift_figure(columns(), "tiny 2024-03")
    (axes,) = figure.axes
    (ticks,) = [line for line in axes.get_lines() if line.get_label() == PSI_THRESHOLD_LABEL]
    assert isinstance(ticks, Line2D)
    labels = [label.get_text() for label in axes.get_yticklabels()]
    drawn = dict(zip((labels[int(y)] for y in ticks.get_ydata()), ticks.get_xdata(), strict=True))
    assert drawn == {"prediction (prediction)": 0.25, "temp": 0.2, "hour": 0.9}
    # No other line: the spec's 0.2 is not drawn across columns whose threshold is higher.
    assert [line.get_label() for line in axes.get_lines()] == [PSI_THRESHOLD_LABEL]
    bars = {label: patch.get_width() for label, patch in zip(labels, axes.patches, strict=True)}
    assert bars == {"prediction (prediction)": 0.0, "temp": 0.3, "hour": 0.5}  # NaN PSI drawn as 0
    colours = {label: patch.get_facecolor()[:3] for label, patch in zip(labels, axes.patches, strict=True)}
    assert colours["temp"] != colours["hour"]  # drifted in red


def test_the_bars_are_a_png() -> None:
    assert feature_drift_bars(columns(), "tiny 2024-03")[:8] == PNG_SIGNATURE
