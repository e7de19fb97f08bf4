"""CBPE: calibrate on labelled rows, then estimate metrics without labels, checked on simulated streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from mlplatform.core.metrics import compute_metrics
from mlplatform.core.performance_estimation import (
    ESTIMABLE_METRICS,
    Calibration,
    estimate_metric,
    fit_calibration,
)

IDENTITY = ((0.0, 1.0), (0.0, 1.0))


def binary_stream(n: int, seed: int, location: float = -1.0) -> tuple[np.ndarray, np.ndarray]:
    """Perfectly calibrated scores: each label is drawn with the model's own probability."""
    rng = np.random.default_rng(seed)
    probability = 1 / (1 + np.exp(-rng.normal(location, 1.5, n)))
    return probability, (rng.random(n) < probability).astype(int)


def multiclass_stream(n: int, seed: int, confidence: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits); the model reports softmax(confidence · logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (rng.random(n)[:, None] > np.cumsum(truth, axis=1)).sum(axis=1)
    reported = np.exp(confidence * logits)
    return reported / reported.sum(axis=1, keepdims=True), labels


def test_binary_estimates_match_the_realized_metrics_of_a_calibrated_model() -> None:
    calibration = fit_calibration("binary", *reversed(binary_stream(50_000, seed=1)), classes=[0, 1])
    realized_accuracy = []
    for location in (-1.0, 0.5):  # also after a covariate shift that changes every metric
        probability, labels = binary_stream(200_000, seed=2, location=location)
        realized = compute_metrics("binary", labels, probability)
        for metric in ESTIMABLE_METRICS["binary"]:
            estimate = estimate_metric("binary", metric, calibration, probability)
            assert estimate == pytest.approx(realized[metric], abs=0.01), (location, metric)
        realized_accuracy.append(realized["accuracy"])
    assert abs(realized_accuracy[0] - realized_accuracy[1]) > 0.02  # the estimate followed a real move


def test_calibration_repairs_an_overconfident_binary_model() -> None:
    true_probability, labels = binary_stream(50_000, seed=3)
    calibration = fit_calibration("binary", labels, true_probability**3, [0, 1])
    probability, new_labels = binary_stream(200_000, seed=4)
    reported = probability**3  # same ranking, far too low probabilities
    realized = compute_metrics("binary", new_labels, reported)
    uncalibrated = Calibration(("0", "1"), (IDENTITY,))
    for metric in ("accuracy", "log_loss", "brier", "f1"):
        assert abs(estimate_metric("binary", metric, uncalibrated, reported) - realized[metric]) > 0.05
        # log loss within 3%: the isotonic fit is 0 on the lowest scores, whose log losses are huge.
        tolerance = {"rel": 0.03} if metric == "log_loss" else {"abs": 0.01}
        estimate = estimate_metric("binary", metric, calibration, reported)
        assert estimate == pytest.approx(realized[metric], **tolerance), metric
    assert estimate_metric("binary", "roc_auc", calibration, reported) == pytest.approx(
        realized["roc_auc"], abs=0.01
    )
    assert calibration.apply(reported) == pytest.approx(probability, abs=0.05)


def test_the_curve_is_sklearns_isotonic_regression() -> None:
    rng = np.random.default_rng(5)
    probability = np.round(rng.random(3_000), 3)  # ties: equal scores must get one calibrated value
    labels = (rng.random(3_000) < probability**2).astype(int)
    calibration = fit_calibration("binary", labels, probability, [0, 1])
    expected = IsotonicRegression(out_of_bounds="clip").fit(probability, labels)
    new = np.r_[rng.random(5_000), -1.0, 2.0, probability]
    assert calibration.apply(new) == pytest.approx(expected.predict(new), abs=1e-12)
    x, y = calibration.curves[0]
    assert len(x) < 400 and all(np.diff(x) > 0) and all(np.diff(y) >= 0)  # knots, not every row


def test_multiclass_estimates_follow_the_realized_metrics() -> None:
    calibration = fit_calibration("multiclass", *reversed(multiclass_stream(30_000, seed=6)), [0, 1, 2])
    probabilities, labels = multiclass_stream(100_000, seed=7)
    realized = compute_metrics("multiclass", labels, probabilities)
    for metric in ("log_loss", "accuracy"):
        estimate = estimate_metric("multiclass", metric, calibration, probabilities)
        assert estimate == pytest.approx(realized[metric], abs=0.01), metric
    calibrated = calibration.apply(probabilities)
    assert calibrated.shape == probabilities.shape and calibrated.sum(axis=1) == pytest.approx(1.0)


def test_calibration_repairs_an_overconfident_multiclass_model() -> None:
    probabilities, codes = multiclass_stream(30_000, seed=8, confidence=2.5)
    labels = np.array(["a", "b", "c"])[codes]
    calibration = fit_calibration("multiclass", labels, probabilities, ["a", "b", "c"])
    assert calibration.classes == ("a", "b", "c")
    new, new_labels = multiclass_stream(100_000, seed=9, confidence=2.5)
    realized = compute_metrics("multiclass", new_labels, new)
    uncalibrated = Calibration(("a", "b", "c"), (IDENTITY,) * 3)
    # Uncalibrated, the overconfident probabilities promise a log loss near 0.36 for a realized 0.96.
    assert realized["log_loss"] - estimate_metric("multiclass", "log_loss", uncalibrated, new) > 0.5
    assert estimate_metric("multiclass", "log_loss", calibration, new) == pytest.approx(
        realized["log_loss"], rel=0.03
    )
    assert estimate_metric("multiclass", "accuracy", calibration, new) == pytest.approx(
        realized["accuracy"], abs=0.01
    )


def test_to_json_round_trip() -> None:
    probabilities, labels = multiclass_stream(2_000, seed=10)
    calibration = fit_calibration("multiclass", labels, probabilities, [0, 1, 2])
    restored = Calibration.from_json(calibration.to_json())
    assert restored == calibration and restored.classes == ("0", "1", "2")
    assert np.array_equal(restored.apply(probabilities), calibration.apply(probabilities))
    binary = fit_calibration(
        "binary", [False, True, True, False], np.array([0.1, 0.8, 0.6, 0.3]), [False, True]
    )
    assert Calibration.from_json(binary.to_json()) == binary and binary.classes == ("False", "True")


def test_degenerate_inputs_estimate_nan() -> None:
    probability, labels = binary_stream(2_000, seed=11)
    calibration = fit_calibration("binary", labels, probability, [0, 1])
    assert math.isnan(estimate_metric("binary", "roc_auc", calibration, np.array([])))
    assert math.isnan(estimate_metric("binary", "roc_auc", calibration, np.array([np.nan, np.nan])))
    assert math.isnan(estimate_metric("binary", "rmse", calibration, probability))  # no estimator
    assert math.isnan(estimate_metric("regression", "rmse", calibration, probability))
    # Scores below anything calibrated expect no positive at all: a ranking metric is undefined.
    never_positive = Calibration(("0", "1"), (((0.2, 0.9), (0.0, 1.0)),))
    assert math.isnan(estimate_metric("binary", "roc_auc", never_positive, np.array([0.05, 0.1, 0.15])))
    assert estimate_metric("binary", "accuracy", never_positive, np.array([0.05, 0.1, 0.15])) == 1.0
    # Missing probabilities are left out rather than poisoning the estimate.
    with_gap = np.r_[probability, np.nan]
    assert estimate_metric("binary", "roc_auc", calibration, with_gap) == pytest.approx(
        estimate_metric("binary", "roc_auc", calibration, probability)
    )


def test_fitting_needs_two_classes_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        fit_calibration("binary", [1, 1, 1], np.array([0.2, 0.5, 0.9]), [0, 1])
    with pytest.raises(ValueError, match="at least two classes"):  # rows without a label are left out
        fit_calibration("binary", [1, None, 1], np.array([0.2, 0.5, 0.9]), [0, 1])
    with pytest.raises(ValueError, match="3 labels but 2"):
        fit_calibration("binary", [0, 1, 1], np.array([0.2, 0.5]), [0, 1])
    with pytest.raises(ValueError, match=r"as an \(n, 3\) matrix, got shape \(2, 2\)"):
        fit_calibration("multiclass", [0, 1], np.array([[0.5, 0.5], [0.2, 0.8]]), [0, 1, 2])
    with pytest.raises(ValueError, match=r"as 1-d P\(positive\)"):  # not both columns of a binary model
        fit_calibration("binary", [0, 1], np.array([[0.5, 0.5], [0.2, 0.8]]), [0, 1])
    with pytest.raises(ValueError, match="binary or multiclass"):
        fit_calibration("regression", [0.0, 1.0], np.array([0.1, 0.9]), [])
    with pytest.raises(ValueError, match="not among the known classes"):
        fit_calibration("binary", [0, 2], np.array([0.1, 0.9]), [0, 1])
    with pytest.raises(ValueError, match="increasing knots"):
        Calibration(("0", "1"), (((0.5, 0.2), (0.0, 1.0)),))


def test_a_two_class_multiclass_model_keeps_one_curve_per_class() -> None:
    rng = np.random.default_rng(12)
    positive = rng.random(4_000)
    labels = (rng.random(4_000) < positive).astype(int)
    matrix = np.column_stack([1 - positive, positive])
    calibration = fit_calibration("multiclass", labels, matrix, [0, 1])
    assert len(calibration.curves) == 2 and not calibration.binary
    realized = compute_metrics("multiclass", labels, matrix)["accuracy"]
    assert estimate_metric("multiclass", "accuracy", calibration, matrix) == pytest.approx(realized, abs=0.02)
    binary = fit_calibration("binary", labels, positive, [0, 1])
    with pytest.raises(ValueError, match="needs a multiclass calibration"):
        estimate_metric("multiclass", "accuracy", binary, matrix)
