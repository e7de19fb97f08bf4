"""Modelling choices a user would otherwise be surprised by: the entity key as an input, calendar
parts a column already carries, the naive baseline a model must beat, and predictions that name their
row and carry the actual value once it is known."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from mlplatform.contracts import Stage
from mlplatform.core.evaluation import choose_baseline, label_delay
from mlplatform.core.features import (
    ENTITY_FEATURE_MAX_LEVELS,
    calendar_covered_by,
    feature_names,
    features_sql,
    write_features_window,
)
from mlplatform.core.metrics import DAY, baseline_predictions, best_baseline, natural_seasons
from mlplatform.core.row_identity import ACTUAL_COLUMN, refresh_actuals
from mlplatform.core.scoring import score_frame
from mlplatform.core.splits import SPLIT_COLUMN
from mlplatform.core.training import lightgbm_params, predict, train_lightgbm
from mlplatform.core.training_data import categorical_inputs, model_feature_names, scoring_feature_names
from mlplatform.specs.model import DatasetSpec


def _stores_spec(features: dict[str, Any] | None = None, **extra: Any) -> DatasetSpec:
    """Daily sales per store (an int id, as a user's own data would have it)."""
    return DatasetSpec.model_validate(
        {
            "name": "shop",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "entity_key": "store",
            "columns": {
                "ts": {"type": "timestamp"},
                "store": {"type": "int"},
                "promo": {"type": "float"},
                "sales": {"type": "float"},
            },
            "target": {"column": "sales", "task": "regression"},
            "features": {"calendar": [], **(features or {})},
            **extra,
        }
    )


def _stores(n_stores: int, days: int = 60) -> pd.DataFrame:
    """Each store sells its own level (10 x store id) plus a little promo effect; nothing else."""
    rng = np.random.default_rng(5)
    times = pd.date_range("2024-01-01", periods=days, freq="D")
    frame = pd.DataFrame(
        [(t, store) for t in times for store in range(1, n_stores + 1)], columns=["ts", "store"]
    )
    frame["promo"] = rng.uniform(size=len(frame))
    frame["sales"] = 10.0 * frame["store"] + frame["promo"]
    return frame


def _warehouse_with_training_set(spec: DatasetSpec, frame: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute(f"CREATE SCHEMA {spec.name}")
    conn.register("frame", frame)
    for table in (Stage.FEATURES, Stage.TRAINING_SET):
        conn.execute(f"CREATE TABLE {spec.name}.{table} AS SELECT * FROM frame")
    return conn


@pytest.mark.parametrize(
    ("switch", "n_stores", "used"),
    [
        ("auto", 5, True),
        ("auto", ENTITY_FEATURE_MAX_LEVELS, True),
        ("auto", ENTITY_FEATURE_MAX_LEVELS + 1, False),
        (True, ENTITY_FEATURE_MAX_LEVELS + 1, True),
        (False, 5, False),
    ],
)
def test_entity_key_is_an_input_by_the_spec_switch_and_the_training_entities(
    switch: bool | str, n_stores: int, used: bool
) -> None:
    spec = _stores_spec({"entity_key_feature": switch})
    conn = _warehouse_with_training_set(spec, _stores(n_stores, days=3))
    names = model_feature_names(conn, spec)
    assert ("store" in names) is used
    assert names[-1] == "promo"  # the entity comes first, in the features table's order


def test_a_champion_keeps_its_entity_input_after_the_entities_cross_the_limit() -> None:
    """`auto` chose the store as an input on 5 stores; the training set now has 101, so a new training
    would not use it, but the champion still reads it when scoring (its own feature list decides)."""
    spec = _stores_spec()
    few = _stores(5, days=20)
    conn = _warehouse_with_training_set(spec, few)
    features = model_feature_names(conn, spec)
    params = lightgbm_params("regression", None, {"min_data_in_leaf": 5}, num_threads=1)
    champion = train_lightgbm(
        "regression", few[features], few["sales"], None, None, params, 50, 10, ["store"]
    )
    assert champion.feature_names == ["store", "promo"]

    many = _stores(ENTITY_FEATURE_MAX_LEVELS + 1, days=2)
    conn.register("many", many)
    for table in (Stage.FEATURES, Stage.TRAINING_SET):
        conn.execute(f"INSERT INTO shop.{table} SELECT * FROM many")
    assert model_feature_names(conn, spec) == ["promo"]  # what a new training would use
    assert scoring_feature_names(conn, spec, champion.feature_names) == ["store", "promo"]
    assert scoring_feature_names(conn, spec, ["promo"]) == ["promo"]  # a model trained without it
    scored = score_frame(spec, champion, many[many["store"] <= 5], version=1)
    assert len(scored) == 10 and scored["prediction"].notna().all()


def test_entity_key_feature_true_needs_an_entity_key() -> None:
    with pytest.raises(ValidationError, match="entity_key_feature: true needs an entity_key"):
        DatasetSpec.model_validate(
            {
                **_stores_spec().model_dump(exclude={"entity_key", "spec_path"}),
                "features": {"entity_key_feature": True},
            }
        )


def test_an_int_entity_key_is_a_category_the_model_tells_apart() -> None:
    """Five stores whose sales differ only by store: with the key as an input the model knows each
    level; without it, it can only predict the average of all of them."""
    frame = _stores(5)
    spec = _stores_spec()
    conn = _warehouse_with_training_set(spec, frame)
    with_entity = model_feature_names(conn, spec)
    assert categorical_inputs(spec, frame, with_entity) == ["store"]
    params = lightgbm_params("regression", None, {"min_data_in_leaf": 5}, num_threads=1)

    def rmse(features: list[str]) -> float:
        categorical = categorical_inputs(spec, frame, features)
        model = train_lightgbm(
            "regression", frame[features], frame["sales"], None, None, params, 200, 10, categorical
        )
        assert model.categorical_levels == ({"store": [1, 2, 3, 4, 5]} if categorical else {})
        return float(np.sqrt(np.mean((predict(model, frame) - frame["sales"]) ** 2)))

    assert rmse(with_entity) < 1.0
    assert rmse(feature_names(spec, entity_feature=False)) > 10.0


def _bike_like_spec(**columns: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "bikes",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "columns": {
                "ts": {"type": "timestamp"},
                "hour": {"type": "int"},
                "weekday": {"type": "int"},
                "count": {"type": "float"},
                **columns,
            },
            "target": {"column": "count", "task": "regression"},
        }
    )


def test_no_calendar_part_is_derived_twice() -> None:
    spec = _bike_like_spec(month={"type": "string"})  # text, not the month number: no cover
    assert calendar_covered_by(spec) == {"hour": "hour", "day_of_week": "weekday"}
    names = feature_names(spec)
    assert "cal_hour" not in names and "cal_day_of_week" not in names
    assert [n for n in names if n.startswith("cal_")] == [
        "cal_day_of_month",
        "cal_day_of_year",
        "cal_month",
        "cal_is_weekend",
    ]
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE clean AS SELECT TIMESTAMP '2024-05-06 13:00' AS ts, 13 AS hour, 1 AS weekday, "
        "'May' AS month, 7.0 AS count"
    )
    built = conn.sql(features_sql(spec, "clean", datetime(2024, 5, 6), datetime(2024, 5, 7))).df()
    assert list(built.columns) == ["ts", *names, "count"]
    assert built.loc[0, "hour"] == 13 and built.loc[0, "cal_month"] == 5


def test_dropped_calendar_column_does_not_cover_its_part() -> None:
    spec = _bike_like_spec()
    dropped = DatasetSpec.model_validate({**spec.model_dump(exclude={"spec_path"}), "drop": ["hour"]})
    assert "cal_hour" in feature_names(dropped) and "cal_hour" not in feature_names(spec)


def _hourly_split(values: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"ts": pd.date_range("2024-01-01", periods=len(values), freq="h"), "y": values})
    n = len(frame)
    frame[SPLIT_COLUMN] = np.where(
        frame.index < 0.6 * n, "train", np.where(frame.index < 0.8 * n, "validation", "test")
    )
    return frame


def _hourly_spec(**extra: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "load",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "columns": {"ts": {"type": "timestamp"}, "y": {"type": "float"}},
            "target": {"column": "y", "task": "regression"},
            **extra,
        }
    )


def test_seasonal_lag_wins_when_the_data_repeats_daily() -> None:
    rng = np.random.default_rng(2)
    hours = np.arange(24 * 60)
    # A daily rhythm on a rising level: the same hour yesterday is closer than last week's.
    daily = 100 + 50 * np.sin(2 * np.pi * hours / 24) + 2 * hours / 24
    frame = _hourly_split(daily + rng.normal(scale=3, size=hours.size))
    assert natural_seasons(frame["ts"]) == [DAY, 7 * DAY]
    choice = choose_baseline(_hourly_spec(), frame, "rmse", None)
    assert choice.name == "seasonal_lag_1d" and choice.rows == "validation"
    assert set(choice.candidates) == {"training_mean", "seasonal_lag_1d", "seasonal_lag_7d"}
    assert choice.candidates["seasonal_lag_1d"] < choice.candidates["training_mean"] / 5


def test_the_baseline_is_chosen_on_validation_not_on_test() -> None:
    """Daily rhythm up to the end of validation, then none: on test the mean would be best, but
    the choice is made before test, so the seasonal lag stays the baseline."""
    rng = np.random.default_rng(3)
    hours = np.arange(24 * 50)
    values = 100 + 50 * np.sin(2 * np.pi * hours / 24) + rng.normal(scale=2, size=hours.size)
    frame = _hourly_split(values)
    test = frame[SPLIT_COLUMN] == "test"
    frame.loc[test, "y"] = 100 + rng.normal(scale=2, size=int(test.sum()))
    choice = choose_baseline(_hourly_spec(), frame, "rmse", None)
    assert choice.name.startswith("seasonal_lag_") and choice.rows == "validation"
    test_rows = frame[test]
    on_test = baseline_predictions("regression", frame["y"][~test], test_rows, "ts", "y", frame)
    assert best_baseline("regression", test_rows["y"], on_test)[0] == "training_mean"  # had test chosen


def test_last_value_uses_labels_no_fresher_than_the_spec_allows() -> None:
    """A random walk (a stock price): yesterday's value is the best naive guess; the spec's lag of
    1d says labels are known a day late, so "last value" is the value a day before, not an hour."""
    spec = _hourly_spec(features={"lags": [{"column": "y", "lag": "1d"}]})
    assert label_delay(spec) == DAY
    rng = np.random.default_rng(4)
    frame = _hourly_split(1000 + np.cumsum(rng.normal(size=24 * 40)))
    rows = frame.iloc[500:510]
    found = baseline_predictions("regression", frame["y"][:400], rows, "ts", "y", frame, label_delay=DAY)
    np.testing.assert_allclose(found["last_value"], frame["y"].iloc[476:486])
    assert "seasonal_lag_1d" in found and "seasonal_lag_7d" in found
    # A quarter of the hours missing: the value exactly a day before is often absent (the seasonal
    # lag then falls back to the training mean), the latest one a day before never is.
    gappy = frame.drop(index=rng.choice(len(frame), size=len(frame) // 4, replace=False))
    choice = choose_baseline(spec, gappy, "rmse", None)
    assert choice.name == "last_value"
    assert choice.candidates["last_value"] < choice.candidates["seasonal_lag_1d"]


def test_predictions_name_their_row_and_get_the_actual_once_known() -> None:
    spec = DatasetSpec.model_validate(
        {
            **_stores_spec().model_dump(exclude={"spec_path"}),
            "columns": {
                "sale_id": {"type": "int", "nullable": False, "unique": True},
                **_stores_spec().model_dump()["columns"],
            },
            "drop": ["sale_id"],
        }
    )
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA shop")
    conn.execute(
        "CREATE TABLE shop.clean AS SELECT * FROM (VALUES "
        "(1, TIMESTAMP '2024-01-01', 1, 0.5, 10.5), (2, TIMESTAMP '2024-01-01', 2, 0.1, NULL), "
        "(3, TIMESTAMP '2024-01-02', 1, 0.9, NULL)) t(sale_id, ts, store, promo, sales)"
    )
    start, end = datetime(2024, 1, 1), datetime(2024, 1, 3)
    write_features_window(conn, spec, start, end)
    features = conn.sql("SELECT * FROM shop.features ORDER BY sale_id").df()
    assert "sale_id" in features.columns and "sale_id" not in feature_names(spec)
    model = train_lightgbm(
        "regression",
        features[["promo"]],
        features["promo"] * 3,
        None,
        None,
        lightgbm_params("regression", None, {"min_data_in_leaf": 1, "min_data_in_bin": 1}, 1),
        5,
        5,
    )
    scored = score_frame(spec, model, features, version=3)
    assert list(scored.columns) == ["ts", "store", "sale_id", "prediction", "model_version", ACTUAL_COLUMN]
    assert scored[ACTUAL_COLUMN].tolist()[0] == 10.5 and scored[ACTUAL_COLUMN][1:].isna().all()
    conn.register("scored", scored)
    conn.execute("CREATE TABLE shop.predictions AS SELECT * FROM scored")

    # The labels of sale 2 and 3 arrive: the next features build fills in their actual values.
    conn.execute("UPDATE shop.clean SET sales = 20.0 + sale_id WHERE sales IS NULL")
    written = write_features_window(conn, spec, start, end)
    assert written.actuals_refreshed == 2
    actuals = conn.sql(f"SELECT sale_id, {ACTUAL_COLUMN} FROM shop.predictions ORDER BY sale_id").fetchall()
    assert actuals == [(1, 10.5), (2, 22.0), (3, 23.0)]
    assert refresh_actuals(conn, spec, start, end) == 0  # nothing left to change
