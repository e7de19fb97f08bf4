"""LightGBM training, scoring and storage, independent of Dagster and MLflow.

Feature preparation lives in one function, `prepare_features`, used both when training and when
scoring, so the two can never drift apart. Models are stored in LightGBM's own text format plus a small
JSON sidecar (never pickle): readable, diffable, and loadable by any LightGBM version that reads text.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from mlplatform.core.metrics import encode_labels, infer_classes, to_python_value

MODEL_FILE = "model.txt"
SIDECAR_FILE = "model.json"
DEFAULT_SEED = 42
PREDICT_CHUNK_ROWS = 1_000_000

_OBJECTIVE = {"regression": "regression", "binary": "binary", "multiclass": "multiclass"}
# Early stopping watches this metric; it matches PRIMARY_METRIC in metrics.py.
_EVAL_METRIC = {"regression": "rmse", "binary": "auc", "multiclass": "multi_logloss"}
# LightGBM accepts several spellings; an override under any alias must win over our default.
_THREAD_ALIASES = {"num_threads", "num_thread", "nthread", "nthreads", "n_jobs"}
_SEED_ALIASES = {"seed", "random_seed", "random_state"}

CategoricalLevels = dict[str, list[Any]]


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup pinning, unlike os.cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def lightgbm_params(
    task: str, n_classes: int | None, overrides: Mapping[str, Any], num_threads: int | None = None
) -> dict[str, Any]:
    """LightGBM parameters for `task`: objective, matching eval metric, quiet, seeded and deterministic.

    `overrides` (the spec's model.params) win over the defaults. `num_class` for multiclass comes from
    `n_classes`; `train_lightgbm` sets it from the training labels anyway, so None is fine there.
    """
    if task not in _OBJECTIVE:
        raise ValueError(f"unknown task {task!r}; expected regression, binary or multiclass")
    params: dict[str, Any] = {
        "objective": _OBJECTIVE[task],
        "metric": _EVAL_METRIC[task],
        "verbosity": -1,
        # Same data + same params -> same model, so reruns and comparisons are meaningful.
        "deterministic": True,
        "force_row_wise": True,
    }
    if not _SEED_ALIASES & set(overrides):
        params["seed"] = DEFAULT_SEED
    if not _THREAD_ALIASES & set(overrides):
        params["num_threads"] = num_threads if num_threads is not None else available_cpus()
    params.update(overrides)
    if task == "multiclass" and n_classes is not None:
        params["num_class"] = n_classes
    return params


def effective_threads(params: Mapping[str, Any]) -> int:
    """The threads LightGBM uses with `params` (a spec's own thread setting wins over the default)."""
    for alias in sorted(_THREAD_ALIASES):
        if alias in params:
            return int(params[alias])
    return available_cpus()


def categorical_levels_from(df: pd.DataFrame, categorical_columns: Sequence[str]) -> CategoricalLevels:
    """The levels of each categorical column as seen in training data (sorted where sortable)."""
    return {column: infer_classes(df[column]) for column in categorical_columns}


def prepare_features(
    df: pd.DataFrame, feature_columns: Sequence[str], categorical_levels: Mapping[str, Sequence[Any]]
) -> pd.DataFrame:
    """The model's input frame: `feature_columns` in order, categoricals as pandas 'category' with the
    training levels (unseen values become NaN, which LightGBM treats as missing), the rest as float64.
    """
    missing = [column for column in feature_columns if column not in df.columns]
    if missing:
        raise ValueError(f"feature column(s) missing from the frame: {missing}")
    prepared: dict[str, pd.Series] = {}
    for column in feature_columns:
        values = df[column]
        if column in categorical_levels:
            levels = list(categorical_levels[column])
            raw = values.astype("object") if isinstance(values.dtype, pd.CategoricalDtype) else values
            prepared[column] = pd.Series(pd.Categorical(raw, categories=levels), index=df.index)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            prepared[column] = values.astype("float64")
        else:
            raise TypeError(
                f"feature {column!r} has dtype {values.dtype}; list it as categorical or make it numeric"
            )
    return pd.DataFrame(prepared, index=df.index)


@dataclass
class TrainedModel:
    """A booster plus everything needed to score new rows the way it was trained."""

    task: str
    booster: lgb.Booster
    best_iteration: int
    feature_names: list[str]
    categorical_levels: CategoricalLevels = field(default_factory=dict)
    classes: list[Any] | None = None  # classification only; index = LightGBM's label code
    training_seconds: float = 0.0


def check_finite(prepared: pd.DataFrame, label: np.ndarray, rows: str) -> None:
    """Fail naming the column: LightGBM only says "Input contains infinity" (missing features are fine,
    infinite ones are not; a label must be a finite number)."""
    for column in prepared.columns:
        values = prepared[column]
        if values.dtype == np.float64:
            infinite = int(np.isinf(values.to_numpy()).sum())
            if infinite:
                raise ValueError(
                    f"feature column {column!r} holds {infinite:,} infinite value(s) in the {rows} rows; "
                    "LightGBM cannot train on them: clean them in the source or the spec"
                )
    if label.dtype == np.float64:
        bad = int((~np.isfinite(label)).sum())
        if bad:
            raise ValueError(
                f"the target holds {bad:,} missing or infinite value(s) in the {rows} rows; "
                "LightGBM cannot train on them: clean them in the source or the spec"
            )


def _encode_target(task: str, y: pd.Series | np.ndarray, classes: list[Any] | None) -> np.ndarray:
    if task == "regression":
        return np.asarray(y, dtype=np.float64)
    assert classes is not None
    return encode_labels(y, classes)


def _training_classes(task: str, y_train: pd.Series | np.ndarray) -> list[Any] | None:
    if task == "regression":
        return None
    classes = infer_classes(y_train)
    if task == "binary" and len(classes) != 2:
        raise ValueError(f"binary task needs exactly two classes in the training labels, got {classes}")
    if task == "multiclass" and len(classes) < 2:
        raise ValueError(f"multiclass task needs at least two classes in the training labels, got {classes}")
    return classes


def default_categoricals(X: pd.DataFrame) -> list[str]:
    """Every column that is neither numeric nor boolean (object, string or category dtype)."""
    return [
        str(column)
        for column in X.columns
        if not (pd.api.types.is_numeric_dtype(X[column]) or pd.api.types.is_bool_dtype(X[column]))
    ]


@dataclass(frozen=True)
class _Encoding:
    """How training rows become LightGBM inputs: fixed from the training split, reused for validation."""

    task: str
    feature_names: list[str]
    levels: CategoricalLevels
    classes: list[Any] | None

    def dataset(self, X: pd.DataFrame, y: pd.Series | np.ndarray, rows: str, **args: Any) -> lgb.Dataset:
        """Prepared, checked features and encoded labels of one split as a LightGBM Dataset."""
        features = prepare_features(X, self.feature_names, self.levels)
        label = _encode_target(self.task, y, self.classes)
        check_finite(features, label, rows)
        return lgb.Dataset(features, label=label, **args)


def _checked_weight(weight: pd.Series | np.ndarray | None, rows: int) -> np.ndarray | None:
    """The weights as float64, refused (ValueError) unless one finite, non-negative value per row and
    some positive (LightGBM would train on NaN weights without a word)."""
    if weight is None:
        return None
    values = np.asarray(weight, dtype=np.float64)
    if values.shape != (rows,):
        raise ValueError(f"weight holds {values.size:,} value(s) for {rows:,} training rows")
    if not np.isfinite(values).all() or (values < 0).any() or not (values > 0).any():
        raise ValueError("sample weights must be finite and non-negative, and not all zero")
    return values


def train_lightgbm(
    task: str,
    X_train: pd.DataFrame,
    y_train: pd.Series | np.ndarray,
    X_valid: pd.DataFrame | None,
    y_valid: pd.Series | np.ndarray | None,
    params: Mapping[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
    categorical_features: Sequence[str] | None = None,
    weight: pd.Series | np.ndarray | None = None,
) -> TrainedModel:
    """Train a booster on all columns of `X_train`, early-stopping on the validation set.

    `categorical_features` None means: every column of object, string or category dtype. Their levels
    are fixed from `X_train`. Classification labels may be any values; they are mapped to 0..k-1
    (sorted order; for binary the larger label is positive) and `TrainedModel.classes` maps back.
    Without a validation set (X_valid None or empty) all `num_boost_round` rounds are trained.
    `weight`: one non-negative sample weight per training row (e.g. recency weights); the validation
    rows are never weighted, so early stopping judges the model as it will be used. None: all equal.
    """
    if len(X_train) == 0:
        raise ValueError("cannot train on zero rows")
    sample_weight = _checked_weight(weight, len(X_train))
    if categorical_features is None:
        categorical_features = default_categoricals(X_train)
    feature_names = [str(column) for column in X_train.columns]
    classes = _training_classes(task, y_train)
    encoding = _Encoding(task, feature_names, categorical_levels_from(X_train, categorical_features), classes)
    train_params = dict(params)
    if task == "multiclass":
        assert classes is not None
        train_params["num_class"] = len(classes)
    # LightGBM bins the rows; with free_raw_data the float copy can go once it has.
    args = {"categorical_feature": list(categorical_features), "free_raw_data": True, "weight": sample_weight}
    train_set = encoding.dataset(X_train, y_train, "training", **args)
    valid_sets: list[lgb.Dataset] = []
    callbacks: list[Any] = []
    if X_valid is not None and y_valid is not None and len(X_valid) > 0:
        valid_sets.append(encoding.dataset(X_valid, y_valid, "validation", reference=train_set))
        callbacks.append(lgb.early_stopping(early_stopping_rounds, verbose=False))

    started = time.perf_counter()
    booster = lgb.train(
        train_params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=valid_sets,
        valid_names=["validation"] if valid_sets else None,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    best_iteration = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    return TrainedModel(
        task=task,
        booster=booster,
        best_iteration=int(best_iteration),
        feature_names=feature_names,
        categorical_levels=encoding.levels,
        classes=classes,
        training_seconds=seconds,
    )


def predict(model: TrainedModel, X: pd.DataFrame) -> np.ndarray:
    """Regression: values. Binary: P(classes[1]). Multiclass: n x k matrix, columns in `model.classes`.

    Rows are scored PREDICT_CHUNK_ROWS at a time: each row's score depends on that row alone, and
    the prepared copy of the inputs (and LightGBM's own float copy of it) then stay small instead of
    two extra copies of a 10M-row frame.
    """
    outputs = []
    for start in range(0, max(len(X), 1), PREDICT_CHUNK_ROWS):
        chunk = X.iloc[start : start + PREDICT_CHUNK_ROWS]
        features = prepare_features(chunk, model.feature_names, model.categorical_levels)
        outputs.append(np.asarray(model.booster.predict(features, num_iteration=model.best_iteration)))
    return np.asarray(np.concatenate(outputs), dtype=np.float64)


def feature_importance(model: TrainedModel, importance_type: str = "gain") -> pd.Series:
    """Importance per feature (by total gain unless told otherwise), largest first."""
    values = model.booster.feature_importance(importance_type=importance_type, iteration=model.best_iteration)
    return pd.Series(values, index=model.feature_names, name=importance_type).sort_values(ascending=False)


def _sidecar(model: TrainedModel) -> dict[str, Any]:
    return {
        "format": "lightgbm-text",
        "lightgbm_version": lgb.__version__,
        "task": model.task,
        "best_iteration": model.best_iteration,
        "feature_names": model.feature_names,
        "categorical_levels": {
            column: [to_python_value(level) for level in levels]
            for column, levels in model.categorical_levels.items()
        },
        "classes": None if model.classes is None else [to_python_value(label) for label in model.classes],
        "training_seconds": model.training_seconds,
    }


def save_model(model: TrainedModel, folder: str | Path) -> Path:
    """Write `model.txt` (LightGBM text format) and `model.json` (sidecar) into `folder`; return it."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    # Trees beyond the best iteration are dropped, so the file holds exactly the model that scores.
    (target / MODEL_FILE).write_text(model.booster.model_to_string(num_iteration=model.best_iteration))
    (target / SIDECAR_FILE).write_text(json.dumps(_sidecar(model), indent=2, sort_keys=True))
    return target


def load_model(folder: str | Path) -> TrainedModel:
    """Read a model written by `save_model`."""
    source = Path(folder)
    sidecar = json.loads((source / SIDECAR_FILE).read_text())
    booster = lgb.Booster(model_str=(source / MODEL_FILE).read_text())
    return TrainedModel(
        task=sidecar["task"],
        booster=booster,
        best_iteration=int(sidecar["best_iteration"]),
        feature_names=list(sidecar["feature_names"]),
        categorical_levels={column: list(levels) for column, levels in sidecar["categorical_levels"].items()},
        classes=sidecar["classes"],
        training_seconds=float(sidecar.get("training_seconds", 0.0)),
    )
