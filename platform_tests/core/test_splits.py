from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.splits import SplitWindows, assign_split, time_split


def hourly_frame(hours: int, start: str = "2024-01-01") -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.date_range(start, periods=hours, freq="h"), "y": np.arange(hours)})


def test_windows_are_ordered_back_to_back_and_cover_every_row_once() -> None:
    # Shuffled rows with duplicate timestamps: the split must depend on time only, not row order.
    frame = pd.concat([hourly_frame(100), hourly_frame(100)]).sample(frac=1.0, random_state=1)
    windows = time_split(frame, "ts", validation_fraction=0.1, test_fraction=0.2)

    assert windows.train[0] < windows.train[1] == windows.validation[0]
    assert windows.validation[0] < windows.validation[1] == windows.test[0] < windows.test[1]

    labels = assign_split(frame, "ts", windows)
    assert labels.index.equals(frame.index)
    assert set(labels) == {"train", "validation", "test"}
    assert labels.notna().all()
    times = frame["ts"]
    # Every training row is earlier than every validation row, which is earlier than every test row.
    assert times[labels == "train"].max() < times[labels == "validation"].min()
    assert times[labels == "validation"].max() < times[labels == "test"].min()
    # Identical timestamps never straddle two splits.
    assert (frame.assign(split=labels).groupby("ts")["split"].nunique() == 1).all()


def test_cuts_follow_the_time_range_not_the_row_count() -> None:
    # 100 hours, but the first 10 hours hold 10x the rows. Row-based fractions would cut much earlier.
    dense = pd.concat([hourly_frame(10)] * 10)
    frame = pd.concat([dense, hourly_frame(90, start="2024-01-01 10:00")], ignore_index=True)
    windows = time_split(frame, "ts", validation_fraction=0.1, test_fraction=0.1)

    start = pd.Timestamp("2024-01-01")
    span = pd.Timedelta(hours=99)
    assert windows.train[0] == start
    assert windows.validation[0] == (start + span * 0.8).ceil("h")
    assert windows.test[0] == (start + span * 0.9).ceil("h")
    assert windows.test[1] > frame["ts"].max()


def test_time_split_accepts_dates_and_timezones() -> None:
    frame = pd.DataFrame({"day": pd.date_range("2024-01-01", periods=30, freq="D", tz="Europe/Berlin")})
    windows = time_split(frame, "day", 0.2, 0.2)
    assert windows.test[0].tzinfo is not None
    assert assign_split(frame, "day", windows).value_counts().to_dict() == {
        "train": 18,
        "validation": 6,
        "test": 6,
    }

    as_dates = pd.DataFrame({"day": [d.date() for d in pd.date_range("2024-01-01", periods=30, freq="D")]})
    assert assign_split(as_dates, "day", time_split(as_dates, "day", 0.2, 0.2)).value_counts()["test"] == 6


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (hourly_frame(1), "empty"),
        (hourly_frame(3), "empty"),
        (hourly_frame(0), "empty frame"),
        (pd.DataFrame({"ts": [pd.Timestamp("2024-01-01"), pd.NaT, pd.Timestamp("2024-02-01")]}), "missing"),
        (pd.DataFrame({"other": [1, 2, 3]}), "not in the frame"),
    ],
)
def test_time_split_refuses_data_it_cannot_split(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        time_split(frame, "ts", 0.1, 0.1)


@pytest.mark.parametrize(
    ("validation", "test"), [(0.0, 0.1), (0.1, 0.0), (0.5, 0.5), (0.6, 0.5), (-0.1, 0.2)]
)
def test_time_split_rejects_bad_fractions(validation: float, test: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        time_split(hourly_frame(100), "ts", validation, test)


def test_assign_split_rejects_rows_outside_the_windows() -> None:
    windows = time_split(hourly_frame(100), "ts", 0.1, 0.1)
    later = hourly_frame(5, start="2024-02-01")
    with pytest.raises(ValueError, match="outside the split windows"):
        assign_split(later, "ts", windows)


def test_windows_serialise_as_iso_strings() -> None:
    windows = SplitWindows(
        train=(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-08")),
        validation=(pd.Timestamp("2024-01-08"), pd.Timestamp("2024-01-09")),
        test=(pd.Timestamp("2024-01-09"), pd.Timestamp("2024-01-10")),
    )
    assert windows.as_dict()["validation"] == {"start": "2024-01-08T00:00:00", "end": "2024-01-09T00:00:00"}
