"""Time-based train/validation/test splits.

Rows are split by *time*, never shuffled: the model is trained on the past, tuned on the recent past
and judged on the most recent data, which is how it will be used. The cut points are fractions of the
covered time range (not of the row count), so a busy month does not pull the boundaries around.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_COLUMN = "split"  # the column of the training_set table that holds a row's split

Window = tuple[pd.Timestamp, pd.Timestamp]


@dataclass(frozen=True)
class SplitWindows:
    """Half-open time windows [start, end): train < validation < test, back to back, no overlap."""

    train: Window
    validation: Window
    test: Window

    def as_dict(self) -> dict[str, dict[str, str]]:
        """ISO strings, handy for run parameters, tags and metadata."""
        return {
            name: {"start": window[0].isoformat(), "end": window[1].isoformat()}
            for name, window in zip(SPLIT_NAMES, (self.train, self.validation, self.test), strict=True)
        }


def _timestamps(df: pd.DataFrame, time_column: str) -> pd.Series:
    if time_column not in df.columns:
        raise ValueError(f"time column {time_column!r} is not in the frame (columns: {list(df.columns)})")
    times = pd.to_datetime(df[time_column])
    missing = int(times.isna().sum())
    if missing:
        # A row without a time cannot be placed in any window, and silently dropping it hides a data bug.
        raise ValueError(f"time column {time_column!r} has {missing} missing value(s); cannot split by time")
    return times


def time_split(
    df: pd.DataFrame, time_column: str, validation_fraction: float, test_fraction: float
) -> SplitWindows:
    """Cut the time range of `df` into train, validation and test windows.

    The validation window starts at `1 - validation_fraction - test_fraction` of the way from the
    first to the last timestamp, and the test window at `1 - test_fraction`. Each cut is moved forward
    to the first timestamp actually present, so window starts are real observation times. The test
    window ends just after the last timestamp, so every row falls in exactly one window.

    Raises ValueError if the fractions are out of range or any window would hold no rows.
    """
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1):
        raise ValueError(
            f"validation_fraction ({validation_fraction}) and test_fraction ({test_fraction}) must be in (0, 1)"
        )
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction = {validation_fraction + test_fraction} leaves no "
            "time for training; it must be below 1"
        )
    times = _timestamps(df, time_column)
    if times.empty:
        raise ValueError("cannot split an empty frame")

    distinct = pd.Series(times.unique()).sort_values(ignore_index=True)
    first, last = distinct.iloc[0], distinct.iloc[-1]
    span = last - first

    def first_time_at_or_after(fraction: float) -> pd.Timestamp:
        cut = first + span * fraction
        return distinct.iloc[int(distinct.searchsorted(cut, side="left"))]

    validation_start = first_time_at_or_after(1 - validation_fraction - test_fraction)
    test_start = first_time_at_or_after(1 - test_fraction)
    # The smallest step past the last timestamp keeps the test window half-open like the others.
    test_end = last + pd.Timedelta(1, "ns")

    windows = SplitWindows(
        train=(first, validation_start),
        validation=(validation_start, test_start),
        test=(test_start, test_end),
    )
    counts = assign_split(df, time_column, windows).value_counts()
    empty = [name for name in SPLIT_NAMES if counts.get(name, 0) == 0]
    if empty:
        raise ValueError(
            f"time split of {time_column!r} from {first} to {last} ({distinct.size} distinct timestamps) "
            f"with validation_fraction={validation_fraction}, test_fraction={test_fraction} leaves the "
            f"{', '.join(empty)} split(s) empty; provide a longer time range or larger fractions"
        )
    return windows


def assign_split(df: pd.DataFrame, time_column: str, windows: SplitWindows) -> pd.Series:
    """Label each row "train", "validation" or "test" by the window its timestamp falls in.

    Returns a string Series aligned with `df.index`. Raises ValueError if any row falls outside all
    windows (e.g. data newer than the test window), because a silently unlabelled row would be lost.
    """
    times = _timestamps(df, time_column)
    labels = pd.Series(pd.NA, index=df.index, dtype="object", name=SPLIT_COLUMN)
    for name, (start, end) in zip(
        SPLIT_NAMES, (windows.train, windows.validation, windows.test), strict=True
    ):
        labels[(times >= start) & (times < end)] = name
    outside = int(labels.isna().sum())
    if outside:
        raise ValueError(
            f"{outside} row(s) have {time_column!r} outside the split windows "
            f"[{windows.train[0]}, {windows.test[1]})"
        )
    return labels
