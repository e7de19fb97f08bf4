"""The training window of `training_set` and `model` on the tiny dataset (see tiny.py), through
`dagster.materialize`: the spec's `training.window`, the run tag `mlplatform/train_from` that moves
it to a change point, the fallback when too little follows the change, and the recency weights.

One home for the module: January and February loaded up to `features` (1,440 hourly rows, three of
them bad), spec `training: {window: 45d, recency_half_life: 7d, min_rows_after_change: 600,
min_days_after_change: 20}`. The last labelled row is 2024-02-29 23:00, so 45 days back is
2024-01-15 23:00; from 2024-02-01 follow 695 good rows over 29 days (enough), from 2024-02-15 only 360.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pytest

import mlplatform.assets.training as training_assets
from mlplatform.contracts import TRAIN_FROM_TAG, MlflowParam, Stage
from mlplatform.core.training_data import champion_split_rows, recorded_windows
from mlplatform.factory import build_dataset
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import MONTHS, TinyDataset, make_tiny_dataset, metadata_of, tiny_spec_dict

JANUARY, FEBRUARY, _ = MONTHS
DATA_STAGES = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)
TRAINING = {
    "window": "45d",
    "recency_half_life": "7d",
    "min_rows_after_change": 600,
    "min_days_after_change": 20,
}
WINDOW_START = datetime(2024, 1, 15, 23)  # 2024-02-29 23:00 - 45 days


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    tiny = make_tiny_dataset(tmp_path_factory.mktemp("tiny_windows"))
    spec = DatasetSpec.model_validate({**tiny_spec_dict(tiny.source.path), "training": TRAINING})
    tiny = replace(tiny, spec=spec, built=build_dataset(spec, settings=tiny.settings))
    for partition in (JANUARY, FEBRUARY):
        tiny.materialize(DATA_STAGES, partition_key=partition)
    return tiny


def train(home: TinyDataset, train_from: str | None) -> dg.ExecuteInProcessResult:
    """training_set then model in one run, as `<ds>__retrain` runs them (with the tag, if any)."""
    return dg.materialize(
        home.assets,
        selection=[home.key(Stage.TRAINING_SET), home.key(Stage.MODEL)],
        resources=home.resources(),
        instance=home.instance,
        tags={TRAIN_FROM_TAG: train_from} if train_from else None,
    )


def good_rows_before(home: TinyDataset, moment: datetime) -> int:
    """Labelled rows the source holds before `moment` (counted from what the fixture wrote)."""
    records = home.source.good_records_in(JANUARY) + home.source.good_records_in(FEBRUARY)
    return sum(datetime.strptime(r["stamp"], "%Y-%m-%d %H:%M") < moment for r in records)


def labelled_rows(home: TinyDataset) -> int:
    return len(home.source.good_records_in(JANUARY)) + len(home.source.good_records_in(FEBRUARY))


def run_params(home: TinyDataset, result: dg.ExecuteInProcessResult) -> dict[str, str]:
    run_id = metadata_of(result, home.key(Stage.MODEL))["mlflow_run_id"]
    return dict(home.resources()["mlflow"].client().get_run(run_id).data.params)


def first_training_time(home: TinyDataset) -> datetime:
    return home.query("SELECT min(ts) FROM tiny.training_set")[0][0]


def assert_window(
    home: TinyDataset, result: dg.ExecuteInProcessResult, start: datetime, train_from: str
) -> None:
    """The window starting at `start` in the table, the metadata of both assets and the MLflow run."""
    metadata = metadata_of(result, home.key(Stage.TRAINING_SET))
    assert metadata["training_window_start"] == str(start) and first_training_time(home) == start
    assert metadata["rows_before_window_left_out"] == good_rows_before(home, start)
    assert metadata["train_from"] == train_from
    assert metadata["dagster/row_count"] == labelled_rows(home) - good_rows_before(home, start)
    params = run_params(home, result)
    assert params["training_window_start"] == str(start)
    assert params["training_window_reason"] == metadata["training_window_reason"]
    assert params[MlflowParam.window("train")].startswith(str(start))
    assert (params["training_window"], params["recency_half_life"], params["train_from"]) == (
        "45d",
        "7d",
        train_from,
    )
    model = metadata_of(result, home.key(Stage.MODEL))
    assert model["training_window_start"] == str(start) and model["train_from"] == train_from


def test_without_a_tag_the_spec_window_applies_and_train_rows_are_recency_weighted(
    home: TinyDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real = training_assets.train_lightgbm

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["rows"], seen["weight"] = len(args[1]), kwargs.get("weight")
        return real(*args, **kwargs)

    monkeypatch.setattr(training_assets, "train_lightgbm", spy)
    result = train(home, None)
    assert_window(home, result, WINDOW_START, "none")
    reason = metadata_of(result, home.key(Stage.TRAINING_SET))["training_window_reason"]
    assert "the last 45d" in reason
    # Weights: 1 for the train split's newest row, halving each 7 days back, one per train row.
    train_times = [
        row[0] for row in home.query("SELECT ts FROM tiny.training_set WHERE split = 'train' ORDER BY ts")
    ]
    weight = np.asarray(seen["weight"])
    assert seen["rows"] == len(train_times) == weight.size
    ages = np.array([(train_times[-1] - t) / timedelta(days=7) for t in train_times])
    assert weight.max() == 1.0 and np.allclose(np.sort(weight), np.sort(0.5**ages))


def test_the_champion_rows_read_back_from_the_recorded_windows_are_the_windowed_ones(
    home: TinyDataset,
) -> None:
    result = train(home, None)
    windows = recorded_windows(run_params(home, result))
    with duckdb.connect(str(home.warehouse_path), read_only=True) as conn:
        rows = champion_split_rows(conn, home.spec, windows)
    metadata = metadata_of(result, home.key(Stage.TRAINING_SET))
    assert {split: len(part) for split, part in rows.items()} == {
        split: metadata[f"rows_{split}"] for split in ("train", "validation", "test")
    }
    assert rows["train"]["ts"].min() == WINDOW_START


def test_the_train_from_tag_moves_the_window_to_the_change_point(home: TinyDataset) -> None:
    result = train(home, "2024-02-01T00:00:00+00:00")
    assert_window(home, result, datetime(2024, 2, 1), "2024-02-01 00:00:00")
    reason = metadata_of(result, home.key(Stage.TRAINING_SET))["training_window_reason"]
    after = labelled_rows(home) - good_rows_before(home, datetime(2024, 2, 1))  # 695: one bad in February
    assert (
        reason.startswith("from the change point 2024-02-01 00:00:00")
        and f"{after:,} labelled rows" in reason
    )


def test_too_few_rows_after_the_change_point_fall_back_to_the_spec_window(home: TinyDataset) -> None:
    result = train(home, "2024-02-15T00:00:00Z")
    assert_window(home, result, WINDOW_START, "2024-02-15 00:00:00")
    reason = metadata_of(result, home.key(Stage.TRAINING_SET))["training_window_reason"]
    after = labelled_rows(home) - good_rows_before(home, datetime(2024, 2, 15))
    assert after == 360 and f"not used: {after} labelled rows after it" in reason
    assert "min_rows_after_change 600" in reason
    assert "the last 45d" in reason


def test_a_tag_that_is_not_a_time_fails_the_training_set_naming_it(home: TinyDataset) -> None:
    result = dg.materialize(
        home.assets,
        selection=[home.key(Stage.TRAINING_SET)],
        resources=home.resources(),
        instance=home.instance,
        tags={TRAIN_FROM_TAG: "yesterday-ish"},
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and "mlplatform/train_from='yesterday-ish'" in str(failures[0].event_specific_data)


def test_a_model_of_a_table_no_recorded_materialization_wrote_says_the_window_was_not_recorded(
    home: TinyDataset,
) -> None:
    train(home, "2024-02-01T00:00:00")  # recorded: the change-point window
    # Rewritten outside the instance (direct invocation, no tag): the spec's 45-day window.
    context = dg.build_asset_context(resources={"warehouse": home.resources()["warehouse"]})
    home.asset(Stage.TRAINING_SET)(context)
    result = home.materialize([Stage.MODEL])
    model = metadata_of(result, home.key(Stage.MODEL))
    assert model["training_window_start"] == str(WINDOW_START)  # what the table shows
    assert model["training_window_reason"].startswith("not recorded:") and model["train_from"] == "unknown"
