"""Evaluation metrics and naive baselines for the three supported tasks.

Every metric is a plain float keyed by a short name, so the same dict can be logged to MLflow, shown in
the report and compared during promotion. Baselines give each model a floor it must beat: a model that
cannot outperform "predict the average" has learned nothing useful.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

PRIMARY_METRIC: dict[str, str] = {"regression": "rmse", "binary": "roc_auc", "multiclass": "log_loss"}

_HIGHER_IS_BETTER = {
    "r2": True,
    "roc_auc": True,
    "pr_auc": True,
    "accuracy": True,
    "f1": True,
    "macro_f1": True,
}
_LOWER_IS_BETTER = {"mae": False, "rmse": False, "mape": False, "log_loss": False, "brier": False}
_DIRECTION: dict[str, bool] = {**_HIGHER_IS_BETTER, **_LOWER_IS_BETTER}
# What a model with no skill scores, where that is the same for every data set: ROC AUC 0.5 (random
# ranking). Drops of such a metric are measured against the model's lift over it (core.drift).
_NO_SKILL = {"roc_auc": 0.5}

HOUR, DAY, WEEK = timedelta(hours=1), timedelta(days=1), timedelta(days=7)
YEAR_OF_WEEKS = timedelta(weeks=52)  # 364 days: the same weekday a year before
# (data spacing below, its seasons): hourly data -> same hour yesterday and last week, and so on.
_SEASONS_BY_SPACING = (
    (DAY, (DAY, WEEK)),
    (WEEK, (WEEK, YEAR_OF_WEEKS)),
    (timedelta(days=28), (YEAR_OF_WEEKS,)),
)
SEASONAL_LAG_PREFIX = "seasonal_lag_"
LAST_VALUE = "last_value"
_BASELINE_DESCRIPTIONS = {
    "training_mean": "the mean of the training target",
    LAST_VALUE: "the entity's latest value known at the time (labels arrive with the spec's shortest target lag)",
    "positive_rate": "the training share of the positive class",
    "class_frequencies": "the training share of each class",
}


def no_skill_value(metric: str) -> float | None:
    """The score of a no-skill model when it does not depend on the data (ROC AUC: 0.5), else None."""
    return _NO_SKILL.get(metric)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better. Accepts prefixed names such as "test_rmse"."""
    if metric in _DIRECTION:
        return _DIRECTION[metric]
    # Longest known suffix wins, so "test_pr_auc" resolves to pr_auc rather than something shorter.
    suffixes = sorted((name for name in _DIRECTION if metric.endswith("_" + name)), key=len, reverse=True)
    if suffixes:
        return _DIRECTION[suffixes[0]]
    raise ValueError(f"unknown metric {metric!r}; known metrics: {sorted(_DIRECTION)}")


def improvement(metric: str, candidate: float, reference: float) -> float:
    """How much better `candidate` is than `reference` in the metric's direction (negative = worse)."""
    return candidate - reference if higher_is_better(metric) else reference - candidate


def label_codes(task: str, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The predicted class positions (0..k-1) of classification scores: binary P(positive) at
    `threshold`, multiclass the most probable column. One rule for metrics, predictions and drift."""
    if task == "binary":
        return (np.asarray(scores).reshape(-1) >= threshold).astype(np.int64)
    if task == "multiclass":
        return np.argmax(scores, axis=1)
    raise ValueError(f"task {task!r} has no class labels; expected binary or multiclass")


def to_python_value(value: Any) -> Any:
    """numpy scalars -> plain Python values, so labels survive JSON and compare cleanly."""
    return value.item() if isinstance(value, np.generic) else value


def infer_classes(y: Sequence[Any] | pd.Series | np.ndarray) -> list[Any]:
    """Sorted distinct non-null labels. For binary tasks the last one is the positive class
    (1 for 0/1, True for bools, "yes" for "no"/"yes")."""
    values = pd.Series(y).dropna().unique()
    try:
        ordered = sorted(values)
    except TypeError:  # mixed label types cannot be sorted; keep first-seen order, still deterministic
        ordered = list(values)
    return [to_python_value(v) for v in ordered]


def encode_labels(y: Sequence[Any] | pd.Series | np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """Map labels to their position in `classes` (0..k-1). Raises ValueError on unknown labels."""
    # A plain dict lookup treats 1 == 1.0 == True alike, which pandas' typed index matching does not.
    positions = {label: index for index, label in enumerate(classes)}
    series = pd.Series(y)
    # Look up each distinct value once (a million labels have two distinct values), not every row.
    row_codes, distinct = pd.factorize(series, use_na_sentinel=True)
    distinct_codes = np.array([positions.get(value, -1) for value in distinct] + [-1], dtype=np.int64)
    codes = distinct_codes[row_codes]  # a null's row code -1 picks the trailing -1
    bad = codes < 0
    if bad.any():
        unknown = {str(value) for value in series[bad].tolist()}
        raise ValueError(
            f"{int(bad.sum())} label(s) not among the known classes {list(classes)}: {sorted(unknown)[:10]}"
        )
    return codes


def _regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    errors = y_pred - y_true
    result = {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }
    nonzero = y_true != 0
    # MAPE divides by the actual value: rows with zero actuals are undefined, so they are left out.
    if nonzero.any():
        result["mape"] = float(np.mean(np.abs(errors[nonzero] / y_true[nonzero])))
    return result


def _ranking_metrics(y_true: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision from one sort, computed as sklearn's roc_auc_score and
    average_precision_score do (tied scores form one threshold). sklearn sorts and validates once per
    metric; on the 8M-row training split and on every drift window that cost more than the rest of
    the evaluation."""
    order = np.argsort(proba)[::-1]  # the order within tied scores does not matter: ties are grouped
    scores, positives = proba[order], y_true[order].astype(np.float64)
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(positives)[last_of_each_score]
    false_positives = 1 + last_of_each_score - true_positives
    tpr = np.r_[0.0, true_positives] / true_positives[-1]
    fpr = np.r_[0.0, false_positives] / false_positives[-1]
    roc_auc = float(np.trapezoid(tpr, fpr))
    precision = true_positives / (true_positives + false_positives)
    average_precision = float(np.sum(np.diff(tpr) * precision))  # tpr is the recall
    return roc_auc, average_precision


def _binary_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    both_classes = np.unique(y_true).size == 2
    predicted = label_codes("binary", proba)
    # Ranking metrics are undefined with one class present; NaN keeps the key set stable.
    roc_auc, pr_auc = _ranking_metrics(y_true, proba) if both_classes else (math.nan, math.nan)
    clipped = np.clip(proba, 1e-15, 1 - 1e-15)
    true_positives = int(np.sum((predicted == 1) & (y_true == 1)))
    errors = int(np.sum(predicted != y_true))
    return {
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "log_loss": float(-np.mean(np.where(y_true == 1, np.log(clipped), np.log1p(-clipped)))),
        "brier": float(np.mean((proba - y_true) ** 2)),
        "accuracy": float(np.mean(predicted == y_true)),
        # F1 = 2 TP / (2 TP + FP + FN), and 0 where nothing is predicted or true (zero_division=0).
        "f1": 2 * true_positives / (2 * true_positives + errors) if true_positives + errors else 0.0,
    }


def _multiclass_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    n_classes = proba.shape[1]
    # Clip and renormalise so a hard 0 probability on the true class costs a large, finite penalty.
    clipped = np.clip(proba, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    predicted = label_codes("multiclass", proba)
    return {
        "log_loss": float(skm.log_loss(y_true, clipped, labels=list(range(n_classes)))),
        "macro_f1": float(skm.f1_score(y_true, predicted, average="macro", zero_division=0)),
        "accuracy": float(np.mean(predicted == y_true)),
    }


def compute_metrics(
    task: str,
    y_true: Sequence[Any] | pd.Series | np.ndarray,
    y_pred_or_proba: Sequence[Any] | pd.Series | np.ndarray,
    classes: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Metrics for one set of predictions.

    regression: mae, rmse, r2 and mape (mape over rows with a non-zero actual; omitted if none).
    binary: `y_pred_or_proba` is P(positive). roc_auc, pr_auc (average precision), log_loss, brier,
        accuracy and f1 at threshold 0.5. `classes` = [negative, positive]; default: 0/1 or False/True.
    multiclass: `y_pred_or_proba` is an n x k probability matrix whose columns follow `classes`
        (default 0..k-1). log_loss, macro_f1, accuracy.
    """
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    if task == "regression":
        return _regression_metrics(
            np.asarray(y_true, dtype=np.float64), np.asarray(y_pred_or_proba, dtype=np.float64)
        )
    if task == "binary":
        labels = encode_labels(y_true, classes if classes is not None else [0, 1])
        return _binary_metrics(labels, np.asarray(y_pred_or_proba, dtype=np.float64).reshape(-1))
    if task == "multiclass":
        proba = np.asarray(y_pred_or_proba, dtype=np.float64)
        if proba.ndim != 2:
            raise ValueError(f"multiclass needs an n x k probability matrix, got shape {proba.shape}")
        known = list(classes) if classes is not None else list(range(proba.shape[1]))
        if len(known) != proba.shape[1]:
            raise ValueError(f"{len(known)} classes but the probability matrix has {proba.shape[1]} columns")
        return _multiclass_metrics(encode_labels(y_true, known), proba)
    raise ValueError(f"unknown task {task!r}; expected regression, binary or multiclass")


def compute_metric(
    task: str,
    metric: str,
    y_true: Sequence[Any] | pd.Series | np.ndarray,
    y_pred_or_proba: Sequence[Any] | pd.Series | np.ndarray,
    classes: Sequence[Any] | None = None,
) -> float:
    """One metric of `compute_metrics`, equal to its value there (NaN if it has none). A binary
    ROC AUC or average precision skips the other metrics' passes: drift reports compute one per
    window, and those passes were half of each."""
    if task == "binary" and metric in ("roc_auc", "pr_auc") and len(y_true):
        labels = encode_labels(y_true, classes if classes is not None else [0, 1])
        if np.unique(labels).size != 2:
            return math.nan
        roc_auc, pr_auc = _ranking_metrics(labels, np.asarray(y_pred_or_proba, dtype=np.float64).reshape(-1))
        return roc_auc if metric == "roc_auc" else pr_auc
    return compute_metrics(task, y_true, y_pred_or_proba, classes).get(metric, math.nan)


def baseline_predictions(
    task: str,
    y_train: Sequence[Any] | pd.Series | np.ndarray,
    rows: pd.DataFrame,
    time_column: str,
    target_column: str,
    history: pd.DataFrame | None,
    entity_column: str | None = None,
    classes: Sequence[Any] | None = None,
    label_delay: timedelta | None = None,
    seasons: Sequence[timedelta] | None = None,
) -> dict[str, np.ndarray]:
    """Naive predictions for `rows`, keyed by baseline name (`describe_baseline` says what each is).

    regression (rows without a value to look up fall back to the training mean):
        "training_mean": the mean of `y_train` everywhere.
        "seasonal_lag_<n>d": the target at exactly `time - season` (same entity if `entity_column` is
            given), for each of `seasons` at least `label_delay` long; `seasons` None: the data's
            natural ones (`natural_seasons`: same hour yesterday and last week for hourly data).
        "last_value": the entity's latest target at or before `time - label_delay`; offered only
            with a `label_delay` (how late labels are known: a baseline must not use fresher ones).
        Values are looked up in `history` (or in `rows` itself when None): pass every labelled row
        known before scoring (train + validation + test) so the first rows are covered too.
    binary: "positive_rate": the training share of the positive class as the probability.
    multiclass: "class_frequencies": the training class shares as an n x k matrix (columns = `classes`).

    Use `best_baseline` to score them and pick the one a model has to beat.
    """
    n_rows = len(rows)
    if task == "regression":
        train_mean = float(np.mean(np.asarray(y_train, dtype=np.float64)))
        source = rows if history is None else history
        lookup = _Lookup(source, rows, time_column, target_column, entity_column, train_mean)
        found = {"training_mean": np.full(n_rows, train_mean)}
        if seasons is None:
            seasons = natural_seasons(
                source[time_column], None if entity_column is None else source[entity_column]
            )
        for season in seasons:
            if label_delay is None or season >= label_delay:
                found[seasonal_lag_name(season)] = lookup.exactly_before(season)
        if label_delay is not None:
            found[LAST_VALUE] = lookup.latest_before(label_delay)
        return found
    known = list(classes) if classes is not None else infer_classes(y_train)
    shares = np.bincount(encode_labels(y_train, known), minlength=len(known)) / len(y_train)
    if task == "binary":
        if len(known) != 2:
            raise ValueError(f"binary task needs exactly two classes, got {known}")
        return {"positive_rate": np.full(n_rows, shares[1])}
    if task == "multiclass":
        return {"class_frequencies": np.tile(shares, (n_rows, 1))}
    raise ValueError(f"unknown task {task!r}; expected regression, binary or multiclass")


def seasonal_lag_name(season: timedelta) -> str:
    days = season / timedelta(days=1)
    return f"{SEASONAL_LAG_PREFIX}{days:g}d" if days >= 1 else f"{SEASONAL_LAG_PREFIX}{season // HOUR}h"


def describe_baseline(name: str) -> str:
    """A short phrase saying what a baseline of `baseline_predictions` predicts."""
    if name.startswith(SEASONAL_LAG_PREFIX):
        return f"the value of the same entity and time {name.removeprefix(SEASONAL_LAG_PREFIX)} before"
    return _BASELINE_DESCRIPTIONS.get(name, name)


def natural_seasons(times: pd.Series, entities: pd.Series | None = None) -> list[timedelta]:
    """The seasons worth a seasonal-lag baseline, from the data's typical spacing (the median gap
    between consecutive times of an entity): a day and a week for data finer than daily, a week and
    52 weeks for daily data, 52 weeks for weekly data, none for coarser data."""
    frame = pd.DataFrame({"t": pd.to_datetime(times).to_numpy()})
    frame["e"] = 0 if entities is None else entities.to_numpy()
    frame = frame.dropna(subset=["t"]).drop_duplicates().sort_values(["e", "t"])
    gaps = frame.groupby("e", sort=False, dropna=False)["t"].diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    if gaps.empty:
        return []
    spacing = gaps.median().to_pytimedelta()
    for finer_than, seasons in _SEASONS_BY_SPACING:
        if spacing < finer_than:
            return list(seasons)
    return []


class _Lookup:
    """Past targets of `history` looked up for the rows of `rows` (same entity when given)."""

    def __init__(
        self,
        history: pd.DataFrame,
        rows: pd.DataFrame,
        time_column: str,
        target_column: str,
        entity_column: str | None,
        fallback: float,
    ) -> None:
        self.keys = [entity_column] if entity_column else []
        known = history[[*self.keys, time_column, target_column]].dropna(subset=[target_column])
        self.known = known.rename(columns={time_column: "_t", target_column: "_y"})
        self.known["_t"] = pd.to_datetime(self.known["_t"])
        self.wanted = rows[self.keys].reset_index(drop=True)
        self.wanted["_t"] = pd.to_datetime(rows[time_column]).to_numpy()
        self.fallback = fallback

    def _filled(self, values: pd.Series) -> np.ndarray:
        return values.astype("float64").fillna(self.fallback).to_numpy()

    def exactly_before(self, lag: timedelta) -> np.ndarray:
        shifted = self.known.assign(_t=self.known["_t"] + lag)
        # Ties (duplicate times) would multiply rows in the merge: one value per (entity, time).
        shifted = shifted.drop_duplicates(subset=[*self.keys, "_t"], keep="last")
        return self._filled(self.wanted.merge(shifted, on=[*self.keys, "_t"], how="left")["_y"])

    def latest_before(self, delay: timedelta) -> np.ndarray:
        shifted = self.known.assign(_t=self.known["_t"] + delay).dropna(subset=["_t"])
        shifted = shifted.drop_duplicates(subset=[*self.keys, "_t"], keep="last").sort_values("_t")
        wanted = self.wanted.assign(_row=np.arange(len(self.wanted))).dropna(subset=["_t"]).sort_values("_t")
        merged = pd.merge_asof(wanted, shifted, on="_t", by=self.keys or None, direction="backward")
        values = pd.Series(np.nan, index=range(len(self.wanted)))
        values[merged["_row"].to_numpy()] = merged["_y"].astype("float64").to_numpy()
        return self._filled(values)


def best_baseline(
    task: str,
    y_true: Sequence[Any] | pd.Series | np.ndarray,
    baselines: Mapping[str, np.ndarray],
    classes: Sequence[Any] | None = None,
    metric: str | None = None,
) -> tuple[str, dict[str, float]]:
    """Score each baseline and return (name, metrics) of the best one by `metric` (default: the
    task's primary metric).

    A NaN score never wins; if every score is NaN the first baseline is returned.
    """
    if not baselines:
        raise ValueError("no baselines to compare")
    primary = metric or PRIMARY_METRIC[task]
    sign = 1.0 if higher_is_better(primary) else -1.0
    scored = {name: compute_metrics(task, y_true, values, classes) for name, values in baselines.items()}

    def goodness(name: str) -> float:
        value = scored[name].get(primary, math.nan)
        return -math.inf if math.isnan(value) else sign * value

    best = max(scored, key=goodness)  # max keeps the first of equals, so ties are stable
    return best, scored[best]
