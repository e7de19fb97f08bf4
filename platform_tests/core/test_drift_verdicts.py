"""A verdict is drifted, stable or insufficient_data, never "stable" about nothing; durations in months."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlplatform.assets.drift_metadata import verdict_of
from mlplatform.contracts import DriftVerdictMetadata, VerdictStatus
from mlplatform.core.drift_reference import (
    build_reference,
    monitored_columns,
    natural_variability,
    read_reference,
)
from mlplatform.core.drift_windows import report_partition, window_partitions, window_start
from mlplatform.core.profile import build_profile
from mlplatform.core.rescoring import (
    ChampionEvent,
    champion_version,
    latest_change,
    partitions_to_rescore,
    rescore_range,
)
from mlplatform.sensors.drift import DriftState, Request, Verdict, decide
from mlplatform.specs.durations import Duration, parse_calendar_duration, parse_duration, shift_months
from mlplatform.specs.model import DatasetSpec

REFERENCE_VERSION = 4


def toy_spec(grain: str = "day", **drift: object) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "partition_grain": grain,
            "columns": {"ts": {"type": "timestamp"}, "x": {"type": "float"}, "y": {"type": "float"}},
            "target": {"column": "y", "task": "regression"},
            **({"drift": drift} if drift else {}),
        }
    )


def hourly(start: str, hours: int, seed: int, version: int | None = REFERENCE_VERSION) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=hours)
    frame = pd.DataFrame({"ts": pd.date_range(start, periods=hours, freq="h"), "x": x})
    frame["y"] = 3 * x + rng.normal(scale=0.5, size=hours)
    frame["prediction"] = 3 * x
    if version is not None:
        frame["model_version"] = version
    return frame


def judge(spec: DatasetSpec, rows: pd.DataFrame, end: datetime) -> dict[str, object]:
    train = hourly("2024-01-01", 28 * 24, seed=1)
    columns = monitored_columns(spec, list(train.columns))
    reference = read_reference(build_reference(train, columns, ("rmse", 0.5), spec))
    start = end - timedelta(days=1)
    return report_partition(spec, reference, REFERENCE_VERSION, rows, start, window_start(spec, end), end)[1]


def test_a_judged_window_scored_by_the_reference_model_is_stable() -> None:
    row = judge(toy_spec(), hourly("2024-02-01", 7 * 24, seed=2), datetime(2024, 2, 8))
    assert row["status"] == VerdictStatus.STABLE and row["outputs_judged"] and not row["drifted"]
    assert row["current_error"] is not None  # performance judged


def test_an_empty_window_is_insufficient_data_not_stable() -> None:
    # Monthly rows with a 7d window: the window before March 1 holds none of them.
    rows = pd.DataFrame({"ts": pd.date_range("2023-01-01", periods=14, freq="MS"), "x": 0.0, "y": 0.0})
    row = judge(toy_spec(window="7d"), rows, datetime(2024, 3, 1))
    assert row["status"] == VerdictStatus.INSUFFICIENT_DATA and not row["drifted"]
    assert str(row["reason"]).startswith("insufficient data: no rows in the window")
    assert "day(s) apart" in str(row["reason"]) and "stable" not in str(row["reason"])


def test_too_few_rows_are_insufficient_data() -> None:
    spec = toy_spec(window="7d", min_rows=500)
    row = judge(spec, hourly("2024-02-01", 7 * 24, seed=2), datetime(2024, 2, 8))
    assert row["status"] == VerdictStatus.INSUFFICIENT_DATA and row["n_rows"] == 168
    assert "168 row(s) in the window, fewer than drift.min_rows (500)" in str(row["reason"])


def test_predictions_by_another_version_leave_performance_unjudged() -> None:
    rows = hourly("2024-02-01", 7 * 24, seed=2, version=3)
    row = judge(toy_spec(), rows, datetime(2024, 2, 8))
    assert row["status"] == VerdictStatus.INSUFFICIENT_DATA and not row["outputs_judged"]
    reason = str(row["reason"])
    assert "predictions are by version 3, the reference profile is of version 4" in reason
    assert "prediction drift and performance unjudged" in reason and row["current_error"] is None


def test_unscored_rows_say_the_predictions_are_missing() -> None:
    row = judge(toy_spec(), hourly("2024-02-01", 7 * 24, seed=2, version=None), datetime(2024, 2, 8))
    assert row["status"] == VerdictStatus.INSUFFICIENT_DATA
    assert "none of the window's 168 rows has a prediction" in str(row["reason"])


def test_drift_in_the_judged_part_is_drifted_even_with_outputs_unjudged() -> None:
    rows = hourly("2024-02-01", 7 * 24, seed=2, version=3)
    rows["x"] += 3
    row = judge(toy_spec(), rows, datetime(2024, 2, 8))
    assert row["status"] == VerdictStatus.DRIFTED and row["drifted"]
    assert "predictions are by version 3" in str(row["reason"])


def test_verdict_metadata_carries_the_status_and_reads_old_events() -> None:
    verdict = DriftVerdictMetadata(False, "2024-03-01", "no rows", VerdictStatus.INSUFFICIENT_DATA)
    metadata = verdict.to_metadata()
    assert metadata["status"] == "insufficient_data" and metadata["drifted"] is False
    assert DriftVerdictMetadata.from_metadata(metadata) == verdict
    legacy = DriftVerdictMetadata.from_metadata({"drifted": True, "verdict_partition": "p", "reason": "r"})
    assert legacy is not None and legacy.status == VerdictStatus.DRIFTED
    with pytest.raises(ValueError, match="contradicts"):
        DriftVerdictMetadata(False, "p", "r", VerdictStatus.DRIFTED)


def test_the_drift_sensor_neither_retrains_on_nor_calls_insufficient_data_stable() -> None:
    now, cooldown = datetime(2024, 3, 1), timedelta(days=7)
    unjudged = Verdict(
        1, False, "2024-03-01", "insufficient data: no rows in the window", "insufficient_data"
    )
    decision = decide(DriftState(), [unjudged], None, now, cooldown, 1, "ds")
    assert decision.run_key is None and decision.state.pending is None
    assert "insufficient data" in decision.message and "stable" not in decision.message
    # A drift pending behind a cool-down is not cleared by a window that could not be judged.
    recent = Request("drift:ds:0", 0, None, now.isoformat(), status="SUCCESS")
    drifted = Verdict(2, True, "2024-03-08", "x drifted", "drifted")
    held = decide(DriftState(last_request=recent), [drifted], None, now, cooldown, 1, "ds")
    assert held.run_key is None and held.state.pending == drifted
    too_few = Verdict(3, False, "2024-03-15", "insufficient data: 5 row(s)", "insufficient_data")
    after = decide(held.state, [too_few], None, now, cooldown, 1, "ds")
    assert after.state.pending == drifted and "cool-down" in after.message
    later = decide(after.state, [], None, now + cooldown, cooldown, 1, "ds")
    assert later.run_key == "drift:ds:2"


def test_month_durations_are_calendar_months() -> None:
    assert parse_calendar_duration("1mo") == Duration(months=1)
    assert parse_calendar_duration("90m") == Duration(fixed=timedelta(minutes=90))
    assert shift_months(datetime(2024, 3, 1), -1) == datetime(2024, 2, 1)
    assert shift_months(date(2024, 3, 31), -1) == date(2024, 2, 29)  # clamped to the month's end
    assert shift_months(pd.Timestamp("2024-01-15"), -13) == pd.Timestamp("2022-12-15")
    with pytest.raises(ValueError, match="calendar month has no fixed length"):
        parse_duration("2mo")
    with pytest.raises(ValueError, match="'1mo'"):
        parse_calendar_duration("1 month")


def test_a_one_month_window_on_monthly_partitions_covers_exactly_one_partition() -> None:
    spec = toy_spec("month", window="1mo")
    assert window_partitions(spec) == 1
    assert window_start(spec, datetime(2024, 3, 1)) == datetime(2024, 2, 1)  # February: 29 days
    assert window_start(spec, datetime(2024, 4, 1)) == datetime(2024, 3, 1)  # March: 31 days
    assert window_partitions(toy_spec("month", window="3mo")) == 3
    assert window_partitions(toy_spec("day", window="1mo")) == 31
    assert window_partitions(toy_spec("week", window="1mo")) == 5


def test_natural_variability_windows_are_calendar_months() -> None:
    spec = toy_spec("month", window="1mo")
    rows = hourly("2024-01-01", (31 + 29 + 31) * 24, seed=5)
    profile = build_profile(rows, ["x"], [])
    baseline = natural_variability(spec, rows, profile, parse_calendar_duration("1mo"))
    assert set(baseline["feature"]) == {"x"} and (baseline["value"] < 0.05).all()


def test_default_window_follows_the_grain_and_a_short_one_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert toy_spec("day").drift.window == "7d" and toy_spec("week").drift.window == "7d"
    with caplog.at_level(logging.WARNING, logger="mlplatform.specs"):
        assert toy_spec("month").drift.window == "1mo"
        assert not caplog.records
        assert toy_spec("month", window="7d").drift.window == "7d"  # allowed: a warning, not an error
    [record] = caplog.records
    assert (
        "spec toy: drift.window 7d is shorter than one partition (partition_grain: month)" in record.message
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlplatform.specs"):
        toy_spec("month", window="30d")  # shorter than a 31-day month
        toy_spec("week", window="6d")
    assert len(caplog.records) == 2


def test_partitions_scored_by_another_version_are_re_scored_as_one_range() -> None:
    versions = {"2024-03-01": 1, "2024-01-01": 2, "2024-02-01": None, "2024-04-01": 2}
    keys = partitions_to_rescore(versions, 2, sorted(versions).index)
    assert keys == ["2024-02-01", "2024-03-01"]  # an unknown version is re-scored too
    assert rescore_range(keys) == ("2024-02-01", "2024-03-01") and rescore_range([]) is None
    changes = [
        ChampionEvent(3, 2, "evaluation"),
        ChampionEvent(7, 1, "rollback"),
        ChampionEvent(5, 2, "x"),
    ]
    assert latest_change(changes) == ChampionEvent(7, 1, "rollback") and latest_change([]) is None
    assert champion_version("none") is None and champion_version(3) == 3


def test_a_verdict_row_without_a_status_is_an_error_not_stable() -> None:
    row = {"drifted": False, "reason": "stable: 0/3 columns drifted", "status": VerdictStatus.STABLE.value}
    assert verdict_of("2024-03-01", row).status == VerdictStatus.STABLE
    with pytest.raises(ValueError, match="drift verdict row of partition 2024-03-01 has no status"):
        verdict_of("2024-03-01", {**row, "status": None})
