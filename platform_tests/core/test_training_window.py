"""The training window rule (all / last N days / change point / fallbacks), the recency weights and
the per-row weights of `train_lightgbm`."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.training import lightgbm_params, predict, train_lightgbm
from mlplatform.core.training_window import choose_training_window, parse_train_from, recency_weights
from mlplatform.specs.monitoring import TrainingSpec

FIRST = pd.Timestamp("2024-01-01 00:00")
HOURS = 90 * 24  # 2024-01-01 00:00 .. 2024-03-30 23:00
LAST = FIRST + pd.Timedelta(hours=HOURS - 1)


def hourly() -> pd.Series:
    return pd.Series(pd.date_range(FIRST, periods=HOURS, freq="h"))


def training(**options: object) -> TrainingSpec:
    return TrainingSpec.model_validate(options)


def test_window_all_starts_at_the_first_row_whatever_the_row_order() -> None:
    times = hourly().sample(frac=1.0, random_state=1)
    window = choose_training_window(times, training())
    assert window.start == FIRST
    assert window.train_from is None and not window.change_point_used
    assert "training.window: all" in window.reason


def test_window_of_n_days_keeps_the_last_n_days_of_rows() -> None:
    window = choose_training_window(hourly(), training(window="30d"))
    assert window.start == LAST - pd.Timedelta(days=30)
    assert "the last 30d" in window.reason and str(LAST) in window.reason
    # Longer than the history: every row.
    longer = choose_training_window(hourly(), training(window="365d"))
    assert longer.start == FIRST and "reaches past the first row" in longer.reason


def test_window_starts_at_a_real_row_after_the_cut() -> None:
    daily = pd.Series(pd.date_range("2024-01-01 12:00", periods=60, freq="D"))
    window = choose_training_window(daily, training(window="10d"))
    # Last row 2024-02-29 12:00; the cut 2024-02-19 12:00 is itself a row.
    assert window.start == pd.Timestamp("2024-02-19 12:00")
    gap = choose_training_window(daily, training(window="10d"), pd.Timestamp("2024-02-10 06:00"))
    assert gap.start == pd.Timestamp("2024-02-19 12:00")  # the change point is older than the window


def test_change_point_with_enough_rows_and_days_starts_the_window() -> None:
    change = pd.Timestamp("2024-02-20 00:00")  # 40 days (960 rows) before the end
    window = choose_training_window(
        hourly(), training(min_rows_after_change=900, min_days_after_change=28), change
    )
    assert window.start == change and window.change_point_used and window.train_from == change
    assert "from the change point" in window.reason and "960 labelled rows" in window.reason


def test_change_point_between_rows_starts_at_the_next_row() -> None:
    change = pd.Timestamp("2024-02-20 10:30")
    window = choose_training_window(
        hourly(), training(min_rows_after_change=10, min_days_after_change=1), change
    )
    assert window.start == pd.Timestamp("2024-02-20 11:00") and window.change_point_used


def test_too_few_rows_after_the_change_fall_back_to_the_window() -> None:
    change = pd.Timestamp("2024-02-20 00:00")  # 960 rows after it
    window = choose_training_window(hourly(), training(window="60d"), change)  # default: 2000 rows
    assert window.start == LAST - pd.Timedelta(days=60)
    assert not window.change_point_used and window.train_from == change
    assert "960 labelled rows after it" in window.reason
    assert "min_rows_after_change 2,000" in window.reason and "the last 60d" in window.reason


def test_too_few_days_after_the_change_fall_back_to_the_window() -> None:
    change = LAST - pd.Timedelta(days=10)
    window = choose_training_window(hourly(), training(min_rows_after_change=100), change)
    assert window.start == FIRST and not window.change_point_used
    assert "10.0 days" in window.reason and "min_days_after_change 28" in window.reason


def test_change_point_after_the_last_row_or_switched_off_is_not_used() -> None:
    beyond = choose_training_window(hourly(), training(min_rows_after_change=1), LAST + pd.Timedelta(days=1))
    assert beyond.start == FIRST and "0 labelled rows after it" in beyond.reason
    change = pd.Timestamp("2024-02-01")
    off = choose_training_window(hourly(), training(change_point=False, min_rows_after_change=1), change)
    assert off.start == FIRST and not off.change_point_used and "change_point is off" in off.reason


def test_the_latest_start_wins_between_window_and_change_point() -> None:
    relaxed = training(window="30d", min_rows_after_change=100, min_days_after_change=7)
    later = choose_training_window(hourly(), relaxed, LAST - pd.Timedelta(days=20))
    assert later.start == LAST - pd.Timedelta(days=20) and later.change_point_used
    earlier = choose_training_window(hourly(), relaxed, LAST - pd.Timedelta(days=50))
    assert earlier.start == LAST - pd.Timedelta(days=30) and not earlier.change_point_used
    assert "not after the window start" in earlier.reason


def test_no_labelled_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="no labelled rows"):
        choose_training_window(pd.Series([], dtype="datetime64[ns]"), training())


def test_train_from_tag_is_read_as_naive_utc() -> None:
    assert parse_train_from(None) is None and parse_train_from("  ") is None
    assert parse_train_from("2024-03-01T00:00:00") == pd.Timestamp("2024-03-01")
    assert parse_train_from("2024-03-01T02:00:00+02:00") == pd.Timestamp("2024-03-01")
    assert parse_train_from("2024-03-01T00:00:00Z") == pd.Timestamp("2024-03-01")
    with pytest.raises(ValueError, match="mlplatform/train_from"):
        parse_train_from("last tuesday")


def test_recency_weights_halve_every_half_life() -> None:
    end = pd.Timestamp("2024-03-01")
    times = pd.Series(
        [end, end - pd.Timedelta(days=7), end - pd.Timedelta(days=14), end - pd.Timedelta(days=3.5)]
    )
    weights = recency_weights(times, timedelta(days=7))
    assert weights == pytest.approx([1.0, 0.5, 0.25, 2**-0.5])
    # Counted back from a given end; a row after it is never weighted above 1.
    shifted = recency_weights(times, timedelta(days=7), end=end - pd.Timedelta(days=7))
    assert shifted == pytest.approx([1.0, 1.0, 0.5, 1.0])


def test_no_half_life_weighs_every_row_one() -> None:
    weights = recency_weights(hourly(), None)
    assert weights.shape == (HOURS,) and (weights == 1.0).all()
    with pytest.raises(ValueError, match="positive"):
        recency_weights(hourly(), timedelta(0))


def regime_change(rows: int = 3000, new_rows: int = 600, seed: int = 5) -> pd.DataFrame:
    """`y` follows +x for the old rows and -x for the last `new_rows` (a concept drift)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=rows)
    sign = np.where(np.arange(rows) >= rows - new_rows, -1.0, 1.0)
    return pd.DataFrame({"x": x, "y": 10 * sign * x + rng.normal(scale=0.1, size=rows)})


def test_recency_weights_make_lightgbm_follow_the_newest_regime() -> None:
    data = regime_change()
    train, valid, test = data.iloc[:2700], data.iloc[2700:2850], data.iloc[2850:]
    params = lightgbm_params("regression", None, {"num_leaves": 7, "min_data_in_leaf": 5}, num_threads=1)
    age_hours = pd.Series(pd.date_range("2024-01-01", periods=len(train), freq="h"))

    def test_rmse(weight: np.ndarray | None) -> float:
        model = train_lightgbm(
            "regression", train[["x"]], train["y"], valid[["x"]], valid["y"], params, 200, 20, [], weight
        )
        return float(np.sqrt(np.mean((predict(model, test[["x"]]) - test["y"]) ** 2)))

    unweighted, weighted = test_rmse(None), test_rmse(recency_weights(age_hours, timedelta(hours=48)))
    assert weighted < 0.5 * unweighted  # 300 new-regime train rows outweigh 2,400 old ones


def test_train_lightgbm_refuses_weights_that_do_not_fit() -> None:
    data = regime_change(rows=200, new_rows=0)
    params = lightgbm_params("regression", None, {}, num_threads=1)

    def fit(weight: np.ndarray) -> object:
        return train_lightgbm("regression", data[["x"]], data["y"], None, None, params, 5, 5, [], weight)

    with pytest.raises(ValueError, match="199 value"):
        fit(np.ones(199))
    for bad in (np.full(200, -1.0), np.full(200, np.nan), np.zeros(200)):
        with pytest.raises(ValueError, match="non-negative"):
            fit(bad)
