from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.promotion import PromotionDecision
from mlplatform.core.report import (
    plot_calibration,
    plot_feature_importance,
    render_markdown_report,
    write_evaluation_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def test_regression_plots_are_pngs_in_the_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y_true = rng.normal(10, 2, 300)
    times = pd.date_range("2024-01-01", periods=300, freq="h").to_series().sample(frac=1.0, random_state=0)
    paths = write_evaluation_plots(
        "regression",
        tmp_path / "plots",
        y_true,
        y_true + rng.normal(0, 0.5, 300),
        times=times,
        importance={"hour": 120.0, "temp": 80.0, "humidity": 5.0},
    )
    assert set(paths) == {"predicted_vs_actual", "residuals_over_time", "feature_importance"}
    for path in paths.values():
        assert path.parent == tmp_path / "plots"
        assert is_png(path)


def test_binary_plots_accept_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y_true = np.where(rng.uniform(size=400) > 0.6, "fraud", "ok")
    proba = np.clip((y_true == "fraud") * 0.4 + rng.uniform(0, 0.6, 400), 0, 1)
    paths = write_evaluation_plots("binary", tmp_path, y_true, proba, classes=["ok", "fraud"])
    assert set(paths) == {"roc_curve", "precision_recall_curve", "calibration"}
    assert all(is_png(path) for path in paths.values())


def test_multiclass_gets_only_the_importance_plot(tmp_path: Path) -> None:
    proba = np.full((3, 3), 1 / 3)
    assert write_evaluation_plots("multiclass", tmp_path, [0, 1, 2], proba) == {}
    paths = write_evaluation_plots("multiclass", tmp_path, [0, 1, 2], proba, importance=pd.Series({"a": 1.0}))
    assert list(paths) == ["feature_importance"]
    with pytest.raises(ValueError, match="unknown task"):
        write_evaluation_plots("ranking", tmp_path, [0], [0.0])


def test_single_plots_handle_edge_cases(tmp_path: Path) -> None:
    # One class only and probabilities exactly 0 and 1: nothing to divide by zero.
    assert is_png(plot_calibration([1, 1, 1], [0.0, 1.0, 1.0], tmp_path))
    many = {f"feature_{i}": float(i) for i in range(60)}
    assert is_png(plot_feature_importance(many, tmp_path, top_n=10, file_name="top10.png"))


def test_markdown_report_has_table_decision_and_relative_image_links(tmp_path: Path) -> None:
    images = {"roc_curve": tmp_path / "deep" / "roc_curve.png", "calibration": tmp_path / "calibration.png"}
    report = render_markdown_report(
        title="transactions: evaluation",
        task="binary",
        metric="roc_auc",
        challenger_metrics={"roc_auc": 0.91234, "log_loss": 0.2},
        champion_metrics={"roc_auc": 0.9, "log_loss": 0.25},
        baseline_metrics={"roc_auc": 0.5, "log_loss": 0.6},
        baseline_name="positive_rate",
        decision=PromotionDecision(True, "challenger roc_auc 0.91234 vs champion 0.9"),
        images=images,
        details={"test window": "2024-03-01 – 2024-04-01"},
    )
    assert report.startswith("# transactions: evaluation\n")
    assert "| metric | challenger | champion | baseline (positive_rate) |" in report
    assert "| **roc_auc** | 0.9123 | 0.9 | 0.5 |" in report
    assert "| log_loss | 0.2 | 0.25 | 0.6 |" in report
    assert "**PROMOTE** — challenger roc_auc 0.91234 vs champion 0.9" in report
    assert "![roc curve](roc_curve.png)" in report and "![calibration](calibration.png)" in report
    assert str(tmp_path) not in report  # links are relative, the report travels with its images
    assert "- **test window:** 2024-03-01 – 2024-04-01" in report


def test_markdown_report_without_champion_and_with_missing_values() -> None:
    report = render_markdown_report(
        title="bike",
        task="regression",
        metric="rmse",
        challenger_metrics={"rmse": 40.0, "mape": 0.3},
        baseline_metrics={"rmse": 90.0, "r2": float("nan")},
        decision=PromotionDecision(False, "no champion; challenger rmse 40 does not beat baseline 90"),
    )
    assert "champion |" not in report
    assert "| metric | challenger | baseline |" in report
    assert "| mape | 0.3 | – |" in report
    assert "| r2 | – | n/a |" in report
    assert "**DO NOT PROMOTE**" in report
    assert "lower is better" in report
    assert "## Plots" not in report
