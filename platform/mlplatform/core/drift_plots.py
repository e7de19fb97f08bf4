"""Drift plots as PNG bytes: per-column drift bars (with the thresholds applied), drift score over
partitions, the replay's metric per period.

matplotlib's object API on the Agg canvas (never pyplot), as in core.report: safe in worker processes.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlplatform.core.metrics import higher_is_better

_DPI = 100


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    figure.clear()
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


PSI_THRESHOLD_LABEL = "PSI threshold of the column"


def feature_drift_figure(columns: pd.DataFrame, title: str) -> Figure:
    """PSI per column, drifted ones in red, each with the PSI threshold its verdict used (column
    `psi_threshold`: the spec's, raised to the column's natural variability) as a black tick."""
    ordered = columns.assign(psi=columns["psi"].fillna(0.0)).sort_values("psi")
    figure = _figure(7.0, max(2.5, 0.32 * len(ordered) + 1.2))
    axes = figure.add_subplot()
    colours = ["#d62728" if drifted else "#1f77b4" for drifted in ordered["drifted"]]
    labels = [
        f"{name} ({role})" if role != "feature" else name
        for name, role in zip(ordered["feature"], ordered["role"], strict=True)
    ]
    axes.barh(labels, ordered["psi"], color=colours)
    axes.plot(
        ordered["psi_threshold"].to_numpy(dtype=float),
        range(len(ordered)),
        linestyle="none",
        marker="|",
        markersize=14,
        markeredgewidth=2,
        color="black",
        label=PSI_THRESHOLD_LABEL,
    )
    axes.set_xlabel("PSI vs reference (red: drifted by PSI or test)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    return figure


def feature_drift_bars(columns: pd.DataFrame, title: str) -> bytes:
    """feature_drift_figure as PNG bytes."""
    return _png(feature_drift_figure(columns, title))


def drift_history(verdicts: pd.DataFrame, share_threshold: float, drop_threshold: float) -> bytes:
    """Drifted share and performance drop per partition; drifted partitions marked."""
    figure = _figure(8.0, 3.6)
    axes = figure.add_subplot()
    x = pd.to_datetime(verdicts["partition_start"])
    axes.plot(x, verdicts["drifted_share"], label="share of drifted columns", color="#1f77b4")
    if verdicts["performance_drop"].notna().any():
        axes.plot(x, verdicts["performance_drop"], label="performance drop", color="#ff7f0e")
        axes.axhline(drop_threshold, color="#ff7f0e", linestyle=":", linewidth=1)
    axes.axhline(share_threshold, color="#1f77b4", linestyle=":", linewidth=1)
    drifted = verdicts["drifted"].astype(bool).to_numpy()
    if drifted.any():
        axes.scatter(x[drifted], np.zeros(drifted.sum()), marker="v", color="#d62728", label="drift verdict")
    axes.set_ylabel("score (dotted: thresholds)")
    axes.set_title("Drift over partitions")
    axes.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    return _png(figure)


# How each replay policy is drawn: the ceiling dashed and without dots (it retrains after every period).
_REPLAY_STYLES = {
    "static": {"label": "static (never retrains)", "linestyle": "-"},
    "scheduled": {"label": "scheduled", "linestyle": "-"},
    "drift": {"label": "drift-triggered", "linestyle": "-"},
    "every_period": {"label": "every_period (the ceiling)", "linestyle": "--"},
}


def replay_errors(replay: pd.DataFrame, metric: str) -> bytes:
    """The metric per period for each policy (column `metric_value`), with the metric's direction;
    retrain moments marked with dots, except for every_period, which retrains after each one."""
    figure = _figure(10.0, 4.5)
    axes = figure.add_subplot()
    for policy, rows in replay.groupby("policy", sort=False):
        style = _REPLAY_STYLES.get(str(policy), {"label": str(policy), "linestyle": "-"})
        retrained = rows["retrained"].astype(bool).to_numpy()
        x = pd.to_datetime(rows["period"])
        label = f"{style['label']}, retrains: {int(retrained.sum())}"
        (line,) = axes.plot(x, rows["metric_value"], label=label, linestyle=style["linestyle"], linewidth=1.4)
        if policy != "every_period":
            axes.scatter(
                x[retrained],
                rows["metric_value"].to_numpy()[retrained],
                color=line.get_color(),
                s=28,
                zorder=3,
            )
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    axes.set_ylabel(f"{metric} per period ({direction})")
    axes.set_title("Replay: the champion's metric per period (dots: a retraining ran after that period)")
    axes.legend(fontsize="small")
    figure.autofmt_xdate()
    return _png(figure)
