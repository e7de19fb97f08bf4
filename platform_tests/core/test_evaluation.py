"""The pure evaluation: challenger, champion and baseline on one test split, and the decision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.evaluation import Challenger, Champion, evaluate, promotion_metric, split_rows
from mlplatform.core.splits import SPLIT_COLUMN
from mlplatform.core.training import TrainedModel, lightgbm_params, train_lightgbm
from mlplatform.specs.loader import SpecError
from mlplatform.specs.model import DatasetSpec


def _spec(**extra: object) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "columns": {
                "ts": {"type": "timestamp"},
                "signal": {"type": "float"},
                "noise": {"type": "float"},
                "value": {"type": "float"},
            },
            "target": {"column": "value", "task": "regression"},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def training_set() -> pd.DataFrame:
    """Hourly rows where `value` follows `signal`; `noise` tells nothing. Split 60/20/20 by time."""
    rng = np.random.default_rng(11)
    n = 1_000
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=n, freq="h"),
            "signal": rng.normal(size=n),
            "noise": rng.normal(size=n),
        }
    )
    frame["value"] = 50 + 10 * frame["signal"] + rng.normal(scale=0.5, size=n)
    frame[SPLIT_COLUMN] = np.where(
        frame.index < 600, "train", np.where(frame.index < 800, "validation", "test")
    )
    return frame


def _train(frame: pd.DataFrame, feature: str) -> TrainedModel:
    train, valid = split_rows(frame, "train"), split_rows(frame, "validation")
    params = lightgbm_params("regression", None, {"num_leaves": 7}, num_threads=1)
    return train_lightgbm(
        "regression", train[[feature]], train["value"], valid[[feature]], valid["value"], params, 100, 10
    )


@pytest.fixture(scope="module")
def good(training_set: pd.DataFrame) -> TrainedModel:
    return _train(training_set, "signal")


@pytest.fixture(scope="module")
def useless(training_set: pd.DataFrame) -> TrainedModel:
    return _train(training_set, "noise")


def test_first_model_better_than_the_baseline_is_promoted(
    training_set: pd.DataFrame, good: TrainedModel
) -> None:
    result, scores = evaluate(_spec(), training_set, Challenger(3, "run-3", good), None)
    assert result.metric == "rmse" and result.challenger_version == 3 and result.challenger_run_id == "run-3"
    assert result.decision.promote and "no champion" in result.decision.reason
    assert result.challenger["rmse"] < result.baseline["rmse"]
    assert result.champion is None and result.champion_version is None and not result.is_recheck
    assert len(scores) == len(split_rows(training_set, "test"))


def test_model_no_better_than_the_baseline_is_not_promoted(
    training_set: pd.DataFrame, useless: TrainedModel
) -> None:
    result, _ = evaluate(_spec(), training_set, Challenger(1, "run-1", useless), None)
    assert not result.decision.promote
    assert "does not beat baseline" in result.decision.reason


def test_worse_challenger_never_replaces_the_champion(
    training_set: pd.DataFrame, good: TrainedModel, useless: TrainedModel
) -> None:
    result, _ = evaluate(_spec(), training_set, Challenger(2, "run-2", useless), Champion(1, good))
    assert not result.decision.promote
    assert "worse than the champion" in result.decision.reason
    assert result.champion_version == 1 and result.champion is not None
    assert result.champion["rmse"] < result.challenger["rmse"]
    # And the other way round the better challenger wins.
    better, _ = evaluate(_spec(), training_set, Challenger(2, "run-2", good), Champion(1, useless))
    assert better.decision.promote and "improves on the champion" in better.decision.reason


def test_champion_evaluated_again_is_a_recheck(training_set: pd.DataFrame, good: TrainedModel) -> None:
    result, _ = evaluate(_spec(), training_set, Challenger(4, "run-4", good), Champion(4, good))
    assert result.is_recheck and not result.decision.promote
    assert result.decision.reason == "version 4 is already the champion"
    assert result.champion == result.challenger


def test_champion_that_cannot_score_is_noted_and_the_baseline_decides(
    training_set: pd.DataFrame, good: TrainedModel
) -> None:
    unloadable = Champion(1, None, unusable="no LightGBM text model")
    result, _ = evaluate(_spec(), training_set, Challenger(2, "run-2", good), unloadable)
    assert result.champion is None and result.notes == [
        "champion version 1 cannot score the test window: no LightGBM text model"
    ]
    assert result.decision.promote
    assert result.decision.reason.startswith("champion version 1 cannot score the test window")
    # A champion trained on a feature the test rows no longer have cannot score them either.
    old = _train(training_set.rename(columns={"signal": "dropped"}), "dropped")
    result, _ = evaluate(_spec(), training_set, Challenger(2, "run-2", good), Champion(1, old))
    assert result.champion is None and "missing from the frame" in result.notes[0]


def test_promotion_metric_must_be_one_of_the_task() -> None:
    assert promotion_metric(_spec()) == "rmse"
    assert promotion_metric(_spec(promotion={"metric": "mae"})) == "mae"
    with pytest.raises(SpecError, match=r"'promotion.metric': 'roc_auc' is not a regression metric"):
        promotion_metric(_spec(promotion={"metric": "roc_auc"}))
