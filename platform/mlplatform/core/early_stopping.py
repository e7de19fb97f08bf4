"""Early stopping after the fact: the iteration `lgb.early_stopping` would have stopped a booster at.

`lightgbm.dask` cannot early-stop (LightGBM issues #3712, #4189, #6351: `early_stopping_rounds` can
hang a distributed training), so the Dask engine trains every round and this module replays, on the
driver, what `lgb.train(..., callbacks=[lgb.early_stopping(n)])` does with a validation set:

1. `raw_scores_by_iteration`: the validation rows' raw score after each iteration, summed tree by
   tree in the order LightGBM adds them (leaf indices from `pred_leaf` in chunks of iterations, leaf
   values from `get_leaf_output`), which is the sum LightGBM's validation score updater holds.
2. `validation_curve`: LightGBM's own metric code on those scores (a booster over a one-column
   placeholder dataset whose init score is the raw score, `eval_train`), so every metric, alias and
   output conversion (sigmoid, softmax, exp) is the library's, not a copy of it.
3. `early_stopping_iteration`: the callback's rule over that curve (every metric, strict improvement,
   stop after `stopping_rounds` without one, the first metric's best at the last round).

The cost: the trees past the stop are built on the cluster and then discarded, and the curve costs
one placeholder booster per iteration (O(validation rows) each, like LightGBM's own evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

# Leaf indices held at once while summing scores: rows x trees of a chunk (int32: 128 MiB).
LEAF_CHUNK_CELLS = 32_000_000

# The parameters that decide how a score becomes a metric value (LightGBM's "Objective" and
# "Metric" parameter groups, with their documented aliases). The rest describe trees or features
# and would not fit the one-column placeholder dataset.
_SCORING_PARAMS = {
    "objective", "objective_type", "app", "application", "loss",
    "metric", "metrics", "metric_types",
    "num_class", "num_classes",
    "is_unbalance", "unbalance", "unbalanced_sets", "scale_pos_weight",
    "sigmoid", "reg_sqrt", "alpha", "fair_c", "tweedie_variance_power", "poisson_max_delta_step",
    "eval_at", "ndcg_eval_at", "ndcg_at", "map_eval_at", "map_at",
    "multi_error_top_k", "auc_mu_weights", "label_gain", "num_threads", "num_thread", "nthread",
    "nthreads", "n_jobs",
}  # fmt: skip
_DART_NAMES = {"boosting", "boosting_type", "boost"}


@dataclass(frozen=True)
class MetricValue:
    """One metric of the validation set after one iteration, as `Booster.eval_valid` reports it."""

    name: str
    value: float
    higher_better: bool


Curve = list[list[MetricValue]]  # curve[i]: the metrics after iteration i + 1


def raw_scores_by_iteration(booster: lgb.Booster, features: pd.DataFrame) -> Iterator[np.ndarray]:
    """The raw score of every row after iterations 1, 2, ... of `booster` (n x classes for multiclass,
    else n), each the running sum of the trees' leaf values in LightGBM's order."""
    per_iteration = booster.num_model_per_iteration()
    iterations = booster.current_iteration()
    rows = max(len(features), 1)
    chunk = max(1, LEAF_CHUNK_CELLS // (rows * per_iteration))
    scores = np.zeros((len(features), per_iteration), dtype=np.float64)
    for start in range(0, iterations, chunk):
        count = min(chunk, iterations - start)
        leaves = np.asarray(
            booster.predict(features, pred_leaf=True, start_iteration=start, num_iteration=count),
            dtype=np.int32,
        ).reshape(len(features), count * per_iteration)
        for offset in range(count):
            for klass in range(per_iteration):
                column = offset * per_iteration + klass
                tree = (start + offset) * per_iteration + klass
                scores[:, klass] += _leaf_values(booster, tree, leaves[:, column])
            yield scores[:, 0].copy() if per_iteration == 1 else scores.copy()


def _leaf_values(booster: lgb.Booster, tree: int, leaves: np.ndarray) -> np.ndarray:
    """The value of each row's leaf in `tree`: one library call per leaf, then a gather."""
    table = [booster.get_leaf_output(tree, leaf) for leaf in range(int(leaves.max(initial=0)) + 1)]
    return np.asarray(table, dtype=np.float64)[leaves]


def scoring_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The training params that decide how LightGBM turns scores into metric values, quiet."""
    kept = {key: value for key, value in params.items() if key in _SCORING_PARAMS}
    return {**kept, "verbosity": -1}


def metric_values(params: Mapping[str, Any], label: np.ndarray, raw_score: np.ndarray) -> list[MetricValue]:
    """LightGBM's metrics of `raw_score` against `label` (unweighted), computed by LightGBM itself:
    a booster with no trees over a placeholder column scores every row with its init score."""
    placeholder = np.zeros((len(label), 1), dtype=np.float32)
    dataset = lgb.Dataset(placeholder, label=label, init_score=raw_score, params={"verbosity": -1})
    booster = lgb.Booster(params=scoring_params(params), train_set=dataset)
    try:
        return [
            MetricValue(str(name), float(value), bool(higher))
            for _, name, value, higher in booster.eval_train()
        ]
    finally:
        booster.free_dataset()


def validation_curve(
    booster: lgb.Booster, features: pd.DataFrame, label: np.ndarray, params: Mapping[str, Any]
) -> Curve:
    """The validation metrics after each iteration of `booster`, as lgb.train would have recorded them."""
    return [metric_values(params, label, raw) for raw in raw_scores_by_iteration(booster, features)]


def is_dart(params: Mapping[str, Any]) -> bool:
    """Dart boosting: LightGBM's early stopping callback switches itself off."""
    return any(params.get(name) == "dart" for name in _DART_NAMES)


def early_stopping_iteration(
    curve: Sequence[Sequence[MetricValue]], stopping_rounds: int, num_boost_round: int
) -> int:
    """The 1-based `best_iteration` lgb.train with `lgb.early_stopping(stopping_rounds)` sets, given the
    validation metrics after each iteration (`curve`) of a training of `num_boost_round` rounds.

    A curve shorter than `num_boost_round` (LightGBM found no more splits and added no trees) keeps its
    last values for the remaining rounds, which is what lgb.train evaluates then. Mirrors
    `lightgbm.callback._EarlyStoppingCallback` with first_metric_only False and min_delta 0."""
    if stopping_rounds <= 0:
        return len(curve)
    return _scan(curve, stopping_rounds, num_boost_round)[0]


def stop_within(curve: Sequence[Sequence[MetricValue]], stopping_rounds: int) -> int | None:
    """The 1-based best iteration if `lgb.early_stopping(stopping_rounds)` stops within the rounds of
    `curve` (a training cut into chunks can end there), or None: more rounds are needed to know."""
    best, fired = _scan(curve, stopping_rounds, len(curve))
    return best if fired else None


def _scan(curve: Sequence[Sequence[MetricValue]], stopping_rounds: int, rounds: int) -> tuple[int, bool]:
    """(1-based best iteration, whether the rule fired) over the first `rounds` iterations; past the
    curve's end its last values repeat. The callback's order: each metric, fired before last round."""
    if not curve or not curve[0]:
        raise ValueError(
            "For early stopping, at least one dataset and eval metric is required for evaluation"
        )
    best_score = [-np.inf if metric.higher_better else np.inf for metric in curve[0]]
    best_iteration = [0] * len(curve[0])
    for iteration in range(rounds):
        metrics = curve[min(iteration, len(curve) - 1)]
        for index, metric in enumerate(metrics):
            improved = (
                metric.value > best_score[index] if metric.higher_better else metric.value < best_score[index]
            )
            if iteration == 0 or improved:
                best_score[index], best_iteration[index] = metric.value, iteration
            if iteration - best_iteration[index] >= stopping_rounds:
                return best_iteration[index] + 1, True
            if iteration == rounds - 1:
                return best_iteration[index] + 1, False
    return len(curve), False


def truncated(booster: lgb.Booster, iterations: int) -> lgb.Booster:
    """A copy of `booster` holding its first `iterations` iterations only (the categories included)."""
    if iterations >= booster.current_iteration():
        return booster
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=iterations))
