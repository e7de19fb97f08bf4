"""Evaluation plots (PNG files) and the Markdown evaluation report that links them.

Figures are built with matplotlib's object API on the Agg canvas, never through pyplot: no global figure
registry, no GUI backend, safe in Dagster worker processes and threads. Each figure is released right
after it is written, so long runs do not accumulate memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as skm

from mlplatform.core.metrics import PRIMARY_METRIC, encode_labels, higher_is_better
from mlplatform.core.promotion import PromotionDecision

# Enough points to show the shape; more only slows plotting and bloats the PNG.
_MAX_SCATTER_POINTS = 20_000
_DPI = 110

ArrayLike = Sequence[Any] | pd.Series | np.ndarray


def _new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)  # attaches the Agg canvas; the figure keeps a reference to it
    return figure


def _save(figure: Figure, folder: str | Path, file_name: str) -> Path:
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    path = target / file_name
    figure.tight_layout()
    figure.savefig(path, format="png")
    figure.clear()  # "close": drop artists now instead of waiting for garbage collection
    return path


def _sample(n_rows: int) -> np.ndarray:
    """Row positions to plot: all of them, or a fixed-seed sample when there are too many."""
    if n_rows <= _MAX_SCATTER_POINTS:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(0).choice(n_rows, _MAX_SCATTER_POINTS, replace=False))


def _binary_truth(y_true: ArrayLike, classes: Sequence[Any] | None) -> np.ndarray:
    return encode_labels(y_true, classes if classes is not None else [0, 1])


def plot_predicted_vs_actual(
    y_true: ArrayLike, y_pred: ArrayLike, folder: str | Path, file_name: str = "predicted_vs_actual.png"
) -> Path:
    actual, predicted = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    rows = _sample(actual.size)
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.scatter(actual[rows], predicted[rows], s=4, alpha=0.3)
    both = np.concatenate([actual, predicted])
    low, high = float(np.nanmin(both)), float(np.nanmax(both))
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="perfect")
    axes.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual")
    axes.legend(loc="upper left")
    return _save(figure, folder, file_name)


def plot_residuals_over_time(
    times: ArrayLike,
    y_true: ArrayLike,
    y_pred: ArrayLike,
    folder: str | Path,
    file_name: str = "residuals_over_time.png",
) -> Path:
    """Residual (actual - predicted) per row over time, with a rolling mean to reveal drift."""
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(pd.Series(times).reset_index(drop=True)),
            "residual": np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float),
        }
    ).sort_values("time", ignore_index=True)
    rows = _sample(len(frame))
    window = max(1, len(frame) // 50)
    trend = frame["residual"].rolling(window, min_periods=1, center=True).mean()
    figure = _new_figure(8.0, 4.0)
    axes = figure.add_subplot()
    axes.scatter(frame["time"].iloc[rows], frame["residual"].iloc[rows], s=3, alpha=0.25, label="residual")
    axes.plot(frame["time"], trend, color="tab:red", linewidth=1.5, label=f"rolling mean ({window} rows)")
    axes.axhline(0.0, color="black", linewidth=1)
    axes.set(xlabel="time", ylabel="actual - predicted", title="Residuals over time")
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    return _save(figure, folder, file_name)


def plot_roc_curve(
    y_true: ArrayLike,
    proba: ArrayLike,
    folder: str | Path,
    classes: Sequence[Any] | None = None,
    file_name: str = "roc_curve.png",
) -> Path:
    truth, scores = _binary_truth(y_true, classes), np.asarray(proba, dtype=float)
    figure = _new_figure(5.0, 5.0)
    axes = figure.add_subplot()
    if np.unique(truth).size == 2:
        false_positive, true_positive, _ = skm.roc_curve(truth, scores)
        auc = skm.roc_auc_score(truth, scores)
        axes.plot(false_positive, true_positive, label=f"model (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    axes.legend(loc="lower right")
    return _save(figure, folder, file_name)


def plot_precision_recall_curve(
    y_true: ArrayLike,
    proba: ArrayLike,
    folder: str | Path,
    classes: Sequence[Any] | None = None,
    file_name: str = "precision_recall_curve.png",
) -> Path:
    truth, scores = _binary_truth(y_true, classes), np.asarray(proba, dtype=float)
    figure = _new_figure(5.0, 5.0)
    axes = figure.add_subplot()
    if np.unique(truth).size == 2:
        precision, recall, _ = skm.precision_recall_curve(truth, scores)
        average_precision = skm.average_precision_score(truth, scores)
        axes.plot(recall, precision, label=f"model (AP {average_precision:.3f})")
    axes.axhline(float(truth.mean()), color="grey", linestyle="--", label="positive rate")
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    axes.legend(loc="upper right")
    return _save(figure, folder, file_name)


def plot_calibration(
    y_true: ArrayLike,
    proba: ArrayLike,
    folder: str | Path,
    classes: Sequence[Any] | None = None,
    bins: int = 10,
    file_name: str = "calibration.png",
) -> Path:
    """Observed positive rate per predicted-probability bin (equal width); a calibrated model sits on
    the diagonal."""
    truth, scores = _binary_truth(y_true, classes), np.asarray(proba, dtype=float)
    bin_index = np.clip(np.digitize(scores, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    counts = np.bincount(bin_index, minlength=bins)
    filled = counts > 0
    mean_predicted = np.bincount(bin_index, weights=scores, minlength=bins)[filled] / counts[filled]
    observed = np.bincount(bin_index, weights=truth, minlength=bins)[filled] / counts[filled]
    figure = _new_figure(5.0, 5.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    axes.plot(mean_predicted, observed, marker="o", label="model")
    axes.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration")
    axes.legend(loc="upper left")
    return _save(figure, folder, file_name)


def plot_feature_importance(
    importance: Mapping[str, float] | pd.Series,
    folder: str | Path,
    top_n: int = 25,
    file_name: str = "feature_importance.png",
) -> Path:
    """Horizontal bars of the `top_n` features by gain, the most important on top."""
    values = pd.Series(importance, dtype=float).sort_values(ascending=False).head(top_n)[::-1]
    figure = _new_figure(7.0, max(2.5, 0.3 * len(values) + 1.0))
    axes = figure.add_subplot()
    axes.barh(values.index.astype(str), values.to_numpy())
    axes.set(xlabel="total gain", title=f"Feature importance (top {len(values)} by gain)")
    return _save(figure, folder, file_name)


def write_evaluation_plots(
    task: str,
    folder: str | Path,
    y_true: ArrayLike,
    predictions: ArrayLike,
    times: ArrayLike | None = None,
    importance: Mapping[str, float] | pd.Series | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, Path]:
    """All plots that apply to `task`, keyed by a short name. `predictions` as from training.predict."""
    paths: dict[str, Path] = {}
    if task == "regression":
        paths["predicted_vs_actual"] = plot_predicted_vs_actual(y_true, predictions, folder)
        if times is not None:
            paths["residuals_over_time"] = plot_residuals_over_time(times, y_true, predictions, folder)
    elif task == "binary":
        paths["roc_curve"] = plot_roc_curve(y_true, predictions, folder, classes)
        paths["precision_recall_curve"] = plot_precision_recall_curve(y_true, predictions, folder, classes)
        paths["calibration"] = plot_calibration(y_true, predictions, folder, classes)
    elif task != "multiclass":
        raise ValueError(f"unknown task {task!r}; expected regression, binary or multiclass")
    if importance is not None and len(importance) > 0:
        paths["feature_importance"] = plot_feature_importance(importance, folder)
    return paths


def _cell(value: float | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.4g}"


def render_markdown_report(
    title: str,
    task: str,
    metric: str,
    challenger_metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, float],
    decision: PromotionDecision,
    champion_metrics: Mapping[str, float] | None = None,
    baseline_name: str | None = None,
    images: Mapping[str, str | Path] | Iterable[str | Path] = (),
    details: Mapping[str, Any] | None = None,
) -> str:
    """A Markdown evaluation report: details, metrics table, promotion decision and plots.

    Images are linked by file name only, so the report works wherever it is stored next to its PNGs.
    `details` is a free-form key/value list (data window, row counts, run id, ...).
    """
    image_paths = list(images.values()) if isinstance(images, Mapping) else list(images)
    baseline_label = f"baseline ({baseline_name})" if baseline_name else "baseline"
    columns: list[tuple[str, Mapping[str, float]]] = [("challenger", challenger_metrics)]
    if champion_metrics is not None:
        columns.append(("champion", champion_metrics))
    columns.append((baseline_label, baseline_metrics))
    names = list(dict.fromkeys([*challenger_metrics, *(champion_metrics or {}), *baseline_metrics]))

    lines = [f"# {title}", "", f"- **Task:** {task}", f"- **Promotion metric:** {metric}"]
    # A custom metric name still gets a report, just without the direction hint.
    with contextlib.suppress(ValueError):
        lines.append(f"- **Direction:** {'higher' if higher_is_better(metric) else 'lower'} is better")
    if PRIMARY_METRIC.get(task) and PRIMARY_METRIC[task] != metric:
        lines.append(f"- **Task default metric:** {PRIMARY_METRIC[task]}")
    lines += [f"- **{key}:** {value}" for key, value in (details or {}).items()]

    lines += ["", "## Metrics", "", "| metric | " + " | ".join(name for name, _ in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for name in names:
        label = f"**{name}**" if name == metric else name
        lines.append(f"| {label} | " + " | ".join(_cell(values.get(name)) for _, values in columns) + " |")

    verdict = "PROMOTE" if decision.promote else "DO NOT PROMOTE"
    lines += ["", "## Promotion decision", "", f"**{verdict}** — {decision.reason}"]
    if image_paths:
        lines += ["", "## Plots", ""]
        for path in image_paths:
            file_name = Path(path).name
            lines += [f"![{Path(file_name).stem.replace('_', ' ')}]({file_name})", ""]
    return "\n".join(lines).rstrip() + "\n"
