"""lightgbm.dask training on a real LocalCluster (2 worker processes x 1 thread) gives the TrainedModel
train_lightgbm gives: same encodings, early stopping on the validation rows, a test metric within a
stated tolerance (data-parallel LightGBM bins and sums differently, so it is not bit-identical)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from mlplatform.core import training_dask
from mlplatform.core.early_stopping import early_stopping_iteration, validation_curve
from mlplatform.core.metrics import compute_metrics, encode_labels
from mlplatform.core.training import lightgbm_params, predict, prepare_features, train_lightgbm
from mlplatform.core.training_dask import dask_recency_weights, train_lightgbm_dask, worker_threads
from mlplatform.core.training_window import recency_weights
from platform_tests.core.dask_cluster import local_dask_client

pytestmark = pytest.mark.e2e  # a LocalCluster of two processes: about 15 s for the module

ROUNDS, PATIENCE = 300, 10
# Measured on these frames (seed 11): |rmse gap| 0.3 %, |AUC gap| 0.002. The bound leaves room for
# LightGBM versions and worker placement while still catching a wrong encoding or a lost early stop.
RMSE_RELATIVE_TOLERANCE, AUC_TOLERANCE = 0.03, 0.02


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with local_dask_client() as dask_client:
        yield dask_client


def _frame(rng: np.random.Generator, rows: int, task: str) -> pd.DataFrame:
    shop = rng.choice(["north", "south", "east", "west"], rows)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows), "shop": shop})
    signal = frame["a"] + (frame["shop"] == "north") + 0.5 * frame["b"] + rng.normal(size=rows)
    if task == "regression":
        frame["y"] = signal
    elif task == "binary":
        frame["y"] = np.where(signal > 0.5, "yes", "no")
    else:
        frame["y"] = np.select([signal < 0, signal < 1], ["low", "mid"], "high")
    return frame


def _splits(task: str, seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return _frame(rng, 8000, task), _frame(rng, 2000, task), _frame(rng, 2000, task)


FEATURES = ["a", "b", "shop"]


def _both(client: Any, task: str, partitions: int = 4, **extra: Any) -> tuple[Any, Any, pd.DataFrame]:
    train, valid, test = _splits(task)
    params = lightgbm_params(task, None, {"eta": 0.2}, worker_threads(client))
    local = train_lightgbm(
        task, train[FEATURES], train["y"], valid[FEATURES], valid["y"], params, ROUNDS, PATIENCE
    )
    lazy = dd.from_pandas(train, npartitions=partitions)
    distributed = train_lightgbm_dask(
        client,
        task,
        lazy[FEATURES],
        lazy["y"],
        valid[FEATURES],
        valid["y"],
        params,
        ROUNDS,
        PATIENCE,
        **extra,
    )
    return local, distributed, test


def test_regression_matches_the_local_training(client: Any) -> None:
    local, distributed, test = _both(client, "regression")
    assert distributed.task == "regression" and distributed.classes is None
    assert distributed.feature_names == local.feature_names
    assert (
        distributed.categorical_levels
        == local.categorical_levels
        == {"shop": ["east", "north", "south", "west"]}
    )
    # Early-stopped, and the booster holds exactly the trees that score.
    assert 1 <= distributed.best_iteration < ROUNDS - PATIENCE
    assert distributed.booster.current_iteration() == distributed.best_iteration
    local_rmse = compute_metrics("regression", test["y"], predict(local, test[FEATURES]), None)["rmse"]
    dask_rmse = compute_metrics("regression", test["y"], predict(distributed, test[FEATURES]), None)["rmse"]
    print(f"test rmse: local {local_rmse:.4f}, dask {dask_rmse:.4f}")
    assert abs(dask_rmse - local_rmse) <= RMSE_RELATIVE_TOLERANCE * local_rmse


def test_binary_matches_the_local_training(client: Any) -> None:
    local, distributed, test = _both(client, "binary")
    assert distributed.classes == local.classes == ["no", "yes"]
    assert distributed.booster.current_iteration() == distributed.best_iteration < ROUNDS - PATIENCE
    local_auc = compute_metrics("binary", test["y"], predict(local, test[FEATURES]), local.classes)["roc_auc"]
    dask_auc = compute_metrics(
        "binary", test["y"], predict(distributed, test[FEATURES]), distributed.classes
    )["roc_auc"]
    print(f"test AUC: local {local_auc:.4f}, dask {dask_auc:.4f}")
    assert abs(dask_auc - local_auc) <= AUC_TOLERANCE


def test_the_replay_scores_the_clusters_trees_as_a_plain_metric_does(client: Any) -> None:
    """The validation curve of a distributed booster is the AUC of each of its prefixes (the rule on
    such a curve is lgb.train's: test_early_stopping.py), and without validation rows every round stays."""
    train, valid, _ = _splits("binary")
    params = lightgbm_params("binary", None, {"eta": 0.2}, worker_threads(client))
    lazy = dd.from_pandas(train, npartitions=4)
    full = train_lightgbm_dask(client, "binary", lazy[FEATURES], lazy["y"], None, None, params, 40, PATIENCE)
    assert full.best_iteration == full.booster.current_iteration() == 40
    features = prepare_features(valid, FEATURES, full.categorical_levels)
    label = encode_labels(valid["y"], ["no", "yes"]).astype(np.float64)
    curve = validation_curve(full.booster, features, label, params)
    plain = [
        compute_metrics("binary", valid["y"], full.booster.predict(features, num_iteration=k), ["no", "yes"])[
            "roc_auc"
        ]
        for k in range(1, 41)
    ]
    np.testing.assert_allclose([point[0].value for point in curve], plain, rtol=0, atol=1e-9)
    best = early_stopping_iteration(curve, PATIENCE, 40)
    assert plain[best - 1] == max(plain[: min(best + PATIENCE, 40)])


def _by_a(frame: pd.DataFrame) -> pd.DataFrame:
    """Classes by ranges of `a` (high: the top 1/8), "low" and "mid" swapped in one row of ten."""
    label = np.select([frame["a"] < -0.3, frame["a"] < 1.15], ["low", "mid"], "high")
    swapped = np.where(label == "low", "mid", np.where(label == "mid", "low", label))
    return frame.assign(y=np.where(np.arange(len(frame)) % 10 == 0, swapped, label))


def test_multiclass_with_a_class_missing_from_some_partitions(client: Any) -> None:
    """Labels are encoded once for all workers: a class only one partition holds keeps its code."""
    train, valid, test = (_by_a(part) for part in _splits("multiclass"))
    train = train.sort_values("a", ignore_index=True)  # "high" rows only in the last partition
    params = lightgbm_params("multiclass", None, {}, worker_threads(client))
    lazy = dd.from_pandas(train, npartitions=4)
    assert (lazy["y"].map_partitions(lambda part: (part == "high").sum()).compute() == 0).any()
    model = train_lightgbm_dask(
        client, "multiclass", lazy[FEATURES], lazy["y"], valid[FEATURES], valid["y"], params, ROUNDS, PATIENCE
    )
    assert model.classes == ["high", "low", "mid"]
    assert model.booster.num_model_per_iteration() == 3
    scores = predict(model, test[FEATURES])
    assert scores.shape == (len(test), 3)
    assert compute_metrics("multiclass", test["y"], scores, model.classes)["accuracy"] > 0.5


def test_recency_weights_on_the_cluster_are_the_local_ones(client: Any) -> None:
    times = pd.Series(pd.date_range("2024-01-01", periods=500, freq="h"), name="t")
    lazy = dd.from_pandas(times.to_frame(), npartitions=3)["t"]
    weights = dask_recency_weights(lazy, timedelta(days=3)).compute().to_numpy()
    np.testing.assert_array_equal(weights, recency_weights(times, timedelta(days=3)))


def test_a_weighted_training_uses_the_weights(client: Any) -> None:
    train, valid, _ = _splits("regression")
    params = lightgbm_params("regression", None, {}, worker_threads(client))
    lazy = dd.from_pandas(train.assign(w=np.where(train["a"] > 0, 1.0, 0.0)), npartitions=4)
    weighted = train_lightgbm_dask(
        client,
        "regression",
        lazy[FEATURES],
        lazy["y"],
        valid[FEATURES],
        valid["y"],
        params,
        30,
        0,
        weight=lazy["w"],
    )
    plain = train_lightgbm_dask(client, "regression", lazy[FEATURES], lazy["y"], None, None, params, 30, 0)
    low = pd.DataFrame({"a": [-2.0], "b": [0.0], "shop": ["east"]})
    # Rows with a <= 0 weigh nothing: the model never saw the low end, unlike a plain fit.
    assert weighted.best_iteration == 30
    assert predict(weighted, low)[0] > -1.0 > predict(plain, low)[0]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("a", np.inf, "feature column 'a' holds 1 infinite"), ("y", np.nan, "the target holds 1 missing")],
)
def test_what_train_lightgbm_refuses_is_refused(client: Any, column: str, value: float, message: str) -> None:
    train, valid, _ = _splits("regression")
    train.loc[5, column] = value
    lazy = dd.from_pandas(train, npartitions=4)
    params = lightgbm_params("regression", None, {}, worker_threads(client))
    with pytest.raises(ValueError, match=message):
        train_lightgbm_dask(
            client, "regression", lazy[FEATURES], lazy["y"], valid[FEATURES], valid["y"], params, 5, 2
        )


def test_bad_weights_are_refused(client: Any) -> None:
    train = _splits("regression")[0]
    lazy = dd.from_pandas(train.assign(w=-1.0), npartitions=2)
    params = lightgbm_params("regression", None, {}, worker_threads(client))
    with pytest.raises(ValueError, match="sample weights must be finite and non-negative"):
        train_lightgbm_dask(
            client, "regression", lazy[FEATURES], lazy["y"], None, None, params, 5, 2, weight=lazy["w"]
        )


def test_training_stops_in_chunks_where_the_replayed_rule_fires(client: Any, monkeypatch: Any) -> None:
    """Not every round of num_boost_round: chunks of 2 x patience, each continuing the last, until the
    replayed early stopping fires; the booster holds the trees of every chunk up to its best one."""
    asked: list[int] = []
    fit = training_dask._fit_booster

    def counted(*args: Any) -> Any:
        asked.append(args[4])
        return fit(*args)

    monkeypatch.setattr(training_dask, "_fit_booster", counted)
    _, model, _ = _both(client, "regression")
    chunk = training_dask.CHUNK_STOPPING_ROUNDS * PATIENCE
    assert asked and set(asked) == {chunk} and sum(asked) < ROUNDS  # stopped long before 300 rounds
    assert sum(asked) - chunk < model.best_iteration + PATIENCE <= sum(asked)  # the chunk where it fired
    assert model.booster.current_iteration() == model.best_iteration
