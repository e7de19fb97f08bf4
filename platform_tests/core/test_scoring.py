"""Scores -> labels (one rule for all tasks) and the rows of the predictions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.champion_outputs import model_outputs
from mlplatform.core.metrics import compute_metrics
from mlplatform.core.scoring import labels_from_scores, predict_labels, probability_columns, score_frame
from mlplatform.core.training import TrainedModel, lightgbm_params, predict, train_lightgbm
from mlplatform.specs.model import DatasetSpec


def test_binary_labels_are_the_positive_class_from_half_probability() -> None:
    scores = np.array([0.0, 0.49, 0.5, 0.51, 1.0])
    labels = labels_from_scores("binary", scores, ["no", "yes"])
    assert labels.tolist() == ["no", "no", "yes", "yes", "yes"]
    assert labels_from_scores("binary", scores, [0, 1], threshold=0.75).tolist() == [0, 0, 0, 0, 1]


def test_multiclass_labels_are_the_most_probable_column() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    assert labels_from_scores("multiclass", scores, ["high", "low", "mid"]).tolist() == ["high", "mid", "low"]


def test_regression_scores_have_no_labels() -> None:
    with pytest.raises(ValueError, match="regression model has no class labels"):
        labels_from_scores("regression", np.array([1.5, 2.5]), None)


def test_labels_agree_with_the_accuracy_the_metrics_report() -> None:
    """Metrics count a hit with the same rule: accuracy from the labels equals the metric's."""
    rng = np.random.default_rng(3)
    truth = rng.choice(["a", "b", "c"], 200)
    scores = rng.dirichlet([1, 1, 1], 200)
    labels = labels_from_scores("multiclass", scores, ["a", "b", "c"])
    reported = compute_metrics("multiclass", truth, scores, ["a", "b", "c"])["accuracy"]
    assert np.mean(labels == truth) == pytest.approx(reported)


def _multiclass_model() -> tuple[TrainedModel, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"signal": rng.normal(size=400)})
    frame["ts"] = pd.date_range("2024-01-01", periods=400, freq="h")
    target = pd.Series(
        np.where(frame["signal"] > 0.5, "high", np.where(frame["signal"] < -0.5, "low", "mid"))
    )
    params = lightgbm_params("multiclass", None, {"num_leaves": 7}, num_threads=1)
    model = train_lightgbm("multiclass", frame[["signal"]][:300], target[:300], None, None, params, 20, 5)
    return model, frame


def test_score_frame_rows_of_the_predictions_table() -> None:
    model, frame = _multiclass_model()
    spec = DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "columns": {
                "ts": {"type": "timestamp"},
                "signal": {"type": "float"},
                "grade": {"type": "string"},
            },
            "target": {"column": "grade", "task": "multiclass"},
        }
    )
    scored = score_frame(spec, model, frame, version=7)
    columns = probability_columns(model)
    assert columns == ["probability_high", "probability_low", "probability_mid"]
    assert list(scored.columns) == ["ts", "prediction", *columns, "model_version"]
    hashed = score_frame(spec, model, frame.assign(inputs_hash=np.arange(len(frame), dtype=np.uint64)), 7)
    assert list(hashed.columns) == [*scored.columns, "inputs_hash"]  # read with inputs_hash_sql: carried
    assert hashed["inputs_hash"].tolist() == list(range(len(frame)))
    assert scored["model_version"].eq(7).all() and len(scored) == len(frame)
    best = scored[columns].idxmax(axis=1).str.removeprefix("probability_")
    assert (scored["prediction"] == best).all()
    assert scored["prediction"].tolist() == predict_labels(model, frame).tolist()
    # The drift reference names and decodes the champion's outputs the same way.
    outputs = model_outputs(model, frame)
    assert outputs["prediction"].tolist() == scored["prediction"].tolist()
    np.testing.assert_allclose(outputs[columns].to_numpy(), predict(model, frame))
    empty = score_frame(spec, model, frame.iloc[:0], version=7)
    assert list(empty.columns) == list(scored.columns) and empty.empty
