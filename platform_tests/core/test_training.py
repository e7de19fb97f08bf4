from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.metrics import compute_metrics
from mlplatform.core.scoring import predict_labels
from mlplatform.core.training import (
    MODEL_FILE,
    SIDECAR_FILE,
    TrainedModel,
    available_cpus,
    feature_importance,
    lightgbm_params,
    load_model,
    predict,
    prepare_features,
    save_model,
    train_lightgbm,
)


def make_frame(n_rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "signal": rng.normal(size=n_rows),
            "noise": rng.normal(size=n_rows),
            "colour": rng.choice(["red", "green", "blue"], size=n_rows),
            "flag": rng.integers(0, 2, size=n_rows).astype(bool),
        }
    )


def quick_train(task: str, X: pd.DataFrame, y: pd.Series | np.ndarray) -> TrainedModel:
    split = int(len(X) * 0.75)
    params = lightgbm_params(task, None, {"learning_rate": 0.2, "num_leaves": 15}, num_threads=1)
    return train_lightgbm(task, X[:split], y[:split], X[split:], y[split:], params, 200, 10)


def test_params_set_objective_metric_seed_and_threads() -> None:
    params = lightgbm_params("multiclass", 4, {"learning_rate": 0.05})
    assert params["objective"] == "multiclass"
    assert params["metric"] == "multi_logloss"
    assert params["num_class"] == 4
    assert params["verbosity"] == -1
    assert params["seed"] == 42
    assert params["num_threads"] == available_cpus() >= 1
    assert params["learning_rate"] == 0.05

    assert lightgbm_params("binary", None, {}, num_threads=3)["metric"] == "auc"
    # Overrides win, also under LightGBM's aliases, so no duplicate-alias warnings.
    custom = lightgbm_params("regression", None, {"objective": "huber", "n_jobs": 2, "random_state": 7})
    assert custom["objective"] == "huber"
    assert "num_threads" not in custom and "seed" not in custom
    with pytest.raises(ValueError, match="unknown task"):
        lightgbm_params("ranking", None, {})


def test_prepare_features_fixes_categories_and_orders_columns() -> None:
    frame = pd.DataFrame({"b": [1, 2, 3], "colour": ["red", "violet", None], "extra": ["x", "y", "z"]})
    prepared = prepare_features(frame, ["colour", "b"], {"colour": ["blue", "red"]})
    assert list(prepared.columns) == ["colour", "b"]
    assert list(prepared["colour"].cat.categories) == ["blue", "red"]
    assert prepared["colour"].tolist()[0] == "red"
    assert prepared["colour"].isna().tolist() == [False, True, True]  # unseen "violet" -> missing
    assert prepared["b"].dtype == "float64"
    # Scoring data arriving as 'category' with its own category order maps onto the training levels.
    as_category = pd.DataFrame({"colour": pd.Categorical(["red", None, "blue"], categories=["red", "blue"])})
    recoded = prepare_features(as_category, ["colour"], {"colour": ["blue", "red"]})["colour"]
    assert recoded.cat.codes.tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="missing"):
        prepare_features(frame, ["nope"], {})
    with pytest.raises(TypeError, match="categorical"):
        prepare_features(frame, ["extra"], {})


def test_regression_learns_and_round_trips_through_the_text_format(tmp_path: Path) -> None:
    X = make_frame(1200)
    y = 3 * X["signal"] + (X["colour"] == "red") * 2.0 + np.random.default_rng(1).normal(0, 0.1, len(X))
    model = quick_train("regression", X, y)

    assert model.categorical_levels == {"colour": ["blue", "green", "red"]}
    assert model.classes is None
    assert 0 < model.best_iteration <= 200
    importance = feature_importance(model)
    assert importance.index[0] == "signal" and importance["signal"] > importance["noise"]

    fresh = make_frame(300, seed=5)
    fresh.loc[:9, "colour"] = "purple"  # unseen at training time
    predictions = predict(model, fresh)
    truth = 3 * fresh["signal"] + (fresh["colour"] == "red") * 2.0
    assert compute_metrics("regression", truth, predictions)["r2"] > 0.9

    folder = save_model(model, tmp_path / "model")
    assert (folder / MODEL_FILE).read_text().startswith("tree")  # LightGBM text, not a pickle
    sidecar = json.loads((folder / SIDECAR_FILE).read_text())
    assert sidecar["task"] == "regression" and sidecar["feature_names"] == [
        "signal",
        "noise",
        "colour",
        "flag",
    ]
    loaded = load_model(folder)
    np.testing.assert_array_equal(predict(loaded, fresh), predictions)
    assert loaded.categorical_levels == model.categorical_levels
    assert loaded.best_iteration == model.best_iteration


def test_binary_with_string_labels_maps_back_and_round_trips(tmp_path: Path) -> None:
    X = make_frame(1200, seed=2)
    y = pd.Series(np.where(X["signal"] + (X["colour"] == "blue") > 0.5, "yes", "no"))
    model = quick_train("binary", X, y)
    assert model.classes == ["no", "yes"]

    proba = predict(model, X)
    assert proba.shape == (len(X),) and ((proba >= 0) & (proba <= 1)).all()
    assert compute_metrics("binary", y, proba, classes=model.classes)["roc_auc"] > 0.95
    labels = predict_labels(model, X)
    assert set(labels) == {"no", "yes"}
    assert (labels == y.to_numpy()).mean() > 0.9

    loaded = load_model(save_model(model, tmp_path))
    np.testing.assert_array_equal(predict(loaded, X), proba)
    assert loaded.classes == ["no", "yes"]


def test_multiclass_with_integer_labels_maps_to_codes_and_back(tmp_path: Path) -> None:
    X = make_frame(1500, seed=3)
    y = np.select([X["signal"] < -0.5, X["signal"] > 0.5], [10, 30], default=20)
    model = quick_train("multiclass", X, y)
    assert model.classes == [10, 20, 30]

    proba = predict(model, X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(predict_labels(model, X)) <= {10, 20, 30}
    assert compute_metrics("multiclass", y, proba, classes=model.classes)["accuracy"] > 0.9

    loaded = load_model(save_model(model, tmp_path))
    np.testing.assert_array_equal(predict(loaded, X), proba)
    np.testing.assert_array_equal(predict_labels(loaded, X), predict_labels(model, X))


def test_training_is_deterministic() -> None:
    X = make_frame(600, seed=4)
    y = X["signal"] * 2
    first, second = quick_train("regression", X, y), quick_train("regression", X, y)
    assert first.booster.model_to_string() == second.booster.model_to_string()


def test_bad_labels_are_rejected() -> None:
    X = make_frame(50)
    params = lightgbm_params("binary", None, {}, num_threads=1)
    with pytest.raises(ValueError, match="exactly two classes"):
        train_lightgbm("binary", X, np.zeros(50), None, None, params, 5, 5)
    with pytest.raises(ValueError, match="not among the known classes"):
        train_lightgbm("binary", X[:40], np.arange(40) % 2, X[40:], np.full(10, 7), params, 5, 5)
    with pytest.raises(ValueError, match="classification"):
        predict_labels(quick_train("regression", X, X["signal"]), X)


def test_without_validation_all_rounds_are_trained() -> None:
    X = make_frame(200)
    params = lightgbm_params("regression", None, {}, num_threads=1)
    numeric = X[["signal", "noise", "flag"]]
    model = train_lightgbm("regression", numeric, X["signal"], None, None, params, 7, 3)
    assert model.best_iteration == 7
    assert model.categorical_levels == {}
    with pytest.raises(TypeError, match="colour"):
        # colour is declared non-categorical, so the string column is refused, not silently mangled
        train_lightgbm("regression", X, X["signal"], None, None, params, 7, 3, categorical_features=[])


def test_effective_threads_is_the_specs_own_setting_when_it_has_one() -> None:
    from mlplatform.core.training import available_cpus, effective_threads

    assert effective_threads(lightgbm_params("regression", None, {"nthread": 1}, 8)) == 1
    assert effective_threads(lightgbm_params("regression", None, {}, 3)) == 3
    assert effective_threads({}) == available_cpus()
