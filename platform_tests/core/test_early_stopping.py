"""Early stopping replayed after a full training picks what lgb.early_stopping picks (no cluster)."""

from __future__ import annotations

import re
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from mlplatform.core.early_stopping import (
    MetricValue,
    early_stopping_iteration,
    raw_scores_by_iteration,
    truncated,
    validation_curve,
)
from mlplatform.core.training import lightgbm_params
from mlplatform.core.training_lgb_params import check_same_config, resolved_config, sklearn_arguments

ROUNDS, PATIENCE = 200, 8


def _frame(rng: np.random.Generator, rows: int, task: str) -> tuple[pd.DataFrame, np.ndarray]:
    X = pd.DataFrame(
        {
            "a": rng.normal(size=rows),
            "b": rng.normal(size=rows),
            "shop": pd.Categorical(rng.choice(["n", "s", "e", "w"], rows), categories=["e", "n", "s", "w"]),
        }
    )
    signal = X["a"] + (X["shop"] == "n") + 0.5 * X["b"] + rng.normal(size=rows) * 1.5
    if task == "regression":
        return X, signal.to_numpy()
    if task == "binary":
        return X, (signal > 0.5).to_numpy(dtype=np.float64)
    return X, np.digitize(signal, [0.0, 1.0]).astype(np.float64)


def _params(task: str, **overrides: Any) -> dict[str, Any]:
    return lightgbm_params(task, 3, {"learning_rate": 0.3, **overrides}, num_threads=2)


def _recorded(
    params: dict[str, Any], train: lgb.Dataset, valid: lgb.Dataset
) -> tuple[int, dict[str, list[float]]]:
    """lgb.train's best iteration with early stopping, and the validation curve it recorded."""
    history: dict[str, Any] = {}
    booster = lgb.train(
        params,
        train,
        ROUNDS,
        valid_sets=[valid],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(PATIENCE, verbose=False), lgb.record_evaluation(history)],
    )
    return booster.best_iteration, history["validation"]


@pytest.mark.parametrize(
    ("task", "metric"),
    [("regression", None), ("binary", None), ("multiclass", None), ("regression", ["l1", "rmse"])],
)
def test_the_replay_stops_where_lgb_train_stops(task: str, metric: list[str] | None) -> None:
    rng = np.random.default_rng(7)
    (X, y), (X_valid, y_valid) = _frame(rng, 4000, task), _frame(rng, 1500, task)
    params = _params(task, **({"metric": metric} if metric else {}))
    best, recorded = _recorded(params, lgb.Dataset(X, y), lgb.Dataset(X_valid, y_valid))
    # The same trees without early stopping (deterministic: the early-stopped run is a prefix of them).
    full = lgb.train(params, lgb.Dataset(X, y), ROUNDS)
    curve = validation_curve(full, X_valid, y_valid, params)

    assert early_stopping_iteration(curve, PATIENCE, ROUNDS) == best
    assert best < ROUNDS - PATIENCE  # the data overfits: early stopping did stop
    for index, (name, values) in enumerate(recorded.items()):
        # LightGBM's own metric code on the same scores: equal to the last bit, not just close.
        assert [point[index].name for point in curve[: len(values)]] == [name] * len(values)
        assert [point[index].value for point in curve[: len(values)]] == values


def test_raw_scores_sum_to_the_boosters_prediction() -> None:
    rng = np.random.default_rng(3)
    X, y = _frame(rng, 2000, "multiclass")
    booster = lgb.train(_params("multiclass"), lgb.Dataset(X, y), 12)
    scores = list(raw_scores_by_iteration(booster, X))
    assert len(scores) == 12
    for iteration in (1, 5, 12):
        expected = booster.predict(X, raw_score=True, num_iteration=iteration)
        np.testing.assert_allclose(scores[iteration - 1], expected, rtol=0, atol=1e-12)


def _curve(*values: float, higher_better: bool = False) -> list[list[MetricValue]]:
    return [[MetricValue("m", value, higher_better)] for value in values]


def test_the_rule_stops_after_the_patience_and_keeps_the_first_best() -> None:
    # Ties are not improvements: the best stays the first of the equal values.
    assert early_stopping_iteration(_curve(5, 4, 3, 3, 3, 3, 2), 3, 10) == 3
    assert early_stopping_iteration(_curve(0.5, 0.7, 0.6, 0.6, 0.6, higher_better=True), 3, 10) == 2
    # No stop within the rounds: the best of them.
    assert early_stopping_iteration(_curve(5, 4, 4.5, 3.9), 3, 4) == 4


def test_a_training_that_runs_out_of_splits_stops_where_lgb_train_stops() -> None:
    # LightGBM adds no tree once nothing splits; lgb.train then evaluates the same scores again.
    assert early_stopping_iteration(_curve(5, 4, 3), 10, 50) == 3
    rng = np.random.default_rng(0)
    X, X_valid = (pd.DataFrame({"a": rng.integers(0, 2, rows).astype(float)}) for rows in (500, 200))
    y, y_valid = X["a"] * 2.0 + 1, X_valid["a"] * 2.0 + 1 + rng.normal(size=200) * 0.1
    params = {**_params("regression"), "learning_rate": 0.5, "min_data_in_leaf": 1}
    history: dict[str, Any] = {}
    stopped = lgb.train(
        params,
        lgb.Dataset(X, y),
        60,
        valid_sets=[lgb.Dataset(X_valid, y_valid)],
        callbacks=[lgb.early_stopping(10, verbose=False), lgb.record_evaluation(history)],
    )
    full = lgb.train(params, lgb.Dataset(X, y), 60)
    assert full.current_iteration() < 60  # ran out of splits
    curve = validation_curve(full, X_valid, y_valid.to_numpy(), params)
    assert early_stopping_iteration(curve, 10, 60) == stopped.best_iteration


def test_any_metric_stops_the_training_with_its_own_best() -> None:
    curve = [[MetricValue("l1", l1, False), MetricValue("rmse", rmse, False)] for l1, rmse in
             [(5, 9), (4, 8), (3, 8.5), (2, 8.6), (1, 8.7)]]  # fmt: skip
    assert early_stopping_iteration(curve, 3, 10) == 2


def test_no_metric_cannot_early_stop() -> None:
    with pytest.raises(ValueError, match="at least one dataset and eval metric"):
        early_stopping_iteration([[]], 3, 10)


def test_truncated_keeps_the_first_iterations_and_the_categories() -> None:
    rng = np.random.default_rng(5)
    X, y = _frame(rng, 1000, "regression")
    booster = lgb.train(_params("regression"), lgb.Dataset(X, y), 20)
    cut = truncated(booster, 7)
    assert cut.current_iteration() == 7
    assert cut.pandas_categorical == booster.pandas_categorical
    np.testing.assert_array_equal(cut.predict(X), booster.predict(X, num_iteration=7))


def test_the_sklearn_wrapper_gets_the_spec_aliases_resolved() -> None:
    params = {"objective": "regression", "eta": 0.05, "min_data": 7, "verbosity": -1}
    config = resolved_config(params, features=3)
    arguments = sklearn_arguments(config, params, rounds=30)
    assert arguments["learning_rate"] == 0.05  # the wrapper's default 0.1 would win over `eta` otherwise
    assert arguments["min_child_samples"] == 7
    assert arguments["n_estimators"] == 30
    rng = np.random.default_rng(1)
    X, y = _frame(rng, 500, "regression")
    fitted = lgb.LGBMRegressor(**arguments).fit(X, y)
    check_same_config(fitted.booster_, config)  # same configuration: no error
    with pytest.raises(ValueError, match=re.escape("learning_rate: '0.05' expected, '0.1' used")):
        check_same_config(lgb.LGBMRegressor(n_estimators=3, **params).fit(X, y).booster_, config)
