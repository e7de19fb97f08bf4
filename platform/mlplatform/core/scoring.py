"""Scoring with a trained model: scores -> class labels, and the rows of the predictions table.

Each prediction row names its row (`row_identity.prediction_keys`) and carries the actual value once
known. `labels_from_scores` is the one place scores become labels (the predictions table, the drift
reference's own predictions and `predict_labels` all use it), through `metrics.label_codes`, the rule
the metrics use too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.core.metrics import label_codes
from mlplatform.core.row_identity import ACTUAL_COLUMN, prediction_keys
from mlplatform.core.sql import quote_ident
from mlplatform.core.training import TrainedModel, predict
from mlplatform.specs.model import DatasetSpec

PREDICTION_COLUMN = "prediction"
MODEL_VERSION_COLUMN = "model_version"
INPUTS_HASH_COLUMN = "inputs_hash"


def inputs_hash_sql(inputs: Sequence[str]) -> str:
    """The select item for a row's inputs hash: DuckDB's 64-bit hash of the model's input columns as the
    features table types them, computed where the rows are read. Stored beside each prediction, so a
    later reader may reuse the prediction for a row whose inputs hash the same (the reference profile
    does: core.champion_outputs) and scores any other."""
    return f"hash({', '.join(quote_ident(name) for name in inputs)}) AS {INPUTS_HASH_COLUMN}"


def labels_from_scores(
    task: str, scores: np.ndarray, classes: Sequence[Any] | None, threshold: float = 0.5
) -> np.ndarray:
    """Class labels (the original label values, object dtype) of classification scores.

    binary: `scores` is P(classes[1]), labelled classes[1] at >= `threshold`; multiclass: an n x k
    matrix whose columns follow `classes`. Regression has no labels: ValueError."""
    if task == "regression" or classes is None:
        raise ValueError(f"a {task} model has no class labels; its scores are the predictions")
    return np.asarray(classes, dtype=object)[label_codes(task, scores, threshold)]


def probability_columns(model: TrainedModel) -> list[str]:
    """The probability columns of the predictions table: `probability` or `probability_<class>`."""
    if model.task == "binary":
        return ["probability"]
    if model.task == "multiclass":
        return [f"probability_{label}" for label in model.classes or []]
    return []


def predict_labels(model: TrainedModel, X: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
    """Predicted class labels in the original label values (classification only)."""
    if model.task == "regression" or model.classes is None:
        raise ValueError("predict_labels is for classification models; use predict for regression")
    return labels_from_scores(model.task, predict(model, X), model.classes, threshold)


def score_frame(spec: DatasetSpec, model: TrainedModel, features: pd.DataFrame, version: int) -> pd.DataFrame:
    """The predictions table rows of `features`: the row's key (time, entity key, id columns), the
    prediction, probabilities, model version, the hash of its inputs (when `features` was read with
    `inputs_hash_sql`) and the actual target value (null while unlabelled)."""
    keys = [k for k in prediction_keys(spec) if k in features.columns]
    out = features[keys].reset_index(drop=True)
    if features.empty:
        width = len(model.classes or []) if model.task == "multiclass" else 0
        scores = np.empty((0, width)) if width else np.empty(0)
    else:
        scores = predict(model, features)
    if model.task == "regression":
        out[PREDICTION_COLUMN] = scores
    else:
        labels = labels_from_scores(model.task, scores, model.classes)
        out[PREDICTION_COLUMN] = pd.Series(labels).infer_objects()
        matrix = scores.reshape(-1, 1) if model.task == "binary" else scores
        for position, column in enumerate(probability_columns(model)):
            out[column] = matrix[:, position]
    out[MODEL_VERSION_COLUMN] = np.int64(version)
    if INPUTS_HASH_COLUMN in features.columns:  # read with inputs_hash_sql
        out[INPUTS_HASH_COLUMN] = features[INPUTS_HASH_COLUMN].reset_index(drop=True)
    if spec.target.column in features.columns:
        actual = features[spec.target.column].reset_index(drop=True)
        if actual.dtype == object and actual.isna().all():
            actual = actual.astype("string")  # all-None objects would give DuckDB a column of type NULL
        out[ACTUAL_COLUMN] = actual
    return out
