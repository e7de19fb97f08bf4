"""Drift report logic: which columns are judged, the calibrated reference, and one window's verdict."""

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.drift_reference import (
    BASELINE_KIND,
    PERFORMANCE_KIND,
    build_reference,
    judge_window,
    monitored_columns,
    primary_error,
    read_reference,
)
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec

BIKE = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")


def hourly_rows(start: str, days: int, level: float, seed: int) -> pd.DataFrame:
    """Bike-like rows: i.i.d. noise around `level`, a model that predicts `level`."""
    rng = np.random.default_rng(seed)
    n = days * 24
    frame = pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq="h"),
            "temp": rng.normal(0.5, 0.1, n),
            "humidity": rng.normal(0.6, 0.1, n),
            "weathersit": rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]),
            "count": rng.normal(level, 20, n),
            "cal_hour": np.tile(np.arange(24), days),
        }
    )
    frame["prediction"] = 100.0
    return frame


def test_monitored_columns_skip_calendar_parts_and_excluded_ones() -> None:
    spec = BIKE.model_copy(update={"drift": BIKE.drift.model_copy(update={"exclude": ["humidity"]})})
    columns = monitored_columns(
        spec, ["ts", "cal_hour", "temp", "humidity", "weathersit", "count", "prediction"]
    )
    assert set(columns.numeric) == {"temp", "count", "prediction"}
    assert columns.categorical == ("weathersit",)  # int with allowed values: a category
    assert columns.roles == {
        "temp": "feature",
        "weathersit": "feature",
        "count": "target",
        "prediction": "prediction",
    }


def test_reference_round_trip_keeps_performance_and_baselines() -> None:
    rows = hourly_rows("2024-01-01", 56, 100, seed=1)
    columns = monitored_columns(BIKE, list(rows.columns))
    frame = build_reference(rows, columns, ("rmse", 20.0), BIKE)
    assert set(frame["kind"]) == {"numeric", "categorical", PERFORMANCE_KIND, BASELINE_KIND}
    reference = read_reference(frame)
    assert reference.performance == ("rmse", 20.0)
    assert set(reference.profile.features) == {"temp", "humidity", "weathersit", "count", "prediction"}
    # i.i.d. weeks barely differ from their own profile: far below the PSI threshold
    assert 0 < reference.baseline_psi["temp"] < BIKE.drift.psi_threshold


def test_stable_window_is_stable_and_shifted_window_drifts() -> None:
    train = hourly_rows("2024-01-01", 56, 100, seed=1)
    reference = read_reference(
        build_reference(train, monitored_columns(BIKE, list(train.columns)), ("rmse", 20.0), BIKE)
    )
    stable = judge_window(BIKE, reference, hourly_rows("2024-03-01", 7, 100, seed=2))
    assert not stable.verdict.drifted
    assert stable.current_error == pytest.approx(20, rel=0.15)

    shifted = hourly_rows("2024-03-01", 7, 160, seed=3)
    shifted["temp"] += 0.3
    shifted["humidity"] -= 0.3
    report = judge_window(BIKE, reference, shifted)
    assert report.verdict.drifted
    assert {"temp", "humidity"} <= set(report.verdict.drifted_features)
    assert report.verdict.performance_drop > BIKE.drift.performance_drop_threshold  # rmse ~ 63 vs 20


def test_calibration_raises_thresholds_of_columns_that_vary_by_nature() -> None:
    train = hourly_rows("2024-01-01", 56, 100, seed=1)
    week = np.arange(len(train)) // (7 * 24)
    train["temp"] = 0.1 + 0.1 * week + np.random.default_rng(4).normal(0, 0.01, len(train))  # a season
    columns = monitored_columns(BIKE, list(train.columns))
    calibrated = read_reference(build_reference(train, columns, None, BIKE))
    plain_spec = BIKE.model_copy(update={"drift": BIKE.drift.model_copy(update={"calibrate": False})})
    plain = read_reference(build_reference(train, columns, None, plain_spec))
    one_week = train[week == 3].reset_index(drop=True)
    assert "temp" in judge_window(plain_spec, plain, one_week).verdict.drifted_features
    assert "temp" not in judge_window(BIKE, calibrated, one_week).verdict.drifted_features


def test_primary_error_without_labels_is_nan() -> None:
    scored = pd.DataFrame({"prediction": [1.0, 2.0]})
    assert np.isnan(primary_error("regression", pd.Series([np.nan, np.nan]), scored)[1])
    assert primary_error("regression", pd.Series([1.0, 4.0]), scored) == ("rmse", pytest.approx(np.sqrt(2)))
