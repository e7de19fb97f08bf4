from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlplatform.core.metrics import (
    PRIMARY_METRIC,
    WEEK,
    baseline_predictions,
    best_baseline,
    compute_metric,
    compute_metrics,
    encode_labels,
    higher_is_better,
    infer_classes,
)


def test_regression_metrics_match_hand_computed_values() -> None:
    y_true = np.array([0.0, 2.0, 4.0, 10.0])
    y_pred = np.array([1.0, 2.0, 3.0, 12.0])
    result = compute_metrics("regression", y_true, y_pred)

    assert result["mae"] == pytest.approx((1 + 0 + 1 + 2) / 4)
    assert result["rmse"] == pytest.approx(math.sqrt((1 + 0 + 1 + 4) / 4))
    assert result["r2"] == pytest.approx(skm.r2_score(y_true, y_pred))
    # The zero actual is left out of MAPE: (0/2 + 1/4 + 2/10) / 3.
    assert result["mape"] == pytest.approx((0 + 0.25 + 0.2) / 3)


def test_mape_is_omitted_when_every_actual_is_zero() -> None:
    result = compute_metrics("regression", [0.0, 0.0], [1.0, -1.0])
    assert "mape" not in result
    assert result["mae"] == pytest.approx(1.0)


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, 500)
    proba = np.clip(y_true * 0.3 + rng.uniform(0, 0.7, 500), 0, 1)
    result = compute_metrics("binary", y_true, proba)

    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, proba))
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y_true, proba))
    assert result["log_loss"] == pytest.approx(skm.log_loss(y_true, proba))
    assert result["brier"] == pytest.approx(skm.brier_score_loss(y_true, proba))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, proba >= 0.5))
    assert result["f1"] == pytest.approx(skm.f1_score(y_true, proba >= 0.5))


def test_binary_metrics_with_string_labels_treat_the_second_class_as_positive() -> None:
    y_true = ["no", "yes", "yes", "no"]
    proba = [0.1, 0.8, 0.4, 0.3]
    result = compute_metrics("binary", y_true, proba, classes=["no", "yes"])
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx(skm.f1_score([0, 1, 1, 0], [0, 1, 0, 0]))


def test_binary_ranking_metrics_are_nan_with_one_class_present() -> None:
    result = compute_metrics("binary", [1, 1, 1], [0.9, 0.8, 0.7])
    assert math.isnan(result["roc_auc"])
    assert math.isnan(result["pr_auc"])
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("task", "y_true", "scores", "classes"),
    [
        ("binary", [0, 1, 1, 0, 1, 0, 0], [0.1, 0.9, 0.4, 0.4, 0.7, 0.2, 0.6], None),
        ("binary", ["no", "yes", "no", "yes"], [0.3, 0.8, 0.3, 0.3], ["no", "yes"]),
        ("binary", [1, 1, 1], [0.9, 0.8, 0.7], None),  # one class: NaN ranking metrics
        ("regression", [1.0, 2.0, 4.0], [1.5, 2.0, 3.0], None),
        ("multiclass", ["a", "b", "c"], [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]], ["a", "b", "c"]),
    ],
)
def test_one_metric_equals_its_value_among_all_metrics(
    task: str, y_true: list, scores: list, classes: list | None
) -> None:
    every = compute_metrics(task, y_true, np.array(scores), classes)
    for metric, value in every.items():
        one = compute_metric(task, metric, y_true, np.array(scores), classes)
        assert one == value or (math.isnan(one) and math.isnan(value)), metric
    assert math.isnan(compute_metric(task, "no_such_metric", y_true, np.array(scores), classes))


def test_multiclass_metrics_match_sklearn_with_arbitrary_labels() -> None:
    classes = ["cat", "dog", "emu"]
    y_true = ["dog", "cat", "emu", "emu", "dog"]
    proba = np.array(
        [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4]],
    )
    result = compute_metrics("multiclass", y_true, proba, classes=classes)
    codes = [1, 0, 2, 2, 1]
    predicted = proba.argmax(axis=1)
    assert result["log_loss"] == pytest.approx(skm.log_loss(codes, proba, labels=[0, 1, 2]))
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["macro_f1"] == pytest.approx(skm.f1_score(codes, predicted, average="macro"))


def test_multiclass_rejects_unknown_labels_and_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="not among the known classes"):
        compute_metrics("multiclass", ["a", "z"], np.full((2, 2), 0.5), classes=["a", "b"])
    with pytest.raises(ValueError, match="columns"):
        compute_metrics("multiclass", ["a", "b"], np.full((2, 3), 1 / 3), classes=["a", "b"])
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("ranking", [1], [1])


def test_metric_directions() -> None:
    assert not higher_is_better("rmse")
    assert not higher_is_better("log_loss")
    assert higher_is_better("roc_auc")
    assert higher_is_better("test_pr_auc")
    assert not higher_is_better("validation_mae")
    assert {task: higher_is_better(metric) for task, metric in PRIMARY_METRIC.items()} == {
        "regression": False,
        "binary": True,
        "multiclass": False,
    }
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("vibes")


def test_labels_encode_across_types() -> None:
    assert infer_classes(pd.Series([True, False, True])) == [False, True]
    assert infer_classes(np.array([3, 1, 2, 1])) == [1, 2, 3]
    assert encode_labels(pd.Series([True, False]), [0, 1]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="not among"):
        encode_labels(pd.Series([1.0, None]), [0, 1])


def test_regression_baselines_use_last_week_per_entity_with_mean_fallback() -> None:
    times = pd.to_datetime(["2024-01-01 10:00", "2024-01-08 10:00", "2024-01-08 11:00"])
    history = pd.DataFrame({"station": ["a", "a", "b"], "ts": times, "y": [5.0, 7.0, 9.0]})
    test_frame = pd.DataFrame(
        {
            "station": ["a", "b", "a"],
            "ts": pd.to_datetime(["2024-01-08 10:00", "2024-01-08 10:00", "2024-01-15 10:00"]),
            "y": [7.0, 1.0, 8.0],
        }
    )
    baselines = baseline_predictions(
        "regression", [2.0, 4.0], test_frame, "ts", "y", history, entity_column="station", seasons=[WEEK]
    )
    assert baselines["training_mean"].tolist() == [3.0, 3.0, 3.0]
    # a@01-08 <- a@01-01 (5); b has no row a week earlier -> mean (3); a@01-15 <- a@01-08 (7).
    assert baselines["seasonal_lag_7d"].tolist() == [5.0, 3.0, 7.0]
    assert "last_value" not in baselines  # no label delay given: recent labels are not assumed known

    name, scores = best_baseline("regression", test_frame["y"], baselines)
    assert name == "seasonal_lag_7d"
    assert scores["rmse"] == pytest.approx(math.sqrt((4 + 4 + 1) / 3))


def test_last_week_baseline_without_history_looks_inside_the_test_frame() -> None:
    frame = pd.DataFrame({"ts": pd.date_range("2024-01-01", periods=15, freq="D"), "y": np.arange(15.0)})
    baselines = baseline_predictions("regression", [100.0], frame, "ts", "y", history=None)
    # Daily data: its natural seasons are a week and 52 weeks (none of these rows reach back a year).
    assert baselines["seasonal_lag_7d"].tolist() == [100.0] * 7 + list(np.arange(8.0))
    assert baselines["seasonal_lag_364d"].tolist() == [100.0] * 15


def test_classification_baselines_use_training_frequencies() -> None:
    frame = pd.DataFrame({"ts": pd.date_range("2024-01-01", periods=3, freq="h")})
    binary = baseline_predictions("binary", [0, 1, 1, 1], frame, "ts", "y", None)
    assert binary["positive_rate"].tolist() == [0.75, 0.75, 0.75]

    multi = baseline_predictions("multiclass", ["b", "a", "b", "c"], frame, "ts", "y", None)
    np.testing.assert_allclose(multi["class_frequencies"], [[0.25, 0.5, 0.25]] * 3)
    name, scores = best_baseline("multiclass", ["a", "b", "c"], multi, classes=["a", "b", "c"])
    assert name == "class_frequencies"
    assert scores["log_loss"] == pytest.approx(-(math.log(0.25) + math.log(0.5) + math.log(0.25)) / 3)
